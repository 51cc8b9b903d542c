"""Stores on object storage, against a real S3 server (moto's, on 127.0.0.1): trace from two processes at once,
commit, validate, read in the app; and the layout that makes concurrent writers safe."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import loralens.app
from loralens.cli import main
from loralens.store import schema
from loralens.store.reader import StoreReader
from loralens.store.storage import STORAGE_OPTIONS_ENV, storage_options
from tests.conftest import assert_same_run


def test_two_processes_trace_into_one_s3_store(s3, tiny_runs, tmp_path, monkeypatch):
    """--prepare-only, two --shard processes at once, --commit-only into s3://: what a local disk would hold."""
    run, store = tiny_runs["lora"], f"s3://loralens/{uuid.uuid4().hex}.zarr"
    base = ["trace", "--run", str(run), "--store", store, "--per-class", "2", "--endpoint-url", s3, "--no-summary"]
    assert main([*base, "--prepare-only"]) == 0
    shards = [subprocess.Popen([sys.executable, "-m", "loralens.cli", *base, "--shard", f"{k}/2"])
              for k in range(2)]
    assert [p.wait(timeout=300) for p in shards] == [0, 0]
    assert main([*base, "--commit-only"]) == 0
    assert main(["validate", store, "--endpoint-url", s3]) == 0
    # The same shards one after the other on a local disk: the same batches, so the same bits.
    local = str(tmp_path / "local.zarr")
    here_base = ["trace", "--run", str(run), "--store", local, "--per-class", "2", "--no-summary"]
    for stage in (["--prepare-only"], ["--shard", "0/2"], ["--shard", "1/2"], ["--commit-only"]):
        assert main([*here_base, *stage]) == 0
    remote, here = StoreReader(store, {"endpoint_url": s3}), StoreReader(local)
    assert list(remote.utterances()["id"]) == list(here.utterances()["id"])
    assert_same_run(remote, here, "tiny-lora")
    # The explorer reads it with the options loralens app passes on.
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LORALENS_STORE", store)
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps({"endpoint_url": s3}))
    page = AppTest.from_file(str(Path(loralens.app.__file__).parent / "main.py"), default_timeout=300).run()
    assert not page.exception, page.exception
    assert "tiny-lora" in " ".join(str(t.value) for t in page.table)


def test_storage_option_flags():
    assert storage_options() is None
    assert storage_options("http://127.0.0.1:9000", True, "lab", ["use_ssl=false", "client_kwargs={\"a\": 1}",
                                                                   "region=eu-west-1"]) == {
        "endpoint_url": "http://127.0.0.1:9000", "anon": True, "profile": "lab", "use_ssl": False,
        "client_kwargs": {"a": 1}, "region": "eu-west-1"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        storage_options(pairs=["no-equals-sign"])


def test_concurrent_writers_never_share_a_chunk(tiny_store):
    """Trace's processes write disjoint rows at once (Zarr has no write locks): every array is one utterance per
    chunk, or slot-major with its chunks keyed by a row of the write that stores them, so writes of disjoint rows
    (however interleaved) never meet in a chunk."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows = rng.permutation(200)
        cut = int(rng.integers(1, 199))
        first, second = sorted(rows[:cut].tolist()), rows[cut:].tolist()  # any order: the writer sorts
        keys = [{slot // schema.SLOT_ROWS for slot in schema.slots_of(part)} for part in (first, second)]
        assert not keys[0] & keys[1] and keys[0] <= set(first) and keys[1] <= set(second)
    reader = StoreReader(tiny_store)
    for run, checkpoints in reader.runs().items():
        for checkpoint in checkpoints:
            group = reader.group(run, checkpoint)
            assert group.attrs["slot_rows"] == schema.SLOT_ROWS
            for name in group.array_keys():
                array = group[name]
                expected = schema.SLOT_ROWS if schema.slotted(name) else 1
                assert array.chunks[0] == expected, f"{run}/{checkpoint}/{name} chunks {array.chunks}"
                assert array.metadata.dimension_names == schema.stored_dims(name), name
