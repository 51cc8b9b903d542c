"""Check a store: schema, shapes, NaN/Inf in what is written, and completeness of every run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from store import schema
from store.reader import StoreError, StoreReader


@dataclass
class Report:
    """What ``validate`` found."""

    path: str
    problems: list[str] = field(default_factory=list)
    summary: str = ""
    damaged: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """(run, checkpoint) -> written rows with an unreadable chunk (``repair`` clears their marks)."""

    @property
    def ok(self) -> bool:
        """No problems."""
        return not self.problems


def validate(path: str, storage_options: dict | None = None) -> Report:
    """Check every array of the store against the schema and every written row for NaN/Inf."""
    report = Report(path)
    try:
        store = StoreReader(path, storage_options)
    except StoreError as e:
        report.problems.append(str(e))
        return report
    n = store.n_utterances
    table = store.root["utterances"] if "utterances" in store.root else None
    if table is None:
        report.problems.append("no utterance table (/utterances): the store was never filled")
        return report
    for name, spec in schema.UTTERANCE_ARRAYS.items():
        if name not in table:
            report.problems.append(f"utterances/{name}: missing")
        elif table[name].shape[0] != n:
            report.problems.append(f"utterances/{name}: {table[name].shape[0]} rows, the table has {n}")
    n_frames = store._column("n_frames") if "n_frames" in table else np.zeros(n, dtype=int)
    parts = []
    for run, checkpoints in store.runs().items():
        for checkpoint in checkpoints:
            where = f"runs/{run}/{checkpoint}"
            group = store.group(run, checkpoint)
            attrs = dict(group.attrs)
            if missing := [k for k in schema.CHECKPOINT_ATTRS if k not in attrs and k != "n_written"]:
                report.problems.append(f"{where}: attributes missing: {missing}")
            lora = attrs.get("method") == "lora"
            expected = schema.checkpoint_arrays(lora, attrs.get("capture", {}).get("per_frame_b", True))
            for name in expected:
                if name not in group:
                    report.problems.append(f"{where}/{name}: missing array")
            for name in sorted(set(group.array_keys()) - set(expected)):
                report.problems.append(f"{where}/{name}: not in schema version {schema.SCHEMA_VERSION}")
            if "written" not in group:
                continue
            written = group["written"][:].astype(bool)
            rows = np.flatnonzero(written)
            for name, spec in expected.items():
                if name not in group:
                    continue
                array = group[name]
                if tuple(array.metadata.dimension_names or ()) != spec.dims:
                    report.problems.append(f"{where}/{name}: dimensions {array.metadata.dimension_names}, "
                                           f"expected {spec.dims}")
                if array.shape[0] != n:
                    report.problems.append(f"{where}/{name}: {array.shape[0]} rows, the table has {n}")
                    continue
                for r in rows:
                    try:
                        value = array[int(r)]
                    except Exception as e:  # a truncated or corrupt chunk
                        report.problems.append(f"{where}/{name}: row {r} ({store._column('id')[r]}) unreadable, a "
                                               f"truncated or corrupt chunk ({e.__class__.__name__}: {e}); "
                                               f"loralens validate --repair {path} clears its mark, then the "
                                               "same loralens trace command captures it again")
                        report.damaged.setdefault((run, checkpoint), []).append(int(r))
                        continue
                    if not np.issubdtype(array.dtype, np.floating):
                        continue
                    if spec.per_frame:
                        value = np.take(value, range(int(n_frames[r])), axis=spec.dims.index("frame") - 1)
                    if not np.isfinite(value).all():
                        report.problems.append(f"{where}/{name}: row {r} ({store._column('id')[r]}) holds NaN/Inf")
            if not attrs.get("complete"):
                report.problems.append(f"{where}: not committed complete ({len(rows)} of the run's rows written); "
                                       "finish it with the same loralens trace command")
            parts.append(f"{run}/{checkpoint} {len(rows)} rows")
    if not parts:
        report.problems.append("no runs: trace one with loralens trace --run RUN_DIR --store " + path)
    report.summary = f"{path}: OK, {n} utterances; " + ", ".join(parts)
    return report


def repair(report: Report, storage_options: dict | None = None) -> int:
    """Clear the commit marks of the damaged rows ``validate`` found; return how many rows were cleared."""
    from store.writer import StoreWriter

    if not report.damaged:
        return 0
    writer = StoreWriter(report.path, storage_options)
    for (run, checkpoint), rows in report.damaged.items():
        writer.unmark(run, checkpoint, sorted(set(rows)))
    return sum(len(set(rows)) for rows in report.damaged.values())
