"""Check a store: schema, shapes, NaN/Inf, chunks and zarr.json files that do not decode, and completeness."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import zarr
from zarr.core.sync import sync

from loralens.store import schema
from loralens.store.damage import (
    chunk_problem,
    damaged_blocks,
    damaged_layers,
    is_damage,
    layers_text,
    node_kind,
    read_blocks,
    rows_text,
)
from loralens.store.reader import StoreError, StoreReader

if TYPE_CHECKING:
    from loralens.store.writer import StoreWriter

DamageKind = Literal["root", "group", "column", "checkpoint", "array", "layer_major", "summary", "rows",
                     "table_rows"]


@dataclass(frozen=True)
class Damage:
    """A part of the store that does not decode; its kind says what ``repair`` does about it."""

    kind: DamageKind
    """``root``, ``group``, ``column``, ``checkpoint``, ``array``, ``layer_major``: that node's zarr.json (or, for
    ``layer_major``, also a chunk of a layer-major copy); ``summary``: a node of a run's summary (``repair``
    removes the summary, ``loralens summarise`` computes it again); ``rows``: chunks of a checkpoint's rows;
    ``table_rows``: chunks of rows of the utterance table."""
    node: str
    """The node's path in the store, e.g. ``utterances/log_mel`` or ``runs/RUN/trained/logits``."""
    rows: tuple[int, ...] = ()
    """The rows it takes with it (``rows``, ``table_rows``; every row for ``column``)."""


@dataclass
class Report:
    """What ``validate`` found."""

    path: str
    problems: list[str] = field(default_factory=list)
    summary: str = ""
    damage: list[Damage] = field(default_factory=list)
    """Every part that does not decode (``repair`` acts on these, and on nothing else)."""

    @property
    def ok(self) -> bool:
        """No problems."""
        return not self.problems

    @property
    def damaged(self) -> dict[tuple[str, str], list[int]]:
        """(run, checkpoint) -> written rows with a chunk that does not decode (``repair`` clears their marks)."""
        out: dict[tuple[str, str], list[int]] = {}
        for d in self.damage:
            if d.kind == "rows":
                _, run, checkpoint, _ = d.node.split("/", 3)
                out.setdefault((run, checkpoint), []).extend(d.rows)
        return {key: sorted(set(rows)) for key, rows in out.items()}

    @property
    def table_rows(self) -> list[int]:
        """Rows of the utterance table to write again from their source audio files."""
        return sorted({r for d in self.damage if d.kind in ("table_rows", "column") for r in d.rows})

    @property
    def lost_columns(self) -> tuple[str, ...]:
        """Columns of the utterance table whose zarr.json does not decode (rebuilt whole from the sources)."""
        return tuple(d.node.split("/")[1] for d in self.damage if d.kind == "column")


_UNREADABLE = object()


class _Check:
    """One validation pass over a store, adding to a report."""

    def __init__(self, store: StoreReader, report: Report):
        self.store = store
        self.report = report
        self.path = store.path

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    def open(self, key: str) -> zarr.Group | zarr.Array | object | None:
        """A node, None where absent, or ``_UNREADABLE`` (reported) where its zarr.json does not decode."""
        try:
            return self.store._node(key)
        except StoreError as e:
            if e.__cause__ is None or not is_damage(e.__cause__):
                raise
            self.problem(str(e).removeprefix(f"{self.path}: "))
            self.report.damage.append(Damage(node_kind(key), key))
            return _UNREADABLE

    def chunks(self, node: str, array: zarr.Array, rows, ids: list, kind: DamageKind) -> list[int]:
        """Report the given rows of ``array`` whose chunks do not decode; return them."""
        blocks = damaged_blocks(array, rows)
        bad = sorted(r for block, _ in blocks for r in block)
        if bad:
            self.damaged(node, bad, blocks[0][1], ids, kind)
        return bad

    def damaged(self, node: str, rows: list[int], error: Exception, ids: list, kind: DamageKind) -> None:
        known = len(rows) == 1 and rows[0] < len(ids) and ids[rows[0]]
        where = rows_text(rows) + (f" ({ids[rows[0]]})" if known else "")
        self.problem(chunk_problem(self.path, node, where, error, len(rows)))
        self.report.damage.append(Damage(kind, node, tuple(rows)))

    # -- the utterance table ----------------------------------------------------------------------------
    def table(self) -> tuple[int, list, list] | None:
        """Check the table; return its rows, ids and frames per row (None where unreadable)."""
        table = self.open("utterances")
        if table is None:
            self.problem("no utterance table (/utterances): the store was never filled")
            return None
        columns = {}
        for name in schema.UTTERANCE_ARRAYS:
            array = self.open(f"utterances/{name}")
            if array is None:
                self.problem(f"utterances/{name}: missing")
            elif isinstance(array, zarr.Array):
                columns[name] = array
        # The ids are the rows' commit marks: rows past the first empty one were cut off (see StoreReader).
        if "id" in columns:
            ids, _ = read_blocks(columns["id"])
            n = next((i for i, uid in enumerate(ids) if uid == ""), len(ids))
        else:  # every row the other columns hold is rebuilt, its id from its source
            n = max((a.shape[0] for a in columns.values()), default=0)
            ids = [None] * n
        ids = ids[:n]
        frames = read_blocks(columns["n_frames"])[0][:n] if "n_frames" in columns else [None] * n
        self.report.damage = [replace(d, rows=tuple(range(n))) if d.kind == "column" else d
                              for d in self.report.damage]  # a column rebuilt whole takes every row with it
        for name, array in columns.items():
            if array.shape[0] != n:
                self.problem(f"utterances/{name}: {array.shape[0]} rows, the table has {n}")
            self.chunks(f"utterances/{name}", array, range(min(n, array.shape[0])), ids, "table_rows")
        return n, ids, frames

    # -- runs -------------------------------------------------------------------------------------------------
    def checkpoint(self, run: str, checkpoint: str, n: int, ids: list, frames: list) -> str | None:
        """Check a checkpoint's attributes, arrays, written rows and layer-major copies; return its summary."""
        where = f"runs/{run}/{checkpoint}"
        group = self.open(where)
        if not isinstance(group, zarr.Group):
            return None  # unreadable attributes (reported): repair removes the checkpoint, trace captures it again
        attrs = dict(group.attrs)
        if missing := [k for k in schema.CHECKPOINT_ATTRS if k not in attrs and k != "n_written"]:
            self.problem(f"{where}: attributes missing: {missing}")
        lora = attrs.get("method") == "lora"
        expected = schema.checkpoint_arrays(lora, attrs.get("capture", {}).get("per_frame_b", True))
        arrays, unreadable = {}, set()
        for name in self.store._children(where):
            if name == schema.CONSOLIDATED_GROUP:
                continue
            array = self.open(f"{where}/{name}")
            if array is _UNREADABLE:
                unreadable.add(name)
            elif isinstance(array, zarr.Array):
                arrays[name] = array
        for name in expected:
            if name not in arrays and name not in unreadable:
                self.problem(f"{where}/{name}: missing array")
        version = self.store.root.attrs.get("schema_version")
        for name in sorted(set(arrays) - set(expected) - set(schema.RETIRED.get(version, ()))):
            self.problem(f"{where}/{name}: not in schema version {version}")
        if "written" not in arrays:
            return None
        marks, damaged = read_blocks(arrays["written"])
        if damaged:  # rows whose mark does not decode: repair clears the mark, trace captures them again
            self.damaged(f"{where}/written", [r for block, _ in damaged for r in block], damaged[0][1], ids, "rows")
        rows = [r for r, mark in enumerate(marks[:n]) if mark]
        slot_major = bool(attrs.get("slot_rows"))

        def at(name: str, r: int) -> int:  # where row r lies in array name
            return int(marks[r]) - 1 if slot_major and schema.slotted(name) else r

        sampled = set(rows)
        if "sampled" in arrays:
            sample_marks, _ = read_blocks(arrays["sampled"])  # damaged blocks: found below, as any array's
            sampled = {r for r in rows if at("sampled", r) < len(sample_marks) and sample_marks[at("sampled", r)]}
        for name, spec in expected.items():
            if name not in arrays or name == "written":
                continue
            array = arrays[name]
            dims = schema.stored_dims(name) if slot_major else spec.dims
            if tuple(array.metadata.dimension_names or ()) != dims:
                self.problem(f"{where}/{name}: dimensions {array.metadata.dimension_names}, expected {dims}")
            size = n * schema.SLOT_ROWS if slot_major and schema.slotted(name) else n
            if array.shape[0] != size:
                self.problem(f"{where}/{name}: {array.shape[0]} {dims[0]}s, the table has {n} rows"
                             + (f" ({size} slots)" if size != n else ""))
                continue
            bad, error = [], None
            for r in (r for r in rows if r in sampled or not spec.sampled):
                try:
                    value = array[at(name, r)]
                except Exception as e:
                    if not is_damage(e):
                        raise
                    bad.append(r)
                    error = error or e
                    continue
                if not np.issubdtype(array.dtype, np.floating):
                    continue
                if spec.per_frame and frames[r] is not None:
                    value = np.take(value, range(int(frames[r])), axis=spec.dims.index("frame") - 1)
                if not np.isfinite(value).all():
                    self.problem(f"{where}/{name}: row {r} ({ids[r]}) holds NaN/Inf")
            if bad:
                self.damaged(f"{where}/{name}", bad, error, ids, "rows")
        self.layer_major(where, attrs)
        if not attrs.get("complete"):
            self.problem(f"{where}: not committed complete ({len(rows)} of the run's rows written); "
                         "finish it with the same loralens trace command")
        kept = f", per-frame arrays for {len(sampled)}" if len(sampled) < len(rows) else ""
        return f"{run}/{checkpoint} {len(rows)} rows{kept}"

    def layer_major(self, where: str, attrs: dict) -> None:
        """Check the layer-major copies' zarr.json files, and their chunks where readers use them."""
        key = f"{where}/{schema.CONSOLIDATED_GROUP}"
        if self.open(key) is None:
            return
        used = attrs.get("complete") and attrs.get("consolidated", -1) == attrs.get("n_written", -2)
        for name in self.store._children(key):
            copy = self.open(f"{key}/{name}")
            if not used or not isinstance(copy, zarr.Array):
                continue
            if layers := damaged_layers(copy):
                where = layers_text(copy, [j for j, _ in layers])
                self.problem(chunk_problem(self.path, f"{key}/{name}", where, layers[0][1]))
                self.report.damage.append(Damage("layer_major", f"{key}/{name}"))


    def summary(self, run: str) -> str | None:
        """Check a run's summary: every zarr.json and chunk decodes, and it is current; return how it stands."""
        key = f"runs/{run}/{schema.SUMMARY_GROUP}"
        group = self.open(key)
        if not isinstance(group, zarr.Group):
            return None
        stack = [key]
        while stack:
            node = stack.pop()
            for name in self.store._children(node):
                child = self.open(f"{node}/{name}")
                if isinstance(child, zarr.Group):
                    stack.append(f"{node}/{name}")
                elif isinstance(child, zarr.Array):
                    try:
                        child[...]
                    except Exception as e:
                        if not is_damage(e):
                            raise
                        self.problem(chunk_problem(self.path, f"{node}/{name}", "", e))
                        self.report.damage.append(Damage("summary", f"{node}/{name}"))
        if any(d.kind == "summary" and d.node.startswith(key) for d in self.report.damage):
            return None
        if self.store.summary(run) is None:
            self.problem(f"{key}: stale (computed before the run's latest rows) or of another version; renew it "
                         f"with loralens summarise {self.path}")
            return None
        return f"{run} summary current"


def validate(path: str, storage_options: dict | None = None) -> Report:
    """Check every array and attribute of the store against the schema, and every written row for NaN/Inf.

    Every chunk of the utterance table, of the written rows of every checkpoint array and of the layer-major
    copies readers use is decoded, and every zarr.json; those that do not decode are listed in ``damage``
    (see ``loralens.store.damage.is_damage``). Errors that are not damage (a bug, a missing library) propagate.
    """
    report = Report(path)
    try:
        store = StoreReader(path, storage_options)
    except StoreError as e:
        report.problems.append(str(e))
        if e.__cause__ is not None and is_damage(e.__cause__):
            report.damage.append(Damage("root", ""))
        return report
    check = _Check(store, report)
    table = check.table()
    if table is None:
        return report
    n, ids, frames = table
    parts = []
    if check.open("runs") is not None:
        for run in store._children("runs"):
            if check.open(f"runs/{run}") is None:
                continue
            present = store._children(f"runs/{run}")
            for checkpoint in (c for c in schema.CHECKPOINTS if c in present):
                if (part := check.checkpoint(run, checkpoint, n, ids, frames)) is not None:
                    parts.append(part)
            if schema.SUMMARY_GROUP in present:
                check.summary(run)
            if schema.INTERVENTIONS_GROUP in present:
                try:
                    store.interventions(run)  # every chunk decodes
                except StoreError as e:
                    report.problems.append(f"{e}; loralens intervene --run RUN_DIR --store {path} computes them again "
                                           "(delete the group first)")
    if not parts and not report.damage:
        report.problems.append("no runs: trace one with loralens trace --run RUN_DIR --store " + path)
    report.summary = f"{path}: OK, {n} utterances; " + ", ".join(parts)
    return report


def sizes(path: str, storage_options: dict | None = None) -> dict[str, int]:
    """Bytes stored (compressed) per part of the store.

    The utterance table (audio, log-mel, the rest); per checkpoint its sampled per-frame arrays, its other
    per-frame arrays, its pooled arrays and its layer-major copies; each run's summary.
    """
    store = StoreReader(path, storage_options)
    out: dict[str, int] = {}

    def add(key: str, node: str) -> None:
        array = store._node(node)
        if isinstance(array, zarr.Array):
            out[key] = out.get(key, 0) + array.nbytes_stored()

    for name in schema.UTTERANCE_ARRAYS:
        add(f"utterances/{name if name in ('audio', 'log_mel') else 'columns'}", f"utterances/{name}")
    for run, checkpoints in store.runs().items():
        for checkpoint in checkpoints:
            where = f"runs/{run}/{checkpoint}"
            for name, spec in schema.CHECKPOINT_ARRAYS.items():
                part = "per-frame, sampled" if spec.sampled else "per-frame" if spec.per_frame else "pooled"
                add(f"{where}: {part}", f"{where}/{name}")
                add(f"{where}: layer-major copies", f"{where}/{schema.CONSOLIDATED_GROUP}/{name}")
        summary = f"runs/{run}/{schema.SUMMARY_GROUP}"
        if store._node(summary) is not None:
            out[summary] = sync(store.root.store.getsize_prefix("/".join(p for p in (store.root.path, summary) if p)))
    return out


def repair(report: Report, storage_options: dict | None = None) -> list[str]:
    """Act on the damage ``validate`` found, inside the store; return what was done and what to run next.

    Groups without attributes get their zarr.json written again; a checkpoint whose attributes are lost is
    removed, an array whose zarr.json is lost is removed with every mark of its checkpoint, rows with a damaged
    chunk have their marks cleared (``loralens trace`` captures them all again), and damaged layer-major copies
    are rebuilt from the originals. Rows of the utterance table are left to the caller (``loralens validate
    --repair`` reads them again from their source audio files), as is a table column whose zarr.json is lost.
    A damaged root zarr.json is only reported.
    """
    from loralens.store.writer import StoreWriter

    acts = [d for d in report.damage if d.kind not in ("root", "table_rows", "column")]
    if not acts:
        return []
    writer = StoreWriter(report.path, storage_options)
    done = []
    for d in acts:
        if d.kind == "group":
            writer.rewrite_group(d.node)
            done.append(f"wrote {d.node}/zarr.json again (a group without attributes: nothing was lost)")
    lost = {tuple(d.node.split("/")[1:3]) for d in acts if d.kind == "checkpoint"}
    for run, checkpoint in sorted(lost):
        twin = [c for c in schema.CHECKPOINTS if c != checkpoint and c in writer._children(f"runs/{run}")]
        writer.remove_checkpoint(run, checkpoint)
        done.append(f"removed runs/{run}/{checkpoint} (its attributes were unreadable): "
                    + _retrace(writer, report.path, run, twin[0] if twin else None) + " to capture it again")
    cleared: dict[tuple[str, str], int] = {}
    for d in acts:
        run, checkpoint = d.node.split("/")[1:3] if d.kind in ("array", "rows") else (None, None)
        if (run, checkpoint) in lost:
            continue
        if d.kind == "array":
            n = writer.remove_array(run, checkpoint, d.node.split("/")[3])
            cleared[run, checkpoint] = max(cleared.get((run, checkpoint), 0), n)
            done.append(f"removed {d.node} (its zarr.json was unreadable)")
    for (run, checkpoint), rows in report.damaged.items():
        if (run, checkpoint) in lost or (run, checkpoint) in cleared:
            continue
        writer.unmark(run, checkpoint, rows)
        cleared[run, checkpoint] = len(rows)
    for (run, checkpoint), n in sorted(cleared.items()):
        done.append(f"cleared the marks of {n} damaged row(s) in runs/{run}/{checkpoint}: "
                    + _retrace(writer, report.path, run, checkpoint) + " to capture them")
    for run in sorted({d.node.split("/")[1] for d in acts if d.kind == "summary"}):
        writer.remove_summary(run)
        done.append(f"removed runs/{run}/{schema.SUMMARY_GROUP} (it did not decode): run loralens summarise "
                    f"{report.path} to compute it again (the pages compute what they need meanwhile)")
    for run, checkpoint in sorted({tuple(d.node.split("/")[1:3]) for d in acts if d.kind == "layer_major"} - lost):
        if writer.rebuild_layer_major(run, checkpoint):
            done.append(f"rebuilt the layer-major copies of runs/{run}/{checkpoint} from the per-utterance originals")
        else:
            done.append(f"removed the layer-major copies of runs/{run}/{checkpoint}: readers use the originals "
                        "until the loralens trace command of the run writes them again when it commits")
    return done


def _retrace(writer: StoreWriter, path: str, run: str, checkpoint: str | None) -> str:
    """'run the loralens trace command of run R again (loralens trace --run DIR --store PATH ...)'."""
    run_dir = None
    if checkpoint is not None:
        try:
            run_dir = writer.attrs(run, checkpoint).get("run_dir")
        except StoreError:
            pass
    command = f" (loralens trace --run {run_dir} --store {path}, with the selection it was traced with)" if run_dir \
        else ""
    return f"run the loralens trace command of run '{run}' again{command}"
