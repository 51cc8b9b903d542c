"""loralens trace on a tiny trained run: honest fold models, resumption, shards, validation."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading

import numpy as np
import pytest

from loralens.cli import main
from loralens.store.reader import StoreReader
from loralens.store.validate import validate


@pytest.fixture(scope="module")
def lora_run(tiny_runs):
    return tiny_runs["lora"]


def _predictions(run) -> dict[str, np.ndarray]:
    out = {}
    for fold in sorted(run.glob("fold_*")):
        with open(fold / "predictions.csv") as f:
            for r in csv.DictReader(f):
                out[f"csv/{r['id']}"] = np.array([float(r[k]) for k in r if k.startswith("p_")])
    return out


def test_trace_validate_and_honest_predictions(lora_run, tmp_path):
    store = str(tmp_path / "s.zarr")
    assert main(["trace", "--run", str(lora_run), "--store", store, "--per-class", "3"]) == 0
    assert validate(store).ok
    reader = StoreReader(store)
    assert reader.runs() == {"tiny-lora": ["trained", "random_twin"]}
    ids = reader.utterances()["id"]
    assert len(ids) == 12 and sorted(reader.utterances()["emotion"]).count("anger") == 3
    saved = _predictions(lora_run)
    logits = reader.read("tiny-lora", "trained", "logits")
    for uid, row in zip(ids, logits, strict=True):
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        assert np.allclose(probs, saved[uid], atol=1e-4), uid
    lens = reader.read("tiny-lora", "trained", "lens_logits", boundary=-1)
    assert np.allclose(lens, logits, atol=1e-4)
    twin = reader.read("tiny-lora", "random_twin", "lora_a_activation", 0)
    assert not np.allclose(twin, reader.read("tiny-lora", "trained", "lora_a_activation", 0))
    attrs = reader.attrs("tiny-lora")
    assert attrs["modules"] == ["layer_0.v_proj", "layer_1.v_proj"] and attrs["complete"]


def test_interrupted_capture_resumes(lora_run, tmp_path):
    store = str(tmp_path / "s.zarr")
    assert main(["trace", "--run", str(lora_run), "--store", store, "--per-class", "2"]) == 0
    reader = StoreReader(store, mode="a")
    before = reader.read("tiny-lora", "trained", "lora_a_activation", 3)
    reader.root["runs/tiny-lora/trained/written"][3] = 0  # as if killed before row 3's mark
    reader.root["runs/tiny-lora/trained"].attrs["complete"] = False
    assert not validate(store).ok
    assert main(["trace", "--run", str(lora_run), "--store", store, "--per-class", "2"]) == 0
    assert validate(store).ok
    assert np.allclose(StoreReader(store).read("tiny-lora", "trained", "lora_a_activation", 3), before, atol=1e-3)


def test_shards_in_separate_processes(lora_run, tmp_path):
    store = str(tmp_path / "s.zarr")
    base = ["trace", "--run", str(lora_run), "--store", store, "--per-class", "2"]
    assert main([*base, "--prepare-only"]) == 0
    procs = [subprocess.Popen([sys.executable, "-m", "loralens.cli", *base, "--shard", f"{k}/2"])
             for k in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert main([*base, "--commit-only"]) == 0
    report = validate(store)
    assert report.ok, report.problems


def test_writer_processes_write_the_same_store_as_one_thread(lora_run, tmp_path):
    """--writers 2 (batches of 2 written by two processes) gives the store --writers 0 (one thread) gives."""
    stores = {n: str(tmp_path / f"w{n}.zarr") for n in (0, 2)}
    for n, store in stores.items():
        assert main(["trace", "--run", str(lora_run), "--store", store, "--per-class", "3", "--batch-size", "2",
                     "--writers", str(n), "--no-summary"]) == 0
        assert validate(store).ok
    one, two = (StoreReader(stores[n]) for n in (0, 2))
    for checkpoint in ("trained", "random_twin"):
        names = sorted(one.group("tiny-lora", checkpoint).array_keys())
        assert names == sorted(two.group("tiny-lora", checkpoint).array_keys())
        for name in names:
            a, b = (r.root[f"runs/tiny-lora/{checkpoint}/{name}"][...] for r in (one, two))
            assert np.array_equal(a, b), f"{checkpoint}/{name}"


def test_one_command_traces_several_runs_as_one_command_each_would(tiny_runs, tmp_path, monkeypatch):
    """--run A --run B: the store that one command per run writes, bit for bit, summarised once after both."""
    import loralens.analysis.summary

    calls = []
    summarise = loralens.analysis.summary.summarise
    monkeypatch.setattr(loralens.analysis.summary, "summarise", lambda *a, **k: calls.append(a) or summarise(*a, **k))
    runs = [str(tiny_runs["lora"]), str(tiny_runs["frozen"])]
    both, each = str(tmp_path / "both.zarr"), str(tmp_path / "each.zarr")
    assert main(["trace", "--run", runs[0], "--run", runs[1], "--store", both, "--per-class", "2",
                 "--maps", "umap"]) == 0
    assert len(calls) == 1  # after the last run, not after each
    for run in runs:
        assert main(["trace", "--run", run, "--store", each, "--per-class", "2", "--no-summary"]) == 0
    one, two = StoreReader(both), StoreReader(each)
    assert one.runs() == two.runs() == {"tiny-lora": ["trained", "random_twin"], "tiny-frozen": ["trained"]}
    assert list(one.utterances()["id"]) == list(two.utterances()["id"])
    for run, checkpoints in one.runs().items():
        assert one.summary(run) is not None
        for checkpoint in checkpoints:
            for name in sorted(one.group(run, checkpoint).array_keys()):
                a, b = (r.root[f"runs/{run}/{checkpoint}/{name}"][...] for r in (one, two))
                assert np.array_equal(a, b), f"{run}/{checkpoint}/{name}"


def test_name_with_several_runs_and_a_bad_maps_list_are_refused_before_any_capture(tiny_runs, tmp_path, caplog):
    runs = ["--run", str(tiny_runs["lora"]), "--run", str(tiny_runs["frozen"])]
    store = tmp_path / "s.zarr"
    assert main(["trace", *runs, "--store", str(store), "--name", "x"]) == 2
    assert "--name names one run" in caplog.text
    assert main(["trace", *runs[:2], "--store", str(store), "--per-class", "1", "--maps", "pca"]) == 2
    assert "--maps 'pca'" in caplog.text
    assert not store.exists()  # refused before the store was opened, not after the capture


def test_tracing_and_training_start_without_scikit_learn():
    """A second of every trace's start-up and every training worker's (scikit-learn scores folds at their end)."""
    code = ("import sys, loralens.cli, loralens.precompute.trace, loralens.precompute.train, "
            "loralens.precompute.grid, loralens.precompute.capture; print('sklearn' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_a_trace_without_its_summary_does_not_import_the_summary(lora_run, tmp_path):
    """``--no-summary`` (and every shard's process) spared a second of imports (pandas, joblib, the analyses)."""
    argv = ["trace", "--run", str(lora_run), "--store", str(tmp_path / "s.zarr"), "--per-class", "1", "--no-summary"]
    code = (f"import sys; from loralens.cli import main; "
            f"print(main({argv!r}), 'loralens.analysis.summary' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-2:] == ["0", "False"], result.stderr[-2000:]


def test_the_next_batches_audio_is_read_while_this_one_is_captured():
    """``prefetched`` loads up to ``ahead`` items beyond the one being used, in order, and no further (memory)."""
    from loralens.precompute.trace import prefetched

    started = {i: threading.Event() for i in range(6)}
    asked = []

    def load(i):
        started[i].set()
        if i == 4:
            raise ValueError("unreadable 4")
        return i * 10

    with prefetched(list(range(6)), load, ahead=2) as items:
        assert started[0].wait(5) and started[1].wait(5)  # before the first is asked for (a fold's model loads)
        for i in range(4):
            assert next(items) == i * 10
            asked.append(i)
            # while item i is used, items i+1 and i+2 are read (a sequential read would wait here forever) ...
            assert started[i + 1].wait(5) and started[min(i + 2, 5)].wait(5)
            # ... and nothing beyond them
            assert not any(started[j].is_set() for j in range(i + 3, 6))
        with pytest.raises(ValueError, match="unreadable 4"):  # an item's error comes when it is asked for
            next(items)
    assert asked == [0, 1, 2, 3]


def test_writer_processes_are_refused_for_an_in_memory_store(lora_run):
    from loralens.precompute.config import read_config
    from loralens.precompute.trace import Selection, Tracer

    with pytest.raises(ValueError, match="memory://"):
        Tracer(lora_run, read_config(lora_run).data, "memory://w", selection=Selection(per_class=1), writers=1)


def test_unprepared_shard_says_what_to_do(lora_run, tmp_path, caplog):
    assert main(["trace", "--run", str(lora_run), "--store", str(tmp_path / "s"), "--shard", "0/2"]) == 2
    assert "--prepare-only first" in caplog.text


def test_memory_store(lora_run):
    from loralens.precompute.config import read_config
    from loralens.precompute.trace import Selection, Tracer

    tracer = Tracer(lora_run, read_config(lora_run).data, "memory://trace-test", selection=Selection(per_class=1))
    rows = tracer.prepare()
    tracer.capture(rows)
    assert tracer.commit(rows) == {"trained": True, "random_twin": True}
    assert validate("memory://trace-test").ok



def test_per_frame_sample_keeps_the_large_arrays_for_a_hashed_share(lora_run, tmp_path):
    from loralens.analysis import views
    from loralens.precompute.capture import SAMPLED, CaptureOptions
    from loralens.store.reader import StoreError
    from loralens.store.validate import sizes

    half, full = str(tmp_path / "half.zarr"), str(tmp_path / "full.zarr")
    for store, share in ((half, "0.5"), (full, "1")):
        assert main(["trace", "--run", str(lora_run), "--store", store, "--all", "--per-frame-sample", share,
                     "--maps", "tsne"]) == 0
        assert validate(store).ok
    reader = StoreReader(half)
    ids = reader.utterances()["id"]
    kept = np.array([CaptureOptions(per_frame_sample=0.5).keeps_frames(i) for i in ids])
    assert 0 < kept.sum() < len(ids)
    for checkpoint in ("trained", "random_twin"):
        np.testing.assert_array_equal(reader.sampled("tiny-lora", checkpoint), kept)
    dropped = int(np.flatnonzero(~kept)[0])
    with pytest.raises(StoreError, match="per-frame-sample"):
        reader.read("tiny-lora", "trained", "lora_a_activation", [dropped])
    # Pooled arrays and the lens cover every utterance, equal to the full trace's.
    other = StoreReader(full)
    for name in ("residual_pooled", "lens_logits", "lora_b_pooled"):
        np.testing.assert_array_equal(reader.read("tiny-lora", "trained", name), other.read("tiny-lora", "trained",
                                                                                           name))
    for name in SAMPLED:
        rows = np.flatnonzero(kept).tolist()
        np.testing.assert_array_equal(reader.read("tiny-lora", "trained", name, rows),
                                      other.read("tiny-lora", "trained", name, rows))
    part = "runs/tiny-lora/trained: per-frame, sampled"
    assert sizes(half)[part] < sizes(full)[part]
    # Spectra are computed over the kept rows only, by the summary and from the arrays alike.
    stored = views.spectra_of(reader, "tiny-lora")
    groups = views.sampled_groups(reader, "tiny-lora", "trained", views.fold_groups(reader, "tiny-lora"))
    assert sum(len(g) for g in groups.values()) == kept.sum()
    live = views.lora_matrices(reader, "tiny-lora", "trained", "lora_a_activation", groups)
    from loralens.analysis import spectra

    for got, module in zip(stored["lora_a_activation"]["trained"].singular, spectra.spectrum(live).singular,
                           strict=True):
        for x, y in zip(got, module, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9 * y.max())


def test_utterance_ids_copied_from_the_explorer_trace_those_utterances(lora_run, tmp_path):
    """The store and the app show ``csv/wav/s0_anger_0``; a list of those (or of the data set's own ids) traces them,
    and an id no completed fold holds out is still refused, in the form it was given."""
    first = str(tmp_path / "first.zarr")
    assert main(["trace", "--run", str(lora_run), "--store", first, "--per-class", "1", "--no-summary"]) == 0
    shown = list(StoreReader(first).utterances()["id"])  # as the explorer shows them
    listed = tmp_path / "ids.txt"
    listed.write_text("\n".join([shown[0], shown[1].split("/", 1)[1]]) + "\n")  # the store's form, and the data's
    store = str(tmp_path / "s.zarr")
    assert main(["trace", "--run", str(lora_run), "--store", store, "--utterances", str(listed), "--no-summary"]) == 0
    assert list(StoreReader(store).utterances()["id"]) == shown[:2]
    listed.write_text("csv/wav/nothing_here\n")
    assert main(["trace", "--run", str(lora_run), "--store", str(tmp_path / "t.zarr"), "--utterances",
                 str(listed)]) == 2


def test_a_retrained_run_is_refused_naming_what_changed_until_replaced(tiny_model_dir, tmp_path, caplog):
    """Retrain a run (another seed) into the same directory and trace it into the same store: old and new rows and
    metrics would sit together, and intervene would run the new weights against the old trace. Refused, naming the
    change; --replace traces it anew; a fold completed later is no retraining."""
    import shutil

    from loralens.precompute.config import TrainConfig
    from loralens.precompute.train import train
    from tests.conftest import write_tone_csv

    manifest = write_tone_csv(tmp_path)
    run, store = tmp_path / "run", str(tmp_path / "s.zarr")
    config = dict(model=str(tiny_model_dir), data=f"csv:{manifest}", epochs=1, batch_size=4, rank=4, alpha=8,
                  folds="2")
    train(TrainConfig(**config), run, only=[0])
    trace = ["trace", "--run", str(run), "--store", store, "--all", "--no-summary"]
    assert main(trace) == 0
    train(TrainConfig(**config), run, only=[1])  # the other fold, later: the same training, grown
    assert main(trace) == 0
    shutil.rmtree(run)
    train(TrainConfig(**config, seed=1), run)
    assert main(trace) == 2
    assert "another training" in caplog.text and "seed: 0 -> 1" in caplog.text and "--replace" in caplog.text
    assert main(["intervene", "--run", str(run), "--store", store, "--kinds", "erase"]) == 2
    assert main([*trace, "--replace"]) == 0
    reader = StoreReader(store)
    agreement = reader.attrs("run")["prediction_agreement"]
    assert agreement["rate"] == 1.0 and agreement["n_compared"] == 32  # every row is the new training's
    assert main(["intervene", "--run", str(run), "--store", store, "--kinds", "erase"]) == 0
