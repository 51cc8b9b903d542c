"""Logit lens: how each layer's pooled residual, read through the trained head, approaches the final prediction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Direction = Literal["final||layer", "layer||final"]
"""Which way the KL runs: ``final||layer`` is KL(p_L || p_l), the paper's (its code computes
``F.kl_div(log p_l, p_L)``) and the tuned-lens literature's; ``layer||final`` is KL(p_l || p_L)."""
DIRECTIONS: tuple[Direction, ...] = ("final||layer", "layer||final")
KL_LABELS: dict[Direction, str] = {"final||layer": "KL(final ‖ layer)", "layer||final": "KL(layer ‖ final)"}
"""How every axis, metric and table names the KL of each direction."""


@dataclass
class LensSummary:
    """The logit lens over a set of utterances."""

    kl: np.ndarray
    """Mean KL between the final prediction and each boundary's (see ``direction``), ``(n_boundaries,)``."""
    overlap: np.ndarray
    """Fraction of utterances whose top-1 class at boundary l is the final one, ``(n_boundaries,)``."""
    kl_per_utterance: np.ndarray
    """KL per utterance and boundary, ``(n_utterances, n_boundaries)``."""
    resolution_depth: np.ndarray
    """Per utterance, the first boundary from which the top-1 class no longer changes, ``(n_utterances,)``."""
    by_emotion: dict[str, dict[str, np.ndarray]]
    """Per true emotion: ``kl`` and ``overlap`` curves, and ``resolution_depth`` (the mean)."""
    direction: Direction = "final||layer"
    """Which way ``kl`` runs."""

    @property
    def kl_label(self) -> str:
        """The KL's name with its direction, for axes and tables."""
        return KL_LABELS[self.direction]


def kl_to_final(lens_logits: np.ndarray, direction: Direction = "final||layer") -> np.ndarray:
    """KL between the final prediction p_L and each boundary's p_l, per utterance and boundary.

    Args:
        lens_logits: logits per boundary, ``(n_utterances, n_boundaries, n_classes)``; the last is the model's.
        direction: ``final||layer`` (default, the paper's): KL(p_L || p_l); ``layer||final``: KL(p_l || p_L).

    Returns:
        ``(n_utterances, n_boundaries)``, zero at the last boundary.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}; expected one of {DIRECTIONS}")
    log_layer = _special().log_softmax(lens_logits.astype(np.float64), axis=-1)
    log_final = np.broadcast_to(log_layer[:, -1:, :], log_layer.shape)
    log_p, log_q = (log_final, log_layer) if direction == "final||layer" else (log_layer, log_final)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def resolution_depth(lens_logits: np.ndarray) -> np.ndarray:
    """The first boundary from which every later boundary's top-1 class equals the final one.

    Args:
        lens_logits: ``(n_utterances, n_boundaries, n_classes)``.

    Returns:
        ``(n_utterances,)`` integers in ``[0, n_boundaries - 1]``.
    """
    top = lens_logits.argmax(-1)
    agrees = top == top[:, -1:]
    # Walk back from the end while the prediction agrees with the final one.
    tail = np.cumprod(agrees[:, ::-1], axis=1)[:, ::-1]
    return tail.shape[1] - tail.sum(axis=1)


def lens_statistics(lens_logits: np.ndarray, emotions: np.ndarray | None = None,
              direction: Direction = "final||layer") -> LensSummary:
    """KL, top-1 overlap and resolution depth, averaged and per emotion.

    Args:
        lens_logits: ``(n_utterances, n_boundaries, n_classes)``.
        emotions: each utterance's true emotion, ``(n_utterances,)`` (None: no per-emotion split).
        direction: which way the KL runs (see ``kl_to_final``).
    """
    kl = kl_to_final(lens_logits, direction)
    top = lens_logits.argmax(-1)
    agree = (top == top[:, -1:]).astype(float)
    depth = resolution_depth(lens_logits)
    by_emotion = {}
    if emotions is not None:
        for emotion in sorted(set(emotions.tolist())):
            mask = emotions == emotion
            by_emotion[emotion] = {"kl": kl[mask].mean(0), "overlap": agree[mask].mean(0),
                                   "resolution_depth": np.asarray(depth[mask].mean())}
    return LensSummary(kl.mean(0), agree.mean(0), kl, depth, by_emotion, direction)


def trajectory(lens_logits: np.ndarray) -> np.ndarray:
    """Class probabilities per boundary of one utterance: ``(n_boundaries, n_classes)`` -> same shape."""
    return _special().softmax(lens_logits.astype(np.float64), axis=-1)


def frame_probabilities(lens_logits_frames: np.ndarray, n_frames: int, class_index: int) -> np.ndarray:
    """The layers x time view: one class's probability per boundary and real frame.

    Args:
        lens_logits_frames: ``(n_boundaries, n_frames_padded, n_classes)``.
        n_frames: real frames.
        class_index: the class to show.

    Returns:
        ``(n_boundaries, n_frames)``.
    """
    return _special().softmax(lens_logits_frames[:, :n_frames].astype(np.float64), axis=-1)[..., class_index]


def _special():
    """``scipy.special``, imported on first use: a fifth of a second the explorer's start need not wait for."""
    import scipy.special

    return scipy.special
