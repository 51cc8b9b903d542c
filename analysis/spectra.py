"""SVD spectra: cumulative energy and effective rank of LoRA activations and gradients, trained vs random."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from loralens.analysis.moments import eigenvalues


def real_frames(values: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
    """Stack every utterance's real frames: ``(n_utt, n_frames_padded, dim)`` -> ``(sum(n_frames), dim)``."""
    return np.concatenate([values[i, : int(n)] for i, n in enumerate(n_frames)], axis=0)


def singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of ``x`` (samples x dim), descending, through the dim x dim Gram matrix (fast for tall x).

    In float64 throughout, as ``moments.Moments`` accumulates it over chunks (the two agree to rounding).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < x.shape[1]:
        x = x.T
    return np.sqrt(np.clip(eigenvalues(x.T @ x), 0, None))


def cumulative_energy(s: np.ndarray) -> np.ndarray:
    """Cumulative share of squared singular values: ``(k,)`` -> ``(k,)`` rising to 1."""
    energy = np.square(s)
    total = energy.sum()
    return np.cumsum(energy) / total if total > 0 else np.zeros_like(energy)


def effective_rank(s: np.ndarray, threshold: float = 0.9) -> int:
    """The fewest singular directions holding ``threshold`` of the energy."""
    return _rank_at(cumulative_energy(s), threshold)


def _rank_at(curve: np.ndarray, threshold: float) -> int:
    """``effective_rank`` from the cumulative-energy curve."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold}; expected a fraction in (0, 1]")
    if not curve.any():
        return 0
    return int(np.searchsorted(curve, threshold - 1e-12) + 1)


@dataclass(frozen=True)
class Spectrum:
    """One quantity (e.g. LoRA A activations) of one checkpoint kind, per module (layer).

    A store's utterances are traced by the fold model that held them out, so each module has one set of
    singular values per fold model: a spectrum is only meaningful within one model (mixing folds stacks
    several independent low-rank maps). Curves and ranks are averaged over the models.
    """

    singular: tuple[tuple[np.ndarray, ...], ...]
    """Singular values per module, per model (fold), descending."""
    threshold: float = 0.9
    energy: tuple[tuple[np.ndarray, ...], ...] = field(default=(), compare=False, repr=False)
    """``cumulative_energy`` of every singular-value vector, computed once (``at`` keeps them: a slider moving the
    threshold recomputes no curve)."""

    def __post_init__(self):
        if not self.energy:
            object.__setattr__(self, "energy", tuple(tuple(cumulative_energy(s) for s in module)
                                                     for module in self.singular))

    def at(self, threshold: float) -> Spectrum:
        """The same spectrum with another effective-rank threshold (no recomputation)."""
        return replace(self, threshold=threshold)

    @property
    def k(self) -> int:
        """The curves' length: the fewest singular values of any module and model."""
        return min(len(s) for module in self.singular for s in module)

    @property
    def curves(self) -> np.ndarray:
        """Cumulative energy per module, averaged over models, ``(n_modules, k)``."""
        k = self.k
        return np.stack([np.mean([curve[:k] for curve in module], 0) for module in self.energy])

    @property
    def ranks(self) -> np.ndarray:
        """Effective rank per module at ``threshold``, averaged over models (may be fractional)."""
        return np.array([np.mean([_rank_at(curve, self.threshold) for curve in module]) for module in self.energy])

    @property
    def mean_rank(self) -> float:
        """Effective rank averaged across modules (may be fractional)."""
        return float(self.ranks.mean())

    @property
    def mean_curve(self) -> np.ndarray:
        """The cumulative-energy curve averaged across modules, ``(k,)``."""
        return self.curves.mean(0)


def spectrum(per_module: list[np.ndarray | list[np.ndarray]], threshold: float = 0.9) -> Spectrum:
    """Spectra of (samples x dim) matrices: per module one matrix, or a list of them (one per model)."""
    groups = [[m] if isinstance(m, np.ndarray) else list(m) for m in per_module]
    return Spectrum(tuple(tuple(singular_values(x) for x in group) for group in groups), threshold)


def concentration_ratio(random: Spectrum, trained: Spectrum) -> float:
    """How many times fewer directions the trained checkpoint needs than the random twin (> 1: concentrated)."""
    return random.mean_rank / max(trained.mean_rank, 1e-12)
