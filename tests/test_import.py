"""``loralens import``: checkpoints made the way the paper's own script makes them, with plain transformers + peft.

None of loralens's training is used to make them: a tiny random Whisper, ``get_peft_model`` with
``modules_to_save=["projector", "classifier"]``, a few optimiser steps in the 30 s window, ``save_pretrained`` into
Trainer's ``checkpoint-N/`` layout. The import must reproduce each model's own forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model
from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

from loralens.cli import main
from loralens.precompute.audio import load_audio, prepare_speech
from loralens.precompute.config import RunError
from loralens.precompute.data import load_corpus
from loralens.precompute.importing import CheckpointError, ImportPlan, import_run
from loralens.store.reader import StoreReader
from tests.conftest import tiny_config, write_tone_csv

EMOTIONS = ["anger", "happiness", "neutral", "sadness"]
ID2LABEL = {0: "angry", 1: "happy", 2: "neutral", 3: "sad"}  # another spelling than the store's, as users' often are


def whisper_from(base: Path) -> WhisperForAudioClassification:
    """``from_pretrained`` as the paper's script calls it."""
    return WhisperForAudioClassification.from_pretrained(base, num_labels=4, id2label=ID2LABEL,
                                                         label2id={v: k for k, v in ID2LABEL.items()},
                                                         ignore_mismatched_sizes=True)


def full_window_batch(manifest: Path, speakers: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The utterances of ``speakers``, through the stock feature extractor (30 s padding), and their labels."""
    corpus = load_corpus(f"csv:{manifest}", tuple(EMOTIONS))
    chosen = [u for u in corpus.utterances if u.speaker in speakers]
    extractor = WhisperFeatureExtractor(feature_size=80)
    features = extractor([load_audio(u.path) for u in chosen], sampling_rate=16000, return_tensors="pt")
    return features.input_features, torch.tensor([EMOTIONS.index(u.emotion) for u in chosen])


def paper_checkpoint(base: Path, manifest: Path, out: Path, train_speakers: set[str], *, targets=("v_proj",),
                     r: int = 32, alpha: int = 64, seed: int = 0, steps: int = 3, **lora) -> torch.nn.Module:
    """A fold's adapter as the paper's train_lora.py makes it, saved as Trainer's ``checkpoint-N/``."""
    torch.manual_seed(seed)
    model = get_peft_model(whisper_from(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                          lora_dropout=0.1, bias="none",
                                                          modules_to_save=["projector", "classifier"], **lora))
    features, labels = full_window_batch(manifest, train_speakers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_features=features, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    # Trainer keeps several checkpoints and names the best in the last one's trainer_state.json: here the best is
    # the earlier one, and the last holds other weights (its B zeroed), which an import must not take.
    best, last = out / f"checkpoint-{steps - 1}", out / f"checkpoint-{steps}"
    model.save_pretrained(best)
    kept = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.zero_()
        model.save_pretrained(last)
        for n, p in model.named_parameters():
            if n in kept:
                p.copy_(kept[n])
    (last / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": str(best), "epoch": 1.0}))
    return model.eval()


@pytest.fixture(scope="module")
def paper_layout(tmp_path_factory):
    """Four LOSO folds of LoRA r=32 on v_proj, one checkpoint folder each, as ``v_proj/{model}/fold{k}``."""
    root = tmp_path_factory.mktemp("paper")
    base = root / "base"
    torch.manual_seed(0)
    WhisperForAudioClassification(tiny_config()).save_pretrained(base)
    manifest = write_tone_csv(root)
    speakers = sorted(f"spk{s}" for s in range(4))
    models = [paper_checkpoint(base, manifest, root / "v_proj" / f"fold{k + 1}", set(speakers) - {s}, seed=k)
              for k, s in enumerate(speakers)]
    return base, manifest, [root / "v_proj" / f"fold{k + 1}" for k in range(4)], models, speakers


def test_an_imported_run_traces_what_each_peft_model_computes(paper_layout, tmp_path):
    base, manifest, folds, models, speakers = paper_layout
    run, store = tmp_path / "imported", str(tmp_path / "store.zarr")
    assert main(["import", *map(str, folds), "--model", str(base), "--data", f"csv:{manifest}", "--out",
                 str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["method"], config["rank"], config["alpha"], config["targets"], config["window"]) == (
        "lora", 32, 64.0, ["v_proj"], "full")
    assert config["source"]["held_out"] and len(config["source"]["checkpoints"]) == 4
    assert main(["trace", "--run", str(run), "--store", store, "--all", "--no-summary"]) == 0
    reader = StoreReader(store)
    table = reader.utterances()
    rows = np.flatnonzero(reader.written("imported"))
    assert len(rows) == 32
    logits = reader.read("imported", "trained", "logits", rows.tolist())
    folds_of = reader.read("imported", "trained", "fold", rows.tolist())
    for k, (speaker, model) in enumerate(zip(speakers, models, strict=True)):
        features, _ = full_window_batch(manifest, {speaker})
        with torch.no_grad():
            theirs = model(input_features=features).logits.numpy()
        mine = logits[folds_of == k]
        assert set(table["speaker"][rows[folds_of == k]]) == {speaker}  # each utterance by the model that held it out
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["complete"] and metrics["n_done"] == 4


def test_predict_on_an_imported_run_agrees_with_the_peft_model(paper_layout, tmp_path, capsys):
    base, manifest, folds, models, speakers = paper_layout
    run = tmp_path / "imported"
    import_run(ImportPlan(model=str(base), data=f"csv:{manifest}", checkpoints=folds), run)
    clip = sorted((manifest.parent / "wav").glob("s0_*.wav"))[0]
    features, _ = full_window_batch(manifest, {"spk0"})
    assert main(["predict", "--run", str(run), "--fold", "0", "--json", str(clip)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    extractor = WhisperFeatureExtractor(feature_size=80)
    # predict hears the clip as a recording is heard: silence trimmed, level set (audio.prepare_speech)
    one = extractor([prepare_speech(load_audio(clip), clip.name).samples], sampling_rate=16000,
                    return_tensors="pt").input_features
    with torch.no_grad():
        theirs = models[0](input_features=one).logits.softmax(-1)[0].numpy()
    np.testing.assert_allclose(result["probabilities"][-1], theirs, atol=1e-5)
    assert result["prediction"] == EMOTIONS[int(theirs.argmax())]


def test_q_and_v_at_rank_8_with_rslora_and_given_test_speakers(tmp_path, tiny_model_dir):
    manifest = write_tone_csv(tmp_path)
    folds = [tmp_path / "qv" / f"fold{k}" for k in range(2)]
    tests = [{"spk0", "spk1"}, {"spk2", "spk3"}]
    models = [paper_checkpoint(tiny_model_dir, manifest, out, {f"spk{s}" for s in range(4)} - test,
                               targets=("q_proj", "v_proj"), r=8, alpha=16, seed=k, use_rslora=True)
              for k, (out, test) in enumerate(zip(folds, tests, strict=True))]
    run = tmp_path / "run"
    assert main(["import", *map(str, folds), "--model", str(tiny_model_dir), "--data", f"csv:{manifest}", "--out",
                 str(run), "--test-speakers", "spk0,spk1", "--test-speakers", "spk2,spk3"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["rank"], config["targets"], config["rslora"], config["folds"]) == (8, ["q_proj", "v_proj"], True,
                                                                                      "given")
    for k, test in enumerate(tests):
        features, _ = full_window_batch(manifest, test)
        with torch.no_grad():
            theirs = models[k](input_features=features).logits.softmax(-1).numpy()
        predictions = (run / f"fold_{k:02d}" / "predictions.csv").read_text().splitlines()[1:]
        mine = np.array([[float(x) for x in line.split(",")[4:]] for line in predictions])
        np.testing.assert_allclose(mine, theirs, atol=1e-5)
    from loralens.precompute.checkpoints import load_fold_model

    twin = dict(load_fold_model(run, 0, "random_twin").named_parameters())
    trained = dict(load_fold_model(run, 0, "trained").named_parameters())
    assert any("q_proj.lora_A" in n for n in twin) and all(
        not torch.equal(twin[n], trained[n]) for n in trained if "lora_" in n)


def test_a_whole_frozen_model_imports_as_a_frozen_baseline(tmp_path, tiny_model_dir):
    manifest = write_tone_csv(tmp_path)
    torch.manual_seed(1)
    whole = whisper_from(tiny_model_dir)
    whole.save_pretrained(tmp_path / "frozen")
    run = tmp_path / "run"
    assert main(["import", str(tmp_path / "frozen"), "--model", str(tiny_model_dir), "--data", f"csv:{manifest}",
                 "--out", str(run), "--not-held-out"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "frozen" and config["emotions"] == EMOTIONS and not config["source"]["held_out"]
    features, _ = full_window_batch(manifest, {f"spk{s}" for s in range(4)})
    with torch.no_grad():
        theirs = whole.eval()(input_features=features).logits.softmax(-1).numpy()
    lines = (run / "fold_00" / "predictions.csv").read_text().splitlines()[1:]
    np.testing.assert_allclose(np.array([[float(x) for x in line.split(",")[4:]] for line in lines]), theirs,
                               atol=1e-5)
    store = str(tmp_path / "s.zarr")
    assert main(["trace", "--run", str(run), "--store", store, "--all", "--no-summary"]) == 0
    attrs = StoreReader(store).attrs("run")
    assert attrs["train_config"]["source"]["held_out"] is False


def test_a_base_that_does_not_fit_the_adapter_is_named_in_one_line(paper_layout, tmp_path, caplog):
    base, manifest, folds, _, _ = paper_layout
    other = tmp_path / "wider"
    WhisperForAudioClassification(tiny_config(d_model=48)).save_pretrained(other)
    assert main(["import", *map(str, folds), "--model", str(other), "--data", f"csv:{manifest}", "--out",
                 str(tmp_path / "run")]) == 2
    message = caplog.records[-1].getMessage()
    assert "v_proj.lora_A.weight is (32, 32)" in message and "takes (32, 48)" in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # nothing left to block the corrected command
    assert main(["import", *map(str, folds), "--model", str(base), "--data", f"csv:{manifest}", "--out",
                 str(tmp_path / "run"), "--test-speakers", "spk0", "--test-speakers", "spk1",
                 "--test-speakers", "spk2", "--test-speakers", "spk3"]) == 0


def test_labels_that_the_data_does_not_have_are_refused_with_both_sets(tmp_path, tiny_model_dir, caplog):
    manifest = write_tone_csv(tmp_path)
    model = WhisperForAudioClassification.from_pretrained(tiny_model_dir, num_labels=4, ignore_mismatched_sizes=True,
                                                          id2label={0: "fear", 1: "happy", 2: "neutral", 3: "sad"})
    model.save_pretrained(tmp_path / "whole")
    assert main(["import", str(tmp_path / "whole"), "--model", str(tiny_model_dir), "--data", f"csv:{manifest}",
                 "--out", str(tmp_path / "run"), "--not-held-out"]) == 2
    message = caplog.records[-1].getMessage()
    assert "['fear', 'happiness', 'neutral', 'sadness']" in message and "the data has no fear" in message


@pytest.mark.parametrize("kind", ["ia3", "dora", "lora_bias", "decoder"])
def test_what_loralens_cannot_analyse_is_refused_naming_the_setting(tmp_path, tiny_model_dir, kind):
    manifest = write_tone_csv(tmp_path)
    model = whisper_from(tiny_model_dir)
    if kind == "ia3":
        config = IA3Config(target_modules=["v_proj", "fc2"], feedforward_modules=["fc2"])
    else:
        targets = ["decoder.layers.0.self_attn.v_proj"] if kind == "decoder" else ["v_proj"]
        config = LoraConfig(r=4, target_modules=targets, use_dora=kind == "dora", lora_bias=kind == "lora_bias")
    if kind == "decoder":  # no decoder in the classifier: PEFT itself refuses to build it; write what one would save
        (tmp_path / "adapter").mkdir()
        config.save_pretrained(tmp_path / "adapter")
        from safetensors.torch import save_file

        save_file({"base_model.model.decoder.layers.0.self_attn.v_proj.lora_A.weight": torch.zeros(4, 32)},
                  tmp_path / "adapter" / "adapter_model.safetensors")
    else:
        get_peft_model(model, config).save_pretrained(tmp_path / "adapter")
    expected = {"ia3": "peft_type IA3", "dora": "DoRA", "lora_bias": "a bias on LoRA B",
                "decoder": "decoder.layers.0.self_attn.v_proj"}[kind]
    with pytest.raises(CheckpointError, match=expected):
        import_run(ImportPlan(model=str(tiny_model_dir), data=f"csv:{manifest}", checkpoints=[tmp_path / "adapter"],
                              held_out=False), tmp_path / "run")


def test_pickled_weights_are_never_loaded(tmp_path, tiny_model_dir):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (tmp_path / "old" / "adapter_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(CheckpointError, match="pickle"):
        import_run(ImportPlan(model=str(tiny_model_dir), data="csv:unused", checkpoints=[tmp_path / "old"],
                              held_out=False), tmp_path / "run")


def test_test_sets_given_as_id_lists_in_the_explorers_form_or_the_data_sets(tmp_path, tiny_model_dir):
    manifest = write_tone_csv(tmp_path)
    whisper_from(tiny_model_dir).save_pretrained(tmp_path / "whole")
    ids = [u.id for u in load_corpus(f"csv:{manifest}", tuple(EMOTIONS)).utterances]
    (tmp_path / "a.txt").write_text("\n".join(f"csv/{i}" for i in ids[:5]))  # as the store and the app show them
    (tmp_path / "b.txt").write_text("\n".join(ids[5:]))  # as in the data set
    run = tmp_path / "run"
    assert main(["import", str(tmp_path / "whole"), str(tmp_path / "whole"), "--model", str(tiny_model_dir),
                 "--data", f"csv:{manifest}", "--out", str(run), "--test-ids", str(tmp_path / "a.txt"),
                 "--test-ids", str(tmp_path / "b.txt")]) == 0
    folds = json.loads((run / "folds.json").read_text())["folds"]
    assert [f["test"] for f in folds] == [ids[:5], ids[5:]]
    (tmp_path / "c.txt").write_text("csv/wav/not_there\n")
    with pytest.raises(CheckpointError, match="1 id\\(s\\) not in --data.*csv/wav/not_there"):
        import_run(ImportPlan(model=str(tiny_model_dir), data=f"csv:{manifest}", checkpoints=[tmp_path / "whole"],
                              test_ids=[tmp_path / "c.txt"]), tmp_path / "run2")


def test_a_whole_models_own_label_order_is_kept(tmp_path, tiny_model_dir):
    """Without --emotions a whole model's id2label decides the class order (here not the store's usual one), and
    transformers' default LABEL_N names are replaced by --emotions."""
    manifest = write_tone_csv(tmp_path)
    labels = {0: "sad", 1: "neutral", 2: "happy", 3: "angry"}
    torch.manual_seed(2)
    ordered = WhisperForAudioClassification.from_pretrained(tiny_model_dir, num_labels=4, id2label=labels,
                                                            ignore_mismatched_sizes=True)
    ordered.save_pretrained(tmp_path / "ordered")
    run = tmp_path / "run"
    assert main(["import", str(tmp_path / "ordered"), "--model", str(tiny_model_dir), "--data", f"csv:{manifest}",
                 "--out", str(run), "--not-held-out"]) == 0
    assert json.loads((run / "config.json").read_text())["emotions"] == ["sadness", "neutral", "happiness", "anger"]
    features, _ = full_window_batch(manifest, {"spk0"})
    with torch.no_grad():
        theirs = ordered.eval()(input_features=features).logits.argmax(-1).tolist()
    lines = [line.split(",") for line in (run / "fold_00" / "predictions.csv").read_text().splitlines()[1:]]
    assert [row[3] for row in lines if row[1] == "spk0"] == [["sadness", "neutral", "happiness", "anger"][i]
                                                             for i in theirs]
    WhisperForAudioClassification.from_pretrained(tiny_model_dir, num_labels=4, ignore_mismatched_sizes=True
                                                  ).save_pretrained(tmp_path / "generic")  # LABEL_0 ... LABEL_3
    assert main(["import", str(tmp_path / "generic"), "--model", str(tiny_model_dir), "--data", f"csv:{manifest}",
                 "--out", str(tmp_path / "generic-run"), "--not-held-out", "--emotions", ",".join(EMOTIONS)]) == 0


def test_random_folds_and_a_changed_test_set_are_refused(paper_layout, tmp_path):
    base, manifest, folds, _, speakers = paper_layout
    with pytest.raises(CheckpointError, match="drawn at random"):
        import_run(ImportPlan(model=str(base), data=f"csv:{manifest}", checkpoints=folds[:2], folds="2"),
                   tmp_path / "k")
    run = tmp_path / "run"
    given = [[speakers[0]], [speakers[1]]]
    import_run(ImportPlan(model=str(base), data=f"csv:{manifest}", checkpoints=folds[:2], test_speakers=given), run)
    with pytest.raises(RunError, match="different configuration|another test set"):
        import_run(ImportPlan(model=str(base), data=f"csv:{manifest}", checkpoints=folds[:2],
                              test_speakers=[[speakers[1]], [speakers[0]]]), run)


def test_fully_fine_tuned_models_import_trace_and_say_lora_views_do_not_apply(tmp_path, tiny_model_dir, monkeypatch):
    """Whole models whose encoders were fine-tuned (each fold its own): a 'full' run that points at their weights,
    traced with each fold's own encoder; the LoRA dynamics page and the report say their views do not apply."""
    from streamlit.testing.v1 import AppTest

    manifest = write_tone_csv(tmp_path)
    models, dirs = [], []
    for k in range(2):
        torch.manual_seed(10 + k)
        model = whisper_from(tiny_model_dir)
        with torch.no_grad():
            for p in model.encoder.parameters():
                p.add_(0.01 * torch.randn_like(p))  # fine-tuned: another encoder in each fold
        model.save_pretrained(tmp_path / f"ft{k}")
        models.append(model.eval())
        dirs.append(str(tmp_path / f"ft{k}"))
    run, store = tmp_path / "run", str(tmp_path / "s.zarr")
    assert main(["import", *dirs, "--model", str(tiny_model_dir), "--data", f"csv:{manifest}", "--out", str(run),
                 "--test-speakers", "spk0,spk1", "--test-speakers", "spk2,spk3"]) == 0
    assert json.loads((run / "config.json").read_text())["method"] == "full"
    assert not list(run.glob("fold_*/*model.safetensors"))  # pointed at, not copied
    assert main(["trace", "--run", str(run), "--store", store, "--all", "--no-summary"]) == 0
    reader = StoreReader(store)
    rows = np.flatnonzero(reader.written("run")).tolist()
    logits, folds = reader.read("run", "trained", "logits", rows), reader.read("run", "trained", "fold", rows)
    for k, speakers in enumerate(({"spk0", "spk1"}, {"spk2", "spk3"})):
        features, _ = full_window_batch(manifest, speakers)
        with torch.no_grad():
            np.testing.assert_allclose(logits[folds == k], models[k](input_features=features).logits.numpy(),
                                       atol=1e-5)
    monkeypatch.setenv("LORALENS_STORE", store)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=300).run()
    at.switch_page("sections/dynamics.py").run()
    assert not at.exception and any("do not apply" in c.value for c in at.caption)
    at.switch_page("sections/clusters.py").run()
    assert not at.exception
