"""Failures that used to pass quietly: a missing data set in CI, a head file that does not fit, the process umask."""

from __future__ import annotations

import os
import shutil
import threading

import pytest
from safetensors.torch import load_file, save_file

from loralens.precompute import files
from loralens.precompute.checkpoints import HEAD_FILE, load_fold_model
from loralens.precompute.config import RunError
from tests import conftest


def test_a_missing_emodb_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "EMODB", tmp_path / "nowhere")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI always has it"):
        conftest.require_emodb()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="EmoDB not found"):
        conftest.require_emodb()


def _copy_run(tiny_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["lora"], run)
    return run, run / "fold_00" / HEAD_FILE


def test_a_head_with_other_keys_is_refused(tiny_runs, tmp_path):
    run, head = _copy_run(tiny_runs, tmp_path)
    load_fold_model(run, 0)  # the intact head loads
    weights = load_file(head)
    save_file({k.replace("classifier.", "classifier_old."): v for k, v in weights.items()}, head)
    with pytest.raises(RunError, match=r"does not fit .*missing \['classifier\.bias'"):
        load_fold_model(run, 0)


def test_a_head_of_another_class_set_is_refused(tiny_runs, tmp_path):
    run, head = _copy_run(tiny_runs, tmp_path)
    weights = load_file(head)
    weights["classifier.weight"], weights["classifier.bias"] = weights["classifier.weight"][:3], \
        weights["classifier.bias"][:3]
    save_file(weights, head)
    with pytest.raises(RunError, match=r"shapes .*classifier\.weight \(3, "):
        load_fold_model(run, 0)


def test_file_modes_never_change_the_process_umask(tmp_path, monkeypatch):
    """Another thread creating a file while the umask is changed would get that mask: it is only ever read."""
    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o022)
    (tmp_path / "f").write_text("x")
    done = threading.Event()

    def other_thread():  # as the app's upload thread would, while another thread writes a checkpoint
        files.open_as_umask(tmp_path)
        done.set()

    threading.Thread(target=other_thread).start()
    assert done.wait(10)
    assert calls == [], f"os.umask was called with {calls}: the whole process's mask changed meanwhile"
    real = int(next(line for line in open("/proc/self/status") if line.startswith("Umask:")).split()[1], 8)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~real
