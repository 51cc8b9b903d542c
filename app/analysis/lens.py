"""Logit lens: how each layer's pooled residual, read through the trained head, approaches the final prediction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LensSummary:
    """The logit lens over a set of utterances."""

    kl: np.ndarray
    """Mean KL(pi_l || pi_L) to the final prediction per boundary, shape ``(n_boundaries,)``."""
    overlap: np.ndarray
    """Fraction of utterances whose top-1 class at boundary l is the final one, ``(n_boundaries,)``."""
    kl_per_utterance: np.ndarray
    """KL per utterance and boundary, ``(n_utterances, n_boundaries)``."""
    resolution_depth: np.ndarray
    """Per utterance, the first boundary from which the top-1 class no longer changes, ``(n_utterances,)``."""
    by_emotion: dict[str, dict[str, np.ndarray]]
    """Per true emotion: ``kl`` and ``overlap`` curves, and ``resolution_depth`` (the mean)."""


def kl_to_final(lens_logits: np.ndarray) -> np.ndarray:
    """KL(pi_l || pi_L) per utterance and boundary.

    Args:
        lens_logits: logits per boundary, ``(n_utterances, n_boundaries, n_classes)``; the last is the model's.

    Returns:
        ``(n_utterances, n_boundaries)``, zero at the last boundary.
    """
    log_p = _special().log_softmax(lens_logits.astype(np.float64), axis=-1)
    log_q = log_p[:, -1:, :]
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


def summarise(lens_logits: np.ndarray, emotions: np.ndarray | None = None) -> LensSummary:
    """KL, top-1 overlap and resolution depth, averaged and per emotion.

    Args:
        lens_logits: ``(n_utterances, n_boundaries, n_classes)``.
        emotions: each utterance's true emotion, ``(n_utterances,)`` (None: no per-emotion split).
    """
    kl = kl_to_final(lens_logits)
    top = lens_logits.argmax(-1)
    agree = (top == top[:, -1:]).astype(float)
    depth = resolution_depth(lens_logits)
    by_emotion = {}
    if emotions is not None:
        for emotion in sorted(set(emotions.tolist())):
            mask = emotions == emotion
            by_emotion[emotion] = {"kl": kl[mask].mean(0), "overlap": agree[mask].mean(0),
                                   "resolution_depth": np.asarray(depth[mask].mean())}
    return LensSummary(kl.mean(0), agree.mean(0), kl, depth, by_emotion)


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
