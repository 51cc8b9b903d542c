"""The causal lens's figures of merit (``loralens intervene``): what each intervention does to a run's decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import rel_entr
from sklearn.metrics import balanced_accuracy_score

from app.analysis.counterfactuals import AUDIO_KINDS


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) over the last axis, in nats (probabilities floored at 1e-12)."""
    return rel_entr(np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)).sum(-1)


def metrics(conditions: list[str], probabilities: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """What each condition did to a run's decisions, one row per condition.

    Columns: ``condition``, ``kind``, ``layer`` (-1: none), ``strength`` (of an audio change, else NaN), ``uar``,
    ``war``, ``kl`` (mean KL(none || condition)), ``flipped`` (share of predictions changed), ``uar_drop``.

    Args:
        conditions: names (``precompute.intervene``), ``none`` first.
        probabilities: ``(condition, utterance, class)``.
        labels: true class per utterance, ``(utterance,)``.
    """
    if not conditions or conditions[0] != "none":
        raise ValueError(f"conditions must start with none (the model as trained), got {conditions[:1]}")
    baseline = probabilities[0]
    rows = []
    for name, p in zip(conditions, probabilities, strict=True):
        kind, _, at = name.partition("@")
        audio = kind in AUDIO_KINDS
        predicted = p.argmax(-1)
        rows.append({"condition": name, "kind": kind, "layer": int(at) if at and not audio else -1,
                     "strength": float(at) if audio else np.nan,
                     "uar": float(balanced_accuracy_score(labels, predicted)),
                     "war": float(np.mean(labels == predicted)), "kl": float(kl(baseline, p).mean()),
                     "flipped": float(np.mean(predicted != baseline.argmax(-1)))})
    frame = pd.DataFrame(rows)
    frame["uar_drop"] = frame["uar"].iloc[0] - frame["uar"]
    return frame
