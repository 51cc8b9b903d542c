"""Training: artifacts, resumption, reloading, and the frozen shortcut, on a tiny random Whisper."""

from __future__ import annotations

import csv
import json
import os
import stat

import numpy as np
import pytest
import torch

from loralens.cli import main
from loralens.precompute import train as train_module
from loralens.precompute import windowing
from loralens.precompute.audio import load_audio
from loralens.precompute.checkpoints import PROGRESS_FILE, TWIN_STD, FoldModels, load_fold_model
from loralens.precompute.config import RunError, TrainConfig
from loralens.precompute.data import load_corpus
from loralens.precompute.models import feature_extractor
from loralens.precompute.train import train


def _config(model_dir, data, **kw) -> TrainConfig:
    return TrainConfig(**{"model": str(model_dir), "data": f"csv:{data}", "epochs": 1, "batch_size": 4, "rank": 4,
                          "alpha": 8, **kw})


def _probabilities(run, fold: int, variant="trained") -> tuple[list[str], np.ndarray, np.ndarray]:
    model = load_fold_model(run, fold, variant)
    with open(run / f"fold_{fold:02d}" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    config = json.loads((run / "config.json").read_text())
    corpus = {u.id: u for u in load_corpus(config["data"], tuple(config["emotions"])).utterances}
    extractor = feature_extractor(windowing.whisper_of(model).config)
    features = windowing.extract(extractor, [load_audio(corpus[r["id"]].path) for r in rows], config["window"])
    with torch.no_grad():
        ours = windowing.classify(model, features).softmax(-1).numpy()
    saved = np.array([[float(r[f"p_{e}"]) for e in config["emotions"]] for r in rows])
    return [r["id"] for r in rows], ours, saved


def test_lora_run_artifacts_and_reload(tmp_path, tiny_model_dir, tone_csv):
    run = tmp_path / "run"
    summary = train(_config(tiny_model_dir, tone_csv), run, only=[0, 2])
    assert summary["n_folds"] == 4 and summary["n_done"] == 2 and not summary["complete"]
    fold = run / "fold_00"
    for name in ("head.safetensors", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "random_twin/adapter_model.safetensors", "metrics.json", "predictions.csv"):
        assert (fold / name).is_file(), name
    # Readable as a plain open() would leave them (safetensors alone writes 0600): a shared runs directory works.
    umask = os.umask(0)
    os.umask(umask)
    for path in [fold, *fold.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["test_speakers"] == ["spk0"] and len(metrics["loss_curve"]) == 1
    assert 0 <= metrics["uar"] <= 1 and np.array(metrics["confusion"]).sum() == 8
    assert (run / "train.log").read_text().count("fold_00 epoch 1") == 1
    # Its start-up: the trainer's preparation (audio, features) is paid by the first fold it trained.
    setups = [json.loads((run / f"fold_0{k}" / "metrics.json").read_text())["setup_seconds"] for k in (0, 2)]
    assert setups[0]["prepare"] > 0 and setups[1]["prepare"] == 0
    assert all(s["model"] > 0 and s["first_step"] > 0 for s in setups)
    # The saved checkpoint reproduces the saved predictions.
    _, ours, saved = _probabilities(run, 0)
    assert np.allclose(ours, saved, atol=1e-5)
    # The random twin: same config, A and B drawn from N(0, 0.02).
    twin = load_fold_model(run, 0, "random_twin")
    lora = torch.cat([p.flatten() for n, p in twin.named_parameters() if "lora_" in n])
    assert abs(lora.std().item() - TWIN_STD) < 0.003 and abs(lora.mean().item()) < 0.003


def test_resume_trains_only_the_missing_folds(tmp_path, tiny_model_dir, tone_csv):
    run = tmp_path / "run"
    config = _config(tiny_model_dir, tone_csv)
    train(config, run, only=[1])
    first = (run / "fold_01" / "metrics.json").read_text()
    (run / "fold_02.partial").mkdir()  # what an interrupted fold leaves behind
    summary = train(config, run)
    assert summary["complete"] and summary["n_done"] == 4
    assert (run / "fold_01" / "metrics.json").read_text() == first
    assert not list(run.glob("*.partial"))
    assert (run / "train.log").read_text().count("fold_01 epoch 1") == 1


def test_same_fold_same_result(tmp_path, tiny_model_dir, tone_csv):
    """Seeds are per fold, so a resumed fold equals the fold of an uninterrupted run."""
    a, b = tmp_path / "a", tmp_path / "b"
    train(_config(tiny_model_dir, tone_csv), a, only=[3])
    train(_config(tiny_model_dir, tone_csv), b)
    ma, mb = (json.loads((r / "fold_03" / "metrics.json").read_text()) for r in (a, b))
    assert ma["loss_curve"] == pytest.approx(mb["loss_curve"], rel=1e-5)


@pytest.mark.parametrize("method, selection, schedule", [("lora", "fixed", "constant"), ("frozen", "inner", "constant"),
                                                         ("lora", "fixed", "linear")])
def test_an_interrupted_fold_resumes_after_its_last_epoch(tmp_path, tiny_model_dir, tone_csv, monkeypatch, caplog,
                                                          method, selection, schedule):
    """Killed in its third epoch, a fold resumes there and ends exactly as an uninterrupted one."""
    config = _config(tiny_model_dir, tone_csv, method=method, epoch_selection=selection, epochs=4,
                     schedule=schedule, warmup=0.3 if schedule == "linear" else 0.0)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(config, whole, only=[1])
    real, epochs_started = train_module.batches, []

    def interrupt_in_epoch_3(items, size, generator=None):
        if generator is not None:
            epochs_started.append(1)
            if len(epochs_started) == 3:
                raise KeyboardInterrupt
        return real(items, size, generator)

    monkeypatch.setattr(train_module, "batches", interrupt_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(config, cut, only=[1])
    assert (cut / "fold_01.partial" / PROGRESS_FILE).is_file() and not (cut / "fold_01").exists()
    assert "stopped: KeyboardInterrupt" in (cut / "train.log").read_text()
    monkeypatch.setattr(train_module, "batches", real)
    with caplog.at_level("INFO", logger="loralens.precompute"):
        train(config, cut, only=[1])
    assert "fold_01: resuming after epoch 2 of 4" in caplog.text
    assert (cut / "train.log").read_text().count("fold_01 epoch 2") == 1
    assert not (cut / "fold_01" / PROGRESS_FILE).exists()
    mw, mc = (json.loads((r / "fold_01" / "metrics.json").read_text()) for r in (whole, cut))
    for key in ("loss_curve", "val_uar_curve", "epoch", "uar", "war", "confusion"):
        assert mc[key] == mw[key], key
    assert (cut / "fold_01" / "predictions.csv").read_text() == (whole / "fold_01" / "predictions.csv").read_text()


@pytest.mark.parametrize("schedule, warmup", [("constant", 0.0), ("constant", 0.25), ("linear", 0.0), ("linear", 0.25)])
def test_lr_schedule_over_a_fold_and_after_a_resume(tiny_model_dir, tone_csv, schedule, warmup):
    config = _config(tiny_model_dir, tone_csv, epochs=4, schedule=schedule, warmup=warmup, lr=1.0, head_lr=2.0)
    steps = 5

    def rates(epochs_done: int) -> list[float]:
        optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": config.head_lr},
                                       {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": config.lr}])
        scheduler = train_module.lr_schedule(config, optimizer, steps, epochs_done)
        out = []
        for _ in range(epochs_done * steps, config.epochs * steps):
            out.append(optimizer.param_groups[1]["lr"])
            assert optimizer.param_groups[0]["lr"] == pytest.approx(2 * out[-1])
            optimizer.step()
            scheduler.step()
        return out

    whole = rates(0)
    assert len(whole) == 20 and max(whole) == pytest.approx(1.0)
    ramp = round(warmup * 20)
    assert whole[:ramp] == pytest.approx([i / ramp for i in range(ramp)])
    if schedule == "constant":
        assert whole[ramp:] == pytest.approx([1.0] * (20 - ramp))
    else:
        assert whole[ramp:] == pytest.approx([(20 - i) / (20 - ramp) for i in range(ramp, 20)])
    assert rates(2) == pytest.approx(whole[10:])  # a fold resumed after epoch 2 goes on where it was


def test_bad_schedule_is_refused(tiny_model_dir, tone_csv):
    with pytest.raises(ValueError, match="schedule='cosine'; expected 'constant' or 'linear'"):
        _config(tiny_model_dir, tone_csv, schedule="cosine")
    with pytest.raises(ValueError, match=r"warmup=1.5; expected a fraction of the steps in \[0, 1\)"):
        _config(tiny_model_dir, tone_csv, warmup=1.5)


def test_epochs_default_per_method_and_old_runs_keep_theirs():
    assert TrainConfig(model="m", data="d", method="lora").epochs == 10
    assert TrainConfig(model="m", data="d", method="frozen").epochs == 30
    assert TrainConfig(model="m", data="d", method="frozen", epochs=7).epochs == 7
    old = TrainConfig(model="m", data="d", method="frozen", epochs=10).to_json()
    assert TrainConfig.from_json(old).epochs == 10
    with pytest.raises(ValueError, match="epochs=0; expected a positive integer"):
        TrainConfig(model="m", data="d", method="frozen", epochs=0)


def test_unreadable_progress_restarts_the_fold(tmp_path, tiny_model_dir, tone_csv, caplog):
    run = tmp_path / "run"
    (run / "fold_00.partial").mkdir(parents=True)
    (run / "fold_00.partial" / PROGRESS_FILE).write_bytes(b"half a file")
    with caplog.at_level("WARNING", logger="loralens.precompute"):
        summary = train(_config(tiny_model_dir, tone_csv), run, only=[0])
    assert summary["n_done"] == 1 and "progress.safetensors: unreadable" in caplog.text
    assert "training fold_00 from its first epoch" in caplog.text


def test_changed_config_is_refused(tmp_path, tiny_model_dir, tone_csv):
    run = tmp_path / "run"
    train(_config(tiny_model_dir, tone_csv), run, only=[0])
    with pytest.raises(RunError, match="rank: 4 -> 8"):
        train(TrainConfig(
            model=str(tiny_model_dir), data=f"csv:{tone_csv}", epochs=1, batch_size=4, rank=8, alpha=8), run)
    assert "ERROR loralens.precompute.train: stopped: RunError" in (run / "train.log").read_text()
    assert (run / "fold_00" / "metrics.json").is_file()


def test_frozen_run_matches_the_full_model(tmp_path, tiny_model_dir, tone_csv):
    """The frozen shortcut (head on cached pooled outputs) predicts what the whole model predicts."""
    run = tmp_path / "frozen"
    train(_config(tiny_model_dir, tone_csv, method="frozen", epoch_selection="inner", epochs=2), run, only=[0])
    metrics = json.loads((run / "fold_00" / "metrics.json").read_text())
    assert metrics["val_speakers"] == ["spk1"] and len(metrics["val_uar_curve"]) == 2
    assert not (run / "fold_00" / "adapter").exists()
    _, ours, saved = _probabilities(run, 0)
    assert np.allclose(ours, saved, atol=1e-5)
    with pytest.raises(RunError, match="frozen-encoder run"):
        load_fold_model(run, 0, "random_twin")


def test_full_window_run(tmp_path, tiny_model_dir, tone_csv):
    run = tmp_path / "full"
    train(_config(tiny_model_dir, tone_csv, window="full"), run, only=[0])
    _, ours, saved = _probabilities(run, 0)
    assert np.allclose(ours, saved, atol=1e-5)


@pytest.mark.parametrize("window", ["trim", "full"])
def test_each_clips_log_mel_is_extracted_once_per_run(tmp_path, tiny_model_dir, tone_csv, window, monkeypatch):
    """Not at every step: a full window's 30 s log-mel took 31 of a 54 ms step on an H100 when it was."""
    extracted = []
    extract = windowing.extract

    def counted(extractor, audios, *args, **kwargs):
        extracted.append(len(audios))
        return extract(extractor, audios, *args, **kwargs)

    monkeypatch.setattr(windowing, "extract", counted)
    monkeypatch.setattr(train_module, "_EXAMPLES", {})  # no clips read by an earlier test of this process
    run = tmp_path / window
    train(_config(tiny_model_dir, tone_csv, window=window, epochs=3), run, only=[0, 1])
    emotions = tuple(json.loads((run / "config.json").read_text())["emotions"])
    assert sum(extracted) == len(load_corpus(f"csv:{tone_csv}", emotions).utterances)
    _, ours, saved = _probabilities(run, 1)
    assert np.allclose(ours, saved, atol=1e-5)


def test_cli_errors_are_one_line(tmp_path, tiny_model_dir, capsys, caplog):
    assert main(["train", "--model", str(tiny_model_dir), "--data", "nope:x", "--out", str(tmp_path / "r")]) == 2
    assert "accepted: emodb:PATH" in caplog.text
    assert main(["train", "--model", "bundled:large", "--data", "csv:x", "--out", str(tmp_path / "r")]) == 2
    assert "bundled:tiny.en" in caplog.text
    assert not (tmp_path / "r").exists()  # a run refused before it starts leaves no directory behind


def test_cli_shows_a_bug_with_its_traceback_and_a_user_error_in_one_line(tmp_path, tiny_model_dir, monkeypatch,
                                                                           caplog):
    """A ValueError from inside (ours, numpy's, zarr's) is a bug: exit 1 with its traceback, not a one-line exit 2."""
    import loralens.precompute.train as train_module

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(train_module, "train", broken)
    argv = ["train", "--model", str(tiny_model_dir), "--data", "csv:x", "--out", str(tmp_path / "r")]
    assert main(argv) == 1
    bug = next(r for r in caplog.records if "broadcast" in (r.exc_text or "") or r.exc_info)
    assert "a bug in loralens" in bug.getMessage() and bug.exc_info[0] is ValueError  # the traceback is logged
    caplog.clear()
    monkeypatch.undo()
    assert main(["train", "--model", str(tiny_model_dir), "--data", "nope:x", "--out", str(tmp_path / "r")]) == 2
    assert all(r.exc_info is None for r in caplog.records)  # the user's mistake: one line, no traceback


def test_bad_audio_is_named_or_skipped(tmp_path, tiny_model_dir, tone_csv):
    bad = tone_csv.parent / "wav" / "s1_anger_0.wav"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"s1_anger_0\.wav: not readable.*--skip-bad"):
        train(_config(tiny_model_dir, tone_csv), tmp_path / "r1", only=[0])
    summary = train(_config(tiny_model_dir, tone_csv, skip_bad=True), tmp_path / "r2", only=[1])
    assert json.loads((tmp_path / "r2" / "folds.json").read_text())["n_skipped_audio"] == 1
    assert json.loads((tmp_path / "r2" / "fold_01" / "metrics.json").read_text())["n_test"] == 7
    assert summary["n_done"] == 1


@pytest.mark.parametrize("folds", ["1", "0", "²", "ten", "-3"])
def test_bad_fold_counts_are_one_clear_error(folds):
    with pytest.raises(ValueError, match=r"expected 'loso', 'split' or an integer K >= 2"):
        TrainConfig(model="x", data="y", folds=folds)


@pytest.mark.parametrize("method,variant", [("lora", "trained"), ("lora", "random_twin"), ("frozen", "trained")])
def test_fold_models_swap_in_exactly_each_folds_weights(tiny_runs, method, variant):
    """FoldModels (one model, each fold's head and adapter swapped in) equals rebuilding the fold's model."""
    models = FoldModels(tiny_runs[method], variant, "cpu")
    first = models.load(0)
    for fold in (2, 1, 3):
        swapped = {k: v.clone() for k, v in models.load(fold).state_dict().items()}
        fresh = load_fold_model(tiny_runs[method], fold, variant).state_dict()
        assert swapped.keys() == fresh.keys()
        differs = [k for k in fresh if not torch.equal(swapped[k], fresh[k])]
        assert not differs, differs[:3]
    assert models.load(0) is first and not first.training


def test_fold_models_refuse_an_adapter_of_another_shape(tmp_path, tiny_runs):
    """A fold whose adapter does not fit the first fold's (another rank) is refused, not half loaded."""
    import shutil

    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["lora"], run)
    path = run / "fold_01" / "adapter" / "adapter_model.safetensors"
    save_file({k: v[:2] if "lora_A" in k else v for k, v in load_file(path).items()}, path)
    models = FoldModels(run, "trained", "cpu")
    models.load(0)
    with pytest.raises(RunError, match="fold_01/adapter/adapter_model.safetensors: does not fit"):
        models.load(1)


def _lora_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("freeze_a", [True, False])
def test_freeze_a_keeps_every_a_at_its_initialisation(tmp_path, tiny_model_dir, tone_csv, freeze_a):
    """--freeze-a (Zhu et al. 2024): each A stays bit-identical to its random start, B trains; without, both move."""
    config = _config(tiny_model_dir, tone_csv, epochs=2, freeze_a=freeze_a)
    trainer = train_module.Trainer(config, tmp_path / "probe")
    trainer.prepare()
    train_module.seed_everything(config.seed)  # what train_fold does before it builds fold 0's model
    initial = _lora_weights(trainer.build(config.seed)[0])
    train(config, tmp_path / "run", only=[0])
    trained = _lora_weights(load_fold_model(tmp_path / "run", 0))
    assert initial.keys() == trained.keys() and any("lora_A" in n for n in initial)
    a_kept = [torch.equal(initial[n], trained[n]) for n in initial if "lora_A" in n]
    b_kept = [torch.equal(initial[n], trained[n]) for n in initial if "lora_B" in n]
    assert all(a_kept) if freeze_a else not any(a_kept)
    assert not any(b_kept)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["freeze_a"] is freeze_a


def test_freeze_a_is_for_lora_runs_only(tmp_path, caplog):
    with pytest.raises(ValueError, match="freeze_a=True with method='frozen'"):
        TrainConfig(model="m", data="d", method="frozen", freeze_a=True)
    argv = ["train", "--model", "m", "--data", "csv:x", "--out", str(tmp_path / "r"), "--method", "frozen",
            "--freeze-a"]
    assert main(argv) == 2 and "drop --freeze-a or use --method lora" in caplog.text


def test_a_run_from_before_freeze_a_keeps_its_fingerprint(tmp_path):
    """A run written before the setting, resumed (config.json rewritten with freeze_a: false), still matches its trace;
    freeze_a: true is another training."""
    from loralens.precompute.checkpoints import run_fingerprint

    config = TrainConfig(model="m", data="d").to_json()
    fingerprints = []
    for value in (None, False, True):
        run = tmp_path / str(value)
        run.mkdir()
        saved = {k: v for k, v in config.items() if k != "freeze_a"} | ({} if value is None else {"freeze_a": value})
        (run / "config.json").write_text(json.dumps(saved))
        fingerprints.append(run_fingerprint(run)["config"])
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


def test_macro_f1_over_the_classes_present_and_its_mean_over_folds():
    """Macro-F1 (EmoBox's third metric) by hand: class 0 F1 0.5, class 1 0.8, class 2 0; class 3 is absent and left
    out, as UAR leaves it out. Folds from before the metric leave it out of the run's summary, not the others."""
    from loralens.precompute.folds import over_folds, scores

    m = scores(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 4)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["uar"] == pytest.approx((0.5 + 1 + 0) / 3) and m["war"] == pytest.approx(0.6)
    summary = over_folds([{"uar": 0.5, "war": 0.6, "macro_f1": 0.4}, {"uar": 0.7, "war": 0.8, "macro_f1": 0.6}])
    assert summary["macro_f1"]["mean"] == pytest.approx(0.5) and summary["macro_f1"]["per_fold"] == [0.4, 0.6]
    assert "macro_f1" not in over_folds([{"uar": 0.5, "war": 0.6, "macro_f1": 0.4}, {"uar": 0.7, "war": 0.8}])


EMODB_CLASSES = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]


def test_emotions_all_trains_every_class_of_the_data_set(tmp_path, tiny_model_dir, caplog):
    """--emotions all on 7 classes (EmoDB's set, as tones) through the CLI: the class set in label order, 7 x 7
    confusions, and UAR, WAR and macro-F1 in the run's summary and its last log line."""
    import soundfile as sf

    from tests.conftest import tone

    rows = ["path,emotion,speaker"]
    (tmp_path / "wav").mkdir()
    for s in range(3):
        for e, emotion in enumerate(reversed(EMODB_CLASSES)):  # listed out of order: the class set is sorted
            sf.write(tmp_path / "wav" / f"s{s}_{emotion}.wav", tone(0.5, 16000, 150 * (e + 1), seed=s), 16000)
            rows.append(f"wav/s{s}_{emotion}.wav,{emotion},spk{s}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--data", f"csv:{tmp_path / 'manifest.csv'}", "--out", str(run),
            "--emotions", "all", "--epochs", "1", "--rank", "4", "--alpha", "8", "--batch-size", "7"]
    with caplog.at_level("INFO", logger="loralens"):
        assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["emotions"] == EMODB_CLASSES
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["complete"] and summary["n_folds"] == 3
    assert all(np.array(f["confusion"]).shape == (7, 7) and "macro_f1" in f for f in summary["folds"])
    assert {"uar", "war", "macro_f1"} <= summary.keys() and "macro-F1" in caplog.text


def test_emodb_with_every_emotion_has_its_seven_classes(emodb):
    from loralens.precompute.data import parse_emotions

    corpus = load_corpus(f"emodb:{emodb}", parse_emotions("all"))
    assert list(corpus.emotions) == EMODB_CLASSES and len(corpus.utterances) == 535 and len(corpus.speakers) == 10
