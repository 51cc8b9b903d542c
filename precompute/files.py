"""File modes of what precompute writes.

safetensors (0.8) writes every file through a temporary file created 0600, and ``tempfile`` directories are
0700, so checkpoints and the encoder cache would be readable by their writer alone: another user of a shared
runs directory, or an app serving as a different user, could not load them. ``open_as_umask`` gives them the
modes a plain ``open``/``mkdir`` would have.
"""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_as_umask(*paths: Path) -> None:
    """Set each path, and everything under a directory, to 0666 (files) or 0777 (directories) less the umask."""
    mask = _umask()
    for root in paths:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if not path.is_symlink():
                path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
