"""The causal view: a run's interventions (``loralens intervene``) as the Causal page and the report show them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loralens.analysis import causal, lens
from loralens.store.reader import StoreReader


@dataclass
class CausalView:
    """A run's interventions as the Causal page shows them (``causal_of``)."""

    metrics: pd.DataFrame
    """Per condition (``causal.metrics``): kind, layer, strength, UAR, WAR, KL, flipped share, UAR drop."""
    predictions: pd.DataFrame
    """Per utterance: ``row``, ``id``, ``emotion``, then its predicted emotion under each condition."""
    lens_logits: np.ndarray
    """``(condition, utterance, boundary, class)``, in ``metrics``' order."""
    emotions: list[str]
    """The class names."""
    partner: str | None
    """The run ``patch@`` conditions patched from."""

    def trajectory(self, row: int, condition: str) -> pd.DataFrame:
        """One utterance's lens as trained and under ``condition``, as class probabilities per boundary.

        Columns ``boundary``, ``emotion``, ``probability``, ``series`` (``as trained`` or the condition).
        """
        i = int(np.flatnonzero(self.predictions["row"].to_numpy() == row)[0])
        conditions = self.metrics["condition"].tolist()
        return trajectories({name: lens.trajectory(self.lens_logits[conditions.index(name), i])
                             for name in dict.fromkeys(("none", condition))}, self.emotions)


def trajectories(series: dict[str, np.ndarray], emotions: list[str]) -> pd.DataFrame:
    """Lens trajectories of one clip as a tidy frame (``charts.trajectories``).

    Args:
        series: condition name (``none``: as trained) -> class probabilities per boundary, ``(boundary, class)``.
        emotions: the class names.

    Returns:
        Columns ``boundary``, ``emotion``, ``probability``, ``series`` (``as trained`` for ``none``).
    """
    frames = [pd.DataFrame({"boundary": np.repeat(np.arange(len(p)), len(emotions)), "emotion": emotions * len(p),
                            "probability": np.asarray(p).ravel(), "series": "as trained" if name == "none" else name})
              for name, p in series.items()]
    return pd.concat(frames, ignore_index=True)


def causal_of(reader: StoreReader, run: str) -> CausalView | None:
    """A run's interventions (``loralens intervene``): the conditions finished so far, or None where there are none."""
    result = reader.interventions(run)
    if result is None or not result.done[0]:
        return None
    result = result.finished()
    conditions = result.conditions
    rows = result.rows.tolist()
    emotions = list(reader.attrs(run)["emotions"])
    labels = reader.read(run, "trained", "label", rows).astype(int)
    table = reader.utterances()
    predictions = pd.DataFrame({"row": rows, "id": np.asarray(table["id"])[rows],
                                "emotion": np.asarray(table["emotion"])[rows]})
    for name, p in zip(conditions, result.probabilities, strict=True):
        predictions[name] = [emotions[i] for i in p.argmax(-1)]
    return CausalView(causal.metrics(conditions, result.probabilities, labels), predictions, result.lens_logits,
                      emotions, result.partner)
