"""Damage in a store: telling stored bytes that do not decode from bugs, and saying where, in words.

It owns the diagnosis that reading (``reader``), validating (``validate``) and repairing share: which errors are
damage (``is_damage``), which blocks of an array do not decode, and the messages that name them.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import zarr

from loralens.store import schema

# Raised by code, never by stored bytes: a bug or a missing library, which must propagate (repair acts on damage).
_NEVER_DAMAGE = (ImportError, NameError, AttributeError, TypeError, AssertionError, NotImplementedError,
                 MemoryError, RecursionError)
# What codecs raise on bytes that do not decode: numcodecs' zstd and blosc a RuntimeError (truncated, garbage or
# zeroed chunks alike), a chunk that decodes to the wrong size or a cut string buffer a ValueError, gzip and zlib
# their own errors.
_DECODE_ERRORS = (RuntimeError, ValueError, OSError, EOFError, zlib.error)
_CODECS = ("zarr.codecs.", "numcodecs.")
_DECODERS = (*_CODECS, "zarr._compat", "zarr.core.buffer", "numpy", "gzip", "_compression")


def is_damage(e: BaseException) -> bool:
    """Whether ``e`` says that stored bytes are damaged: a chunk or a zarr.json that does not decode.

    Damage is a zarr.json that is not JSON or not Zarr metadata (``JSONDecodeError``, ``UnicodeDecodeError``,
    ``MetadataValidationError``), or an error raised inside a codec while it decoded a chunk. Anything else (an
    ImportError of a missing codec library, a TypeError from code, an OSError of the storage) is not, and
    propagates. A missing chunk is not damage either: Zarr reads it as the fill value and never stores a chunk
    that holds only the fill value, so a lost chunk cannot be told from a chunk of zeros.
    """
    if isinstance(e, _NEVER_DAMAGE):
        return False
    if isinstance(e, json.JSONDecodeError | UnicodeDecodeError | zarr.errors.MetadataValidationError):
        return True
    if not isinstance(e, _DECODE_ERRORS):
        return False
    modules = []
    tb = e.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    # Raised by a codec (or the array library it reshapes with) while it decoded the stored bytes; not by the
    # storage or the event loop underneath a codec's call (a network error, a pool shut down).
    in_codec = any(m.startswith(_CODECS) for m in modules)
    return in_codec and modules[-1].startswith(_DECODERS)


NodeKind = Literal["root", "group", "column", "checkpoint", "array", "layer_major", "summary"]


def node_kind(key: str) -> NodeKind:
    """What a node of the store is, by its path: this decides what ``loralens validate --repair`` does to it."""
    parts = key.split("/") if key else []
    if not parts:
        return "root"
    if parts[0] == "utterances":
        return "column" if len(parts) == 2 else "group"
    if len(parts) > 3 and parts[3] == schema.CONSOLIDATED_GROUP:
        return "layer_major"
    if len(parts) > 2 and parts[0] == "runs" and parts[2] == schema.SUMMARY_GROUP:
        return "summary"
    return {3: "checkpoint", 4: "array"}.get(len(parts), "group")


def _cause(e: BaseException) -> str:
    return f"{e.__class__.__name__}: {e}"


def rows_text(rows: list[int]) -> str:
    """``row 3``, ``rows 0-31`` or ``rows 1, 4, 9``."""
    rows = sorted(rows)
    if len(rows) == 1:
        return f"row {rows[0]}"
    if rows == list(range(rows[0], rows[-1] + 1)):
        return f"rows {rows[0]}-{rows[-1]}"
    return "rows " + ", ".join(map(str, rows[:8])) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")


def chunk_problem(path: str, node: str, where: str, e: BaseException, n: int = 1) -> str:
    """One line: which chunks of ``node`` do not decode (``where``: its rows or layers), why, and the repair."""
    command = f"loralens validate --repair {path}"
    it = "it" if n == 1 else "them"
    kind = node_kind(node)
    if kind == "column":
        fix = f"{command} rewrites {it} from {'its source audio file' if n == 1 else 'their source audio files'}"
    elif kind == "layer_major":
        fix = f"{command} rebuilds it from the per-utterance originals"
    else:
        fix = (f"{command} clears {'its mark' if n == 1 else 'their marks'}, then the same loralens trace command "
               f"captures {it} again")
    return f"{node} {where} is unreadable, a truncated or corrupt chunk ({_cause(e)}); {fix}"


def metadata_problem(path: str, key: str, e: BaseException) -> str:
    """One line: a node's zarr.json does not decode, why, and what to do (see ``node_kind``)."""
    command = f"loralens validate --repair {path}"
    kind = node_kind(key)
    file = f"{key}/zarr.json" if key else "zarr.json"
    if kind == "root":
        return (f"{file}, the store's root attributes (format, schema version), is unreadable ({_cause(e)}); the "
                "traces under it are intact, but no version can be checked without it: restore that file from a "
                "backup, or trace into a new store (loralens trace ... --store NEW_PATH)")
    what = ", the checkpoint's attributes," if kind == "checkpoint" else ""
    if kind == "group":
        fix = f"{command} writes it again (the group has no attributes: nothing is lost)"
    elif kind == "column":
        fix = f"{command} rebuilds the column from the source audio files"
    elif kind == "checkpoint":
        fix = (f"{command} removes the checkpoint, then the loralens trace command of run '{key.split('/')[1]}' "
               "captures it again")
    elif kind == "array":
        fix = (f"{command} removes the array and clears the marks of every row of {key.rsplit('/', 1)[0]}, then "
               "the same loralens trace command captures them again")
    else:
        fix = f"{command} rebuilds the layer-major copies from the per-utterance originals"
    return f"{file}{what} is unreadable ({_cause(e)}); {fix}"


def _blocks(array: zarr.Array, starts: Iterable[int]) -> Iterator[tuple[int, int, np.ndarray | None,
                                                                          Exception | None]]:
    """Decode ``array`` a block of rows (one chunk along ``utterance``) at a time, from each of ``starts``.

    Yields:
        ``(lo, hi, values, None)`` for a block that decodes, ``(lo, hi, None, error)`` for one that does not.

    Raises:
        Whatever reading raised that is not damage (see ``is_damage``).
    """
    for lo in starts:
        hi = min(lo + array.chunks[0], array.shape[0])
        try:
            values, error = array[lo:hi], None
        except Exception as e:
            if not is_damage(e):
                raise
            values, error = None, e
        yield lo, hi, values, error


def damaged_blocks(array: zarr.Array, rows: Iterable[int] | None = None) -> list[tuple[list[int], Exception]]:
    """The rows of ``array`` (all, or those given) whose chunks do not decode, a block of rows at a time.

    Returns:
        (rows, the error) per damaged block of rows (one chunk along ``utterance``).

    Raises:
        Whatever reading raised that is not damage (see ``is_damage``).
    """
    n, step = array.shape[0], array.chunks[0]
    wanted = range(n) if rows is None else sorted({int(r) for r in rows if 0 <= int(r) < n})
    return [([r for r in range(lo, hi) if rows is None or r in wanted], error)
            for lo, hi, _, error in _blocks(array, sorted({r // step * step for r in wanted})) if error is not None]


def damaged_layers(array: zarr.Array) -> list[tuple[int, Exception]]:
    """The layers (second dimension) of a layer-major copy whose chunk does not decode, with the error."""
    out = []
    for j in range(array.shape[1] if array.ndim > 2 else 1):
        try:
            array[:, j] if array.ndim > 2 else array[...]
        except Exception as e:
            if not is_damage(e):
                raise
            out.append((j, e))
    return out


def layers_text(array: zarr.Array, layers: list[int]) -> str:
    """``boundary 1, 3 (every row)``: where the damaged chunks of a layer-major copy lie."""
    dim = array.metadata.dimension_names[1] if array.ndim > 2 and layers else None
    return (f"{dim} {', '.join(map(str, layers))} " if dim else "") + "(every row)"


def read_blocks(array: zarr.Array) -> tuple[list, list[tuple[list[int], Exception]]]:
    """A 1-d array's values as a list, None where a chunk does not decode, and those rows with the error."""
    values: list = [None] * array.shape[0]
    damaged = []
    for lo, hi, block, error in _blocks(array, range(0, array.shape[0], array.chunks[0])):
        if error is None:
            values[lo:hi] = block.tolist()
        else:
            damaged.append((list(range(lo, hi)), error))
    return values, damaged
