"""The store: round trips on a local directory and memory://, versions, and partial rows."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import zarr

from loralens.store import schema
from loralens.store.probe import probe
from loralens.store.reader import StoreError, StoreReader
from loralens.store.validate import validate
from loralens.store.writer import StoreWriter, UtteranceRow, upgrade

ATTRS = {"method": "lora", "model": "m", "data": "d", "window": "trim", "emotions": ["anger", "sadness"],
         "rank": 3, "alpha": 6, "targets": ["v_proj"], "modules": ["layer_0.v_proj", "layer_1.v_proj"],
         "n_layers": 2, "d_model": 8, "train_config": {}, "metrics": {}, "capture": {"per_frame_b": True}}
SIZES = {"boundary": 3, "layer": 2, "d_model": 8, "class": 4, "module": 2, "rank": 3, "d_out": 8}


def _rows(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [UtteranceRow(f"emodb/u{i}", "emodb", f"/x/u{i}.wav", f"s{i % 2}", ["anger", "sadness"][i % 2],
                         (0.1 * rng.standard_normal(1600 * (i + 1))).astype(np.float32), 5 * (i + 1),
                         rng.standard_normal((80, 10 * (i + 1))).astype(np.float16))
            for i in range(n)]


def _arrays(n_frames: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in schema.checkpoint_arrays(lora=True, per_frame_b=True).items():
        if name in ("written", "sampled"):  # marks: the writer sets them
            continue
        shape = tuple(n_frames if d == "frame" else SIZES[d] for d in spec.dims[1:])
        value = rng.standard_normal(shape) if spec.dtype.startswith("float") else rng.integers(0, 4, shape)
        out[name] = np.asarray(value).astype(spec.dtype)
    return out


@pytest.fixture(params=["local", "memory"])
def store_path(request, tmp_path):
    return str(tmp_path / "store.zarr") if request.param == "local" else f"memory://{uuid.uuid4().hex}"


def _fill(path, n=3):
    writer = StoreWriter(path)
    rows = writer.add_utterances(_rows(n))
    writer.create_checkpoint("r", "trained", ATTRS, SIZES,
                             lora=True, per_frame_b=True)
    written = {}
    for row in rows:
        written[row] = _arrays(5 * (row + 1), seed=row)
        writer.write("r", "trained", row, written[row])
    writer.commit("r", rows)
    return writer, written


def test_round_trip(store_path):
    _, written = _fill(store_path)
    reader = StoreReader(store_path)
    assert reader.runs() == {"r": ["trained"]}
    assert list(reader.utterances()["id"]) == ["emodb/u0", "emodb/u1", "emodb/u2"]
    assert reader.audio(1).shape == (3200,)
    assert np.array_equal(reader.log_mel(1), _rows()[1].log_mel.astype(np.float32))
    assert np.allclose(reader.audio(1), _rows()[1].audio, atol=1 / 32767)
    for row, arrays in written.items():
        for name, value in arrays.items():
            got = reader.read("r", "trained", name, row)
            real = got[tuple(slice(0, s) for s in np.shape(value))]
            assert np.array_equal(real, value), name
    # one layer across all utterances: from the layer-major copy that commit wrote, equal to the rows
    assert reader._consolidated("r", "trained", "residual_pooled") is not None
    by_layer = reader.read("r", "trained", "residual_pooled", boundary=2)
    assert np.array_equal(by_layer, np.stack([written[r]["residual_pooled"][2] for r in range(3)]))
    assert reader.read("r", "trained", "residual_pooled", [0, 2], boundary=1).shape == (2, 8)
    assert reader.read("r", "trained", "lora_b_activation", 2).shape == (2, 15, 8)


def test_a_batch_of_rows_lands_row_by_row(store_path):
    """write_rows: rows out of order and apart, one without the sampled per-frame arrays, each where it belongs."""
    writer = StoreWriter(store_path)
    rows = writer.add_utterances(_rows(6))
    writer.create_checkpoint("r", "trained", ATTRS, SIZES, lora=True, per_frame_b=True)
    batch = [rows[5], rows[1], rows[2]]
    arrays = [_arrays(5 * (r + 1) if r < 3 else 4, seed=r) for r in batch]
    unsampled = {k: v for k, v in arrays[1].items() if not schema.CHECKPOINT_ARRAYS[k].sampled}
    writer.write_rows("r", "trained", batch, [arrays[0], unsampled, arrays[2]])
    reader = StoreReader(store_path)
    assert reader.written("r", "trained").tolist() == [False, True, True, False, False, True]
    assert reader.sampled("r", "trained").tolist() == [False, False, True, False, False, True]
    for row, given in zip(batch, [arrays[0], unsampled, arrays[2]]):
        for name, value in given.items():
            got = reader.read("r", "trained", name, row)
            assert np.array_equal(got[tuple(slice(0, s) for s in np.shape(value))], value), (row, name)
    with pytest.raises(StoreError):
        reader.read("r", "trained", "lora_b_activation", rows[1])  # not sampled: no frames to read
    with pytest.raises(ValueError, match="repeat"):
        writer.write_rows("r", "trained", [rows[3], rows[3]], [arrays[0], arrays[0]])


def test_unwritten_row_is_invisible(store_path):
    writer = StoreWriter(store_path)
    rows = writer.add_utterances(_rows(2))
    writer.create_checkpoint("r", "trained", ATTRS, SIZES, lora=True, per_frame_b=True)
    arrays = _arrays(5, 0)
    group = writer.root["runs/r/trained"]
    group["lora_b_activation"][0] = np.ones(group["lora_b_activation"].shape[1:])  # killed half-way through row 0
    writer.write("r", "trained", rows[1], _arrays(10, 1))
    reader = StoreReader(store_path)
    assert reader.written("r", "trained").tolist() == [False, True]
    assert reader.read("r", "trained", "logits").shape == (1, 4)
    with pytest.raises(StoreError, match="not written"):
        reader.read("r", "trained", "logits", 0)
    del arrays


def test_growing_the_table_resizes_runs(store_path):
    writer, _ = _fill(store_path, n=2)
    more = _rows(4)
    assert writer.add_utterances(more) == [0, 1, 2, 3]
    reader = StoreReader(store_path)
    assert reader.n_utterances == 4 and reader.written("r", "trained").tolist() == [True, True, False, False]
    assert reader.group("r")["lora_b_activation"].shape[2] == 20 and not reader.attrs("r")["complete"]
    assert reader._consolidated("r", "trained", "logits") is None  # stale copies are not used
    assert reader.read("r", "trained", "logits").shape == (2, 4)


def test_rows_cut_off_mid_write_are_invisible_then_written_again(store_path, monkeypatch):
    writer, _ = _fill(store_path, n=2)
    real = zarr.Array.__setitem__

    def killed_at_audio(array, key, value):  # the run dies after the scalar columns, before the audio
        if array.path.endswith("audio"):
            raise KeyboardInterrupt
        real(array, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", killed_at_audio)
    with pytest.raises(KeyboardInterrupt):
        writer.add_utterances(_rows(4))
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    reader = StoreReader(store_path)
    assert list(reader.utterances()["id"]) == ["emodb/u0", "emodb/u1"]  # the cut-off rows are not shown
    assert reader.root["utterances/speaker"].shape[0] == 4
    assert StoreWriter(store_path).add_utterances(_rows(4)) == [0, 1, 2, 3]  # the same command again
    reader = StoreReader(store_path)
    assert list(reader.utterances()["id"]) == [f"emodb/u{i}" for i in range(4)]
    assert np.allclose(reader.audio(3), _rows(4)[3].audio, atol=1 / 32767)
    assert reader.written("r", "trained").tolist() == [True, True, False, False]
    assert not [p for p in validate(store_path).problems if "utterances" in p]


def test_checkpoint_cut_off_while_created_is_made_again(store_path):
    writer = StoreWriter(store_path)
    writer.add_utterances(_rows(2))
    writer.root.require_group("runs/r/trained").create_array("logits", shape=(2, 4), dtype="float32")
    # a run killed before it wrote the group's attributes: the same command creates the checkpoint again
    writer.create_checkpoint("r", "trained", ATTRS, SIZES, lora=True, per_frame_b=True)
    assert StoreReader(store_path).attrs("r")["method"] == "lora"
    writer.write("r", "trained", 1, _arrays(10, 1))
    with pytest.raises(StoreError, match="method='lora', not 'frozen'"):  # a finished one is still checked
        writer.create_checkpoint("r", "trained", {**ATTRS, "method": "frozen"}, SIZES, lora=True, per_frame_b=True)


def test_not_a_store_and_versions(tmp_path):
    """StoreReader and the Zarr-free probe (run before the app's server starts) refuse the same stores alike."""

    def refused(path: str, message: str) -> None:
        for check in (StoreReader, probe):
            with pytest.raises(StoreError, match=message):
                check(path)

    refused(str(tmp_path / "missing"), "no store there")
    zarr.open_group(str(tmp_path / "plain"), mode="w")
    refused(str(tmp_path / "plain"), "not a loralens store")
    zarr.open_array(str(tmp_path / "array"), mode="w", shape=(2,), dtype="f4")
    refused(str(tmp_path / "array"), "no store there")
    path = str(tmp_path / "s")
    StoreWriter(path).root.attrs["schema_version"] = schema.SCHEMA_VERSION + 1
    refused(path, "upgrade loralens")
    zarr.open_group(path, mode="a").attrs["schema_version"] = 0
    refused(path, "re-trace")
    zarr.open_group(path, mode="a").attrs["schema_version"] = schema.SCHEMA_VERSION
    assert probe(path) and StoreReader(path).n_utterances == 0
    assert probe("s3://bucket/store.zarr") is False  # URLs are left to StoreReader
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        probe(str(tmp_path / "broken"))


def test_a_store_of_schema_4_is_read_and_validated_but_not_written(tmp_path):
    """Version 5 stopped writing the pooled layer input, attention and MLP outputs (no figure read them): a new
    store has none of them, and a version-4 store, which holds them, still reads and validates; only writing to it
    is refused, in one line that says what to do."""
    path = str(tmp_path / "s")
    _, written = _fill(path)
    group = zarr.open_group(path, mode="a")
    assert not set(schema.RETIRED[4]) & set(group["runs/r/trained"].array_keys())
    group.attrs["schema_version"] = 4
    for name in schema.RETIRED[4]:  # as version 4's writer made them
        group["runs/r/trained"].create_array(name, shape=(3, 2, 8), dtype="float32", chunks=(1, 2, 8))
    reader = StoreReader(path)
    np.testing.assert_array_equal(reader.read("r", "trained", "residual_pooled", [1]),
                                  written[1]["residual_pooled"][None])
    report = validate(path)
    assert report.ok, report.problems
    with pytest.raises(StoreError, match="writes no more.*trace into a new store"):
        StoreWriter(path)
    with pytest.raises(StoreError, match="writes no more.*trace into a new store"):
        upgrade(path)  # its layout is not this version's: only a new trace converts it
    group["runs/r/trained"].create_array("unknown", shape=(3,), dtype="float32", chunks=(1,))
    assert [p for p in validate(path).problems if "not in schema" in p] == [
        "runs/r/trained/unknown: not in schema version 4"]


def test_a_store_of_schema_6_with_its_per_frame_residual_is_read_and_validated(tmp_path):
    """Version 7 stopped writing the sampled rows' per-frame residual (no figure read it): a version-6 store, which
    holds it, still reads and validates, and writing to it is refused in one line, which names the command that
    upgrades it."""
    from loralens.cli import main

    path = str(tmp_path / "s")
    _, written = _fill(path)
    group = zarr.open_group(path, mode="a")
    assert "residual" not in group["runs/r/trained"].array_keys()
    group.attrs["schema_version"] = 6
    group["runs/r/trained"].create_array("residual", shape=(3, 3, 15, 8), dtype="float16", chunks=(1, 1, 15, 8),
                                         dimension_names=("utterance", "boundary", "frame", "d_model"))
    np.testing.assert_array_equal(StoreReader(path).read("r", "trained", "lora_a_pooled", [2]),
                                  written[2]["lora_a_pooled"][None])
    report = validate(path)
    assert report.ok, report.problems
    with pytest.raises(StoreError, match=f"writes no more.*loralens validate {path} --upgrade"):
        StoreWriter(path)
    # the one command that converts it: in place, dropping what no figure reads; then it takes writes again
    assert main(["validate", path, "--upgrade"]) == 0
    assert zarr.open_group(path, mode="r").attrs["schema_version"] == schema.SCHEMA_VERSION
    assert "residual" not in zarr.open_group(path, mode="r")["runs/r/trained"].array_keys()
    np.testing.assert_array_equal(StoreReader(path).read("r", "trained", "lora_a_pooled", [2]),
                                  written[2]["lora_a_pooled"][None])
    StoreWriter(path)  # takes writes again
    assert upgrade(path) == []  # a current store: nothing to do


def test_validate_finds_nan_and_incomplete(tmp_path):
    path = str(tmp_path / "s")
    writer, _ = _fill(path)
    report = validate(path)
    assert report.ok, report.problems
    bad = _arrays(5, 0)
    bad["residual_pooled"][0, 0] = np.nan
    writer.write("r", "trained", 0, bad)
    writer.root["runs/r/trained"].attrs["complete"] = False
    report = validate(path)
    assert any("NaN" in p and "residual_pooled" in p for p in report.problems)
    assert any("not committed complete" in p for p in report.problems)


def test_lost_ids_of_traced_rows_are_not_dropped(tmp_path):
    """A deleted id chunk reads as empty ids, like rows an interrupted add cut off; but checkpoints have traced
    these rows, so growing the table must refuse instead of truncating every column (and losing them)."""
    import shutil

    path = str(tmp_path / "store.zarr")
    _fill(path)
    shutil.rmtree(tmp_path / "store.zarr" / "utterances" / "id" / "c")
    with pytest.raises(StoreError, match="utterances/id reads empty from row 0, yet r/trained holds traces"):
        StoreWriter(path).add_utterances(_rows(4)[3:])
    root = zarr.open_group(path, mode="r")
    assert root["utterances/audio"].shape[0] == 3 and root["utterances/emotion"].shape[0] == 3
    assert (root["runs/r/trained/written"][:] > 0).tolist() == [True, True, True]


def test_interventions_grow_keep_what_is_done_and_redo_a_changed_partner(store_path):
    writer, _ = _fill(store_path)
    rows = [0, 1, 2]
    assert writer.create_interventions("r", ["none", "erase@0", "patch@0"], rows, 3, 4, basis=3, partner="frozen",
                                       partner_key="a1") == ["none", "erase@0", "patch@0"]
    values = {i: np.full((3, 4), i + 1, np.float32) for i in range(3)}
    for i in range(3):
        writer.write_intervention("r", i, values[i], np.zeros((3, 3, 4), np.float32))
    # More conditions: appended, the finished ones kept.
    held = writer.create_interventions("r", ["none", "pitch@2", "erase@0"], rows, 3, 4, basis=3, partner="frozen",
                                       partner_key="a1")
    assert held == ["none", "erase@0", "patch@0", "pitch@2"]
    got = StoreReader(store_path).interventions("r")
    assert got.done.tolist() == [True, True, True, False] and got.partner == "frozen"
    assert all(np.array_equal(got.probabilities[i], values[i]) for i in range(3))
    # Another partner, even of the same name: what was patched from the old one is to be done again, the rest stays.
    writer.create_interventions("r", ["none", "patch@0"], rows, 3, 4, basis=3, partner="frozen", partner_key="b2")
    got = StoreReader(store_path).interventions("r")
    assert got.done.tolist() == [True, True, False, False] and got.partner == "frozen"
    # Arrays grown by a rerun that died before naming its conditions: read as the named ones.
    group = StoreReader(store_path, mode="a").root[f"runs/r/{schema.INTERVENTIONS_GROUP}"]
    group["done"].resize((6,))
    group["probabilities"].resize((6, 3, 4))
    group["lens_logits"].resize((6, 3, 3, 4))
    got = StoreReader(store_path).interventions("r")
    assert len(got.done) == len(got.conditions) == 4 and got.probabilities.shape == (4, 3, 4)
    # Another basis (the trace grew): made again, empty.
    assert writer.create_interventions("r", ["none"], rows, 3, 4, basis=4) == ["none"]
    got = StoreReader(store_path).interventions("r")
    assert got.conditions == ["none"] and not got.done.any() and got.partner is None


def _chunk_files(path) -> dict[str, bytes]:
    from pathlib import Path

    root = Path(path) / "runs" / "r" / "trained"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("c/**/*") if p.is_file()}


def test_writes_of_disjoint_rows_never_share_a_chunk(tmp_path):
    """Writers of disjoint rows run at once without locks (Zarr has none): two writes of interleaved rows, which a
    chunk of consecutive table rows would mix, must leave each other's chunk files alone, and every row reads back
    whole."""
    path = str(tmp_path / "s")
    writer = StoreWriter(path)
    rows = writer.add_utterances(_rows(12))
    writer.create_checkpoint("r", "trained", ATTRS, SIZES, lora=True, per_frame_b=True)
    arrays = {row: _arrays(5 * (row % 3 + 1), seed=row) for row in rows}
    first, second = rows[0::2], rows[1::2]
    writer.write_rows("r", "trained", first, [arrays[r] for r in first])
    after_first = _chunk_files(path)
    writer.write_rows("r", "trained", second, [arrays[r] for r in second])
    after_second = _chunk_files(path)
    assert {f: b for f, b in after_second.items() if f in after_first} == after_first  # none written again
    assert len(after_second) > len(after_first)
    reader = StoreReader(path)
    for row in rows:
        for name, value in arrays[row].items():
            got = reader.read("r", "trained", name, row)
            np.testing.assert_array_equal(got[tuple(slice(0, n) for n in value.shape)], value, err_msg=name)
    np.testing.assert_array_equal(reader.read("r", "trained", "lens_logits", rows[::-1]),
                                  np.stack([arrays[r]["lens_logits"] for r in rows[::-1]]))


def test_a_row_written_again_clears_the_rows_its_chunk_held(tmp_path):
    """Rows 0-7 share one slot chunk; writing rows 0 and 9 again rewrites that chunk whole. Rows 1-7 must then read
    as unwritten (captured again by trace), never as row 9's values."""
    path = str(tmp_path / "s")
    writer = StoreWriter(path)
    rows = writer.add_utterances(_rows(10))
    writer.create_checkpoint("r", "trained", ATTRS, SIZES, lora=True, per_frame_b=True)
    arrays = {row: _arrays(5, seed=row) for row in rows}
    writer.write_rows("r", "trained", rows[:8], [arrays[r] for r in rows[:8]])
    writer.write_rows("r", "trained", [0, 9], [arrays[0], arrays[9]])
    reader = StoreReader(path)
    assert reader.written("r", "trained").tolist() == [True] + [False] * 7 + [False, True]
    for row in (0, 9):
        np.testing.assert_array_equal(reader.read("r", "trained", "logits", row), arrays[row]["logits"])


def test_a_store_of_schema_5_with_every_array_per_utterance_is_read_and_validated(tmp_path):
    """Version 5 kept every array one utterance per chunk, with marks of 1: the readers and validate still read
    such a store (rewritten here from a current one, as version 5's writer laid it out)."""
    path = str(tmp_path / "s")
    _, written = _fill(path)
    reader = StoreReader(path)
    group = zarr.open_group(path, mode="a")
    checkpoint = group["runs/r/trained"]
    n = len(written)
    for name in list(checkpoint.array_keys()):
        if not schema.slotted(name):
            continue
        values = reader.read("r", "trained", name, list(range(n)))
        old = checkpoint[name]
        del checkpoint[name]
        spec = schema.CHECKPOINT_ARRAYS[name]
        shape = (n, *old.shape[1:])
        checkpoint.create_array(name, shape=shape, chunks=schema.chunks(spec, shape), dtype=spec.dtype,
                                dimension_names=spec.dims, fill_value=0)[...] = values
    checkpoint["written"][:] = 1
    del checkpoint.attrs["slot_rows"]
    checkpoint.attrs["consolidated"] = -1  # readers use the originals
    group.attrs["schema_version"] = 5
    reader = StoreReader(path)
    for row, arrays in written.items():
        np.testing.assert_array_equal(reader.read("r", "trained", "residual_pooled", row), arrays["residual_pooled"])
        np.testing.assert_array_equal(reader.read("r", "trained", "lens_logits", [row]), arrays["lens_logits"][None])
    assert reader.sampled("r", "trained").all()
    report = validate(path)
    assert [p for p in report.problems if "not committed" not in p] == []
