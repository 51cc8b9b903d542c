"""Read a store: the utterance table, the runs and their checkpoints, and any array by rows and layer."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.core.sync import sync

from loralens.store import schema
from loralens.store.damage import (
    chunk_problem,
    damaged_blocks,
    damaged_layers,
    is_damage,
    layers_text,
    metadata_problem,
    node_kind,
    rows_text,
)
from loralens.store.schema import StoreError

__all__ = ["Interventions", "StoreError", "StoreReader", "Summary", "open_root"]

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
    schema.check_root(path, dict(root.attrs), write=mode != "r")
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
    def _reading(self, node: str, array: zarr.Array, rows: list[int] | None = None,
                 slots: list[int] | None = None) -> Iterator[None]:
        """Turn a chunk that does not decode inside the block into a StoreError naming it, its rows and the fix.

        ``slots``: where ``rows`` lie in a slot-major array (``schema.slotted``), in the same order.
        """
        try:
            yield
        except Exception as e:
            if not is_damage(e):
                raise
            if node_kind(node) == "layer_major":
                where, n = layers_text(array, [j for j, _ in damaged_layers(array)]), 1
            else:
                row_at = dict(zip(slots, rows or [], strict=True)) if slots is not None else None
                at = slots if slots is not None else rows
                bad = ([row_at.get(i, i) if row_at else i for block, _ in damaged_blocks(array, at) for i in block]
                       or sorted(rows or []))
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

    def _marks(self, run: str, checkpoint: str) -> np.ndarray:
        """Every row's commit mark, ``(n_utterances,)``: 0 unwritten, else the row's slot + 1 (1 in v4-5 stores)."""
        source, node = self._source(run, checkpoint, "written")
        with self._reading(node, source):
            return source[:]

    def written(self, run: str, checkpoint: str = "trained") -> np.ndarray:
        """Which rows are completely written, shape ``(n_utterances,)`` bool (read afresh: captures add rows)."""
        return self._marks(run, checkpoint) > 0

    def _slots(self, run: str, checkpoint: str, name: str, rows: list[int], marks: np.ndarray) -> list[int]:
        """Where written ``rows`` lie in the original of array ``name``: their slots where it is slot-major."""
        if schema.slotted(name) and self.group(run, checkpoint).attrs.get("slot_rows"):
            return [int(marks[r]) - 1 for r in rows]
        return list(rows)

    def sampled(self, run: str, checkpoint: str = "trained") -> np.ndarray:
        """Which written rows hold the sampled per-frame arrays (``ArraySpec.sampled``), ``(n_utterances,)`` bool."""
        return self._sampled(run, checkpoint, self._marks(run, checkpoint))

    def _sampled(self, run: str, checkpoint: str, marks: np.ndarray) -> np.ndarray:
        """``sampled`` given every row's commit mark (``_marks``), which it would otherwise read again."""
        written = marks > 0
        if self._consolidated(run, checkpoint, "sampled") is not None:
            source, node = self._source(run, checkpoint, "sampled")
            with self._reading(node, source):
                return source[:].astype(bool) & written
        rows = np.flatnonzero(written).tolist()
        out = np.zeros(len(marks), dtype=bool)
        if rows:
            out[rows] = self.read_original(run, checkpoint, "sampled", rows, marks).astype(bool)
        return out

    def read_original(self, run: str, checkpoint: str, name: str, rows: list[int], marks: np.ndarray,
                      selection: tuple = ()) -> np.ndarray:
        """``name``'s values of written ``rows`` from its original (not the layer-major copy), in ``rows``' order."""
        array = self.array(run, checkpoint, name)
        slots = self._slots(run, checkpoint, name, rows, marks)
        with self._reading(f"runs/{run}/{checkpoint}/{name}", array, rows, slots):
            return _read_rows(array, slots, selection)

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
                mark = int(marks[rows])
            if not mark:
                raise StoreError(f"{self.path}: {run}/{checkpoint} row {rows} is not written (an interrupted "
                                 "capture?); finish it with the same loralens trace command")
            written = None
        else:
            marks = self._marks(run, checkpoint)
            written = marks > 0
        if rows is None:
            rows = np.flatnonzero(written).tolist()
        selected = [rows] if isinstance(rows, int) else (list(range(*rows.indices(len(written))))
                                                          if isinstance(rows, slice) else list(rows))
        if written is not None and (missing := [r for r in selected if not written[r]]):
            raise StoreError(f"{self.path}: {run}/{checkpoint} rows {missing[:5]} are not written (an interrupted "
                             "capture?); finish them with the same loralens trace command")
        if schema.CHECKPOINT_ARRAYS[name].sampled:
            sampled = self.sampled(run, checkpoint) if written is None else self._sampled(run, checkpoint, marks)
            if unsampled := [r for r in selected if not sampled[r]]:
                raise StoreError(f"{self.path}: {run}/{checkpoint} keeps {name} for a sample of its rows "
                                 f"(--per-frame-sample), not for rows {unsampled[:5]}; read the rows of "
                                 "StoreReader.sampled, or trace without --per-frame-sample")
        dims = array.metadata.dimension_names
        if unknown := set(index) - set(dims):
            raise StoreError(f"array {name} has dimensions {dims}, not {sorted(unknown)}")
        selection = tuple(index.get(d, slice(None)) for d in dims[1:])
        if isinstance(rows, int):
            slot = self._slots(run, checkpoint, name, [rows], {rows: mark})[0]
            with self._reading(f"runs/{run}/{checkpoint}/{name}", array, selected, [slot]):
                return array[(slot, *selection)]
        if self._consolidated(run, checkpoint, name) is None:
            return self.read_original(run, checkpoint, name, selected, marks, selection)
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
        """An array's dimension names as ``read`` returns them (``utterance`` first)."""
        return ("utterance", *self.array(run, checkpoint, name).metadata.dimension_names[1:])


@dataclass
class Interventions:
    """A run's causal lens (``schema.INTERVENTIONS_GROUP``): each condition's outcome on the run's traced rows."""

    conditions: list[str]
    """Condition names (``loralens.precompute.intervene``), ``none`` (the model as trained) first."""
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
    """``array[rows[i], *selection]`` stacked, in ``rows``' order, in one Zarr call."""
    if not rows:
        return np.zeros((0, *array[(0, *selection)].shape), dtype=array.dtype) if array.shape[0] else np.zeros(0)
    if rows == list(range(rows[0], rows[-1] + 1)):  # a contiguous block: one ranged read
        return array[(slice(rows[0], rows[-1] + 1), *selection)]
    order = np.argsort(rows, kind="stable")
    values = array.get_orthogonal_selection((np.asarray(rows)[order], *selection))
    if np.all(order[:-1] < order[1:]):
        return values
    out = np.empty_like(values)
    out[order] = values
    return out


@functools.lru_cache(maxsize=8)
def cached_reader(path: str) -> StoreReader:
    """A shared reader per path (readers are safe to share; writers write through their own)."""
    return StoreReader(path)
