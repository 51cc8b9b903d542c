"""How precompute writes files: their modes, and replacing a file in one step.

safetensors (0.8) writes every file through a temporary file created 0600, and ``tempfile`` directories are
0700, so checkpoints and the encoder cache would be readable by their writer alone: another user of a shared
runs directory, or an app serving as a different user, could not load them. ``open_as_umask`` gives them the
modes a plain ``open``/``mkdir`` would have.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def _proc_umask() -> int | None:
    """The process's umask as Linux reports it (``/proc/self/status``), read without changing it; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


# ``os.umask`` can only be read by setting it, and the umask is the whole process's: while it is changed, files
# that other threads create (the app serves uploads from threads) get the temporary mask. So it is read through
# /proc where there is one, and otherwise once, here at import, set for that instant to the most private mask.
_IMPORT_UMASK = _proc_umask()
if _IMPORT_UMASK is None:
    _IMPORT_UMASK = os.umask(0o077)
    os.umask(_IMPORT_UMASK)


def _umask() -> int:
    mask = _proc_umask()
    return _IMPORT_UMASK if mask is None else mask


def open_as_umask(*paths: Path) -> None:
    """Set each path, and everything under a directory, to 0666 (files) or 0777 (directories) less the umask."""
    mask = _umask()
    for root in paths:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if not path.is_symlink():
                path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reader sees the old file or the new one, never a part.

    The temporary file's name is unique to the writer, so processes (a grid's folds of one run, on one node or
    several) writing the same file at once never write into one another's.
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
