"""Store integrity: every damaged chunk or zarr.json is named by validate and the reader, and repair restores it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs.bytes import BytesCodec

from loralens.cli import main
from loralens.store.damage import rows_text
from loralens.store.reader import StoreError, StoreReader
from loralens.store.schema import SLOT_ROWS, slotted
from loralens.store.validate import validate

# name -> (file to cut short (see _cut), a read that meets it, what validate and the error name, where in it)
CASES = {
    "log-mel chunk": ("utterances/log_mel/c/3/0/0", lambda r: r.log_mel(3), "utterances/log_mel", "row 3"),
    "audio chunk": ("utterances/audio/c/3/0", lambda r: r.audio(3), "utterances/audio", "row 3"),
    "table column chunk": ("utterances/speaker/c/0", lambda r: r.utterances(), "utterances/speaker", "rows 0-31"),
    "id column chunk": ("utterances/id/c/0", lambda r: r.n_utterances, "utterances/id", "rows 0-31"),
    "uncompressed chunk": (lambda store: _slot_chunk(store, "tiny-lora", "trained", "logits", 3),
                           lambda r: r.read("tiny-lora", "trained", "logits", 3),
                           "runs/tiny-lora/trained/logits", "row 3"),
    "compressed chunk": (lambda store: _slot_chunk(store, "tiny-lora", "random_twin", "lens_logits_frames", 2),
                         lambda r: r.read("tiny-lora", "random_twin", "lens_logits_frames", 2, boundary=1),
                         "runs/tiny-lora/random_twin/lens_logits_frames", "row 2"),
    "written mark chunk": ("runs/tiny-lora/random_twin/written/c/5",
                           lambda r: r.read("tiny-lora", "random_twin", "lora_a_pooled", 5),
                           "runs/tiny-lora/random_twin/written", "row 5"),
    "layer-major chunk": ("runs/tiny-lora/trained/by_layer/residual_pooled/c/0/1/0",
                          lambda r: r.read("tiny-lora", "trained", "residual_pooled", boundary=1),
                          "runs/tiny-lora/trained/by_layer/residual_pooled", "boundary 1"),
    "checkpoint array zarr.json": ("runs/tiny-lora/trained/lens_logits/zarr.json",
                                   lambda r: r.read("tiny-lora", "trained", "lens_logits", 0),
                                   "runs/tiny-lora/trained/lens_logits/zarr.json", ""),
    "checkpoint attributes zarr.json": ("runs/tiny-frozen/trained/zarr.json", lambda r: r.runs(),
                                        "runs/tiny-frozen/trained/zarr.json", ""),
    "table column zarr.json": ("utterances/log_mel/zarr.json", lambda r: r.log_mel(0),
                               "utterances/log_mel/zarr.json", ""),
    "table group zarr.json": ("utterances/zarr.json", lambda r: r.utterances(), "utterances/zarr.json", ""),
    "run group zarr.json": ("runs/tiny-lora/zarr.json", lambda r: r.runs(), "runs/tiny-lora/zarr.json", ""),
    "layer-major zarr.json": ("runs/tiny-lora/random_twin/by_layer/lens_logits/zarr.json",
                              lambda r: r.read("tiny-lora", "random_twin", "lens_logits", boundary=0),
                              "runs/tiny-lora/random_twin/by_layer/lens_logits/zarr.json", ""),
}


def _slot_chunk(store: str, run: str, checkpoint: str, name: str, row: int) -> tuple[str, str]:
    """The chunk of a slot-major array holding ``row``, and the rows it holds (as validate names them)."""
    marks = zarr.open_array(f"{store}/runs/{run}/{checkpoint}/written", mode="r")[:].astype(int)
    chunk = (marks[row] - 1) // SLOT_ROWS
    rows = [r for r, mark in enumerate(marks) if mark and (mark - 1) // SLOT_ROWS == chunk]
    ndim = zarr.open_array(f"{store}/runs/{run}/{checkpoint}/{name}", mode="r").ndim
    return f"runs/{run}/{checkpoint}/{name}/c/{chunk}" + "/0" * (ndim - 1), rows_text(rows)


def _copy(tiny_store: str, tmp_path: Path) -> str:
    store = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, store)
    return str(store)


def _cut(store: str, key: str) -> None:
    """Cut a file to 7 bytes, or to half of it where it is shorter (a mark: 4 bytes, uncompressed)."""
    path = Path(store) / key
    assert path.is_file(), f"{key} is not in the fixture store"
    data = path.read_bytes()
    path.write_bytes(data[:min(7, len(data) // 2)])


def _snapshot(store: str) -> dict[str, np.ndarray]:
    """Everything a reader sees: the table with audio and log-mel, every array per row and via its copy."""
    reader = StoreReader(store)
    out = {f"utterances/{k}": v for k, v in reader.utterances().items()}
    for row in range(reader.n_utterances):
        out[f"audio/{row}"] = reader.audio(row)
        out[f"log_mel/{row}"] = reader.log_mel(row)
    for run, checkpoints in reader.runs().items():
        for checkpoint in checkpoints:
            out[f"{run}/{checkpoint}/attrs"] = np.array(sorted(
                k for k in reader.attrs(run, checkpoint) if k not in ("complete", "n_written", "consolidated")))
            for name in reader.group(run, checkpoint).array_keys():
                if not slotted(name):  # a slot-major array's rows move to new slots when captured again
                    raw = reader.array(run, checkpoint, name)[:]
                    out[f"{run}/{checkpoint}/{name}"] = raw > 0 if name == "written" else raw  # marks: slot + 1
                read = reader.read(run, checkpoint, name)
                out[f"{run}/{checkpoint}/{name}/read"] = read > 0 if name == "written" else read
    return out


def _assert_same(before: dict, after: dict, recaptured: bool) -> None:
    assert sorted(before) == sorted(after)
    for key, value in before.items():
        if value.dtype == object or value.dtype.kind in "iuUS" or not recaptured:
            assert np.array_equal(value, after[key]), key
        else:  # captured again: the same model on the same audio, up to float16 rounding and batch padding
            assert np.allclose(value, after[key], rtol=1e-2, atol=1e-3), key


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_named_read_as_store_error_and_repaired(case, tiny_store, tiny_runs, tmp_path, capsys):
    key, read, node, where = CASES[case]
    store = _copy(tiny_store, tmp_path)
    before = _snapshot(store)
    key, validated = key(store) if callable(key) else (key, where)  # a slot chunk holds its neighbours too
    _cut(store, key)

    report = validate(store)
    assert not report.ok
    repair = f"loralens validate --repair {store}"
    named = [p for p in report.problems if node in p and validated in p and repair in p]
    assert named, report.problems
    with pytest.raises(StoreError) as raised:
        read(StoreReader(store))
    message = str(raised.value)
    assert node in message and where in message and f"loralens validate --repair {store}" in message, message
    assert "\n" not in message

    assert main(["validate", store, "--repair"]) == 1
    out = capsys.readouterr().out
    retraced = sorted(set(re.findall(r"the loralens trace command of run '([^']+)' again", out)))
    runs = {path.name: path for path in tiny_runs.values()}
    for run in retraced:  # what repair said to run next (the fixture traced every utterance)
        assert main(["trace", "--run", str(runs[run]), "--store", store, "--all"]) == 0
    report = validate(store)
    assert report.ok, (out, report.problems)
    _assert_same(before, _snapshot(store), recaptured=bool(retraced))


def test_damaged_root_attributes_say_what_to_do(tiny_store, tmp_path, capsys):
    store = _copy(tiny_store, tmp_path)
    _cut(store, "zarr.json")
    with pytest.raises(StoreError, match="zarr.json.*unreadable.*backup"):
        StoreReader(store)
    report = validate(store)
    assert any("zarr.json" in p and "backup" in p for p in report.problems)
    assert main(["validate", store, "--repair"]) == 1
    assert (Path(store) / "zarr.json").read_bytes() == (Path(tiny_store) / "zarr.json").read_bytes()[:7]


@pytest.mark.parametrize("error", [TypeError("a bug in code"), ImportError("no zstd library")])
def test_errors_that_are_not_damage_propagate_and_repair_clears_nothing(tiny_store, tmp_path, monkeypatch, error,
                                                                        caplog):
    store = _copy(tiny_store, tmp_path)
    _cut(store, _slot_chunk(store, "tiny-lora", "trained", "logits", 3)[0])  # real damage: repair must still not act
    real = zarr.Array.__getitem__

    def broken_in_runs(array, key):  # every checkpoint read fails, as a bug or a missing library would
        if array.path.startswith("runs/") and not array.path.endswith("/written"):
            raise error
        return real(array, key)

    monkeypatch.setattr(zarr.Array, "__getitem__", broken_in_runs)
    assert main(["validate", store, "--repair"]) == 1  # a bug, not damage: its traceback shown, nothing repaired
    assert any(r.exc_info and r.exc_info[0] is type(error) for r in caplog.records)
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(BytesCodec, "_decode_sync", broken)  # raised inside a codec, still not damage
    with pytest.raises(type(error)):
        StoreReader(store).read("tiny-lora", "trained", "logits", [1, 2])
    with pytest.raises(type(error)):
        StoreReader(store).log_mel(2)
    monkeypatch.undo()
    reader = StoreReader(store)
    for run, checkpoints in reader.runs().items():
        for checkpoint in checkpoints:
            assert reader.written(run, checkpoint).all() and reader.attrs(run, checkpoint)["complete"]
