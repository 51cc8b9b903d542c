"""The causal lens's figures of merit (``loralens intervene``): what each intervention does to a run's decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import rel_entr
from sklearn.metrics import balanced_accuracy_score


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) over the last axis, in nats (probabilities floored at 1e-12)."""
    return rel_entr(np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)).sum(-1)


def metrics(conditions: list[str], probabilities: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per condition: its kind and layer, UAR, WAR, mean KL(none || condition), flipped share, UAR drop.

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
        kind, _, layer = name.partition("@")
        predicted = p.argmax(-1)
        rows.append({"condition": name, "kind": kind, "layer": int(layer) if layer else -1,
                     "uar": float(balanced_accuracy_score(labels, predicted)),
                     "war": float(np.mean(labels == predicted)), "kl": float(kl(baseline, p).mean()),
                     "flipped": float(np.mean(predicted != baseline.argmax(-1)))})
    frame = pd.DataFrame(rows)
    frame["uar_drop"] = frame["uar"].iloc[0] - frame["uar"]
    return frame
