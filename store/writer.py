"""Write traces into a store: the utterance table, checkpoint groups, rows, and the final commit."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.core.sync import sync

from loralens.store import schema
from loralens.store.damage import is_damage, read_blocks
from loralens.store.reader import StoreError, StoreReader, _read_rows, open_root
from loralens.store.schema import SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass
class UtteranceRow:
    """One row of the utterance table, as the writer receives it."""

    id: str
    dataset: str
    source: str
    speaker: str
    emotion: str
    audio: np.ndarray
    """16 kHz mono float32, shape ``(n_samples,)``."""
    n_frames: int
    """Real encoder frames."""
    log_mel: np.ndarray
    """The model's log-mel input, ``(n_mels, 2 * n_frames)``."""


def _versions() -> dict[str, str]:
    out = {}
    for name in ("loralens", "zarr", "numpy", "torch", "transformers", "peft", "nnsight"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


CONSOLIDATE_BYTES = 256 * 2**20
"""The memory that writing layer-major copies may take: that much of an array is read at once."""


def _write_rows(array: zarr.Array, rows: Sequence[int], block: np.ndarray) -> None:
    """``array[rows[i]] = block[i]`` in one Zarr call; ``rows`` ascending."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        array[rows[0]: rows[0] + len(rows)] = block
    else:
        array.oindex[np.asarray(rows)] = block


def _store(writes: list[tuple[zarr.Array, Any, np.ndarray]]) -> None:
    """Every ``array[selection] = values`` of ``writes`` at once, in one call into Zarr's event loop.

    Each synchronous Zarr call costs milliseconds of its own (a trip to the loop's thread and back), more than
    storing a small chunk; a batch's writes so go together, and Zarr encodes and stores their chunks concurrently.
    """
    async def store_all() -> None:
        await asyncio.gather(*(array.async_array.setitem(selection, values) for array, selection, values in writes))

    if writes:
        sync(store_all())


class StoreWriter(StoreReader):
    """Creates or extends a store.

    Growing the utterance table and creating checkpoints must not run while other processes write rows;
    writing rows (``write``) may run in several processes on disjoint rows.
    """

    def __init__(self, path: str, storage_options: dict | None = None):
        try:
            root = open_root(path, "r", storage_options)
        except StoreError as e:
            if e.__cause__ is not None and is_damage(e.__cause__):  # an unreadable root zarr.json: never overwrite
                raise
            root = None
        if root is None:
            root = zarr.open_group(path, mode="a", storage_options=storage_options, zarr_format=3)
            if not dict(root.attrs):
                root.attrs.update({"format": schema.FORMAT, "schema_version": schema.SCHEMA_VERSION,
                                   "versions": _versions(), "created": dt.datetime.now(dt.timezone.utc).isoformat()})
        super().__init__(path, storage_options, mode="a")

    # -- the utterance table ----------------------------------------------------------------------------
    def add_utterances(self, rows: list[UtteranceRow]) -> list[int]:
        """Add the rows not yet in the table (by id); return every given row's index in the table."""
        self._cache.clear()
        table = self._node("utterances") or self.root.require_group("utterances")  # a damaged one: StoreError
        known = {uid: i for i, uid in enumerate(self._column("id"))}  # committed rows only (see _column)
        if traced := self._traced_from(len(known)):
            # Rows a checkpoint has written were committed once: their ids were lost (a deleted chunk reads as
            # empty ids), not cut off by an interrupted add. Dropping them would throw away every trace of them.
            raise StoreError(f"{self.path}: utterances/id reads empty from row {len(known)}, yet {traced} holds "
                             "traces of later rows: the id column lost data (a deleted chunk file?); nothing was "
                             f"changed. Restore {self.path}/utterances/id from a backup, or trace into a new store")
        for name in schema.UTTERANCE_ARRAYS:  # rows past the committed ones were cut off mid-write: drop them
            array = self._node(f"utterances/{name}")
            if array is not None and array.shape[0] > len(known):
                array.resize((len(known), *array.shape[1:]))
        new = [r for r in rows if r.id not in known]
        if new:
            start = len(known)
            self._size_table(table, start + len(new), new)
            self._write_rows(table, start, new)
            known |= {r.id: start + i for i, r in enumerate(new)}
        self._cache.clear()
        self._grow_checkpoints(len(known))  # also those a run cut off after the table's commit left short
        return [known[r.id] for r in rows]

    def _traced_from(self, row: int) -> str | None:
        """The first checkpoint (``run/checkpoint``) with a row at or past ``row`` marked written, if any."""
        for run, checkpoints in self.runs().items():
            for checkpoint in checkpoints:
                written = self._node(f"runs/{run}/{checkpoint}/written")
                if written is not None and written.shape[0] > row and written[row:].any():
                    return f"{run}/{checkpoint}"
        return None

    @staticmethod
    def _size_table(table: zarr.Group, n: int, rows: list[UtteranceRow]) -> None:
        """Give every column ``n`` rows and room for ``rows``' audio and log-mel, creating missing columns."""
        max_samples = max(len(r.audio) for r in rows)
        n_mels = rows[0].log_mel.shape[0]
        max_mel = max(r.log_mel.shape[1] for r in rows)
        for name, spec in schema.UTTERANCE_ARRAYS.items():
            shape = {"audio": (n, max_samples), "log_mel": (n, n_mels, max_mel)}.get(name, (n,))
            if name in table:
                array = table[name]
                shape = (n, *[max(a, b) for a, b in zip(array.shape[1:], shape[1:], strict=True)])
                if shape != array.shape:
                    array.resize(shape)
            else:
                table.create_array(name, shape=shape, chunks=schema.table_chunks(spec, shape),
                                   dtype=str if spec.dtype == "str" else spec.dtype,
                                   dimension_names=spec.dims,
                                   fill_value="" if spec.dtype == "str" else 0)

    @staticmethod
    def _write_rows(table: zarr.Group, start: int, rows: list[UtteranceRow]) -> None:
        """Write consecutive rows from ``start``: every column, audio and log-mel, then the ids (the commit mark)."""
        n = start + len(rows)
        block = {
            "dataset": np.array([r.dataset for r in rows], dtype=object),
            "source": np.array([r.source for r in rows], dtype=object),
            "speaker": np.array([r.speaker for r in rows], dtype=object),
            "emotion": np.array([r.emotion for r in rows], dtype=object),
            "duration": np.array([len(r.audio) / SAMPLE_RATE for r in rows], dtype=np.float32),
            "n_samples": np.array([len(r.audio) for r in rows], dtype=np.int32),
            "n_frames": np.array([r.n_frames for r in rows], dtype=np.int32),
        }
        for name, values in block.items():
            table[name][start:n] = values
        audio, log_mel = table["audio"], table["log_mel"]
        for i, r in enumerate(rows):
            pcm = np.zeros(audio.shape[1], dtype=np.int16)
            pcm[: len(r.audio)] = np.round(np.clip(r.audio, -1, 1) * 32767).astype(np.int16)
            audio[start + i] = pcm
            mel = np.zeros(log_mel.shape[1:], dtype=np.float16)
            mel[:, : r.log_mel.shape[1]] = r.log_mel
            log_mel[start + i] = mel
        table["id"][start:n] = np.array([r.id for r in rows], dtype=object)  # the rows' commit mark: last

    def rewrite_utterances(self, rows: dict[int, UtteranceRow], recreate: tuple[str, ...] = ()) -> None:
        """Write rows of the table again in place, every column (``loralens validate --repair``).

        Consecutive rows are written together, so a damaged chunk of a scalar column (a block of rows, which
        cannot be read to change one row in it) is overwritten whole when all its rows are given.

        Args:
            rows: table row -> its content, read again from its source.
            recreate: columns to remove and create anew (their zarr.json was unreadable); every row must be given.
        """
        table = self.root["utterances"]
        n = max(array.shape[0] for name in schema.UTTERANCE_ARRAYS if name not in recreate
                and (array := self._node(f"utterances/{name}")) is not None)
        if recreate and sorted(rows) != list(range(n)):
            raise ValueError(f"recreating {list(recreate)} needs all {n} rows of the table, got {len(rows)}")
        for name in recreate:
            del table[name]
        self._size_table(table, n, list(rows.values()))
        order = sorted(rows)
        start = 0
        for i in range(1, len(order) + 1):
            if i == len(order) or order[i] != order[i - 1] + 1:
                self._write_rows(table, order[start], [rows[r] for r in order[start:i]])
                start = i
        self._cache.clear()

    def _grow_checkpoints(self, n_rows: int) -> None:
        """Resize every checkpoint's arrays to the table's rows and frames; a grown checkpoint is incomplete."""
        max_frames = int(np.max(self._column("n_frames"))) if n_rows else 0
        for run, checkpoints in self.runs().items():
            for checkpoint in checkpoints:
                path = f"runs/{run}/{checkpoint}"
                group = self._node(path)  # afresh: attributes are written through it
                resizes = {}
                for name in self._children(path):
                    array = self._node(f"{path}/{name}")  # a damaged zarr.json: a StoreError that names it
                    if not isinstance(array, zarr.Array):
                        continue
                    dims = array.metadata.dimension_names
                    sizes = {"utterance": n_rows, "slot": n_rows * schema.SLOT_ROWS, "frame": max_frames}
                    shape = tuple(max(s, sizes.get(d, s)) for d, s in zip(dims, array.shape, strict=True))
                    if shape != array.shape:
                        resizes[name] = shape
                if resizes:
                    group.attrs.update({"complete": False, "consolidated": -1})
                    for name, shape in resizes.items():
                        group[name].resize(shape)

    # -- checkpoints --------------------------------------------------------------------------------------
    def create_checkpoint(self, run: str, checkpoint: schema.Checkpoint, attrs: dict[str, Any],
                          sizes: dict[str, int], *, lora: bool, per_frame_b: bool) -> None:
        """Create (or check and keep) a checkpoint group sized to the utterance table.

        Args:
            run: the run's name in the store.
            checkpoint: ``trained`` or ``random_twin``.
            attrs: the group's attributes (``schema.CHECKPOINT_ATTRS``).
            sizes: the size of every dimension but ``utterance`` and ``frame``.
            lora: whether the run has LoRA modules.
            per_frame_b: whether per-frame LoRA B activations and gradients are kept.
        """
        if checkpoint not in schema.CHECKPOINTS:
            raise ValueError(f"checkpoint {checkpoint!r}; expected one of {schema.CHECKPOINTS}")
        if missing := [k for k in schema.CHECKPOINT_ATTRS if k not in attrs and k not in ("run", "checkpoint",
                                                                                          "complete")]:
            raise ValueError(f"checkpoint {run}/{checkpoint}: attributes {missing} are required by the schema")
        path = f"runs/{run}/{checkpoint}"
        n_rows = len(self._column("id"))
        sizes = {**sizes, "utterance": n_rows, "slot": n_rows * schema.SLOT_ROWS,
                 "frame": int(np.max(self._column("n_frames")))}
        group = self._node(path)
        if group is not None and "method" not in group.attrs:
            # Created by a run cut off before it wrote the group's attributes (they come last): nothing was
            # written into it (rows are written only after this returns), so it is made again.
            del self.root[path]
            group = None
        if group is not None:
            old = dict(group.attrs)
            for key in ("method", "model", "window", "emotions", "modules"):
                if old.get(key) != attrs.get(key):
                    raise StoreError(f"the store already holds run {run!r} with {key}={old.get(key)!r}, not "
                                     f"{attrs.get(key)!r}; trace into another --store, or give the run "
                                     "another name (--name)")
        new = group is None
        group = self.root.require_group(path) if new else group
        for name, spec in schema.checkpoint_arrays(lora, per_frame_b).items():
            if not new and self._node(f"{path}/{name}") is not None:
                continue  # an existing checkpoint lacks only arrays that validate --repair removed
            dims = schema.stored_dims(name)
            shape = tuple(sizes[d] for d in dims)
            try:
                group.create_array(name, shape=shape, chunks=schema.checkpoint_chunks(name, shape), dtype=spec.dtype,
                                   dimension_names=dims, fill_value=0, compressors=schema.compressors(spec))
            except zarr.errors.ContainsArrayError:  # another process created it first
                pass
        if new:
            group.attrs.update({**attrs, "run": run, "checkpoint": checkpoint, "complete": False,
                                "slot_rows": schema.SLOT_ROWS})
        elif "fingerprint" in attrs:  # the caller checked it against the old one: it may only have gained folds
            group.attrs["fingerprint"] = attrs["fingerprint"]
        self._cache.clear()

    def _targets(self, path: str) -> dict[str, zarr.Array]:
        """A checkpoint's arrays to write rows into, opened once.

        Their metadata changes only through this writer, which clears the cache, or before rows are written
        (``add_utterances`` and ``create_checkpoint``).
        """
        key = f"{path}/targets"
        if key not in self._cache:
            # Every chunk is stored as given: Zarr's scan for chunks of only zeros (not stored then) is a pass over
            # the data.
            self._cache[key] = {name: array.with_config({"write_empty_chunks": True}) for name in self._children(path)
                                if isinstance(array := self._node(f"{path}/{name}"), zarr.Array)}  # damaged: StoreError
        return self._cache[key]

    def write(self, run: str, checkpoint: schema.Checkpoint, row: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one utterance's arrays, then its commit mark (``write_rows`` of one row)."""
        self.write_rows(run, checkpoint, [row], [arrays])

    def write_rows(self, run: str, checkpoint: schema.Checkpoint, rows: Sequence[int],
                   arrays: Sequence[dict[str, np.ndarray]]) -> None:
        """Write utterances' arrays (``arrays[i]`` into row ``rows[i]``), then their commit marks.

        One call per batch: each array is written once for all the rows, so Zarr encodes and stores the batch's
        chunks concurrently. The marks come after every array, so a write cut short leaves its rows unmarked
        (``loralens trace`` captures them again). Each row owns its chunks: writers of other rows never meet it.

        Per-frame arrays may be shorter than the store's ``frame`` dimension (they are zero-padded). The sampled
        per-frame arrays (``ArraySpec.sampled``) may be left out all together: the row's ``sampled`` mark says
        which it is (``--per-frame-sample`` keeps them for a share of the rows).
        """
        if len(rows) != len(arrays):
            raise ValueError(f"{len(rows)} rows but {len(arrays)} sets of arrays")
        if len(set(rows)) != len(rows):
            raise ValueError(f"rows {sorted(rows)} repeat a row: each row is written once per call")
        path = f"runs/{run}/{checkpoint}"
        targets = self._targets(path)
        expected = set(targets) - {"written", "sampled"}
        sampled = {name for name in expected if schema.CHECKPOINT_ARRAYS[name].sampled}
        keeps = []  # per row: whether it holds the sampled arrays
        for row, given_arrays in zip(rows, arrays):
            given = sampled & set(given_arrays)
            if given and given != sampled:
                raise ValueError(f"row {row} of {run}/{checkpoint} has {sorted(given)} but lacks "
                                 f"{sorted(sampled - given)}: the sampled per-frame arrays go together or not at all")
            if missing := (expected if given else expected - sampled) - set(given_arrays):
                raise ValueError(f"row {row} of {run}/{checkpoint} lacks {sorted(missing)}")
            keeps.append(bool(given) or not sampled)
        slots = schema.slots_of([int(r) for r in rows])
        order = sorted(range(len(rows)), key=lambda i: rows[i])
        self._free_chunks(path, targets["written"], [int(r) for r in rows], slots)
        writes = []  # (array, selection, values): every chunk of the batch, stored in one trip to Zarr
        for name in sorted(expected | {"sampled"}):
            target = targets[name]
            if schema.slotted(name):  # a chunk of SLOT_ROWS slots per SLOT_ROWS rows, written whole
                for start in range(0, len(order), schema.SLOT_ROWS):
                    group = order[start: start + schema.SLOT_ROWS]
                    block = np.zeros((schema.SLOT_ROWS, *target.shape[1:]), dtype=target.dtype)
                    for k, i in enumerate(group):
                        value = keeps[i] if name == "sampled" else np.asarray(arrays[i][name])
                        block[(k, *(slice(0, n) for n in np.shape(value)))] = value  # zero-padded
                    first = slots[group[0]]
                    writes.append((target, slice(first, first + schema.SLOT_ROWS), block))
                continue
            frame = schema.CHECKPOINT_ARRAYS[name].dims.index("frame") - 1  # a sampled one: per frame
            for i in order:
                if keeps[i]:
                    value = np.asarray(arrays[i][name])
                    # Only the frame chunks its frames reach: the rest of the padding is never stored.
                    step = target.chunks[frame + 1]
                    shape = list(target.shape[1:])
                    shape[frame] = min(shape[frame], -(-value.shape[frame] // step) * step)
                    block = np.zeros(shape, dtype=target.dtype)
                    block[tuple(slice(0, n) for n in value.shape)] = value  # zero-padded to whole chunks
                    writes.append((target, (int(rows[i]), *(slice(0, n) for n in shape)), block))
        _store(writes)
        # The marks, each the row's slot + 1: first those of the rows that key their chunk, so a chunk is never
        # written again (a later write keyed by that row) while another row's mark still points into it.
        keys = set(order[:: schema.SLOT_ROWS])
        marks = targets["written"]
        for part in ([i for i in order if i in keys], [i for i in order if i not in keys]):
            _store([(marks, int(rows[i]), np.array(slots[i] + 1, dtype=marks.dtype)) for i in part])

    @staticmethod
    def _free_chunks(path: str, written: zarr.Array, rows: list[int], slots: list[int]) -> None:
        """Before a write stores ``rows`` in ``slots``, clear the marks of other rows stored in those chunks.

        The chunk keyed by a row (``schema.slots_of``) holds another write's rows only where that row is written
        already: marks are set key first, and ``unmark`` clears, with a row, every row in the chunk it keys. So where
        no key of this write is written (``loralens trace`` writes only unwritten rows) this reads one mark per
        chunk and changes nothing. Where one is (rows written again), it reads every mark: rows of an earlier write
        in the chunks rewritten lose their marks (the same ``loralens trace`` command captures them again) instead
        of pointing at another row's values.
        """
        keys = sorted({s // schema.SLOT_ROWS for s in slots})
        if not written.oindex[np.asarray(keys)].any():
            return
        every = written[:].astype(np.int64)
        stale = [int(r) for r in np.flatnonzero((every > 0) & np.isin((every - 1) // schema.SLOT_ROWS, keys))
                 if int(r) not in set(rows)]
        if stale:
            log.warning("%s: rows %s shared a chunk with rows written again; their marks are cleared (the same "
                        "loralens trace command captures them again)", path, stale[:8])
            written.oindex[np.asarray(stale)] = 0

    def unmark(self, run: str, checkpoint: schema.Checkpoint, rows: list[int]) -> None:
        """Clear rows' commit marks (damaged rows): the same ``loralens trace`` command captures them again.

        Every other row stored in the same slot chunk loses its mark too: the chunk is damaged for all of them, and
        it is written again whole. So do the rows in the chunk each row keys (``schema.slots_of``), which the
        row's next write rewrites whole (see ``_free_chunks``).
        """
        group = self.root[f"runs/{run}/{checkpoint}"]
        rows = {int(r) for r in rows}
        if group.attrs.get("slot_rows"):
            marks, _ = read_blocks(group["written"])  # damaged marks read as None: cleared below if asked
            chunks = {(marks[r] - 1) // schema.SLOT_ROWS for r in rows if r < len(marks) and marks[r]} | rows
            rows |= {r for r, mark in enumerate(marks) if mark and (mark - 1) // schema.SLOT_ROWS in chunks}
        for row in sorted(rows):
            group["written"][row] = 0  # a whole chunk: written without reading a damaged one
        group.attrs.update({"complete": False, "consolidated": -1})

    # -- repairs (``loralens validate --repair``) ---------------------------------------------------------
    def rewrite_group(self, key: str) -> None:
        """Write a group's zarr.json again, keeping its members; only for groups without attributes."""
        prefix = "/".join(p for p in (self.root.path, key) if p)
        sync(self.root.store.delete(f"{prefix}/zarr.json"))
        self.root.require_group(key)
        self._cache.clear()

    def remove_checkpoint(self, run: str, checkpoint: schema.Checkpoint) -> None:
        """Remove a checkpoint whose attributes are lost: ``loralens trace`` creates and captures it again."""
        del self.root[f"runs/{run}/{checkpoint}"]
        self._cache.clear()

    def remove_array(self, run: str, checkpoint: schema.Checkpoint, name: str) -> int:
        """Remove an array whose zarr.json is lost and clear every row's mark; return how many were set.

        ``loralens trace`` creates the array again (see ``create_checkpoint``) and captures every row.
        """
        group = self.root[f"runs/{run}/{checkpoint}"]
        del group[name]
        cleared = 0
        if name != "written" and self._node(f"runs/{run}/{checkpoint}/written") is not None:
            written = group["written"]
            marks, damaged = read_blocks(written)
            cleared = sum(1 for m in marks if m) + sum(len(block) for block, _ in damaged)
            written[:] = 0  # whole chunks: written without reading damaged ones
        group.attrs.update({"complete": False, "consolidated": -1})
        self._cache.clear()
        return cleared

    def rebuild_layer_major(self, run: str, checkpoint: schema.Checkpoint) -> bool:
        """Drop a checkpoint's layer-major copies; write them again from the originals if it is committed.

        Returns:
            Whether they were written again (else commit writes them once the checkpoint is complete).
        """
        group = self.root[f"runs/{run}/{checkpoint}"]
        attrs = dict(group.attrs)
        used = attrs.get("complete") and attrs.get("consolidated", -1) == attrs.get("n_written", -2)
        group.attrs["consolidated"] = -1  # readers use the originals while the copies are written
        if used:
            self._consolidate(group)
            group.attrs["consolidated"] = attrs["n_written"]
        else:
            del group[schema.CONSOLIDATED_GROUP]
        self._cache.clear()
        return bool(used)

    def _consolidate(self, group: zarr.Group) -> None:
        """Write layer-major copies of the arrays ``schema.consolidates`` (see ``schema.CONSOLIDATED_GROUP``).

        The copies are in table-row order whatever the originals' (slot-major ones are gathered from their rows'
        slots). The old copies are removed first, damaged ones too; the caller has marked the copies invalid
        meanwhile.
        """
        del group[schema.CONSOLIDATED_GROUP]
        target = group.require_group(schema.CONSOLIDATED_GROUP)
        marks = group["written"][:]
        rows = np.flatnonzero(marks)
        slots = marks[rows].astype(np.int64) - 1 if group.attrs.get("slot_rows") else rows
        n_rows = marks.shape[0]
        for name in sorted(group.array_keys()):
            spec = schema.CHECKPOINT_ARRAYS.get(name)
            if spec is None or not schema.consolidates(spec):
                continue
            source = group[name]
            shape = (n_rows, *source.shape[1:])
            copy = target.create_array(name, shape=shape, chunks=schema.consolidated_chunks(shape),
                                       dtype=source.dtype, dimension_names=spec.dims, fill_value=0, overwrite=True,
                                       compressors=schema.compressors(spec))
            if name == "written":
                copy[...] = marks
                continue
            per_layer = int(np.prod(shape[2:], dtype=np.int64)) * n_rows * source.dtype.itemsize
            step = max(1, CONSOLIDATE_BYTES // max(1, per_layer)) if source.ndim > 2 else 1
            for j in range(0, shape[1] if source.ndim > 1 else 1, step):  # as many layers as CONSOLIDATE_BYTES holds
                layers = (slice(j, j + step),) if source.ndim > 1 else ()
                block = np.zeros((n_rows, *([min(step, shape[1] - j)] if layers else []), *shape[2:]),
                                 dtype=source.dtype)
                if len(rows):
                    block[rows] = _read_rows(source, slots.tolist(), layers)
                copy[(slice(None), *layers)] = block

    def commit(self, run: str, rows: list[int]) -> dict[str, bool]:
        """Mark each checkpoint of ``run`` complete when all of ``rows`` are written; return that state."""
        state = {}
        for checkpoint in self.runs().get(run, []):
            group = self._node(f"runs/{run}/{checkpoint}")  # afresh: attributes are written through it
            with self._reading(f"runs/{run}/{checkpoint}/written", group["written"]):
                written = group["written"][:]
            complete = bool(all(written[i] for i in rows))
            n_written = int(np.count_nonzero(written))
            if complete:
                group.attrs["consolidated"] = -1  # readers use the originals while the copies are written
                self._consolidate(group)
            group.attrs.update({"complete": complete, "n_written": n_written,
                                "consolidated": n_written if complete else -1})
            state[checkpoint] = complete
        self._cache.clear()
        return state

    # -- summaries ------------------------------------------------------------------------------------------
    def create_interventions(self, run: str, conditions: list[str], rows: list[int], n_boundaries: int,
                             n_classes: int, basis: int, partner: str | None = None,
                             partner_key: str | None = None) -> list[str]:
        """Create a run's interventions group (``schema.INTERVENTIONS_GROUP``), or extend the one there.

        A group of the same rows and basis is kept, finished conditions and all (an interrupted ``loralens
        intervene`` resumes), and grows by the conditions it lacks; one of other rows or basis (the trace grew) is
        replaced. Where the run patched from changes (``partner_key``, a fingerprint of it; ``partner`` is its
        name), the conditions that read it (``patch@``) are marked undone.

        Returns:
            The group's conditions, in its arrays' order: those it held, then the new ones.
        """
        key = f"runs/{run}/{schema.INTERVENTIONS_GROUP}"
        attrs = {"intervention_version": schema.INTERVENTION_VERSION, "rows": [int(r) for r in rows],
                 "basis": int(basis)}
        group = self._node(key)
        if group is not None and "conditions" in group.attrs and all(group.attrs.get(k) == v for k, v in attrs.items()):
            held = list(group.attrs["conditions"])
            if partner_key is not None and group.attrs.get("partner_key") != partner_key:
                for i, name in enumerate(held):
                    if name.startswith(schema.PATCH_PREFIX):
                        group["done"][i] = 0
                group.attrs.update({"partner": partner, "partner_key": partner_key})
            if new := [c for c in conditions if c not in held]:
                n = len(held) + len(new)
                for name in ("probabilities", "lens_logits", "done"):
                    group[name].resize((n, *group[name].shape[1:]))  # new conditions read as zeros, not done
                group.attrs["conditions"] = held + new  # last: the arrays are already long enough
            self._cache.clear()
            return held + new
        if group is not None:
            del self.root[key]
        group = self.root.require_group(key)
        n, m = len(conditions), len(rows)
        group.create_array("probabilities", shape=(n, m, n_classes), chunks=(1, max(1, m), n_classes),
                           dtype="float32", dimension_names=("condition", "utterance", "class"), fill_value=0)
        group.create_array("lens_logits", shape=(n, m, n_boundaries, n_classes),
                           chunks=(1, max(1, m), n_boundaries, n_classes), dtype="float32",
                           dimension_names=("condition", "utterance", "boundary", "class"), fill_value=0)
        group.create_array("done", shape=(n,), chunks=(1,), dtype="uint8", dimension_names=("condition",),
                           fill_value=0)
        # Last: a group without them is an unfinished creation, made again.
        group.attrs.update({**attrs, "partner": partner, "partner_key": partner_key, "conditions": list(conditions)})
        self._cache.clear()
        return list(conditions)

    def write_intervention(self, run: str, index: int, probabilities: np.ndarray, lens_logits: np.ndarray) -> None:
        """Write one condition's results (``index`` into the group's ``conditions``), then its mark."""
        group = self.root[f"runs/{run}/{schema.INTERVENTIONS_GROUP}"]
        group["probabilities"][index] = probabilities
        group["lens_logits"][index] = lens_logits
        group["done"][index] = 1

    def remove_run(self, run: str) -> None:
        """Delete a run: its checkpoints, summary and interventions (``loralens trace --replace``).

        The utterance table stays, for the other runs and the run's next trace.
        """
        if f"runs/{run}" in self.root:
            del self.root[f"runs/{run}"]
        self._cache.clear()

    def remove_summary(self, run: str) -> None:
        """Delete a run's summary (readers compute what they need from the arrays until it is written again)."""
        key = f"runs/{run}/{schema.SUMMARY_GROUP}"
        if key in self.root:
            del self.root[key]
        self._cache.clear()

    def write_summary(self, run: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        """Replace a run's summary (``schema.SUMMARY_GROUP``): its arrays first, its attributes last.

        Args:
            run: the run's name.
            arrays: name (``/`` nests groups) -> values; small arrays, one chunk each.
            attrs: ``schema.SUMMARY_ATTRS`` (``summary_version`` is set here).
        """
        if missing := [k for k in schema.SUMMARY_ATTRS if k not in attrs and k != "summary_version"]:
            raise ValueError(f"summary of {run}: attributes {missing} are required by the schema")
        self.remove_summary(run)
        group = self.root.require_group(f"runs/{run}/{schema.SUMMARY_GROUP}")
        for name, value in sorted(arrays.items()):
            value = np.asarray(value)
            group.create_array(name, shape=value.shape, chunks=tuple(max(1, n) for n in value.shape),
                               dtype=value.dtype, fill_value=0, overwrite=True)[...] = value
        group.attrs.update({**attrs, "summary_version": schema.SUMMARY_VERSION})
        self._cache.clear()


def upgrade(path: str, storage_options: dict | None = None) -> list[str]:
    """Bring a store of a version in ``schema.UPGRADES`` to ``schema.SCHEMA_VERSION`` in place.

    Its ``RETIRED`` arrays are removed from every checkpoint, then its version is set: cut short, the store is still
    one of its old version (lacking arrays no reader needs), and the same call finishes it.

    Returns:
        The arrays removed.

    Raises:
        StoreError: no store there, or one of a version that cannot be upgraded (``check_root``'s message).
    """
    root = open_root(path, "r", storage_options)  # a loralens store this code reads
    version = root.attrs["schema_version"]
    if version == schema.SCHEMA_VERSION:
        return []
    if version not in schema.UPGRADES:
        schema.check_root(path, dict(root.attrs), write=True)
    root = zarr.open_group(path, mode="r+", storage_options=storage_options, zarr_format=3)
    removed = []
    runs = root["runs"] if "runs" in root else zarr.group()  # a store without runs: nothing to drop
    for run, checkpoint in sorted((run, c) for run in runs.group_keys() for c in runs[run].group_keys()):
        group = runs[run][checkpoint]
        for name in schema.RETIRED[version]:
            if name in group:
                del group[name]
                removed.append(f"runs/{run}/{checkpoint}/{name}")
    root.attrs["schema_version"] = schema.SCHEMA_VERSION
    return removed


# -- writer processes (``loralens trace --writers N``) ------------------------------------------------------
_WORKER: StoreWriter | None = None


def open_worker(path: str, storage_options: dict | None) -> None:
    """Initialise a writer process: open the store once; leave Ctrl+C to the tracing process.

    The tracing process waits for the batches it handed over when it is interrupted, so a worker finishes its
    batch (and marks its rows) instead of dying half-way through it.
    """
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = StoreWriter(path, storage_options)


def write_in_worker(run: str, checkpoint: schema.Checkpoint, rows: Sequence[int],
                    arrays: Sequence[dict[str, np.ndarray]]) -> int:
    """``StoreWriter.write_rows`` in a writer process (see ``open_worker``); return how many rows were written."""
    if _WORKER is None:
        raise RuntimeError("write_in_worker runs in a process that open_worker initialised")
    _WORKER.write_rows(run, checkpoint, rows, arrays)
    return len(rows)
