"""The house lint rules (ruff, configured in pyproject.toml) hold over the whole tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff comes with the test extra")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(root)], capture_output=True, text=True,
                            cwd=root)
    assert result.returncode == 0, result.stdout[-3000:]
