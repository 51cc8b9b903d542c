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


FIELDS = (0, 2, 4, 1, 3, 5)
"""``Contributions``' fields in ``ARRAYS`` order: attention, mlp, block ratios, then their cosines."""


def frame_sums(values: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
    """Per utterance and layer, the sum over its real frames, in float64.

    ``(n_utt, n_layers, n_frames_padded)`` -> ``(n_utt, n_layers)``.
    """
    mask = np.arange(values.shape[-1])[None, None, :] < n_frames[:, None, None]
    return np.where(mask, values.astype(np.float64), 0.0).sum(2)


def from_sums(sums: np.ndarray, n_frames: np.ndarray) -> Contributions:
    """Contributions (means over utterances and their real frames) from per-utterance frame sums.

    Args:
        sums: ``frame_sums`` of each of ``ARRAYS``, ``(n_utt, 6, n_layers)``.
        n_frames: the utterances' real frames, ``(n_utt,)``.
    """
    total = max(int(np.sum(n_frames)), 1)
    means = sums.sum(0) / total
    return Contributions(*(means[i] for i in FIELDS))


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
    arrays = (attention_ratio, attention_cosine, mlp_ratio, mlp_cosine, block_ratio, block_cosine)
    n_frames = np.minimum(n_frames, attention_ratio.shape[-1])
    return from_sums(np.stack([frame_sums(v, n_frames) for v in arrays], axis=1), n_frames)
