"""The views' queries: what each view shows, read from a store through the reader and run through the analyses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import pandas as pd

from loralens.analysis import cka, contributions, lens, projections, spectra
from loralens.analysis.moments import Moments
from loralens.store.reader import StoreReader, Summary

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
    data: str = ""
    """The ``--data SPEC`` the run was traced from."""
    source: dict | None = None
    """Where an imported run came from (``loralens import``; see ``TrainConfig.source``); None for a trained one."""
    freeze_a: bool = False
    """A LoRA run whose every A stayed at its random initialisation (``loralens train --freeze-a``): only B trained."""
    seed: int | None = None
    """The training seed (``--seed``; None where the run's config does not say)."""

    @property
    def held_out(self) -> bool:
        """Whether every utterance was predicted by a model that never trained on it (False: an import said not)."""
        return self.source is None or bool(self.source.get("held_out", True))

    @property
    def origin(self) -> str:
        """``trained`` (by loralens) or ``imported``, with ``not held out`` where its predictions are not."""
        if self.source is None:
            return "trained"
        return "imported" + ("" if self.held_out else ", not held out")

    @property
    def trained_on(self) -> str:
        """The data its models learned from.

        A trained run's data set (``synthetic``, ``emodb``, ...); an imported run's as its model card names them
        (``unknown`` without one).
        """
        if self.source is None:
            return self.data.split(":", 1)[0]
        return ", ".join((self.source.get("card") or {}).get("datasets", [])) or "unknown"

    @property
    def label(self) -> str:
        """A short human label."""
        return f"{self.name} ({self.model}, {self.kind}, {self.window})"

    @property
    def kind(self) -> str:
        """The method in words: ``LoRA r=32 on v_proj`` (``, A frozen`` with ``--freeze-a``), ``frozen encoder``, ..."""
        lora = f"LoRA r={self.rank} on {','.join(self.targets)}" + (", A frozen" if self.freeze_a else "")
        return {"lora": lora, "frozen": "frozen encoder", "full": "fully fine-tuned"}.get(self.method, self.method)

    @property
    def test_speakers(self) -> dict[int, tuple[str, ...]]:
        """Fold -> the speakers its model held out (from the run's metrics as traced; empty where they are not)."""
        return {int(f["fold"]): tuple(f.get("test_speakers", ())) for f in self.metrics.get("folds", [])}


def run_info(reader: StoreReader) -> list[RunInfo]:
    """Every run of the store."""
    out = []
    for name, checkpoints in reader.runs().items():
        a = reader.attrs(name, checkpoints[0])
        config = a.get("train_config", {})
        out.append(RunInfo(name, a["method"], a["model"], a["window"], int(a["rank"]), list(a["targets"]),
                           checkpoints, list(a["emotions"]), int(a["n_layers"]), a.get("metrics", {}),
                           a.get("data", ""), config.get("source"), bool(config.get("freeze_a", False)),
                           int(config["seed"]) if config.get("seed") is not None else None))
    return out


def frozen_partner(runs: list[RunInfo], run: RunInfo) -> RunInfo | None:
    """The frozen run that ``run`` is compared with: of its model, window and data set, the first of its seed.

    Where no frozen run has ``run``'s seed, the first of the others. The one matching rule of LoRA to frozen, for
    the pages, the summaries and the report alike: a grid traced into one store holds a frozen run per seed, and
    LoRA seed 1 is compared with frozen seed 1.
    """
    like = [r for r in runs if r.method == "frozen" and r.name != run.name
            and (r.model, r.window, _corpus(r.data)) == (run.model, run.window, _corpus(run.data))]
    return next((r for r in like if r.seed == run.seed), like[0] if like else None)


def _corpus(data: str) -> tuple[str, str]:
    """A ``--data SPEC`` as the corpus it names: its scheme and its folder's or file's name.

    ``emodb:../data/emodb`` and ``emodb:/abs/data/emodb`` are one corpus, named relative and absolute.
    """
    scheme, _, location = data.partition(":")
    return scheme, PurePath(location.rstrip("/")).name


def pairs(reader: StoreReader) -> list[tuple[RunInfo, RunInfo | None]]:
    """Each LoRA run with its ``frozen_partner`` (None where the store has none)."""
    runs = run_info(reader)
    return [(r, frozen_partner(runs, r)) for r in runs if r.method == "lora"]


def rank_series(runs: list[RunInfo], run: RunInfo) -> list[RunInfo]:
    """The LoRA runs that differ from ``run`` only in rank, one per rank, sorted by rank.

    Same model, window, targets, data set and A trained or frozen (``freeze_a``), so a module index means the same
    module in each and the utterances are shared; ``run`` itself stands for its own rank. The paper compares ranks 8,
    32 and 64 this way.
    """
    like = lambda r: (r.model, r.window, r.targets, _corpus(r.data), r.freeze_a)  # noqa: E731
    same = [r for r in runs if r.method == "lora" and like(r) == like(run)]
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


def summary_of(reader: StoreReader, run: str, rows: list[int] | None = None) -> Summary | None:
    """The run's current summary if it covers exactly ``rows`` (None: all the run traced), else None."""
    s = reader.summary(run)
    if s is None or (rows is not None and list(rows) != s["rows"].tolist()):
        return None
    return s


def lens_of(reader: StoreReader, run: str, rows: list[int] | None = None,
            direction: lens.Direction = "final||layer") -> lens.LensSummary:
    """The logit-lens summary of a run over ``rows`` (default: all it traced)."""
    rows = rows if rows is not None else common_rows(reader, run)
    emotions = reader.utterances()["emotion"][rows]
    return lens.lens_statistics(reader.read(run, "trained", "lens_logits", rows), emotions, direction)


def contributions_of(reader: StoreReader, run: str, rows: list[int] | None = None) -> contributions.Contributions:
    """Per-layer contributions of a run over ``rows`` (default: all it traced); from its summary where current."""
    rows = rows if rows is not None else common_rows(reader, run)
    n_frames = reader.utterances()["n_frames"][rows]
    s = reader.summary(run)
    if s is not None:
        index = {r: i for i, r in enumerate(s["rows"].tolist())}
        if all(r in index for r in rows):
            return contributions.from_sums(s["contribution_sums"][[index[r] for r in rows]], n_frames)
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


def sampled_groups(reader: StoreReader, run: str, checkpoint: str, groups: dict[int, list[int]]
                   ) -> dict[int, list[int]]:
    """``groups`` without the rows whose sampled per-frame arrays were not kept, and without folds left empty."""
    sampled = reader.sampled(run, checkpoint)
    kept = {fold: [r for r in rows if sampled[r]] for fold, rows in groups.items()}
    return {fold: rows for fold, rows in kept.items() if rows}


def lora_matrices(reader: StoreReader, run: str, checkpoint: str, quantity: str, groups: dict[int, list[int]],
                  modules: slice = slice(None)) -> list[list[np.ndarray]]:
    """Per LoRA module (of ``modules``), per fold model: every real frame of its utterances, ``(frames, dim)``.

    Everything in memory at once: the drill-down and the tests' reference. The views stream (``frame_moments``).

    ``groups``: fold -> rows, each holding the sampled per-frame arrays (``sampled_groups``).
    """
    rows = [r for group in groups.values() for r in group]
    values = reader.read(run, checkpoint, quantity, rows, module=modules)  # (n, module, frame, dim)
    n_frames = reader.utterances()["n_frames"][rows]
    at = {r: i for i, r in enumerate(rows)}
    index = [[at[r] for r in group] for group in groups.values()]
    return [[spectra.real_frames(values[ix, m], n_frames[ix]) for ix in index] for m in range(values.shape[1])]


ROWS_PER_READ = 16
"""Utterances read at once for the per-frame sums (a batch of one large-v2 module's B gradients: 120 MB)."""


def frame_moments(reader: StoreReader, run: str, checkpoint: str, x: str, module: int, rows: list[int],
                  y: str | None = None) -> Moments:
    """Moments of one LoRA module's per-frame ``x`` (and ``y`` of the same frames) over the real frames of ``rows``.

    Read ``ROWS_PER_READ`` rows of the one module at a time: memory grows with the module's width, not with the
    rows (``lora_matrices`` holds them all).

    Args:
        reader: the store.
        run: a LoRA run.
        checkpoint: ``trained`` or ``random_twin``.
        x: a per-frame LoRA quantity (``LORA_QUANTITIES``), ``(utterance, module, frame, dim)``.
        module: the module's index.
        rows: rows that kept their per-frame arrays (one fold model's, for a spectrum or CKA within it).
        y: a second quantity, for CKA of ``x`` with ``y`` (``Moments.linear_cka``).
    """
    group = reader.group(run, checkpoint)
    n_frames = reader.utterances()["n_frames"]
    m = Moments.empty(int(group[x].shape[-1]), int(group[y].shape[-1]) if y is not None else None)
    for start in range(0, len(rows), ROWS_PER_READ):
        batch = rows[start: start + ROWS_PER_READ]
        a = reader.read(run, checkpoint, x, batch, module=module)  # (b, frame, dim)
        b = reader.read(run, checkpoint, y, batch, module=module) if y is not None else None
        keep = np.arange(a.shape[1])[None, :] < n_frames[batch][:, None]
        m.add(a[keep], b[keep] if b is not None else None)
    return m


def _module_indices(reader: StoreReader, run: str, checkpoint: str, quantity: str, modules: slice) -> range:
    return range(int(reader.array(run, checkpoint, quantity).shape[1]))[modules]


def _fold_index(s: Summary, fold: int | None) -> list[int]:
    folds = s["folds"].tolist()
    if fold is None:
        return list(range(len(folds)))
    if fold not in folds:
        raise ValueError(f"the run has no traced utterances of fold {fold}; folds traced: {sorted(folds)}")
    return [folds.index(fold)]


def spectra_of(reader: StoreReader, run: str, threshold: float = 0.9, fold: int | None = None,
               modules: slice = slice(None), rows: list[int] | None = None) -> dict[str, dict[str, spectra.Spectrum]]:
    """Quantity -> checkpoint (trained, random_twin) -> spectrum per module, within each fold model.

    Over the real frames of the rows that kept their per-frame arrays; from the run's summary where it is current
    and covers ``rows``.

    Args:
        reader: the store.
        run: a LoRA run.
        threshold: the effective-rank energy threshold (``Spectrum.at`` changes it without recomputing).
        fold: one fold model only; default: every fold that traced utterances, averaged.
        modules: which LoRA modules (default all).
        rows: the utterances (default: all the run traced).
    """
    s = summary_of(reader, run, rows)
    groups = None  # read once, where the summary does not hold a quantity
    out = {}
    for quantity in LORA_QUANTITIES:
        if quantity not in reader.group(run, "trained"):
            continue
        by_checkpoint = {}
        for c in reader.runs()[run]:
            if s is not None and f"spectra/{c}/{quantity}" in s:
                values = s[f"spectra/{c}/{quantity}"][modules]
                frames = s[f"frames/{c}/{quantity.rsplit('_', 1)[1]}"]
                index = [j for j in _fold_index(s, fold) if frames[j] > 0]
                singular = tuple(tuple(module[j, : min(int(frames[j]), module.shape[1])] for j in index)
                                 for module in values)
            else:  # one module at a time (frame_moments), not every module's frames at once
                groups = groups if groups is not None else fold_groups(reader, run, rows, fold=fold)
                kept = sampled_groups(reader, run, c, groups)
                index = list(kept)
                singular = tuple(tuple(frame_moments(reader, run, c, quantity, m, g).singular_values()
                                       for g in kept.values())
                                 for m in _module_indices(reader, run, c, quantity, modules)) if kept else ()
            if index:
                by_checkpoint[c] = spectra.Spectrum(singular, threshold)
        if by_checkpoint:
            out[quantity] = by_checkpoint
    return out


def cka_a_vs_b(reader: StoreReader, run: str, checkpoint: str = "trained", fold: int | None = None,
               modules: slice = slice(None), rows: list[int] | None = None) -> dict[str, np.ndarray]:
    """Linear CKA between LoRA A and B outputs per module over real frames, within each fold model, averaged.

    Over the rows that kept their per-frame arrays; from the run's summary where it is current and covers
    ``rows`` (default: all the run traced).

    Returns:
        ``activation`` and ``gradient`` (where captured) -> ``(n_modules,)``.
    """
    s = summary_of(reader, run, rows)
    out = {}
    for kind in ("activation", "gradient"):
        if f"lora_b_{kind}" not in reader.group(run, checkpoint):
            continue
        if s is not None and f"cka_ab/{checkpoint}/{kind}" in s:
            frames = s[f"frames/{checkpoint}/{kind}"]
            index = [j for j in _fold_index(s, fold) if frames[j] > 0]
            if index:
                out[kind] = s[f"cka_ab/{checkpoint}/{kind}"][modules][:, index].mean(1)
            continue
        groups = sampled_groups(reader, run, checkpoint, fold_groups(reader, run, rows, fold=fold))
        if not groups:
            continue
        a, b = f"lora_a_{kind}", f"lora_b_{kind}"
        out[kind] = np.array([np.mean([frame_moments(reader, run, checkpoint, a, m, g, b).linear_cka()
                                       for g in groups.values()])
                              for m in _module_indices(reader, run, checkpoint, a, modules)])
    return out


ONE_MODEL = -1
"""A frozen run's fold in ``residual_cka_groups``' keys: its encoder is one model in every fold (only heads trained)."""


def residual_cka_groups(reader: StoreReader, run_a: str, run_b: str, rows: list[int] | None = None,
                        fold: int | None = None) -> dict[tuple[int, int], list[int]]:
    """The fold models residual CKA is computed within: ``(fold of run_a, fold of run_b)`` -> their rows.

    Each row was traced by the fold model of each run that held it out. A LoRA or fully fine-tuned run's folds are
    different encoders; a frozen run's are one (its fold is ``ONE_MODEL`` here and splits nothing).

    Args:
        reader: the store.
        run_a: the run of the matrix's rows.
        run_b: the run of its columns (``run_a`` itself: CKA within the run).
        rows: the utterances (default: those both runs traced).
        fold: only the rows ``run_a``'s fold model ``fold`` traced.

    Raises:
        ValueError: ``fold`` traced none of the rows.
    """
    rows = rows if rows is not None else common_rows(reader, run_a, run_b)
    if fold is not None:
        rows = fold_groups(reader, run_a, rows, fold=fold)[fold]

    def folds(run: str) -> np.ndarray:
        if reader.attrs(run)["method"] == "frozen":
            return np.full(len(rows), ONE_MODEL)
        return np.asarray(reader.read(run, "trained", "fold", rows), dtype=int)

    fa = folds(run_a)
    fb = fa if run_b == run_a else folds(run_b)
    groups: dict[tuple[int, int], list[int]] = {}
    for r, a, b in zip(rows, fa, fb, strict=True):
        groups.setdefault((int(a), int(b)), []).append(r)
    return dict(sorted(groups.items()))


def residual_cka_scope(groups: dict[tuple[int, int], list[int]]) -> str:
    """What a ``residual_cka`` over ``groups`` (``residual_cka_groups``) averages, for a chart's title.

    ``fold 2's model``, ``mean of 4 fold models``, ``one model (frozen encoder)``, with the fold models left out
    for too few utterances named: ``mean of 3 fold models; fold 5 (2 utterances) left out: fewer than 4``.
    """
    used = [k for k, g in groups.items() if len(g) >= cka.MIN_SAMPLES]
    left = [f"{_fold_model(k)} ({len(g)} utterance{'s' * (len(g) != 1)})" for k, g in groups.items()
            if len(g) < cka.MIN_SAMPLES]
    if not used:
        text = "no fold model"
    elif used == [(ONE_MODEL, ONE_MODEL)]:
        text = "one model (frozen encoder)"
    elif len(used) == 1:
        text = f"{_fold_model(used[0])}'s model"
    else:
        text = f"mean of {len(used)} fold models"
    if left:
        text += f"; {', '.join(left)} left out: fewer than {cka.MIN_SAMPLES}"
    return text


def _fold_model(key: tuple[int, int]) -> str:
    """A ``residual_cka_groups`` key as its fold models: ``fold 3`` (or ``fold 3/1`` where the runs' differ)."""
    if key == (ONE_MODEL, ONE_MODEL):
        return "the frozen encoder"
    return "fold " + "/".join(str(f) for f in dict.fromkeys(key) if f != ONE_MODEL)


def residual_cka(reader: StoreReader, run_a: str, run_b: str, rows: list[int] | None = None,
                 live: bool = False, grams_cache: dict | None = None, fold: int | None = None) -> np.ndarray:
    """Layer x layer minibatch CKA of pooled residuals within each fold model, averaged over them.

    As spectra and CKA(A, B): each fold model's utterances (``residual_cka_groups``) give a matrix of their own,
    and the result is the plain mean of those matrices (not weighted by the fold models' utterances). Stacking
    several models' utterances would measure how the models differ as much as how the layers relate. Each matrix
    is the estimator of ``cka.minibatch_heatmap`` over minibatches of ``cka.MINIBATCH`` of its utterances (one
    batch, the full-data unbiased CKA, for fewer than twice that). Fold models with fewer than ``cka.MIN_SAMPLES``
    utterances are left out (the unbiased estimator needs that many; ``residual_cka_scope`` names them).

    Args:
        reader: the store.
        run_a: the run of the rows.
        run_b: the run of the columns (``run_a``: within the run).
        rows: the utterances (default: those both runs traced).
        live: compute from the arrays even where a summary holds the result (a summary holds the mean over every
            fold model of every row both runs traced).
        grams_cache: a dict kept between calls, so a run's minibatch Gram matrices over the same fold models' rows
            are computed once (a summary compares a run with itself and with its partner).
        fold: ``run_a``'s fold model ``fold`` alone (computed now: a summary holds the mean).

    Returns:
        ``(n_boundaries_a, n_boundaries_b)``.

    Raises:
        ValueError: no fold model traced ``cka.MIN_SAMPLES`` of the rows, or ``fold`` traced none.
    """
    both = common_rows(reader, run_a, run_b)
    rows = rows if rows is not None else both
    if not live and fold is None and list(rows) == both:
        for mine, other, flip in ((run_a, run_b, False), (run_b, run_a, True)):
            s = reader.summary(mine)
            if s is not None and f"residual_cka/{other}" in s:
                matrix = s[f"residual_cka/{other}"]
                return matrix.T if flip else matrix
    groups = residual_cka_groups(reader, run_a, run_b, rows, fold)
    usable = [g for g in groups.values() if len(g) >= cka.MIN_SAMPLES]
    if not usable:
        traced = ", ".join(f"{_fold_model(k)}: {len(g)}" for k, g in groups.items()) or "none"
        raise ValueError(f"residual CKA of {run_a} with {run_b} needs a fold model that traced at least "
                         f"{cka.MIN_SAMPLES} of the utterances both traced"
                         + (f" (of fold {fold} of {run_a})" if fold is not None else "")
                         + f"; utterances per fold model: {traced}")
    batches = [cka.minibatches(len(g)) for g in usable]

    def grams(run: str) -> list[list[list[np.ndarray]]]:
        """Per fold model, per boundary, its Gram matrix on each of its minibatches."""
        key = (run, tuple(map(tuple, usable)))
        if grams_cache is not None and key in grams_cache:
            return grams_cache[key]
        every = sorted(r for g in usable for r in g)
        at = {r: i for i, r in enumerate(every)}
        index = [[at[r] for r in g] for g in usable]
        out: list[list[list[np.ndarray]]] = [[] for _ in usable]
        for j in range(reader.array(run, "trained", "residual_pooled").shape[1]):
            x = reader.read(run, "trained", "residual_pooled", every, boundary=j)  # one boundary at a time
            for per_boundary, ix, b in zip(out, index, batches, strict=True):
                per_boundary.append(cka.minibatch_grams(x[ix], b))
        if grams_cache is not None:
            grams_cache[key] = out
        return out

    a = grams(run_a)
    b = a if run_b == run_a else grams(run_b)
    return np.mean([cka.minibatch_heatmap(x, y) for x, y in zip(a, b, strict=True)], axis=0)


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


def placing_map(reader: StoreReader, run: str, source: str, layer: int) -> tuple[projections.Projection, list[int]]:
    """A UMAP map of ``vectors(reader, run, source, layer)`` that places new vectors (an upload), and its rows.

    From ``projections.EXACT_NEIGHBOURS`` utterances it maps a seeded sample of one fewer: placing on a map of
    more costs pynndescent's compilation (over a minute) in the app's process, on the click of an upload.
    """
    rows = common_rows(reader, run)
    rows = [rows[i] for i in projections.fixed_sample(len(rows), projections.EXACT_NEIGHBOURS - 1)]
    x, rows = vectors(reader, run, source, layer, rows=rows)
    return projections.project(x, "umap", placeable=True), rows


def map_of(reader: StoreReader, run: str, source: str, layer: int, method: projections.Method,
           fold: int | None = None) -> tuple[np.ndarray, list[int], float]:
    """A 2-D map of ``vectors(reader, run, source, layer)``: coordinates, rows, and emotion silhouette on it.

    ``(n_rows, 2)`` coordinates of the rows the method maps (``projections.map_rows``). From the run's summary
    where current, else fitted now (seconds to a minute for thousands of utterances). ``fold``: only the utterances
    that fold's model traced, in a map of their own (fitted now: a tenth of a run's utterances).
    """
    s = reader.summary(run) if fold is None else None
    if s is not None and f"maps/{source}/{method}" in s:
        rows = s["rows"] if f"map_rows/{method}" not in s else s["rows"][s[f"map_rows/{method}"]]
        return (s[f"maps/{source}/{method}"][layer], rows.tolist(),
                float(s[f"map_silhouette/{source}/{method}"][layer]))
    x, rows = vectors(reader, run, source, layer, rows=_fold_rows(reader, run, fold))
    keep = projections.map_rows(len(rows), method)
    x, rows = x[keep], [rows[i] for i in keep]
    coordinates = projections.project(x, method).coordinates
    return coordinates, rows, projections.silhouette(coordinates, reader.utterances()["emotion"][rows])


def silhouette_of(reader: StoreReader, run: str, source: str, layer: int, fold: int | None = None) -> float:
    """Emotion silhouette of ``vectors(reader, run, source, layer)`` in their own space (summary where current).

    ``fold``: of the utterances that fold's model traced only.
    """
    s = reader.summary(run) if fold is None else None
    if s is not None and f"silhouette/{source}" in s:
        return float(s[f"silhouette/{source}"][layer])
    x, rows = vectors(reader, run, source, layer, rows=_fold_rows(reader, run, fold))
    return projections.silhouette(x, reader.utterances()["emotion"][rows])


def _fold_rows(reader: StoreReader, run: str, fold: int | None) -> list[int] | None:
    """The rows ``fold``'s model traced (None: every row the run traced, as ``vectors`` takes None)."""
    return None if fold is None else fold_groups(reader, run, fold=fold)[fold]


def silhouettes(reader: StoreReader, run: str, rows: list[int] | None = None) -> np.ndarray:
    """Emotion silhouette of the pooled residual per boundary, ``(n_boundaries,)``.

    From the run's summary where it is current and covers ``rows``.
    """
    s = summary_of(reader, run, rows)
    if s is not None and "silhouette/residual" in s:
        return s["silhouette/residual"]
    rows = rows if rows is not None else common_rows(reader, run)
    labels = reader.utterances()["emotion"][rows]
    n = reader.array(run, "trained", "residual_pooled").shape[1]
    return np.array([projections.silhouette(reader.read(run, "trained", "residual_pooled", rows, boundary=j),
                                            labels) for j in range(n)])
