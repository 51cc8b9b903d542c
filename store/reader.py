"""Read a store: the utterance table, the runs and their checkpoints, and any array by rows and layer."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import zarr
import zarr.errors

from store import schema
from store.schema import StoreError

__all__ = ["StoreError", "StoreReader", "open_root"]


def open_root(path: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """Open a store's root group, checking that it is a loralens store of a version this code reads."""
    try:
        root = zarr.open_group(path, mode=mode, storage_options=storage_options, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError,
            zarr.errors.ContainsArrayError) as e:
        raise schema.no_store(path) from e
    schema.check_root(path, dict(root.attrs))
    return root


class StoreReader:
    """Read access to a store; rows are utterance indices in the shared table."""

    def __init__(self, path: str, storage_options: dict | None = None, mode: str = "r"):
        self.path = path
        self.root = open_root(path, mode, storage_options)
        self._cache: dict[str, Any] = {}

    # -- the utterance table ----------------------------------------------------------------------------
    def _column(self, name: str) -> np.ndarray:
        key = f"utterances/{name}"
        if key not in self._cache:
            if "utterances" not in self.root or name not in self.root["utterances"]:
                if name in ("id", "n_frames"):
                    return np.array([], dtype=object if name == "id" else np.int32)
                raise StoreError(f"{self.path}: the utterance table lacks {name!r}; the store is incomplete, "
                                 "run loralens validate on it")
            values = self.root["utterances"][name][:]
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
            if "id" not in self.root["utterances"]:
                return 0
            ids = self.root["utterances"]["id"][:]
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

    def log_mel(self, row: int) -> np.ndarray:
        """The utterance's log-mel input over its real frames, ``(n_mels, 2 * n_frames)``."""
        n = 2 * int(self._column("n_frames")[row])
        return self.root["utterances"]["log_mel"][row, :, :n].astype(np.float32)

    def audio(self, row: int) -> np.ndarray:
        """The utterance's 16 kHz audio as float32, shape ``(n_samples,)``."""
        n = int(self._column("n_samples")[row])
        return self.root["utterances"]["audio"][row, :n].astype(np.float32) / 32767.0

    # -- runs and checkpoints -----------------------------------------------------------------------------
    def runs(self) -> dict[str, list[str]]:
        """Run name -> its checkpoints present in the store."""
        if "runs" not in self.root:
            return {}
        runs = self.root["runs"]
        return {run: [c for c in schema.CHECKPOINTS if c in runs[run]] for run in sorted(runs.group_keys())}

    def group(self, run: str, checkpoint: str = "trained") -> zarr.Group:
        """A checkpoint's group."""
        key = f"runs/{run}/{checkpoint}"
        if key not in self._cache:
            if key not in self.root:
                raise StoreError(f"{self.path}: no checkpoint {run}/{checkpoint}; present: {self.runs()}")
            self._cache[key] = self.root[key]
        return self._cache[key]

    def attrs(self, run: str, checkpoint: str = "trained") -> dict[str, Any]:
        """A checkpoint's attributes (``schema.CHECKPOINT_ATTRS``)."""
        return dict(self.group(run, checkpoint).attrs)

    def array(self, run: str, checkpoint: str, name: str) -> zarr.Array:
        """A checkpoint's array handle (cached: opening one reads its metadata)."""
        key = f"runs/{run}/{checkpoint}/{name}"
        if key not in self._cache:
            group = self.group(run, checkpoint)
            if name not in group:
                spec = schema.CHECKPOINT_ARRAYS.get(name)
                raise StoreError(f"{self.path}: {run}/{checkpoint} has no array {name!r}"
                                 + (" (a frozen run has no LoRA)" if spec and spec.lora_only else ""))
            self._cache[key] = group[name]
        return self._cache[key]

    def written(self, run: str, checkpoint: str = "trained") -> np.ndarray:
        """Which rows are completely written, shape ``(n_utterances,)`` bool (read afresh: captures add rows)."""
        source = self._consolidated(run, checkpoint, "written")
        return (source if source is not None else self.array(run, checkpoint, "written"))[:].astype(bool)

    def _consolidated(self, run: str, checkpoint: str, name: str) -> zarr.Array | None:
        """The layer-major copy of an array, if commit wrote one and it is still valid."""
        attrs = self.group(run, checkpoint).attrs
        if attrs.get("consolidated", -1) != attrs.get("n_written", -2) or not attrs.get("complete"):
            return None
        key = f"runs/{run}/{checkpoint}/{schema.CONSOLIDATED_GROUP}/{name}"
        if key not in self._cache:
            group = self.group(run, checkpoint)
            path = f"{schema.CONSOLIDATED_GROUP}/{name}"
            self._cache[key] = group[path] if path in group else None
        return self._cache[key]

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
            StoreError: the array is missing, or a requested row is not (completely) written.
        """
        array = self.array(run, checkpoint, name)
        if isinstance(rows, int):  # one row: check its own mark only
            if not self.array(run, checkpoint, "written")[rows]:
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
        dims = array.metadata.dimension_names
        if unknown := set(index) - set(dims):
            raise StoreError(f"array {name} has dimensions {dims}, not {sorted(unknown)}")
        selection = tuple(index.get(d, slice(None)) for d in dims[1:])
        try:
            if isinstance(rows, int):
                return array[(rows, *selection)]
            layer_major = self._consolidated(run, checkpoint, name)
            return _read_rows(layer_major if layer_major is not None else array, selected, selection)
        except (StoreError, IndexError, TypeError):
            raise
        except Exception as e:  # a truncated or corrupt chunk: codecs raise their own errors
            raise StoreError(f"{self.path}: {run}/{checkpoint}/{name} is unreadable, a truncated or corrupt chunk "
                             f"({e.__class__.__name__}: {e}); loralens validate --repair {self.path} finds the "
                             "damaged rows and clears their marks, then the same loralens trace command captures "
                             "them again") from e

    def dims(self, run: str, checkpoint: str, name: str) -> tuple[str, ...]:
        """An array's dimension names."""
        return tuple(self.array(run, checkpoint, name).metadata.dimension_names)


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
