"""Intruder dimensions (analysis.intruders) on hand-made matrices whose intruders are known, and on a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loralens.analysis.intruders import (
    Intruders,
    adapted,
    base_vectors,
    by_threshold,
    count_frame,
    intruder_frame,
    top_similarity,
)
from tests.conftest import without_intruders

OUTSIDE = np.array([20.0, 15.0, 12.0, 10.0, 8.0, 6.0])
"""W0's leading singular values, each kept by the update with its own singular vector."""
S1, S2 = np.arange(6, 14), np.arange(14, 22)
"""Two blocks of 8 coordinates of small, distinct singular values where the intruders are put."""
SPREAD = 1 / np.sqrt(8)
"""An intruder spread evenly over a block has this cosine with each of W0's singular vectors there."""


def _base(rng, d_out: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``W0 = P diag(d) Q^T`` (30 x 22), distinct singular values, rotated so that no axis is special.

    Returns ``(W0, P, d, Q)``: ``P`` (30, 22) orthonormal columns, ``Q`` (22, 22) orthogonal.
    """
    d = np.concatenate([OUTSIDE, 1.0 + 0.05 * np.arange(8), 2.0 + 0.05 * np.arange(8)])
    p, _ = np.linalg.qr(rng.standard_normal((d_out, len(d))))
    q, _ = np.linalg.qr(rng.standard_normal((len(d), len(d))))
    return p @ np.diag(d) @ q.T, p, d, q


def _intruding_lora(p, d, q, values=(50.0, 13.0), alpha: float = 4.0) -> tuple[np.ndarray, np.ndarray, float]:
    """A rank-2 LoRA (A, B, alpha / r) that makes ``P h_j`` (h_j even over block j) a singular vector of W with
    singular value ``values[j]``, exactly.

    In ``W0``'s coordinates ``W = D + sum_j h_j z_j^T`` with ``z_j = c_j D^-1 h_j - D h_j``, so ``W^T h_j = c_j D^-1
    h_j`` (the blocks are disjoint) and ``W W^T h_j = c_j (1 + z_j^T D^-1 h_j) h_j``: ``h_j`` is a left singular vector
    with singular value ``c_j ||D^-1 h_j||``. The rest of block j keeps singular values at most ``max(d[block])``.
    """
    hs, zs = [], []
    for block, value in zip((S1, S2), values, strict=True):
        h = np.zeros(len(d))
        h[block] = SPREAD
        c = value / np.linalg.norm(h / d)
        hs.append(h)
        zs.append(c * h / d - d * h)
    rank = 2
    scaling = alpha / rank
    b = p @ np.stack(hs, 1) / scaling  # (d_out, rank)
    a = np.stack(zs) @ q.T  # (rank, d_in)
    return a, b, scaling


def test_the_known_intruders_are_found_with_their_singular_values():
    rng = np.random.default_rng(0)
    w0, p, d, q = _base(rng)
    a, b, scaling = _intruding_lora(p, d, q)
    singular, similarity = top_similarity(w0, adapted(w0, a, b, scaling), k=8)
    # 50 (intruder), 20, 15, 13 (intruder), 12, 10, 8, 6: the rest lie below 2.4
    np.testing.assert_allclose(singular, [50, 20, 15, 13, 12, 10, 8, 6], rtol=1e-9)
    np.testing.assert_allclose(similarity, [SPREAD, 1, 1, SPREAD, 1, 1, 1, 1], atol=1e-9)
    result = Intruders(("layer_0.v_proj",), (0,), singular[None, None], similarity[None, None])
    assert result.counts.tolist() == [[2]]
    np.testing.assert_allclose(result.singular[result.mask], [50, 13], rtol=1e-9)
    # The threshold decides: the intruders' similarity is 1/sqrt(8) = 0.354.
    assert result.at(0.3).counts.tolist() == [[0]] and result.at(0.4).counts.tolist() == [[2]]


def test_an_update_along_the_base_singular_vectors_has_no_intruder():
    rng = np.random.default_rng(1)
    w0, p, d, q = _base(rng)
    # Raise two existing directions, one of them (a small one, in block 1) to the top.
    b, a = p[:, [0, 9]] * np.array([5.0, 99.0 - d[9]]), q[:, [0, 9]].T
    singular, similarity = top_similarity(w0, adapted(w0, a, b, 1.0), k=8)
    np.testing.assert_allclose(singular, [99, 25, 15, 12, 10, 8, 6, 2.35], rtol=1e-9)
    np.testing.assert_allclose(similarity, 1, atol=1e-9)
    assert not Intruders(("m",), (0,), singular[None, None], similarity[None, None]).mask.any()


def test_a_shared_base_gives_the_same_answer_and_a_mismatched_one_is_refused():
    rng = np.random.default_rng(2)
    w0, p, d, q = _base(rng)
    w = adapted(w0, *_intruding_lora(p, d, q))
    for got, want in zip(top_similarity(None, w, 8, base=base_vectors(w0)), top_similarity(w0, w, 8), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="d_out"):
        top_similarity(None, w, 8, base=base_vectors(w0.T))
    with pytest.raises(ValueError, match="k=23"):
        top_similarity(w0, w, 23)
    with pytest.raises(ValueError, match="expected W0"):
        adapted(w0, np.zeros((2, 5)), np.zeros((30, 2)), 1.0)


def test_frames_count_per_module_and_the_json_round_trip():
    singular = np.array([[[9, 5, 1], [8, 2, 1]], [[7, 6, 1], [4, 3, 1]]], float)  # (fold, module, k)
    similarity = np.array([[[0.2, 0.9, 0.1], [0.9, 0.9, 0.9]], [[0.9, 0.3, 0.9], [0.9, 0.9, 0.9]]])
    trained = Intruders(("layer_0.v_proj", "layer_1.v_proj"), (0, 1), singular, similarity)
    twin = Intruders(trained.modules, trained.folds, singular, np.ones_like(similarity))
    back = Intruders.from_json(json.loads(json.dumps(trained.to_json())))
    np.testing.assert_array_equal(back.counts, trained.counts)
    counts = count_frame({"trained": trained, "random_twin": twin})
    got = {(r.checkpoint, r.layer): (r.count, r.max_singular) for r in counts.itertuples()}
    assert got[("trained", 0)] == (1.5, 9) and got[("trained", 1)][0] == 0 and np.isnan(got[("trained", 1)][1])
    assert got[("random_twin", 0)][0] == 0
    one = count_frame({"trained": trained}, fold=1)
    assert one.set_index("layer")["count"].tolist() == [1, 0]
    frame = intruder_frame({"trained": trained})
    assert len(frame) == 12 and frame["intruder"].sum() == 3
    with pytest.raises(ValueError, match="n_folds, n_modules"):
        Intruders(("a",), (0, 1), singular, similarity)


def test_by_threshold_counts_each_module_at_each_threshold():
    """What ``loralens report`` tabulates: the mean count over fold models and the largest intruder σ over them."""
    singular = np.array([[[9, 5, 1], [8, 2, 1]], [[7, 6, 1], [4, 3, 1]]], float)  # (fold, module, k)
    similarity = np.array([[[0.2, 0.6, 0.8], [0.9, 0.9, 0.9]], [[0.9, 0.3, 0.9], [0.9, 0.9, 0.9]]])
    trained = Intruders(("layer_1.v_proj", "layer_0.v_proj"), (0, 1), singular, similarity)
    twin = Intruders(trained.modules, trained.folds, singular, np.ones_like(similarity))
    table = by_threshold({"trained": trained, "random_twin": twin}, (0.5, 0.7, 0.9))
    assert [m["module"] for m in table["modules"]] == ["layer_0.v_proj", "layer_1.v_proj"]  # in layer order
    first = table["modules"][1]
    assert first["count"]["trained"] == [1.0, 1.5, 2.0] and first["max_singular"]["trained"] == [9.0, 9.0, 9.0]
    assert first["count"]["random_twin"] == [0, 0, 0] and first["max_singular"]["random_twin"] == [None] * 3
    assert table["mean_count"] == {"trained": [0.5, 0.75, 1.0], "random_twin": [0, 0, 0]}
    assert (table["k"], table["folds"], table["checkpoints"]) == (3, [0, 1], ["trained", "random_twin"])
    with pytest.raises(ValueError, match="empty"):
        by_threshold({})


def test_a_run_directory_alone_matches_peft_merged_weights(tiny_runs, tmp_path):
    """``loralens intruders RUN`` (no store): each fold model's matrices are W0 + PEFT's own delta weight."""
    import torch

    from loralens.cli import main
    from loralens.precompute.capture import lora_modules
    from loralens.precompute.checkpoints import load_fold_model
    from loralens.precompute.intruders import _lora_layer

    run, out = tiny_runs["lora"], tmp_path / "intruders.json"
    assert main(["intruders", str(run), "--top-k", "5", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved) >= {"trained", "random_twin"}
    for variant in ("trained", "random_twin"):
        result = Intruders.from_json(saved[variant])
        assert result.modules == ("layer_0.v_proj", "layer_1.v_proj") and result.k == 5 and len(result.folds) == 4
        model = load_fold_model(run, result.folds[1], variant)
        for m, (layer, target) in enumerate(lora_modules(model)):
            module = _lora_layer(model, layer, target)
            with torch.no_grad():
                w = (module.base_layer.weight + module.get_delta_weight("default")).double().numpy()
            np.testing.assert_allclose(result.singular[1, m], np.linalg.svd(w, compute_uv=False)[:5], rtol=1e-5)
    assert main(["intruders", str(tiny_runs["frozen"])]) == 2  # a frozen run has no LoRA: one line, exit 2


def test_trace_records_them_and_the_command_records_them_into_a_store(tiny_runs, tiny_store, tmp_path):

    from loralens.analysis.intruders import intruders_of
    from loralens.cli import main
    from loralens.precompute.intruders import run_intruders
    from loralens.store.reader import StoreReader

    stored = intruders_of(StoreReader(tiny_store), "tiny-lora")
    fresh = run_intruders(tiny_runs["lora"])
    assert set(stored) == {"trained", "random_twin"}
    for checkpoint, result in fresh.items():
        np.testing.assert_allclose(stored[checkpoint].singular, result.singular, atol=1e-5)
        np.testing.assert_allclose(stored[checkpoint].similarity, result.similarity, atol=1e-5)
    assert intruders_of(StoreReader(tiny_store), "tiny-frozen") == {}

    # A store traced before intruders existed: the command adds them.
    copy = without_intruders(tiny_store, str(tmp_path / "old.zarr"), "tiny-lora")
    assert intruders_of(StoreReader(copy), "tiny-lora") == {}
    assert main(["intruders", str(tiny_runs["lora"]), "--store", copy, "--name", "tiny-lora"]) == 0
    assert set(intruders_of(StoreReader(copy), "tiny-lora")) == {"trained", "random_twin"}
    assert main(["intruders", str(tiny_runs["lora"]), "--store", copy, "--name", "nope"]) == 2
