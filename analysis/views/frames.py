"""The views' tidy frames: what the pages draw and the report saves, built in one place."""

from __future__ import annotations

import numpy as np
import pandas as pd

from loralens.analysis import contributions, lens, occlusion, spectra
from loralens.analysis.views.queries import QUANTITY_LABELS

TIME_COLUMNS = 250
"""The most time columns a layers x time view draws; longer clips are averaged in blocks of frames."""


PICK_LIMIT = 500
"""The most utterances a picker lists: the browser builds every option of a select on each draw of the page (the
5,500 utterances of an IEMOCAP-sized store cost the Utterance page half a second)."""


def listed(choices: pd.DataFrame, current: str | None, limit: int | None = None) -> pd.DataFrame:
    """The first ``limit`` (default ``PICK_LIMIT``) of the matching utterances ``choices``, in their order.

    ``choices`` is a table with an ``id`` column; ``current`` (the URL's utterance) stays among those listed wherever
    it matches, so a link keeps its utterance.
    """
    limit = PICK_LIMIT if limit is None else limit
    if len(choices) <= limit:
        return choices
    head = choices.iloc[:limit]
    if current is None or current in set(head["id"]) or current not in set(choices["id"]):
        return head
    return pd.concat([choices[choices["id"] == current], head.iloc[: limit - 1]])


def time_blocks(values: np.ndarray, columns: int = TIME_COLUMNS) -> tuple[np.ndarray, int]:
    """``(rows, n_frames)`` averaged over blocks of consecutive frames to at most ``columns``; and the block size.

    The last block may be shorter (its mean is over the frames it has).
    """
    n = values.shape[1]
    step = max(1, -(-n // columns))
    if step == 1:
        return values, 1
    starts = np.arange(0, n, step)
    sums = np.add.reduceat(values.astype(np.float64), starts, axis=1)
    return sums / np.diff(np.append(starts, n))[None, :], step
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


CURVE_POINTS = 256
"""Points drawn per cumulative-energy curve at most: log-spaced in k, as the chart's axis is (a width-1280 B curve
drawn at every k would send 1280 points per curve on every slider move, none of them visible apart)."""


def spectra_frame(spec: dict[str, dict[str, spectra.Spectrum]]) -> pd.DataFrame:
    """Cumulative-energy curves (averaged over modules) as rows ``k, energy, quantity, checkpoint``.

    Each curve at ``CURVE_POINTS`` log-spaced k at most: the curve's own values there, its first and last k included.
    """
    rows = []
    for quantity, by_checkpoint in spec.items():
        for checkpoint, s in by_checkpoint.items():
            curve = s.mean_curve
            ks = np.unique(np.round(np.geomspace(1, len(curve), min(len(curve), CURVE_POINTS))).astype(int))
            rows += [{"k": int(k), "energy": float(curve[k - 1]), "quantity": QUANTITY_LABELS[quantity],
                      "checkpoint": checkpoint} for k in ks]
    return pd.DataFrame(rows)


def concentration(spec: dict[str, dict[str, spectra.Spectrum]]) -> dict[str, float]:
    """Quantity -> random-twin over trained effective rank (quantities of runs with a random twin)."""
    return {q: spectra.concentration_ratio(by["random_twin"], by["trained"]) for q, by in spec.items()
            if "random_twin" in by}


def rank_table(spec: dict[str, dict[str, spectra.Spectrum]]) -> pd.DataFrame:
    """Per quantity: trained and random effective rank (averaged over layers) and their ratio.

    Without a random twin the random rank and the ratio are NaN (shown empty), never the trained rank.
    """
    ratios = concentration(spec)
    return pd.DataFrame([{"quantity": QUANTITY_LABELS[q], "trained rank": by["trained"].mean_rank,
                          "random rank": by["random_twin"].mean_rank if "random_twin" in by else float("nan"),
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


def occlusion_frame(result: occlusion.Occlusion, step: float = occlusion.HOP) -> pd.DataFrame:
    """The occlusion as segments of ``step`` seconds: ``start``, ``end`` (seconds) and ``drop``.

    A segment's drop is the mean drop of the target's probability over the windows covering it
    (``occlusion.timeline``).
    """
    times, drops = occlusion.timeline(result, step)
    end = float(result.ends.max())
    return pd.DataFrame({"start": np.round(times, 3), "end": np.round(np.minimum(times + step, end), 3),
                         "drop": np.round(drops, 4)})
