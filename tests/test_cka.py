"""CKA against the published estimators, written out here apart from ``analysis.cka``.

The unbiased HSIC of Song et al. (2012) and the minibatch CKA of Nguyen, Raghu and Kornblith (2021) are restated
in plain numpy as the papers write them (the closed form checked against the U-statistic it estimates), so that a
slip in the library's vectorised forms shows up as a difference instead of being copied into the expected value.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
from scipy.stats import ortho_group

from loralens.analysis import cka


def _hsic1(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. 2012: the unbiased HSIC of two ``(n, n)`` Gram matrices, term by term as the paper writes it.

    HSIC_1 = [tr(K~L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ and L~ with zero diagonals.
    """
    n = len(k)
    k, l = k * (1 - np.eye(n)), l * (1 - np.eye(n))  # noqa: E741
    one = np.ones(n)
    return float((np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3)))


def _hsic_u_statistic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """HSIC = E[k_ij l_ij] + E[k_ij] E[l_qr] - 2 E[k_ij l_iq], each mean over distinct indices, by loops."""
    n = len(k)
    pairs = np.mean([k[i, j] * l[i, j] for i, j in permutations(range(n), 2)])
    apart = np.mean([k[i, j] * l[q, r] for i, j, q, r in permutations(range(n), 4)])
    shared = np.mean([k[i, j] * l[i, q] for i, j, q in permutations(range(n), 3)])
    return float(pairs + apart - 2 * shared)


def _cka(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    return _hsic1(k, l) / np.sqrt(_hsic1(k, k) * _hsic1(l, l))


def _rbf(x: np.ndarray) -> np.ndarray:
    """Kornblith et al. 2019's RBF kernel, its bandwidth the median squared distance (their ``threshold=1``)."""
    squared = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    return np.exp(-squared / (2 * np.median(squared[np.triu_indices(len(x), 1)])))


def _minibatch_cka(x: np.ndarray, y: np.ndarray, batches: list[np.ndarray]) -> float:
    """Nguyen, Raghu and Kornblith 2021: each HSIC_1 averaged over the minibatches, then the CKA of the means."""
    grams = [(x[b] @ x[b].T, y[b] @ y[b].T) for b in batches]
    xy = np.mean([_hsic1(gx, gy) for gx, gy in grams])
    xx = np.mean([_hsic1(gx, gx) for gx, _ in grams])
    yy = np.mean([_hsic1(gy, gy) for _, gy in grams])
    return float(xy / np.sqrt(xx * yy))


def _related(n: int, d1: int, d2: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two representations of the same ``n`` samples that share a few directions, one of them non-linearly."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    x = z @ rng.standard_normal((3, d1)) + 0.5 * rng.standard_normal((n, d1)) + 2.0  # off-centre: centring matters
    y = np.tanh(z @ rng.standard_normal((3, d2))) + 0.5 * rng.standard_normal((n, d2))
    return x, y


@pytest.mark.parametrize("n", [5, 6, 8])
def test_the_reference_is_the_u_statistic_it_estimates(n):
    x, y = _related(n, 3, 4, seed=n)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    assert _hsic1(k, l) == pytest.approx(_hsic_u_statistic(k, l), rel=1e-10)
    assert _hsic1(k, k) == pytest.approx(_hsic_u_statistic(k, k), rel=1e-10)


@pytest.mark.parametrize(("n", "d1", "d2"), [(4, 3, 2), (9, 2, 12), (40, 5, 7), (257, 64, 40)])
def test_debiased_cka_is_the_published_estimator(n, d1, d2):
    x, y = _related(n, d1, d2, seed=n)
    assert cka.linear_cka(x, y, debiased=True) == pytest.approx(_cka(x @ x.T, y @ y.T), abs=1e-10)
    assert cka.rbf_cka(x, y, debiased=True) == pytest.approx(_cka(_rbf(x), _rbf(y)), abs=1e-10)


def test_the_debiased_estimator_refuses_fewer_than_four_samples():
    x, y = _related(3, 2, 2, seed=0)
    with pytest.raises(ValueError, match="at least 4 samples, got 3"):
        cka.linear_cka(x, y, debiased=True)


def test_minibatch_cka_is_the_published_minibatch_estimator():
    """Every layer pair of the heatmap, on minibatches of uneven size, is the reference on the same minibatches."""
    rng = np.random.default_rng(5)
    layers_a = [_related(600, d, 9, seed=5)[0] + 0.3 * i * rng.standard_normal((600, d)) for i, d in
                enumerate((6, 20, 33))]
    layers_b = [_related(600, 4, d, seed=5)[1] for d in (8, 50)]
    batches = cka.minibatches(600, 128)
    assert sorted(np.concatenate(batches).tolist()) == list(range(600))  # every sample once
    assert sorted(len(b) for b in batches) == [128, 128, 128, 216]  # the last takes the remainder
    heatmap = cka.minibatch_heatmap([cka.minibatch_grams(a, batches) for a in layers_a],
                                    [cka.minibatch_grams(b, batches) for b in layers_b])
    expected = [[_minibatch_cka(a, b, batches) for b in layers_b] for a in layers_a]
    np.testing.assert_allclose(heatmap, expected, rtol=0, atol=1e-10)
    # One minibatch of every sample is the debiased CKA of them all; many stay close to it.
    x, y = layers_a[0], layers_b[0]
    one = [np.arange(600)]
    full = _cka(x @ x.T, y @ y.T)
    assert cka.minibatch_heatmap([cka.minibatch_grams(x, one)], [cka.minibatch_grams(y, one)])[0, 0] \
        == pytest.approx(full, abs=1e-10)
    assert abs(heatmap[0, 0] - full) < 0.02


def test_cka_is_one_under_rotation_and_scale_and_near_zero_for_independent_noise():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((600, 20))
    same = x @ ortho_group.rvs(20, random_state=8) * 3.7
    noise = rng.standard_normal((600, 30))
    batches = cka.minibatches(600, 128)

    def minibatch(a, b):
        return cka.minibatch_heatmap([cka.minibatch_grams(a, batches)], [cka.minibatch_grams(b, batches)])[0, 0]

    for fn in (lambda a, b: cka.linear_cka(a, b, debiased=True), lambda a, b: cka.rbf_cka(a, b, debiased=True),
               minibatch):
        assert fn(x, same) == pytest.approx(1.0, abs=1e-9)
        assert abs(fn(x, noise)) < 0.02
