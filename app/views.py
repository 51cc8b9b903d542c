"""What each view shows, computed from a store: reads arrays through the reader, runs the analyses.

No Streamlit here: the pages and ``loralens report`` both call these and only draw the results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from app.analysis import cka, contributions, lens, projections, spectra
from store.reader import StoreReader

LORA_QUANTITIES = ("lora_a_activation", "lora_a_gradient", "lora_b_activation", "lora_b_gradient")
QUANTITY_LABELS = {"lora_a_activation": "A activation", "lora_a_gradient": "A gradient",
                   "lora_b_activation": "B activation", "lora_b_gradient": "B gradient"}


@dataclass
class RunInfo:
    """A run of the store, as the views describe it."""

    name: str
    method: str
    model: str
    window: str
    rank: int
    targets: list[str]
    checkpoints: list[str]
    emotions: list[str]
    n_layers: int
    metrics: dict

    @property
    def label(self) -> str:
        """A short human label."""
        kind = f"LoRA r={self.rank} on {','.join(self.targets)}" if self.method == "lora" else "frozen encoder"
        return f"{self.name} ({self.model}, {kind}, {self.window})"


def run_info(reader: StoreReader) -> list[RunInfo]:
    """Every run of the store."""
    out = []
    for name, checkpoints in reader.runs().items():
        a = reader.attrs(name, checkpoints[0])
        out.append(RunInfo(name, a["method"], a["model"], a["window"], int(a["rank"]), list(a["targets"]),
                           checkpoints, list(a["emotions"]), int(a["n_layers"]), a.get("metrics", {})))
    return out


def frozen_partner(runs: list[RunInfo], run: RunInfo) -> RunInfo | None:
    """The frozen run that ``run`` is compared with: the first of ``runs`` of the same model and window, if any.

    The one matching rule of LoRA to frozen, for the pages and the report alike.
    """
    return next((r for r in runs if r.method == "frozen" and r.name != run.name
                 and (r.model, r.window) == (run.model, run.window)), None)


def pairs(reader: StoreReader) -> list[tuple[RunInfo, RunInfo | None]]:
    """Each LoRA run with its ``frozen_partner`` (None where the store has none)."""
    runs = run_info(reader)
    return [(r, frozen_partner(runs, r)) for r in runs if r.method == "lora"]


def rank_series(runs: list[RunInfo], run: RunInfo) -> list[RunInfo]:
    """The LoRA runs that differ from ``run`` only in rank, one per rank, sorted by rank.

    Same model, window and targets, so a module index means the same module in each; ``run`` itself stands for
    its own rank. The paper compares ranks 8, 32 and 64 this way.
    """
    key = (run.model, run.window, run.targets)
    same = [r for r in runs if r.method == "lora" and (r.model, r.window, r.targets) == key]
    by_rank = {r.rank: r for r in same if r.name != run.name} | {run.rank: run}
    return [by_rank[k] for k in sorted(by_rank)]


def utterance_table(reader: StoreReader, run: str | None = None) -> pd.DataFrame:
    """The utterance table; with ``run``, its prediction, correctness and fold for the rows it traced."""
    table = pd.DataFrame(reader.utterances())
    table.insert(0, "row", np.arange(len(table)))
    if run is not None:
        written = reader.written(run)
        emotions = reader.attrs(run)["emotions"]
        rows = np.flatnonzero(written)
        prediction = np.full(len(table), "", dtype=object)
        prediction[rows] = [emotions[i] for i in reader.read(run, "trained", "prediction", rows.tolist())]
        table["traced"] = written
        table["prediction"] = prediction
        table["correct"] = np.where(written, table["prediction"] == table["emotion"], False)
        fold = np.full(len(table), -1)
        fold[rows] = reader.read(run, "trained", "fold", rows.tolist())
        table["fold"] = fold
    return table


def common_rows(reader: StoreReader, *runs: str) -> list[int]:
    """Rows written in every given run's trained checkpoint."""
    mask = np.logical_and.reduce([reader.written(r) for r in runs])
    return np.flatnonzero(mask).tolist()


def lens_of(reader: StoreReader, run: str, rows: list[int] | None = None,
            direction: lens.Direction = "final||layer") -> lens.LensSummary:
    """The logit-lens summary of a run over ``rows`` (default: all it traced)."""
    rows = rows if rows is not None else common_rows(reader, run)
    emotions = reader.utterances()["emotion"][rows]
    return lens.summarise(reader.read(run, "trained", "lens_logits", rows), emotions, direction)


def contributions_of(reader: StoreReader, run: str, rows: list[int] | None = None) -> contributions.Contributions:
    """Per-layer contributions of a run over ``rows`` (default: all it traced)."""
    rows = rows if rows is not None else common_rows(reader, run)
    n_frames = reader.utterances()["n_frames"][rows]
    read = lambda name: reader.read(run, "trained", name, rows)  # noqa: E731
    return contributions.contributions(*(read(name) for name in contributions.ARRAYS), n_frames)


def fold_groups(reader: StoreReader, run: str, rows: list[int] | None = None,
                fold: int | None = None) -> dict[int, list[int]]:
    """Fold -> the rows it traced (each row is traced by the fold model that held it out); ``fold``: only that one.

    Raises:
        ValueError: ``fold`` traced none of the rows.
    """
    rows = rows if rows is not None else common_rows(reader, run)
    folds = reader.read(run, "trained", "fold", rows)
    groups = {int(f): [r for r, g in zip(rows, folds, strict=True) if g == f] for f in np.unique(folds)}
    if fold is None:
        return groups
    if fold not in groups:
        raise ValueError(f"run {run} has no traced utterances of fold {fold}; folds traced: {sorted(groups)}")
    return {fold: groups[fold]}


def lora_matrices(reader: StoreReader, run: str, checkpoint: str, quantity: str, groups: dict[int, list[int]],
                  modules: slice = slice(None)) -> list[list[np.ndarray]]:
    """Per LoRA module (of ``modules``), per fold model: every real frame of its utterances, ``(frames, dim)``."""
    rows = [r for group in groups.values() for r in group]
    values = reader.read(run, checkpoint, quantity, rows, module=modules)  # (n, module, frame, dim)
    n_frames = reader.utterances()["n_frames"][rows]
    at = {r: i for i, r in enumerate(rows)}
    index = [[at[r] for r in group] for group in groups.values()]
    return [[spectra.real_frames(values[ix, m], n_frames[ix]) for ix in index] for m in range(values.shape[1])]


def spectra_of(reader: StoreReader, run: str, threshold: float = 0.9, fold: int | None = None,
               modules: slice = slice(None), rows: list[int] | None = None) -> dict[str, dict[str, spectra.Spectrum]]:
    """Quantity -> checkpoint (trained, random_twin) -> spectrum per module, within each fold model.

    Args:
        reader: the store.
        run: a LoRA run.
        threshold: the effective-rank energy threshold (``Spectrum.at`` changes it without recomputing).
        fold: one fold model only; default: every fold that traced utterances, averaged.
        modules: which LoRA modules (default all).
        rows: the utterances (default: all the run traced).
    """
    groups = fold_groups(reader, run, rows, fold=fold)
    out = {}
    for quantity in LORA_QUANTITIES:
        if quantity not in reader.group(run, "trained"):
            continue
        out[quantity] = {c: spectra.spectrum(lora_matrices(reader, run, c, quantity, groups, modules), threshold)
                         for c in reader.runs()[run]}
    return out


def cka_a_vs_b(reader: StoreReader, run: str, checkpoint: str = "trained", fold: int | None = None,
               modules: slice = slice(None), rows: list[int] | None = None) -> dict[str, np.ndarray]:
    """Linear CKA between LoRA A and B outputs per module over real frames, within each fold model, averaged.

    ``rows``: the utterances (default: all the run traced).

    Returns:
        ``activation`` and ``gradient`` (where captured) -> ``(n_modules,)``.
    """
    groups = fold_groups(reader, run, rows, fold=fold)
    out = {}
    for kind in ("activation", "gradient"):
        if f"lora_b_{kind}" not in reader.group(run, checkpoint):
            continue
        a = lora_matrices(reader, run, checkpoint, f"lora_a_{kind}", groups, modules)
        b = lora_matrices(reader, run, checkpoint, f"lora_b_{kind}", groups, modules)
        out[kind] = np.array([np.mean([cka.linear_cka(x, y) for x, y in zip(xs, ys, strict=True)])
                              for xs, ys in zip(a, b, strict=True)])
    return out


def residual_cka(reader: StoreReader, run_a: str, run_b: str, rows: list[int] | None = None) -> np.ndarray:
    """Layer x layer linear CKA of pooled residuals, ``(n_boundaries_a, n_boundaries_b)``.

    ``rows``: the utterances (default: those both runs traced).
    """
    rows = rows if rows is not None else common_rows(reader, run_a, run_b)
    return cka.layer_heatmap(reader.read(run_a, "trained", "residual_pooled", rows),
                             reader.read(run_b, "trained", "residual_pooled", rows))


def vectors(reader: StoreReader, run: str, source: str, layer: int, checkpoint: str = "trained",
            rows: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Per-utterance vectors to project: the pooled residual at a boundary, or a module's pooled LoRA A output.

    Args:
        reader: the store.
        run: the run's name.
        source: ``residual`` (``layer`` is a boundary) or ``lora_a`` (``layer`` is a module index).
        layer: the boundary or module index.
        checkpoint: ``trained`` or ``random_twin``.
        rows: utterance rows (default: all the run traced).

    Returns:
        ``(n_rows, dim)`` vectors and the rows they belong to.
    """
    rows = rows if rows is not None else common_rows(reader, run)
    if source == "residual":
        return reader.read(run, checkpoint, "residual_pooled", rows, boundary=layer), rows
    if source == "lora_a":
        return reader.read(run, checkpoint, "lora_a_pooled", rows, module=layer), rows
    raise ValueError(f"source={source!r}; expected 'residual' or 'lora_a'")


def silhouettes(reader: StoreReader, run: str, rows: list[int] | None = None) -> np.ndarray:
    """Emotion silhouette of the pooled residual per boundary, ``(n_boundaries,)``."""
    rows = rows if rows is not None else common_rows(reader, run)
    labels = reader.utterances()["emotion"][rows]
    return projections.silhouette_per_layer(reader.read(run, "trained", "residual_pooled", rows), labels)


# -- tidy frames: what the pages draw and the report saves, built in one place ---------------------------------
def lens_frame(summaries: dict[str, lens.LensSummary]) -> pd.DataFrame:
    """Series label -> lens summary, as rows ``boundary, value, measure, series`` (KL named with its direction)."""
    rows = []
    for label, s in summaries.items():
        for b in range(len(s.kl)):
            rows += [{"boundary": b, "value": float(s.kl[b]), "measure": s.kl_label, "series": label},
                     {"boundary": b, "value": float(s.overlap[b]), "measure": "top-1 overlap", "series": label}]
    return pd.DataFrame(rows, columns=["boundary", "value", "measure", "series"])


def contribution_frame(mine: contributions.Contributions, label: str,
                       frozen: contributions.Contributions | None = None) -> pd.DataFrame:
    """A run's contributions (series ``label``), and with a frozen partner also ``frozen`` and ``LoRA - frozen``."""
    records = [r | {"series": label} for r in mine.as_rows()]
    if frozen is not None:
        records += [r | {"series": "frozen"} for r in frozen.as_rows()]
        records += [r | {"series": "LoRA - frozen"} for r in mine.minus(frozen).as_rows()]
    return pd.DataFrame(records)


def spectra_frame(spec: dict[str, dict[str, spectra.Spectrum]]) -> pd.DataFrame:
    """Cumulative-energy curves (averaged over modules) as rows ``k, energy, quantity, checkpoint``."""
    return pd.DataFrame([{"k": k + 1, "energy": float(e), "quantity": QUANTITY_LABELS[quantity],
                          "checkpoint": checkpoint}
                         for quantity, by_checkpoint in spec.items() for checkpoint, s in by_checkpoint.items()
                         for k, e in enumerate(s.mean_curve)])


def concentration(spec: dict[str, dict[str, spectra.Spectrum]]) -> dict[str, float]:
    """Quantity -> random-twin over trained effective rank (quantities of runs with a random twin)."""
    return {q: spectra.concentration_ratio(by["random_twin"], by["trained"]) for q, by in spec.items()
            if "random_twin" in by}


def rank_table(spec: dict[str, dict[str, spectra.Spectrum]]) -> pd.DataFrame:
    """Per quantity: trained and random effective rank (averaged over layers) and their ratio."""
    ratios = concentration(spec)
    return pd.DataFrame([{"quantity": QUANTITY_LABELS[q], "trained rank": by["trained"].mean_rank,
                          "random rank": by.get("random_twin", by["trained"]).mean_rank,
                          "concentration (random / trained)": ratios.get(q, float("nan"))}
                         for q, by in spec.items()])


def cka_ab_frame(ab: dict[str, np.ndarray]) -> pd.DataFrame:
    """CKA(A, B) per layer as rows ``layer, cka, series`` (activation, gradient)."""
    return pd.DataFrame([{"layer": i, "cka": float(v), "series": kind} for kind, values in ab.items()
                         for i, v in enumerate(values)], columns=["layer", "cka", "series"])


def heatmap_frame(matrix: np.ndarray) -> pd.DataFrame:
    """A layer x layer CKA matrix as rows ``LoRA, other, cka``."""
    return pd.DataFrame([{"LoRA": i, "other": j, "cka": float(matrix[i, j])} for i in range(matrix.shape[0])
                         for j in range(matrix.shape[1])])
