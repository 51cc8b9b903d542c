"""loralens trace on a tiny trained run: honest fold models, resumption, shards, validation."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from precompute.cli import main
from store.reader import StoreReader
from store.validate import validate


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
    before = reader.read("tiny-lora", "trained", "residual", 3)
    reader.root["runs/tiny-lora/trained/written"][3] = 0  # as if killed before row 3's mark
    reader.root["runs/tiny-lora/trained"].attrs["complete"] = False
    assert not validate(store).ok
    assert main(["trace", "--run", str(lora_run), "--store", store, "--per-class", "2"]) == 0
    assert validate(store).ok
    assert np.allclose(StoreReader(store).read("tiny-lora", "trained", "residual", 3), before, atol=1e-3)


def test_shards_in_separate_processes(lora_run, tmp_path):
    store = str(tmp_path / "s.zarr")
    base = ["trace", "--run", str(lora_run), "--store", store, "--per-class", "2"]
    assert main([*base, "--prepare-only"]) == 0
    procs = [subprocess.Popen([sys.executable, "-m", "precompute.cli", *base, "--shard", f"{k}/2"])
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


def test_writer_processes_are_refused_for_an_in_memory_store(lora_run):
    from precompute.config import read_config
    from precompute.trace import Selection, Tracer

    with pytest.raises(ValueError, match="memory://"):
        Tracer(lora_run, read_config(lora_run).data, "memory://w", selection=Selection(per_class=1), writers=1)


def test_unprepared_shard_says_what_to_do(lora_run, tmp_path, caplog):
    assert main(["trace", "--run", str(lora_run), "--store", str(tmp_path / "s"), "--shard", "0/2"]) == 2
    assert "--prepare-only first" in caplog.text


def test_memory_store(lora_run):
    from precompute.config import read_config
    from precompute.trace import Selection, Tracer

    tracer = Tracer(lora_run, read_config(lora_run).data, "memory://trace-test", selection=Selection(per_class=1))
    rows = tracer.prepare()
    tracer.capture(rows)
    assert tracer.commit(rows) == {"trained": True, "random_twin": True}
    assert validate("memory://trace-test").ok



def test_per_frame_sample_keeps_the_large_arrays_for_a_hashed_share(lora_run, tmp_path):
    from app import views
    from precompute.capture import SAMPLED, CaptureOptions
    from store.reader import StoreError
    from store.validate import sizes

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
    from app.analysis import spectra

    for got, module in zip(stored["lora_a_activation"]["trained"].singular, spectra.spectrum(live).singular,
                           strict=True):
        for x, y in zip(got, module, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9 * y.max())
