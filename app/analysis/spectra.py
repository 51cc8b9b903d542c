"""SVD spectra: cumulative energy and effective rank of LoRA activations and gradients, trained vs random."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def real_frames(values: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
    """Stack every utterance's real frames: ``(n_utt, n_frames_padded, dim)`` -> ``(sum(n_frames), dim)``."""
    return np.concatenate([values[i, : int(n)] for i, n in enumerate(n_frames)], axis=0)


def singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of ``x`` (samples x dim), descending, through the dim x dim Gram matrix (fast for tall x)."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] < x.shape[1]:
        x = x.T
    eig = np.linalg.eigvalsh((x.T @ x).astype(np.float64))[::-1]  # float32 product, float64 eigensolver
    return np.sqrt(np.clip(eig, 0, None))


def cumulative_energy(s: np.ndarray) -> np.ndarray:
    """Cumulative share of squared singular values: ``(k,)`` -> ``(k,)`` rising to 1."""
    energy = np.square(s)
    total = energy.sum()
    return np.cumsum(energy) / total if total > 0 else np.zeros_like(energy)


def effective_rank(s: np.ndarray, threshold: float = 0.9) -> int:
    """The fewest singular directions holding ``threshold`` of the energy."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold}; expected a fraction in (0, 1]")
    curve = cumulative_energy(s)
    if not curve.any():
        return 0
    return int(np.searchsorted(curve, threshold - 1e-12) + 1)


@dataclass
class Spectrum:
    """One quantity (e.g. LoRA A activations) of one checkpoint, per module (layer)."""

    curves: np.ndarray
    """Cumulative energy per module, ``(n_modules, k)`` (k: the smaller matrix side)."""
    ranks: np.ndarray
    """Effective rank per module at ``threshold``, ``(n_modules,)``."""
    threshold: float

    @property
    def mean_rank(self) -> float:
        """Effective rank averaged across modules (may be fractional)."""
        return float(self.ranks.mean())

    @property
    def mean_curve(self) -> np.ndarray:
        """The cumulative-energy curve averaged across modules, ``(k,)``."""
        return self.curves.mean(0)


def spectrum(per_module: list[np.ndarray], threshold: float = 0.9) -> Spectrum:
    """Spectra of a list of (samples x dim) matrices, one per module."""
    values = [singular_values(x) for x in per_module]
    k = min(len(s) for s in values)
    curves = np.stack([cumulative_energy(s)[:k] for s in values])
    ranks = np.array([effective_rank(s, threshold) for s in values])
    return Spectrum(curves, ranks, threshold)


def concentration_ratio(random: Spectrum, trained: Spectrum) -> float:
    """How many times fewer directions the trained checkpoint needs than the random twin (> 1: concentrated)."""
    return random.mean_rank / max(trained.mean_rank, 1e-12)
