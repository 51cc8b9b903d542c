"""Read a store: the utterance table, the runs and their checkpoints, and any array by rows and layer."""

from __future__ import annotations

import contextlib
import functools
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors
from zarr.core.sync import sync

from store import schema
from store.schema import StoreError

__all__ = ["StoreError", "StoreReader", "is_damage", "open_root"]

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


STORAGE_OPTIONS_ENV = "LORALENS_STORAGE_OPTIONS"
"""Environment variable holding a store's fsspec storage options as JSON (``loralens app`` passes them this way)."""


def storage_options(endpoint_url: str | None = None, anonymous: bool = False, profile: str | None = None,
                    pairs: Iterable[str] = ()) -> dict | None:
    """The fsspec storage options of a store URL, from the commands' flags; None where none are given.

    Args:
        endpoint_url: an S3-compatible server (MinIO, Ceph, moto, a cloud's S3 endpoint).
        anonymous: read a public bucket without credentials.
        profile: a named profile of the AWS credentials file.
        pairs: ``KEY=VALUE`` passed to fsspec as they are; a VALUE that parses as JSON (``true``, ``3``,
            ``{"region_name": "eu-west-1"}``) is passed parsed, any other as a string.

    Raises:
        ValueError: a pair without ``=``.
    """
    options: dict[str, Any] = {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if anonymous:
        options["anon"] = True
    if profile:
        options["profile"] = profile
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--storage-option {pair!r}: expected KEY=VALUE, e.g. client_kwargs='{{\"region_name\": "
                             "\"eu-west-1\"}'")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options or None


def open_root(path: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """Open a store's root group, checking that it is a loralens store of a version this code reads."""
    try:
        root = zarr.open_group(path, mode=mode, storage_options=storage_options, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError,
            zarr.errors.ContainsArrayError) as e:
        raise schema.no_store(path) from e
    except Exception as e:
        if is_damage(e):
            raise StoreError(f"{path}: {metadata_problem(path, '', e)}") from e
        raise
    schema.check_root(path, dict(root.attrs))
    return root


class StoreReader:
    """Read access to a store; rows are utterance indices in the shared table.

    A chunk or zarr.json that does not decode raises a ``StoreError`` naming the array, its rows and the command
    that repairs it (``loralens validate --repair``); any other error propagates as it is.
    """

    def __init__(self, path: str, storage_options: dict | None = None, mode: str = "r"):
        self.path = path
        self.storage_options = storage_options
        """How it was opened (another process opens the same store with them)."""
        self.root = open_root(path, mode, storage_options)
        self._cache: dict[str, Any] = {}

    # -- nodes ----------------------------------------------------------------------------------------------
    def _node(self, key: str) -> zarr.Group | zarr.Array | None:
        """The group or array at ``key`` (None where there is none); a damaged zarr.json raises a StoreError."""
        try:
            return self.root[key]
        except KeyError:
            return None
        except Exception as e:
            if is_damage(e):
                raise StoreError(f"{self.path}: {metadata_problem(self.path, key, e)}") from e
            raise

    def _children(self, key: str) -> list[str]:
        """The names under a group, listed from the storage: Zarr's own listing fails on one damaged member."""
        prefix = "/".join(p for p in (self.root.path, key) if p)

        async def names() -> list[str]:
            return [name async for name in self.root.store.list_dir(prefix)]

        return sorted(name for name in sync(names()) if name != "zarr.json")

    @contextlib.contextmanager
    def _reading(self, node: str, array: zarr.Array, rows: list[int] | None = None) -> Iterator[None]:
        """Turn a chunk that does not decode inside the block into a StoreError naming it, its rows and the fix."""
        try:
            yield
        except Exception as e:
            if not is_damage(e):
                raise
            if node_kind(node) == "layer_major":
                where, n = layers_text(array, [j for j, _ in damaged_layers(array)]), 1
            else:
                bad = [r for block, _ in damaged_blocks(array, rows) for r in block] or sorted(rows or [])
                where, n = rows_text(bad) if bad else "", max(1, len(bad))
                ids = self._ids() if node != "utterances/id" else None
                if len(bad) == 1 and ids is not None and bad[0] < len(ids):
                    where += f" ({ids[bad[0]]})"
            raise StoreError(f"{self.path}: {chunk_problem(self.path, node, where, e, n)}") from e

    def _ids(self) -> np.ndarray | None:
        """The id column, or None where it cannot be read (for naming rows in errors)."""
        try:
            return self._column("id")
        except StoreError:
            return None

    # -- the utterance table ----------------------------------------------------------------------------
    def _table_array(self, name: str) -> zarr.Array | None:
        key = f"utterances/{name}"
        if key not in self._cache:
            if self._node("utterances") is None:
                return None
            self._cache[key] = self._node(key)
        return self._cache[key]

    def _column(self, name: str) -> np.ndarray:
        key = f"utterances/{name}/values"
        if key not in self._cache:
            array = self._table_array(name)
            if array is None:
                if name in ("id", "n_frames"):
                    return np.array([], dtype=object if name == "id" else np.int32)
                raise StoreError(f"{self.path}: the utterance table lacks {name!r}; the store is incomplete, "
                                 "run loralens validate on it")
            with self._reading(f"utterances/{name}", array):
                values = array[:]
            if schema.UTTERANCE_ARRAYS[name].dtype == "str":  # plain object arrays work with every library
                values = values.astype(object)
            self._cache[key] = values[: self._n_committed()]
        return self._cache[key]

    def _n_committed(self) -> int:
        """Rows of the utterance table whose id is written: the id is each row's commit mark, written last.

        Rows past the first empty id were cut off mid-write (``loralens trace`` was interrupted while adding
        them); the same command writes them again.
        """
        key = "utterances/n_committed"
        if key not in self._cache:
            array = self._table_array("id")
            if array is None:
                return 0
            with self._reading("utterances/id", array):
                ids = array[:]
            empty = np.flatnonzero(ids == "")
            self._cache[key] = int(empty[0]) if len(empty) else len(ids)
        return self._cache[key]

    @property
    def n_utterances(self) -> int:
        """Rows in the utterance table."""
        return len(self._column("id"))

    def utterances(self) -> dict[str, np.ndarray]:
        """The utterance table without audio: column name -> values, one per row."""
        return {name: self._column(name) for name in schema.UTTERANCE_ARRAYS if name not in ("audio", "log_mel")}

    def row_of(self, utterance_id: str) -> int:
        """The row of an utterance id."""
        hits = np.flatnonzero(self._column("id") == utterance_id)
        if not len(hits):
            raise StoreError(f"{self.path}: no utterance {utterance_id!r}")
        return int(hits[0])

    def _table_row(self, name: str, row: int, n: int) -> np.ndarray:
        array = self._table_array(name)
        if array is None:
            raise StoreError(f"{self.path}: the utterance table lacks {name!r}; the store is incomplete, run "
                             "loralens validate on it")
        with self._reading(f"utterances/{name}", array, [row]):
            return array[row, ..., :n]

    def log_mel(self, row: int) -> np.ndarray:
        """The utterance's log-mel input over its real frames, ``(n_mels, 2 * n_frames)``."""
        n = 2 * int(self._column("n_frames")[row])
        return self._table_row("log_mel", row, n).astype(np.float32)

    def audio(self, row: int) -> np.ndarray:
        """The utterance's 16 kHz audio as float32, shape ``(n_samples,)``."""
        n = int(self._column("n_samples")[row])
        return self._table_row("audio", row, n).astype(np.float32) / 32767.0

    # -- runs and checkpoints -----------------------------------------------------------------------------
    def runs(self) -> dict[str, list[str]]:
        """Run name -> its checkpoints present in the store."""
        if self._node("runs") is None:
            return {}
        out = {}
        for run in self._children("runs"):
            if isinstance(self._node(f"runs/{run}"), zarr.Group):
                out[run] = [c for c in schema.CHECKPOINTS if isinstance(self._node(f"runs/{run}/{c}"), zarr.Group)]
        return out

    def group(self, run: str, checkpoint: str = "trained") -> zarr.Group:
        """A checkpoint's group."""
        key = f"runs/{run}/{checkpoint}"
        if key not in self._cache:
            group = self._node(key)
            if not isinstance(group, zarr.Group):
                raise StoreError(f"{self.path}: no checkpoint {run}/{checkpoint}; present: {self.runs()}")
            self._cache[key] = group
        return self._cache[key]

    def attrs(self, run: str, checkpoint: str = "trained") -> dict[str, Any]:
        """A checkpoint's attributes (``schema.CHECKPOINT_ATTRS``)."""
        return dict(self.group(run, checkpoint).attrs)

    def array(self, run: str, checkpoint: str, name: str) -> zarr.Array:
        """A checkpoint's array handle (cached: opening one reads its metadata)."""
        key = f"runs/{run}/{checkpoint}/{name}"
        if key not in self._cache:
            self.group(run, checkpoint)
            array = self._node(key)
            if not isinstance(array, zarr.Array):
                spec = schema.CHECKPOINT_ARRAYS.get(name)
                raise StoreError(f"{self.path}: {run}/{checkpoint} has no array {name!r}"
                                 + (" (a frozen run has no LoRA)" if spec and spec.lora_only else ""))
            self._cache[key] = array
        return self._cache[key]

    def written(self, run: str, checkpoint: str = "trained") -> np.ndarray:
        """Which rows are completely written, shape ``(n_utterances,)`` bool (read afresh: captures add rows)."""
        source, node = self._source(run, checkpoint, "written")
        with self._reading(node, source):
            return source[:].astype(bool)

    def sampled(self, run: str, checkpoint: str = "trained") -> np.ndarray:
        """Which written rows hold the sampled per-frame arrays (``ArraySpec.sampled``), ``(n_utterances,)`` bool."""
        source, node = self._source(run, checkpoint, "sampled")
        with self._reading(node, source):
            return source[:].astype(bool) & self.written(run, checkpoint)

    def _consolidated(self, run: str, checkpoint: str, name: str) -> zarr.Array | None:
        """The layer-major copy of an array, if commit wrote one and it is still valid."""
        attrs = self.group(run, checkpoint).attrs
        if attrs.get("consolidated", -1) != attrs.get("n_written", -2) or not attrs.get("complete"):
            return None
        key = f"runs/{run}/{checkpoint}/{schema.CONSOLIDATED_GROUP}/{name}"
        if key not in self._cache:
            copy = self._node(key)
            self._cache[key] = copy if isinstance(copy, zarr.Array) else None
        return self._cache[key]

    def _source(self, run: str, checkpoint: str, name: str) -> tuple[zarr.Array, str]:
        """What to read all rows of an array from, the layer-major copy where valid, and its path."""
        copy = self._consolidated(run, checkpoint, name)
        if copy is not None:
            return copy, f"runs/{run}/{checkpoint}/{schema.CONSOLIDATED_GROUP}/{name}"
        return self.array(run, checkpoint, name), f"runs/{run}/{checkpoint}/{name}"

    def read(self, run: str, checkpoint: str, name: str, rows: int | list[int] | slice | None = None,
             **index: int | slice) -> np.ndarray:
        """Read an array of a checkpoint.

        Args:
            run: the run's name.
            checkpoint: ``trained`` or ``random_twin``.
            name: an array of ``schema.CHECKPOINT_ARRAYS``.
            rows: utterance rows (None: every written row).
            **index: an index per other dimension by name, e.g. ``boundary=3`` or ``layer=2``.

        Returns:
            The values, in the array's dimension order (dimensions indexed by an int are dropped).

        Raises:
            StoreError: the array is missing, a requested row is not (completely) written, or a chunk or
                zarr.json it needs does not decode (the message names it and the repair).
        """
        array = self.array(run, checkpoint, name)
        if isinstance(rows, int):  # one row: check its own mark only
            marks = self.array(run, checkpoint, "written")
            with self._reading(f"runs/{run}/{checkpoint}/written", marks, [rows]):
                mark = marks[rows]
            if not mark:
                raise StoreError(f"{self.path}: {run}/{checkpoint} row {rows} is not written (an interrupted "
                                 "capture?); finish it with the same loralens trace command")
            written = None
        else:
            written = self.written(run, checkpoint)
        if rows is None:
            rows = np.flatnonzero(written).tolist()
        selected = [rows] if isinstance(rows, int) else (list(range(*rows.indices(len(written))))
                                                          if isinstance(rows, slice) else list(rows))
        if written is not None and (missing := [r for r in selected if not written[r]]):
            raise StoreError(f"{self.path}: {run}/{checkpoint} rows {missing[:5]} are not written (an interrupted "
                             "capture?); finish them with the same loralens trace command")
        if schema.CHECKPOINT_ARRAYS[name].sampled:
            sampled = self.sampled(run, checkpoint)
            if unsampled := [r for r in selected if not sampled[r]]:
                raise StoreError(f"{self.path}: {run}/{checkpoint} keeps {name} for a sample of its rows "
                                 f"(--per-frame-sample), not for rows {unsampled[:5]}; read the rows of "
                                 "StoreReader.sampled, or trace without --per-frame-sample")
        dims = array.metadata.dimension_names
        if unknown := set(index) - set(dims):
            raise StoreError(f"array {name} has dimensions {dims}, not {sorted(unknown)}")
        selection = tuple(index.get(d, slice(None)) for d in dims[1:])
        if isinstance(rows, int):
            with self._reading(f"runs/{run}/{checkpoint}/{name}", array, selected):
                return array[(rows, *selection)]
        source, node = self._source(run, checkpoint, name)
        with self._reading(node, source, selected):
            return _read_rows(source, selected, selection)

    def interventions(self, run: str) -> Interventions | None:
        """A run's interventions, or None where it has none (``loralens intervene`` computes them)."""
        key = f"runs/{run}/{schema.INTERVENTIONS_GROUP}"
        group = self._node(key)
        if group is None or group.attrs.get("intervention_version") != schema.INTERVENTION_VERSION:
            return None
        attrs = dict(group.attrs)
        read, n = {}, len(attrs["conditions"])
        for name in ("done", "probabilities", "lens_logits"):
            with self._reading(f"{key}/{name}", group[name]):
                read[name] = group[name][:n]  # longer where a rerun grew them but died before naming the new ones
        return Interventions(list(attrs["conditions"]), np.asarray(attrs["rows"], dtype=np.int64),
                             read["done"].astype(bool), read["probabilities"], read["lens_logits"],
                             attrs.get("partner"))

    def summary(self, run: str) -> Summary | None:
        """A run's summary (``schema.SUMMARY_GROUP``), or None where it has none or it is stale.

        A summary is current while its ``basis`` equals what it was computed from: the ``n_written`` of each of
        the run's committed checkpoints and of each partner run it compared with.
        """
        group = self._node(f"runs/{run}/{schema.SUMMARY_GROUP}")
        if not isinstance(group, zarr.Group):
            return None
        attrs = dict(group.attrs)
        if attrs.get("summary_version") != schema.SUMMARY_VERSION or "basis" not in attrs:
            return None
        for name, n in attrs["basis"].items():
            other, _, checkpoint = name.partition("/")
            try:
                current = self.attrs(other, checkpoint or "trained")
            except StoreError:
                return None
            if not current.get("complete") or current.get("n_written") != n:
                return None
        key = f"runs/{run}/{schema.SUMMARY_GROUP}"
        cached = self._cache.get(key)
        if not isinstance(cached, Summary) or cached.attrs != attrs:
            self._cache[key] = Summary(self, key, attrs)
        return self._cache[key]

    def dims(self, run: str, checkpoint: str, name: str) -> tuple[str, ...]:
        """An array's dimension names."""
        return tuple(self.array(run, checkpoint, name).metadata.dimension_names)


@dataclass
class Interventions:
    """A run's causal lens (``schema.INTERVENTIONS_GROUP``): each condition's outcome on the run's traced rows."""

    conditions: list[str]
    """Condition names (``precompute.intervene``), ``none`` (the model as trained) first."""
    rows: np.ndarray
    """Store rows of the utterance axis."""
    done: np.ndarray
    """Per condition, whether its results are written, ``(condition,)`` bool."""
    probabilities: np.ndarray
    """Class probabilities, ``(condition, utterance, class)`` (zeros where not done)."""
    lens_logits: np.ndarray
    """Lens logits per boundary, ``(condition, utterance, boundary, class)``."""
    partner: str | None = None
    """The run whose residuals the ``patch@`` conditions patch in (None: none patched)."""

    def finished(self) -> Interventions:
        """The conditions done so far alone (an interrupted or growing ``loralens intervene`` leaves others)."""
        done = np.flatnonzero(self.done)
        return Interventions([self.conditions[i] for i in done], self.rows, self.done[done],
                             self.probabilities[done], self.lens_logits[done], self.partner)


class Summary:
    """A run's current summary: its attributes and its arrays by name, read on first use."""

    def __init__(self, reader: StoreReader, key: str, attrs: dict[str, Any]):
        self._reader = reader
        self._key = key
        self.attrs = attrs
        self._values: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return isinstance(self._reader._node(f"{self._key}/{name}"), zarr.Array)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            array = self._reader._node(f"{self._key}/{name}")
            if not isinstance(array, zarr.Array):
                raise KeyError(f"{self._reader.path}: the summary {self._key} has no {name!r}; renew it with "
                               f"loralens summarise {self._reader.path}")
            with self._reader._reading(f"{self._key}/{name}", array):
                self._values[name] = array[...]
        return self._values[name]

    def get(self, name: str) -> np.ndarray | None:
        """The array ``name``, or None where the summary has none."""
        return self[name] if name in self else None


def _read_rows(array: zarr.Array, rows: list[int], selection: tuple) -> np.ndarray:
    if not rows:
        return np.zeros((0, *array[(0, *selection)].shape), dtype=array.dtype) if array.shape[0] else np.zeros(0)
    if rows == list(range(rows[0], rows[-1] + 1)):  # a contiguous block: one ranged read
        return array[(slice(rows[0], rows[-1] + 1), *selection)]
    return array.get_orthogonal_selection((rows, *selection))


@functools.lru_cache(maxsize=8)
def cached_reader(path: str) -> StoreReader:
    """A shared reader per path (readers are safe to share; writers write through their own)."""
    return StoreReader(path)
