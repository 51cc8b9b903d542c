"""Intruder dimensions of LoRA-adapted weight matrices, from the weights alone.

Shuttleworth, Andreas, Torralba and Sharma, "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (arXiv
2410.21228): a singular vector of the fine-tuned matrix ``W = W0 + scaling * B @ A`` is an *intruder dimension* when
its largest cosine similarity with any singular vector of the pre-trained ``W0`` falls below a threshold ``epsilon``;
the paper looks at the top ``k`` singular vectors of ``W`` (left singular vectors, the columns of ``U``).

This module owns the computation (``top_similarity``), its per-run result (``Intruders``, kept threshold-free: the
top-k singular values and each one's largest similarity, so a view applies any ``epsilon`` without recomputing), its
JSON form (what ``loralens trace`` and ``loralens intruders`` record in a checkpoint's ``intruders`` attribute),
the tidy frames the app draws (``intruder_frame``, ``count_frame``, ``counts_at``, ``intruders_of``) and the
per-module counts at each threshold that ``loralens report`` tabulates (``by_threshold``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

TOP_K = 10
"""How many of the fine-tuned matrix's leading singular vectors are examined (the paper's figures use 10)."""
EPSILON = 0.5
"""Below this largest |cosine| with every singular vector of ``W0``, a singular vector is an intruder."""
EPSILONS = (0.5, 0.7, 0.9)
"""The thresholds the views show side by side (the paper varies epsilon over this range)."""
ATTR = "intruders"
"""The checkpoint attribute that holds a checkpoint's ``Intruders.to_json()`` (``store.schema.TRACE_ATTRS``)."""


def adapted(w0: np.ndarray, a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """The fine-tuned matrix of a LoRA module: ``W0 + scaling * B @ A``.

    Args:
        w0: the base weight, ``(d_out, d_in)`` (a ``torch.nn.Linear``'s layout).
        a: LoRA A, ``(rank, d_in)``.
        b: LoRA B, ``(d_out, rank)``.
        scaling: PEFT's ``alpha / rank`` (``alpha / sqrt(rank)`` under rsLoRA).

    Returns:
        ``(d_out, d_in)`` in float64.
    """
    w0, a, b = (np.asarray(x, dtype=np.float64) for x in (w0, a, b))
    if a.shape[1] != w0.shape[1] or b.shape[0] != w0.shape[0] or a.shape[0] != b.shape[1]:
        raise ValueError(f"W0 {w0.shape}, A {a.shape}, B {b.shape}; expected W0 (d_out, d_in), A (rank, d_in), "
                         "B (d_out, rank)")
    return w0 + scaling * (b @ a)


def base_vectors(w0: np.ndarray) -> np.ndarray:
    """The left singular vectors of ``W0``, ``(d_out, min(d_out, d_in))`` (columns, float64).

    Compute them once per module and pass them to ``top_similarity`` for every fold model and checkpoint that shares
    the base.
    """
    u, _, _ = np.linalg.svd(np.asarray(w0, dtype=np.float64), full_matrices=False)
    return u


def top_similarity(w0: np.ndarray | None, w: np.ndarray, k: int = TOP_K,
                   base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The fine-tuned matrix's top-k singular values and each one's largest |cosine| with ``W0``'s singular vectors.

    Singular vectors are defined up to sign, hence the absolute cosine. Both sets are unit vectors, so the cosines
    are the entries of ``U_w[:, :k].T @ U_0``. A vector is an intruder at ``epsilon`` where its similarity is below it.

    Args:
        w0: the base weight ``(d_out, d_in)``; may be None when ``base`` is given.
        w: the fine-tuned weight, ``(d_out, d_in)``.
        k: how many leading singular vectors of ``w`` to examine (at most ``min(d_out, d_in)``); default ``TOP_K``.
        base: ``base_vectors(w0)``, computed once for many ``w`` of one base.

    Returns:
        ``(singular, similarity)``, each ``(k,)``: singular values of ``w`` descending, and similarities in [0, 1].
    """
    w = np.asarray(w, dtype=np.float64)
    if not 0 < k <= min(w.shape):
        raise ValueError(f"k={k}; expected 1 to {min(w.shape)} (the matrix is {w.shape})")
    u0 = base_vectors(w0) if base is None else base
    if u0.shape[0] != w.shape[0]:
        raise ValueError(f"W0's singular vectors are {u0.shape[0]}-dimensional, W's {w.shape[0]}; expected the same "
                         "d_out (pass the matching base)")
    u, s, _ = np.linalg.svd(w, full_matrices=False)
    return s[:k], np.abs(u[:, :k].T @ u0).max(axis=1)


@dataclass(frozen=True)
class Intruders:
    """One checkpoint's intruder dimensions, per fold model and adapted module.

    The top-k singular vectors of ``W0 + scaling * B @ A``: their singular values and largest |cosine| with ``W0``'s
    singular vectors.
    """

    modules: tuple[str, ...]
    """Module names in order, e.g. ``layer_3.v_proj`` (the store's ``modules``)."""
    folds: tuple[int, ...]
    """The fold models, in order."""
    singular: np.ndarray
    """Top-k singular values of the fine-tuned matrices, descending, ``(n_folds, n_modules, k)``."""
    similarity: np.ndarray
    """Each one's largest |cosine| with a singular vector of ``W0``, in [0, 1], ``(n_folds, n_modules, k)``."""
    epsilon: float = EPSILON
    """The threshold: a singular vector is an intruder where its similarity is below it (``at`` changes it)."""
    k: int = field(init=False)
    """How many singular vectors per matrix were examined."""

    def __post_init__(self):
        singular, similarity = np.asarray(self.singular, np.float64), np.asarray(self.similarity, np.float64)
        expected = (len(self.folds), len(self.modules))
        if singular.ndim != 3 or singular.shape[:2] != expected or similarity.shape != singular.shape:
            raise ValueError(f"singular {singular.shape}, similarity {similarity.shape}; expected both "
                             f"(n_folds, n_modules, k) with (n_folds, n_modules) = {expected}")
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"epsilon={self.epsilon}; expected a cosine in (0, 1]")
        object.__setattr__(self, "singular", singular)
        object.__setattr__(self, "similarity", similarity)
        object.__setattr__(self, "k", singular.shape[2])

    def at(self, epsilon: float) -> Intruders:
        """The same singular vectors judged at another threshold (no recomputation)."""
        return replace(self, epsilon=epsilon)

    @property
    def mask(self) -> np.ndarray:
        """Which singular vectors are intruders, ``(n_folds, n_modules, k)`` bool."""
        return self.similarity < self.epsilon

    @property
    def counts(self) -> np.ndarray:
        """Intruders per fold model and module, ``(n_folds, n_modules)`` int."""
        return self.mask.sum(axis=2)

    def to_json(self) -> dict:
        """A JSON-able dict (``from_json`` reads it back); the threshold is the reader's choice and is not kept."""
        return {"k": self.k, "modules": list(self.modules), "folds": list(self.folds),
                "singular": self.singular.round(6).tolist(), "similarity": self.similarity.round(6).tolist()}

    @classmethod
    def from_json(cls, data: dict, epsilon: float = EPSILON) -> Intruders:
        """Read what ``to_json`` wrote."""
        return cls(tuple(data["modules"]), tuple(data["folds"]), np.asarray(data["singular"]),
                   np.asarray(data["similarity"]), epsilon)


def layer_of(module: str) -> tuple[int, str]:
    """``layer_3.v_proj`` -> ``(3, "v_proj")``."""
    match = re.fullmatch(r"layer_(\d+)\.(\w+)", module)
    if not match:
        raise ValueError(f"module {module!r}; expected a name like 'layer_3.v_proj'")
    return int(match[1]), match[2]


def intruder_frame(by_checkpoint: dict[str, Intruders], fold: int | None = None) -> pd.DataFrame:
    """Every examined singular vector, one row each, at each result's threshold (``fold``: that fold model's only).

    Columns: ``checkpoint``, ``fold``, ``module``, ``layer``, ``target``, ``position`` (0 = the largest singular
    value), ``singular``, ``similarity``, ``intruder`` (bool).
    """
    import pandas as pd  # here, so that ``loralens --help`` (which reads TOP_K and EPSILON) stays light

    parts = []
    for checkpoint, result in by_checkpoint.items():
        f, m, p = np.meshgrid(np.arange(len(result.folds)), np.arange(len(result.modules)), np.arange(result.k),
                              indexing="ij")
        layers = [layer_of(name) for name in result.modules]
        parts.append(pd.DataFrame({
            "checkpoint": checkpoint, "fold": np.asarray(result.folds)[f.ravel()],
            "module": np.asarray(result.modules)[m.ravel()], "layer": [layers[i][0] for i in m.ravel()],
            "target": [layers[i][1] for i in m.ravel()], "position": p.ravel(),
            "singular": result.singular.ravel(), "similarity": result.similarity.ravel(),
            "intruder": result.mask.ravel()}))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["checkpoint", "fold", "module", "layer", "target", "position", "singular", "similarity", "intruder"])
    return frame if fold is None else frame[frame["fold"] == fold].reset_index(drop=True)


def count_frame(by_checkpoint: dict[str, Intruders], fold: int | None = None) -> pd.DataFrame:
    """Intruders per module, each checkpoint's: averaged over fold models, or one fold model's.

    Args:
        by_checkpoint: checkpoint name (``trained``, ``random_twin``) -> its intruders.
        fold: one fold model, or None for the mean over them.

    Returns:
        Columns ``checkpoint``, ``module``, ``layer``, ``target``, ``count`` (mean over the fold models, may be
        fractional), ``max_singular`` (the largest intruder singular value, NaN where none), ``series``
        (``checkpoint`` or ``checkpoint · target`` where several targets are adapted), one row per checkpoint and
        module.
    """
    frame = intruder_frame(by_checkpoint, fold)
    keys = ["checkpoint", "module", "layer", "target"]
    counts = frame.groupby(keys + ["fold"], sort=False)["intruder"].sum().groupby(keys, sort=False).mean()
    largest = frame[frame["intruder"]].groupby(keys, sort=False)["singular"].max()
    out = counts.rename("count").to_frame().join(largest.rename("max_singular")).reset_index()
    several = out["target"].nunique() > 1
    out["series"] = out["checkpoint"] + (" · " + out["target"] if several else "")
    return out.sort_values(["checkpoint", "layer", "target"], ignore_index=True)


def counts_at(by_checkpoint: dict[str, Intruders], epsilons: tuple[float, ...] = EPSILONS,
              fold: int | None = None) -> pd.DataFrame:
    """``count_frame`` at each threshold of ``epsilons``, stacked, with a column ``epsilon`` (the count chart's)."""
    import pandas as pd

    return pd.concat([count_frame({c: r.at(e) for c, r in by_checkpoint.items()}, fold).assign(epsilon=e)
                      for e in epsilons], ignore_index=True)


def intruders_of(reader, run: str, epsilon: float = EPSILON) -> dict[str, Intruders]:
    """A store run's recorded intruders, per checkpoint (empty where ``loralens intruders`` has not recorded them).

    Args:
        reader: a ``loralens.store.reader.StoreReader``.
        run: the run's name in the store.
        epsilon: the threshold the results judge at.

    Returns:
        ``{"trained": ..., "random_twin": ...}`` for the checkpoints that hold the attribute.
    """
    out = {}
    for checkpoint in reader.runs().get(run, []):
        if data := reader.attrs(run, checkpoint).get(ATTR):
            out[checkpoint] = Intruders.from_json(data, epsilon)
    return out


def count_table(by_checkpoint: dict[str, Intruders]) -> pd.DataFrame:
    """Intruders per module, one row each: the mean over fold models and each fold model's count, per checkpoint.

    Returns:
        Index ``module``; columns ``<checkpoint>`` (the mean) and ``<checkpoint> fold <k>`` for every checkpoint of
        ``by_checkpoint`` and fold, in layer order.
    """
    frame = intruder_frame(by_checkpoint)
    per_fold = frame.groupby(["module", "layer", "checkpoint", "fold"], sort=False)["intruder"].sum().reset_index()
    columns = {}
    for checkpoint in by_checkpoint:
        mine = per_fold[per_fold["checkpoint"] == checkpoint]
        columns[checkpoint] = mine.groupby("module", sort=False)["intruder"].mean()
        for fold, counts in mine.groupby("fold"):
            columns[f"{checkpoint} fold {fold}"] = counts.set_index("module")["intruder"]
    import pandas as pd

    order = frame.drop_duplicates("module").sort_values(["layer", "module"])["module"]
    return pd.DataFrame(columns).reindex(order)


def by_threshold(by_checkpoint: dict[str, Intruders], epsilons: tuple[float, ...] = EPSILONS) -> dict:
    """A run's intruders per module at each threshold, as plain values: what ``loralens report`` records and tabulates.

    Args:
        by_checkpoint: checkpoint name (``trained``, ``random_twin``) -> its intruders (``intruders_of``); not empty.
        epsilons: the thresholds, each in (0, 1].

    Returns:
        ``k``, ``folds`` (the first checkpoint's fold models), ``epsilons``, ``checkpoints`` (``by_checkpoint``'s
        order); ``modules``, in layer order, each ``module``, ``layer``, ``target``, ``count`` and ``max_singular``:
        checkpoint -> one value per threshold (the mean count over fold models; the largest intruder singular value
        over them, None where there is none); and ``mean_count``: checkpoint -> per threshold, the mean of ``count``
        over modules.

    Raises:
        ValueError: ``by_checkpoint`` is empty.
    """
    if not by_checkpoint:
        raise ValueError("by_checkpoint is empty; expected at least one checkpoint's intruders (intruders_of(reader, "
                         "run) is empty where loralens intruders has not recorded them)")
    frame = counts_at(by_checkpoint, epsilons)
    cell = frame.set_index(["module", "checkpoint", "epsilon"])
    names = frame.drop_duplicates("module").sort_values(["layer", "target"])
    modules = []
    for m, layer, t in zip(names["module"], names["layer"], names["target"], strict=True):
        count = {c: [float(cell.at[(m, c, e), "count"]) for e in epsilons] for c in by_checkpoint}
        largest = {c: [_or_none(cell.at[(m, c, e), "max_singular"]) for e in epsilons] for c in by_checkpoint}
        modules.append({"module": m, "layer": int(layer), "target": t, "count": count, "max_singular": largest})
    first = next(iter(by_checkpoint.values()))
    return {"k": first.k, "folds": [int(f) for f in first.folds], "epsilons": [float(e) for e in epsilons],
            "checkpoints": list(by_checkpoint), "modules": modules,
            "mean_count": {c: [float(np.mean([m["count"][c][i] for m in modules])) for i in range(len(epsilons))]
                           for c in by_checkpoint}}


def _or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
