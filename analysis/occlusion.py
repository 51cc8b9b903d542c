"""Where in a clip the prediction comes from: occlusion over time.

Windows of the waveform are silenced one at a time (zeros, the digital silence the model's input also pads with),
each masked clip goes through the model as the clip did, and the drop of the predicted class's log-odds says how
much the prediction needed that stretch of sound. Log-odds, not probability: a confident prediction (P = 0.9999)
hardly moves in probability when a syllable is silenced, while its log-odds (here 9.2) do. Pure NumPy: the model's
passes are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loralens.store.schema import SAMPLE_RATE

WIDTH = 0.2
"""Seconds silenced at a time: about a syllable."""
HOP = 0.1
"""Seconds between the starts of consecutive windows (they overlap by half)."""


@dataclass(frozen=True)
class Occlusion:
    """What silencing each window of a clip does to the model's prediction."""

    target: str
    """The class whose probability is watched: the clip's prediction."""
    starts: np.ndarray
    """Each window's start, in seconds into the analysed audio, ``(n_windows,)``."""
    ends: np.ndarray
    """Each window's end, ``(n_windows,)``."""
    drops: np.ndarray
    """The target's log-odds on the clip minus on the clip with the window silenced (``log_odds``), ``(n_windows,)``:
    positive where the window's sound supported the prediction, negative where it held another class up."""
    predictions: list[str]
    """The prediction with each window silenced."""


def windows(n_samples: int, width: float = WIDTH, hop: float = HOP) -> np.ndarray:
    """The windows that cover a clip of ``n_samples`` 16 kHz samples: ``(n_windows, 2)`` sample bounds.

    Starts every ``hop`` seconds; the last window ends at the clip's end (a clip shorter than ``width`` is one window).
    """
    size, step = round(width * SAMPLE_RATE), round(hop * SAMPLE_RATE)
    if n_samples <= size:
        return np.array([[0, n_samples]])
    starts = np.arange(0, n_samples - size + step, step)
    starts = np.minimum(starts, n_samples - size)
    return np.unique(np.stack([starts, starts + size], 1), axis=0)


def masked(audio: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
    """One copy of ``audio`` per window of ``bounds`` (``windows``), that window's samples set to zero."""
    out = []
    for begin, end in bounds:
        copy = audio.copy()
        copy[begin:end] = 0.0
        out.append(copy)
    return out


def log_odds(logits: np.ndarray, target: int) -> np.ndarray:
    """log(p / (1 - p)) of class ``target`` from ``logits`` ``(..., n_classes)``.

    Exactly: its logit minus the log-sum-exp of the others' (no probability near 1 rounds it away).
    """
    z = np.asarray(logits, dtype=np.float64)
    others = np.delete(z, target, axis=-1)
    top = others.max(-1, keepdims=True)
    return z[..., target] - (top[..., 0] + np.log(np.exp(others - top).sum(-1)))


def occlusion(logits: np.ndarray, masked_logits: np.ndarray, bounds: np.ndarray, emotions: list[str]) -> Occlusion:
    """The occlusion of a clip from the model's logits.

    Args:
        logits: on the clip, ``(n_classes,)``.
        masked_logits: on each masked copy (``masked``), ``(n_windows, n_classes)``.
        bounds: the windows, ``(n_windows, 2)`` sample bounds.
        emotions: class names in label order.
    """
    target = int(np.argmax(logits))
    return Occlusion(emotions[target], bounds[:, 0] / SAMPLE_RATE, bounds[:, 1] / SAMPLE_RATE,
                     log_odds(logits, target) - log_odds(masked_logits, target),
                     [emotions[int(i)] for i in np.asarray(masked_logits).argmax(1)])


def timeline(result: Occlusion, step: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """The drops as a curve over time: at each ``step`` (an encoder frame), the mean drop of the windows covering it.

    Returns:
        Times (the steps' starts, seconds) and drops, both ``(n_steps,)``.
    """
    end = float(result.ends.max())
    times = np.arange(0.0, end, step)
    centres = times + step / 2
    cover = (result.starts[None] <= centres[:, None]) & (centres[:, None] < result.ends[None])
    counts = cover.sum(1)
    drops = np.where(counts > 0, (cover * result.drops[None]).sum(1) / np.maximum(counts, 1), 0.0)
    return times, drops
