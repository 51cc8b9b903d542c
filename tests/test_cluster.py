"""Beyond one machine: ``loralens grid`` and ``loralens trace --ray`` on a real local Ray (2 CPUs), against the same
work done one job after the other in this process; a Ray worker killed mid-grid; the grid spec's checks. And folds
at once in processes of this machine (``ProcessExecutor``: ``loralens train --jobs``, ``loralens grid --jobs``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from loralens.cli import main
from loralens.precompute.executors import LocalExecutor, ProcessExecutor, RayExecutor
from loralens.precompute.grid import GridSpec, load_spec, run_grid
from loralens.store.reader import StoreReader
from tests.conftest import assert_same_run, torch_threads

EPOCHS = 12  # a fold lasts long enough (~1 s) for a worker to be killed in its middle


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, tiny_model_dir, tiny_runs) -> Path:
    """A grid of the tiny random Whisper: ranks 2 and 4, 2 folds, on the tone data set of ``tiny_runs``."""
    from loralens.precompute.config import read_config

    path = tmp_path_factory.mktemp("grid") / "grid.toml"
    path.write_text(f'models = ["{tiny_model_dir}"]\ndata = "{read_config(tiny_runs["lora"]).data}"\n'
                    f'ranks = [2, 4]\nfolds = "2"\n\n[train]\nepochs = {EPOCHS}\nbatch_size = 4\n')
    return path


@pytest.fixture(scope="module")
def sequential(spec_file, tmp_path_factory) -> Path:
    """The grid trained one fold after the other in this process."""
    out = tmp_path_factory.mktemp("sequential")
    with torch_threads(1):  # as Ray's 1-CPU tasks, and 2 worker processes on 2 cores, run torch
        result = run_grid(load_spec(spec_file), out, LocalExecutor(), spec_file)
    assert result.complete and len(result.trained) == 4
    return out


def fold_state(out: Path) -> dict[str, object]:
    """Every fold's predictions, weights and metrics (less its timings), and how often it was completed."""
    state = {}
    for run in sorted(p for p in out.iterdir() if p.is_dir()):
        state.update({f"{run.name}/{k}": v for k, v in run_state(run).items()})
    return state


def run_state(run: Path) -> dict[str, object]:
    """``fold_state`` of one run directory, by fold name."""
    state = {}
    log = (run / "train.log").read_text()
    for fold in sorted(run.glob("fold_[0-9][0-9]")):
        metrics = json.loads((fold / "metrics.json").read_text())
        metrics.pop("seconds")
        metrics.pop("setup_seconds")
        files = {str(p.relative_to(fold)): p.read_bytes() for p in sorted(fold.rglob("*"))
                 if p.is_file() and p.name != "metrics.json"}
        state[fold.name] = (metrics, files, log.count(f"{fold.name} (test "))
    return state


def test_grid_on_ray_trains_what_the_local_loop_trains_and_resumes(ray_local, spec_file, sequential, tmp_path):
    out = tmp_path / "ray"
    result = run_grid(load_spec(spec_file), out, RayExecutor(), spec_file)
    assert result.complete and len(result.trained) == 4, result.failed
    assert len({r["pid"] for r in result.trained}) == 2  # both workers took folds
    expected = fold_state(sequential)
    assert sorted(expected) == [f"tiny-whisper0-lora-trim-r{r}-seed0/fold_0{k}" for r in (2, 4) for k in (0, 1)]
    # Bit for bit, each fold completed once. (1-core tasks run torch on one thread, this process on all cores: the
    # tiny model's products are too small to be split over threads; tiny.en's are, see bench/grid.sh.)
    assert fold_state(out) == expected
    assert json.loads((out / "grid.json").read_text())["ranks"] == [2, 4]
    # Run again: nothing is submitted, nothing is touched.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("fold_*/*")}
    again = run_grid(load_spec(spec_file), out, RayExecutor(), spec_file)
    assert again.trained == [] and len(again.skipped) == 4 and again.complete
    assert {p: p.stat().st_mtime_ns for p in out.rglob("fold_*/*")} == stamps


def test_a_ray_worker_killed_mid_grid_and_the_command_rerun(ray_local, spec_file, sequential, tmp_path):
    """kill -9 of the worker training a fold: its job fails (no retries), the others finish; the same command
    again trains only what is missing, resuming the killed fold after its last saved epoch."""
    out, killed = tmp_path / "killed", []

    def kill_a_training_worker():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if any(out.glob("*/fold_*.partial/progress.safetensors")):  # a fold has saved an epoch
                for p in psutil.Process().children(recursive=True):  # this session's Ray: no other's workers
                    try:
                        if p.cmdline()[:1] == ["ray::train_fold"]:
                            p.kill()  # SIGKILL
                            killed.append(p.pid)
                            break
                    except psutil.NoSuchProcess:
                        continue
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_training_worker)
    killer.start()
    first = run_grid(load_spec(spec_file), out, RayExecutor(max_retries=0), spec_file)
    killer.join()
    assert killed and first.failed and not first.complete, first
    assert "WorkerCrashedError" in " ".join(first.failed)
    complete = {f"{p.parent.name}/{p.name}" for p in out.glob("*/fold_[0-9][0-9]")}
    assert len(complete) + len(first.failed) == 4
    second = run_grid(load_spec(spec_file), out, RayExecutor(max_retries=0), spec_file)
    assert second.complete and sorted(second.skipped) == sorted(complete)
    assert {r["fold"] for r in second.trained} == {f.split(":")[0] for f in first.failed}  # none twice, none left
    assert not list(out.glob("*/*.partial"))
    assert fold_state(out) == fold_state(sequential)  # the resumed fold ends as if never interrupted


def test_grid_in_processes_trains_what_the_local_loop_trains(spec_file, sequential, tmp_path, monkeypatch):
    out = tmp_path / "processes"
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # 2 workers of one thread each, as the reference trained
    result = run_grid(load_spec(spec_file), out, ProcessExecutor(2), spec_file)
    assert result.complete and len(result.trained) == 4, result.failed
    assert len({r["pid"] for r in result.trained}) == 2  # both processes took folds
    assert fold_state(out) == fold_state(sequential)  # bit for bit, each fold once (one thread each, as on Ray)
    metrics = json.loads((out / "tiny-whisper0-lora-trim-r2-seed0" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["n_done"] == 2


def test_train_jobs_trains_what_train_trains(tiny_runs, tmp_path, caplog):
    """``loralens train --jobs 2``: the folds of one run in two processes, the same files as one after the other."""
    from loralens.precompute.config import read_config

    config = read_config(tiny_runs["lora"])
    out = tmp_path / "tiny-lora"
    argv = ["train", "--model", config.model, "--data", config.data, "--method", "lora", "--epochs", "1",
            "--batch-size", "4", "--rank", "4", "--alpha", "8", "--out", str(out), "--jobs", "2"]
    caplog.set_level(logging.INFO, logger="loralens.precompute.grid")
    assert main(argv) == 0
    pids = {m.split("pid ")[1] for m in caplog.messages if ", pid " in m}
    assert len(pids) == 2, pids  # both processes took folds
    # Where the folds' start-up went: each job prepared its trainer (a worker's later jobs reuse its audio).
    setups = [json.loads(f.read_text())["setup_seconds"] for f in sorted(out.glob("fold_*/metrics.json"))]
    assert all(s["prepare"] > 0 and s["model"] > 0 and s["first_step"] > 0 for s in setups)
    assert any(f"start-up of a fold, median over the {len(setups)} trained: imports" in m for m in caplog.messages)
    sequential = tmp_path / "sequential"
    with torch_threads(max(1, (os.cpu_count() or 1) // 2)):  # as each of the 2 worker processes runs torch
        assert main([*argv[:-4], "--out", str(sequential)]) == 0
    expected = run_state(sequential)
    assert len(expected) >= 2 and run_state(out) == expected
    assert json.loads((out / "metrics.json").read_text()) == json.loads((sequential / "metrics.json").read_text())
    assert main([*argv[:-1], "0"]) == 2
    assert "--jobs 0: expected a positive number" in caplog.messages[-1]


def test_grid_takes_jobs_or_ray_not_both(spec_file, tmp_path, caplog):
    assert main(["grid", str(spec_file), "--out", str(tmp_path / "g"), "--ray", "--jobs", "2"]) == 2
    assert "--jobs runs folds in processes of this machine, --ray on a Ray cluster; choose one" in caplog.messages[-1]
    assert not (tmp_path / "g").exists()  # refused before any directory was made


def _fail_on_odd(job: int) -> int:
    """A unit of work for the executor tests: job 3 raises, job 5 kills its worker process, the others return."""
    if job == 3:
        raise RuntimeError("job 3 is broken")
    if job == 5:
        os._exit(9)
    return job * job


def test_process_executor_reports_each_failed_job_and_finishes_the_others():
    outcomes = {o.job: o for o in ProcessExecutor(2).map(_fail_on_odd, [0, 1, 2, 3], desc="test")}
    assert {j: o.result for j, o in outcomes.items() if o.ok} == {0: 0, 1: 1, 2: 4}
    assert "job 3 is broken" in str(outcomes[3].error)
    # A worker that dies breaks the pool: its job and those queued behind fail (rerunning resumes them), none hangs.
    outcomes = list(ProcessExecutor(1).map(_fail_on_odd, [5, 6], desc="test"))
    assert [o.ok for o in outcomes] == [False, False]
    with pytest.raises(ValueError, match="workers=0"):
        ProcessExecutor(0)


def test_trace_on_ray_into_s3_equals_one_process(ray_local, s3, tiny_runs, tmp_path, monkeypatch):
    """Two Ray workers trace disjoint batches into an s3:// store: each row written once (the workers' counts add
    up to the rows), and the store holds the bits a one-process local trace with as many threads holds."""
    from loralens.precompute import trace

    run = tiny_runs["lora"]
    counts = []
    real = trace.Tracer.capture
    monkeypatch.setattr(trace.Tracer, "capture", lambda self, rows, shard=(0, 1): counts.append(
        real(self, rows, shard)) or counts[-1])  # counts the local trace's rows (Ray's workers do not see this)
    local = str(tmp_path / "local.zarr")
    common = ["--run", str(run), "--per-class", "2", "--batch-size", "2", "--no-summary"]
    with torch_threads(1):  # as Ray's 1-CPU tasks run torch
        assert main(["trace", "--store", local, *common]) == 0
    assert counts == [16]  # 8 utterances x (trained, random twin)
    store = f"s3://loralens/{uuid.uuid4().hex}.zarr"
    options = ["--endpoint-url", s3, "--storage-option", "key=testing", "--storage-option", "secret=testing"]
    written = []
    real_map = RayExecutor.map
    monkeypatch.setattr(RayExecutor, "map", lambda self, fn, jobs, desc: (
        written.append(o.result) or o for o in real_map(self, fn, jobs, desc)))
    assert main(["trace", "--store", store, *common, *options, "--ray", "--shards", "2"]) == 0
    assert sum(written) == 16 and min(written) > 0  # both workers wrote, no row twice
    assert main(["validate", store, *options]) == 0
    remote, here = StoreReader(store, {"endpoint_url": s3, "key": "testing", "secret": "testing"}), StoreReader(local)
    assert_same_run(remote, here, "tiny-lora")
    # Run again: every row is written, so no shard writes one.
    written.clear()
    assert main(["trace", "--store", store, *common, *options, "--ray", "--shards", "2"]) == 0
    assert written == [0, 0]


def test_shards_take_every_nth_batch_of_one_process(tiny_runs, tmp_path):
    from loralens.precompute.config import read_config
    from loralens.precompute.trace import Selection, Tracer

    run = tiny_runs["lora"]
    tracer = Tracer(run, read_config(run).data, str(tmp_path / "s.zarr"), selection=Selection(per_class=3),
                    batch_size=2, writers=0)
    rows = tracer.prepare()
    batches = tracer.batches(rows)
    assert sorted(r for b in batches for r in b) == sorted(rows) and max(map(len, batches)) == 2
    fold_of = {r: f for r, (_, f) in zip(rows, tracer.items, strict=True)}
    assert all(len({fold_of[r] for r in b}) == 1 for b in batches)  # a batch never mixes fold models


def test_grid_spec_names_the_file_and_the_fix(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.toml"
    bad.write_text('models = ["bundled:tiny.en"]\ndata = "emodb:x"\nrank = [8]\n')
    with pytest.raises(ValueError, match=r"bad.toml: unknown key\(s\) \['rank'\]; expected .*ranks"):
        load_spec(bad)
    bad.write_text('models = ["bundled:tiny.en"]\n')
    with pytest.raises(ValueError, match=r"bad.toml: missing \['data'\]"):
        load_spec(bad)
    bad.write_text('models = ["bundled:tiny.en"]\ndata = "emodb:x"\nranks = [0]\n')
    with pytest.raises(ValueError, match=r"bad.toml: ranks=\[0\]; expected positive integers"):
        load_spec(bad)
    bad.write_text('models = ["bundled:tiny.en"]\ndata = "emodb:x"\n[train]\nseed = 3\n')
    with pytest.raises(ValueError, match="sets itself"):
        load_spec(bad)
    bad.write_text('models = ["bundled:tiny.en"]\ndata = "emodb:x"\n[train]\nepoch = 3\n')
    with pytest.raises(ValueError, match=r"unknown settings \['epoch'\]"):
        load_spec(bad)
    bad.write_text('models = ["bundled:tiny.en"]\ndata = "emodb:x"\n[train]\nwindow_size = 3\nepochs = 0\n')
    with pytest.raises(ValueError, match="window_size"):
        load_spec(bad)
    with pytest.raises(ValueError, match="epochs=0"):
        GridSpec(models=["bundled:tiny.en"], data="emodb:x", train={"epochs": 0})
    with pytest.raises(ValueError, match="share a run directory"):
        GridSpec(models=["bundled:tiny.en", "/elsewhere/tiny.en"], data="emodb:x")


def test_grid_runs_frozen_once_per_seed_and_saves_a_spec_that_loads_again(tmp_path):
    spec = GridSpec(models=["bundled:tiny.en", "random:base?layers=2"], data="emodb:/data/emodb",
                    methods=["lora", "frozen"],
                    ranks=[8, 32], seeds=[0, 1], train={"epochs": 3})
    names = [run.name for run in spec.runs()]
    assert len(names) == 2 * (2 * 2 + 2)  # per model: 2 ranks x 2 seeds of LoRA, 2 seeds of frozen
    assert "tiny.en-lora-trim-r32-seed1" in names and "base-layers-2-frozen-trim-seed0" in names
    assert {run.config.alpha for run in spec.runs() if run.config.method == "lora"} == {16.0, 64.0}
    saved = tmp_path / "grid.json"
    saved.write_text(json.dumps(spec.to_json()))
    assert load_spec(saved).runs() == spec.runs()


def test_grid_method_lora_freeze_a_is_lora_with_every_a_frozen(tmp_path):
    spec = GridSpec(models=["bundled:tiny.en"], data="emodb:/data/emodb", methods=["lora", "lora-freeze-a", "frozen"],
                    ranks=[8, 32])
    runs = {run.name: run.config for run in spec.runs()}
    assert list(runs) == ["tiny.en-lora-trim-r8-seed0", "tiny.en-lora-trim-r32-seed0",
                          "tiny.en-lora-freeze-a-trim-r8-seed0", "tiny.en-lora-freeze-a-trim-r32-seed0",
                          "tiny.en-frozen-trim-seed0"]
    assert [(c.method, c.freeze_a, c.rank) for c in runs.values()] == [
        ("lora", False, 8), ("lora", False, 32), ("lora", True, 8), ("lora", True, 32), ("frozen", False, 8)]
    with pytest.raises(ValueError, match="methods=\\['lora-frozen-a'\\]; expected any of 'lora', 'lora-freeze-a'"):
        GridSpec(models=["bundled:tiny.en"], data="emodb:x", methods=["lora-frozen-a"])
    with pytest.raises(ValueError, match=r"train sets \['freeze_a'\].*lora-freeze-a"):
        GridSpec(models=["bundled:tiny.en"], data="emodb:x", train={"freeze_a": True})
    saved = tmp_path / "grid.json"
    saved.write_text(json.dumps(spec.to_json()))
    assert load_spec(saved).runs() == spec.runs()


def test_a_run_of_another_configuration_is_refused_before_any_job(spec_file, sequential, tmp_path):
    text = spec_file.read_text().replace(f"epochs = {EPOCHS}", "epochs = 1")
    other = tmp_path / "other.toml"
    other.write_text(text)
    with pytest.raises(Exception, match=r"other.toml.*epochs: 12 -> 1.*new --out"):
        run_grid(load_spec(other), sequential, LocalExecutor(), other)


def test_only_folds_plans_those_folds_of_every_run(spec_file, tmp_path):
    from loralens.precompute.config import RunError
    from loralens.precompute.grid import plan

    jobs, done = plan(load_spec(spec_file), tmp_path / "g", spec_file, only=[1])
    assert [str(j) for j in jobs] == [f"tiny-whisper0-lora-trim-r{r}-seed0/fold_01" for r in (2, 4)]
    assert done == [] and all(j.run.is_absolute() for j in jobs)
    with pytest.raises(RunError, match=r"--only-folds \[5\]: .* has folds 0..1"):
        plan(load_spec(spec_file), tmp_path / "g", spec_file, only=[1, 5])


def test_the_package_works_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import loralens.cli, loralens.precompute.grid, loralens.precompute.trace\n"
            "from loralens.precompute.executors import RayExecutor\n"
            "from loralens.store.schema import UserError\n"
            "try:\n    RayExecutor().capacity()\nexcept UserError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install -e \".[cluster]\"" in out
