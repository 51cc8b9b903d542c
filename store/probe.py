"""A local store's root checked without importing Zarr: what ``loralens app`` runs before its server starts.

Opening a store with Zarr first imports Zarr; the explorer's start leaves that to the time the browser loads the
page, and still refuses a bad store before any server starts.
"""

from __future__ import annotations

import json
from pathlib import Path

from loralens.store import schema


def probe(path: str) -> bool:
    """Check a local store from its root metadata alone, as ``StoreReader`` would.

    Returns:
        True where ``path`` is a local store this code reads; False where it is a URL (not checked here: open
        it with ``StoreReader``).

    Raises:
        StoreError: no store there, a Zarr group that is not a loralens store, or another schema version.
    """
    if "://" in path:
        return False
    meta = Path(path) / "zarr.json"
    try:
        node = json.loads(meta.read_text())
    except FileNotFoundError:
        raise schema.no_store(path) from None
    except (OSError, ValueError) as e:
        raise schema.StoreError(f"{path}: its root metadata {meta} is unreadable ({e}); point at a store "
                                "written by loralens trace") from e
    if not isinstance(node, dict) or node.get("node_type") != "group":
        raise schema.no_store(path)
    schema.check_root(path, node.get("attributes") or {})
    return True
