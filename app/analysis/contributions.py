"""Layer contributions: how much each sublayer writes into the residual stream, and in which direction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARRAYS = ("attention_norm_ratio", "attention_cosine", "mlp_norm_ratio", "mlp_cosine", "block_norm_ratio",
          "block_cosine")
"""The stored per-frame arrays ``contributions`` takes, in its argument order."""


@dataclass
class Contributions:
    """Per-layer means over utterances and their real frames."""

    attention: np.ndarray
    """||a|| / ||h|` per layer (a: attention output, h: layer input), ``(n_layers,)``."""
    mlp: np.ndarray
    """||m|| / ||h|| per layer, ``(n_layers,)``."""
    block: np.ndarray
    """||a + m|| / ||h|| per layer (a + m is the layer's whole update of the residual), ``(n_layers,)``."""
    attention_cosine: np.ndarray
    """cos(a, h) per layer, ``(n_layers,)``."""
    mlp_cosine: np.ndarray
    """cos(m, h) per layer, ``(n_layers,)``."""
    block_cosine: np.ndarray
    """cos(a + m, h) per layer, ``(n_layers,)``."""

    def minus(self, other: Contributions) -> Contributions:
        """Self minus ``other``, field by field (LoRA minus frozen: the paper's Fig. 1)."""
        return Contributions(*(getattr(self, f) - getattr(other, f) for f in self.__dataclass_fields__))

    def as_rows(self) -> list[dict]:
        """Tidy rows: one per layer and quantity (for charts and CSV)."""
        rows = []
        for field in self.__dataclass_fields__:
            kind = "cosine" if field.endswith("cosine") else "relative contribution"
            sublayer = field.replace("_cosine", "")
            for layer, value in enumerate(getattr(self, field)):
                rows.append({"layer": layer, "sublayer": sublayer, "measure": kind, "value": float(value)})
        return rows


def _frame_mean(values: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
    """Mean over utterances and real frames: ``(n_utt, n_layers, n_frames_padded)`` -> ``(n_layers,)``."""
    mask = np.arange(values.shape[-1])[None, None, :] < n_frames[:, None, None]
    values = np.where(mask, values.astype(np.float64), 0.0)
    return values.sum((0, 2)) / np.maximum(mask.sum((0, 2)), 1)


def contributions(attention_ratio: np.ndarray, attention_cosine: np.ndarray, mlp_ratio: np.ndarray,
                  mlp_cosine: np.ndarray, block_ratio: np.ndarray, block_cosine: np.ndarray,
                  n_frames: np.ndarray) -> Contributions:
    """Per-layer relative contributions and cosines, averaged over utterances and their real frames.

    Args:
        attention_ratio: ||a|| / ||h|| per frame, ``(n_utt, n_layers, n_frames_padded)``.
        attention_cosine: cos(a, h) per frame, same shape.
        mlp_ratio: ||m|| / ||h|| per frame, same shape.
        mlp_cosine: cos(m, h) per frame, same shape.
        block_ratio: ||a + m|| / ||h|| per frame, same shape.
        block_cosine: cos(a + m, h) per frame, same shape.
        n_frames: real frames per utterance, ``(n_utt,)``.
    """
    return Contributions(*(_frame_mean(v, n_frames) for v in (
        attention_ratio, mlp_ratio, block_ratio, attention_cosine, mlp_cosine, block_cosine)))
