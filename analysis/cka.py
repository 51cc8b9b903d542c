"""Centered kernel alignment (CKA): linear and RBF, biased and debiased, and minibatch layer x layer heatmaps."""

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
    # Feature-space form (no n x n Gram) on mean-removed data, in float64 as ``moments.Moments`` accumulates it.
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
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


MINIBATCH = 256
"""Utterances per minibatch of ``minibatch_heatmap``."""
MIN_SAMPLES = 4
"""The fewest samples the unbiased HSIC estimator takes (its normalisation divides by ``n - 3``)."""


def minibatches(n: int, size: int = MINIBATCH, seed: int = 0) -> list[np.ndarray]:
    """Sample indices ``0..n-1``, shuffled (seeded) and cut into minibatches of ``size``.

    The last may be larger, never smaller: the unbiased estimator needs at least 4 samples.
    """
    order = np.random.default_rng(seed).permutation(n)
    cuts = list(range(size, n - size + 1, size)) if n >= 2 * size else []
    return [np.sort(b) for b in np.split(order, cuts)] if n >= MIN_SAMPLES else []


def minibatch_grams(x: np.ndarray, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Linear Gram matrices ``x_b x_b^T`` of one representation ``(n, d)`` on each minibatch, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return [x[b] @ x[b].T for b in batches]


def minibatch_heatmap(grams_a: list[list[np.ndarray]], grams_b: list[list[np.ndarray]]) -> np.ndarray:
    """Minibatch linear CKA of every layer of ``a`` with every layer of ``b``.

    Nguyen, Raghu and Kornblith, "Do wide and deep networks learn the same things?", ICLR 2021: the unbiased HSIC
    estimator (Song et al. 2012) averaged over minibatches, then CKA = mean HSIC(K, L) / sqrt(mean HSIC(K, K)
    mean HSIC(L, L)).

    Memory grows with the minibatch, not with the number of samples: thousands of utterances of a wide model.

    Args:
        grams_a: per layer of ``a``, its Gram matrix on each minibatch (``minibatch_grams``).
        grams_b: the same for ``b``, on the same minibatches.

    Returns:
        ``(n_layers_a, n_layers_b)``.
    """
    n_batches = len(grams_a[0]) if grams_a else 0
    if n_batches == 0 or any(len(layer) != n_batches for layer in (*grams_a, *grams_b)):
        raise ValueError("every layer needs a Gram matrix on each of the same (at least one) minibatches")
    cross = np.zeros((len(grams_a), len(grams_b)))
    self_a, self_b = np.zeros(len(grams_a)), np.zeros(len(grams_b))
    for t in range(n_batches):
        # Every pair of layers at once: the unbiased HSIC is bilinear in the zero-diagonal Gram matrices.
        a = _unbiased_terms([layer[t] for layer in grams_a])
        b = _unbiased_terms([layer[t] for layer in grams_b])
        cross += _hsic_pairs(a, b)
        self_a += np.diag(_hsic_pairs(a, a))
        self_b += np.diag(_hsic_pairs(b, b))
    denom = np.sqrt(np.clip(np.outer(self_a, self_b), 0, None))  # the minibatch means' 1/n_batches cancel
    return np.divide(cross, denom, out=np.zeros_like(cross), where=denom > 0)


def _hsic_pairs(a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]
                ) -> np.ndarray:
    """The unbiased HSIC (as ``_hsic``) of every Gram matrix of ``a`` with every one of ``b`` (``_unbiased_terms``)."""
    (fa, sa, ra), (fb, sb, rb) = a, b
    n = ra.shape[1]
    return (fa @ fb.T + np.outer(sa, sb) / ((n - 1) * (n - 2)) - 2 * ra @ rb.T / (n - 2)) / (n * (n - 3))


def _unbiased_terms(grams: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per Gram matrix, with its diagonal set to zero: the flattened matrix, its sum and its row sums."""
    flat, total, rows = [], [], []
    for k in grams:
        k = np.array(k, dtype=np.float64)
        np.fill_diagonal(k, 0)
        flat.append(k.ravel())
        rows.append(k.sum(1))
        total.append(rows[-1].sum())
    return np.stack(flat), np.array(total), np.stack(rows)
