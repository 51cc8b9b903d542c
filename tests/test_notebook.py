"""The notebook example (docs/notebook.py) runs top to bottom on a store, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.py"


def test_the_notebook_example_runs_on_a_store(tiny_store, tmp_path):
    result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", str(NOTEBOOK), tiny_store,
                             str(tmp_path / "figures")], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "settles at boundary" in result.stdout  # the fixture's runs are on this machine: the model ran
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "contributions.png", "contributions.svg", "lens.png", "lens.svg", "spectra.png", "spectra.svg"]


def test_every_name_of_the_api_resolves():
    import loralens

    assert [name for name in loralens.__all__ if getattr(loralens, name, None) is None] == []
    with pytest.raises(AttributeError, match="open_store"):
        loralens.nothing  # noqa: B018
