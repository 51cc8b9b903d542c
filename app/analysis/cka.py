"""Centered kernel alignment (CKA): linear and RBF, biased and debiased, and layer x layer heatmaps."""

from __future__ import annotations

import numpy as np

MAX_SAMPLES = 2000
"""Gram-based estimators (debiased, RBF) subsample to this many rows, seeded, to bound memory (n^2)."""


def _subsample(x: np.ndarray, y: np.ndarray, limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= limit:
        return x, y
    keep = np.sort(np.random.default_rng(seed).choice(len(x), limit, replace=False))
    return x[keep], y[keep]


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same samples.

    Args:
        x: ``(n_samples, d1)``.
        y: ``(n_samples, d2)``.
        debiased: use the unbiased HSIC estimator (Song et al. 2012), better for small n.

    Returns:
        CKA in [0, 1] (the debiased estimate can dip slightly below 0).
    """
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same samples: {len(x)} vs {len(y)} rows")
    if debiased:
        x, y = _subsample(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), MAX_SAMPLES)
        return _gram_cka(x @ x.T, y @ y.T, debiased=True)
    # Feature-space form (no n x n Gram): float32 products of means-removed data, float64 norms.
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    x = x - x.mean(0, dtype=np.float64).astype(np.float32)
    y = y - y.mean(0, dtype=np.float64).astype(np.float32)
    norm = lambda m: np.linalg.norm(m.astype(np.float64))  # noqa: E731
    cross = norm(y.T @ x) ** 2
    denom = norm(x.T @ x) * norm(y.T @ y)
    return float(cross / denom) if denom > 0 else 0.0


def rbf_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """RBF-kernel CKA with the median-distance bandwidth for each representation."""
    x, y = _subsample(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), MAX_SAMPLES)
    return _gram_cka(_rbf_gram(x), _rbf_gram(y), debiased)


def _rbf_gram(x: np.ndarray) -> np.ndarray:
    sq = np.sum(x * x, 1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    median = np.median(dist[np.triu_indices(len(x), 1)]) if len(x) > 1 else 1.0
    return np.exp(-dist / (2 * max(median, 1e-12)))


def _hsic(k: np.ndarray, l: np.ndarray, debiased: bool) -> float:  # noqa: E741
    n = len(k)
    if not debiased:
        h = np.eye(n) - 1.0 / n
        return float(np.sum((h @ k @ h) * l))
    if n < 4:
        raise ValueError(f"the debiased estimator needs at least 4 samples, got {n}")
    k = k.copy()
    l = l.copy()  # noqa: E741
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    kl_sum = k.sum(0) @ l.sum(1)
    return float((np.sum(k * l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * kl_sum / (n - 2)) / (n * (n - 3)))


def _gram_cka(k: np.ndarray, l: np.ndarray, debiased: bool) -> float:  # noqa: E741
    denom = np.sqrt(max(_hsic(k, k, debiased), 0) * max(_hsic(l, l, debiased), 0))
    return _hsic(k, l, debiased) / denom if denom > 0 else 0.0


def layer_heatmap(a: np.ndarray, b: np.ndarray, debiased: bool = False) -> np.ndarray:
    """Linear CKA between every boundary of ``a`` and every boundary of ``b``.

    Args:
        a: ``(n_samples, n_boundaries_a, d)``, e.g. pooled residuals of one run.
        b: ``(n_samples, n_boundaries_b, d)``, the same samples in another (or the same) run.
        debiased: use the debiased estimator.

    Returns:
        ``(n_boundaries_a, n_boundaries_b)``.
    """
    return np.array([[linear_cka(a[:, i], b[:, j], debiased) for j in range(b.shape[1])]
                     for i in range(a.shape[1])])
