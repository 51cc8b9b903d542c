"""The analyses against known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group
from sklearn.metrics import silhouette_score

from app.analysis import cka, contributions, lens, projections, spectra


def _data(n=300, d=20, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_cka_invariances_and_independence():
    x = _data()
    q = ortho_group.rvs(20, random_state=1)
    for fn in (cka.linear_cka, cka.rbf_cka):
        assert fn(x, x @ q) == pytest.approx(1.0, abs=1e-6)
    assert cka.linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-9)
    assert cka.rbf_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-6)
    y = _data(seed=2)
    assert cka.linear_cka(x, y) < 0.1
    assert abs(cka.linear_cka(x, y, debiased=True)) < 0.02
    assert abs(cka.rbf_cka(x, y, debiased=True)) < 0.02
    assert cka.linear_cka(x, x @ q, debiased=True) == pytest.approx(1.0, abs=1e-6)


def test_linear_cka_equals_gram_implementation():
    x, y = _data(100, 7, 3), _data(100, 11, 4)
    y[:, :7] += x
    n = len(x)
    h = np.eye(n) - 1 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h  # noqa: E741
    direct = np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))
    assert cka.linear_cka(x, y) == pytest.approx(direct, rel=1e-9)


def test_effective_rank_of_rank_k_data():
    rng = np.random.default_rng(0)
    for k in (1, 3, 8):
        x = rng.standard_normal((500, k)) @ rng.standard_normal((k, 32))
        s = spectra.singular_values(x)
        assert spectra.effective_rank(s, 0.999999) == k
        assert spectra.cumulative_energy(s)[k - 1] == pytest.approx(1.0)
    iso = rng.standard_normal((5000, 10))
    assert spectra.effective_rank(spectra.singular_values(iso), 0.9) == 9
    trained = spectra.spectrum([rng.standard_normal((200, 2)) @ rng.standard_normal((2, 16))] * 2)
    random = spectra.spectrum([rng.standard_normal((200, 16))] * 2)
    assert spectra.concentration_ratio(random, trained) > 5


def test_lens_kl_zero_and_overlap_one_at_last_layer():
    logits = np.random.default_rng(0).standard_normal((20, 7, 4))
    summary = lens.summarise(logits, np.array(["a", "b"] * 10))
    assert summary.kl[-1] == pytest.approx(0.0, abs=1e-12) and summary.overlap[-1] == 1.0
    assert (summary.kl >= -1e-12).all() and set(summary.by_emotion) == {"a", "b"}


def test_resolution_depth():
    top = np.array([[0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0], [2, 2, 0, 2]])
    logits = np.eye(3)[top] * 5
    assert lens.resolution_depth(logits).tolist() == [1, 0, 3, 3]


def test_silhouette_matches_sklearn():
    x = _data(60, 5)
    labels = np.repeat(["a", "b", "c"], 20)
    x[labels == "b"] += 2
    from sklearn.preprocessing import StandardScaler

    assert projections.silhouette(x, labels) == pytest.approx(silhouette_score(StandardScaler().fit_transform(x),
                                                                                labels))


def test_umap_places_new_points_near_their_cluster():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 6
    x = np.concatenate([c + rng.standard_normal((30, 8)) for c in centres])
    proj = projections.project(x, "umap")
    new = proj.place(centres[1] + 0.1 * rng.standard_normal((1, 8)))
    cluster_mean = proj.coordinates[30:60].mean(0)
    others = [proj.coordinates[:30].mean(0), proj.coordinates[60:].mean(0)]
    assert np.linalg.norm(new - cluster_mean) < min(np.linalg.norm(new - o) for o in others)
    assert projections.project(x, "tsne").coordinates.shape == (90, 2)


def test_contributions_block_update():
    rng = np.random.default_rng(0)
    h0 = rng.standard_normal((2, 5, 4))
    residual = np.stack([h0, 2 * h0, 2 * h0 - 0.5 * h0], axis=1)  # layer 0 doubles h, layer 1 subtracts a quarter
    ratio, cosine = contributions.block_update(residual, np.array([5, 3]))
    assert np.allclose(ratio[:, 0], 1.0) and np.allclose(cosine[:, 0], 1.0)
    assert np.allclose(ratio[:, 1], 0.25) and np.allclose(cosine[:, 1], -1.0)
    zeros = np.zeros((2, 2, 5))
    c = contributions.contributions(zeros + 0.5, zeros, zeros + 0.1, zeros, residual, np.array([5, 3]))
    assert np.allclose(c.block, [1.0, 0.25]) and np.allclose(c.attention, 0.5)
    assert np.allclose(c.minus(c).block, 0)
