"""The views within fold models, on a small store whose fold models differ: residual CKA computed within each and
averaged (or one picked), and LoRA frames streamed a module at a time on the report's live path."""

from __future__ import annotations

import numpy as np
import pytest

from loralens.analysis import spectra, summary, views
from loralens.app import report
from loralens.store import schema
from loralens.store.reader import StoreReader
from loralens.store.writer import StoreWriter, UtteranceRow
from tests.conftest import checkpoint_attrs, checkpoint_sizes, random_row

EMOTIONS = ["anger", "happiness", "neutral", "sadness"]
N_LAYERS, D, RANK, FRAMES = 3, 8, 2, 6
FOLD_SIZES = {0: 10, 1: 12, 2: 3}
"""Fold 2 traced too few utterances for the unbiased CKA estimator (4)."""
SIZES = checkpoint_sizes(N_LAYERS, D, RANK)


def _attrs(method: str) -> dict:
    return checkpoint_attrs(method, N_LAYERS, D, RANK, EMOTIONS)


def _residuals(rng, fold: int, z: np.ndarray, lora: bool) -> np.ndarray:
    """Pooled residuals ``(boundary, d_model)``: boundaries 0 and 1 carry the utterance's ``z``, 2 noise alone.

    Each LoRA fold model adds its own large offset at every boundary, so stacking the fold models' utterances makes
    every pair of boundaries look alike; a frozen encoder is one model in every fold and adds none.
    """
    shift = np.random.default_rng(1000 + fold).standard_normal((N_LAYERS + 1, D)) * (6.0 if lora else 0.0)
    maps = np.random.default_rng(2000 + fold * lora).standard_normal((2, len(z), D))
    out = rng.standard_normal((N_LAYERS + 1, D)) * 0.3
    out[0] += z @ maps[0]
    out[1] += z @ maps[1]
    out[2] = rng.standard_normal(D)
    return (out + shift).astype(np.float32)


def _row(rng, method: str, fold: int, label: int, z: np.ndarray) -> dict[str, np.ndarray]:
    out = random_row(rng, method == "lora", SIZES, FRAMES)
    out["fold"], out["label"], out["prediction"] = np.int16(fold), np.int16(label), np.int16(label)
    out["residual_pooled"] = _residuals(rng, fold, z, method == "lora")
    if method == "lora":
        out["lora_a_pooled"] = out["lora_a_activation"].mean(1)
        out["lora_b_pooled"] = out["lora_b_activation"].mean(1)
    return out


def _store(path: str) -> StoreReader:
    rng = np.random.default_rng(0)
    writer = StoreWriter(path)
    folds = [f for f, n in FOLD_SIZES.items() for _ in range(n)]
    labels = [i % 4 for i in range(len(folds))]
    latent = rng.standard_normal((len(folds), 3))
    rows = writer.add_utterances([
        UtteranceRow(f"s/{i}", "s", f"/x/{i}.wav", f"spk{f}", EMOTIONS[e], np.zeros(FRAMES * 320, np.float32),
                     FRAMES, np.zeros((80, 2 * FRAMES), np.float16))
        for i, (f, e) in enumerate(zip(folds, labels, strict=True))])
    for run, method, checkpoints in (("lora", "lora", ("trained", "random_twin")), ("frozen", "frozen", ("trained",))):
        for checkpoint in checkpoints:
            writer.create_checkpoint(run, checkpoint, _attrs(method), SIZES, lora=method == "lora", per_frame_b=True)
            for row, fold, label, z in zip(rows, folds, labels, latent, strict=True):
                writer.write(run, checkpoint, row, _row(rng, method, fold, label, z))
        writer.commit(run, rows)
    return StoreReader(path)


def _unbiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA with the unbiased HSIC of Song et al. (2012), from its formula, over every sample at once."""
    def hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
        n = len(k)
        k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))  # noqa: E741
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _heatmap(reader: StoreReader, run_a: str, run_b: str, rows: list[int]) -> np.ndarray:
    a = reader.read(run_a, "trained", "residual_pooled", rows)  # (n, boundary, d_model)
    b = reader.read(run_b, "trained", "residual_pooled", rows)
    return np.array([[_unbiased_cka(a[:, i], b[:, j]) for j in range(b.shape[1])] for i in range(a.shape[1])])


@pytest.fixture()
def store(tmp_path) -> str:
    path = str(tmp_path / "folds.zarr")
    _store(path)
    return path


def test_residual_cka_is_computed_within_each_fold_model_and_averaged(store):
    """The heatmap stacked every fold model's utterances while spectra beside it are within one model, and the
    fold-model picker left it unchanged: it is the plain mean of each fold model's CKA (fold models of fewer than
    4 utterances left out and named), one fold model's alone when picked, and a summary of the old meaning is not
    drawn."""
    reader = StoreReader(store)
    rows = {f: views.fold_groups(reader, "lora")[f] for f in FOLD_SIZES}
    per_fold = {f: _heatmap(reader, "lora", "lora", rows[f]) for f in (0, 1)}
    expected = np.mean(list(per_fold.values()), axis=0)  # fold 2's 3 utterances are too few
    stacked = _heatmap(reader, "lora", "lora", sorted(r for g in rows.values() for r in g))
    assert np.abs(stacked - expected).max() > 0.5  # the fold models' offsets make every boundary look alike
    np.testing.assert_allclose(views.residual_cka(reader, "lora", "lora"), expected, rtol=1e-6, atol=1e-8)
    for f in (0, 1):
        np.testing.assert_allclose(views.residual_cka(reader, "lora", "lora", fold=f), per_fold[f], rtol=1e-6,
                                   atol=1e-8)
    with pytest.raises(ValueError, match="needs a fold model that traced at least 4 .*: fold 2: 3$"):
        views.residual_cka(reader, "lora", "lora", fold=2)
    # LoRA against the frozen encoder: within each LoRA fold model too; the frozen run alone is one model.
    vs = np.mean([_heatmap(reader, "lora", "frozen", rows[f]) for f in (0, 1)], axis=0)
    np.testing.assert_allclose(views.residual_cka(reader, "lora", "frozen"), vs, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(views.residual_cka(reader, "frozen", "lora"), vs.T, rtol=1e-6, atol=1e-8)
    everyone = views.common_rows(reader, "frozen")
    np.testing.assert_allclose(views.residual_cka(reader, "frozen", "frozen"),
                               _heatmap(reader, "frozen", "frozen", everyone), rtol=1e-6, atol=1e-8)
    # What each chart says it shows.
    scope = views.residual_cka_scope
    assert scope(views.residual_cka_groups(reader, "lora", "frozen")) == \
        "mean of 2 fold models; fold 2 (3 utterances) left out: fewer than 4"
    assert scope(views.residual_cka_groups(reader, "lora", "lora", fold=1)) == "fold 1's model"
    assert scope(views.residual_cka_groups(reader, "frozen", "frozen")) == "one model (frozen encoder)"

    # The summary holds the mean, and the picker's fold model is still that fold model's alone.
    summary.summarise(store, methods=())
    reader = StoreReader(store)
    s = reader.summary("lora")
    np.testing.assert_allclose(s["residual_cka/lora"], expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(s["residual_cka/frozen"], vs, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(views.residual_cka(reader, "lora", "lora", fold=1), per_fold[1], rtol=1e-6,
                               atol=1e-8)
    # A summary of the previous version held the stacked matrix: it is not drawn, the mean is computed instead.
    group = StoreWriter(store).root[f"runs/lora/{schema.SUMMARY_GROUP}"]
    group["residual_cka/lora"][...] = stacked
    group.attrs["summary_version"] = 1  # the version whose residual CKA stacked the fold models
    np.testing.assert_allclose(views.residual_cka(StoreReader(store), "lora", "lora"), expected, rtol=1e-6,
                               atol=1e-8)


def test_the_report_reads_one_lora_module_at_a_time_where_the_summary_does_not_cover_its_rows(store):
    """Where the frozen partner traced other utterances the report computes spectra and CKA(A, B) from the arrays:
    it read every LoRA module's per-frame arrays of every row at once; it reads one module of ROWS_PER_READ rows at
    a time, as the summary does, with the same results as in memory."""
    writer = StoreWriter(store)
    writer.unmark("frozen", "trained", [0, 1, 2])
    writer.commit("frozen", [])
    summary.summarise(store, methods=())
    reader = StoreReader(store)
    assert reader.summary("lora") is not None  # current, but over rows the report does not use
    reads = []
    read = reader.read

    def recorded(run, checkpoint, name, rows=None, **index):
        values = read(run, checkpoint, name, rows, **index)
        if name in views.LORA_QUANTITIES:
            reads.append((name, index.get("module"), values.shape))
        return values

    reader.read = recorded
    ((lora, frozen),) = views.pairs(reader)
    analysis = report.analyse(reader, lora, frozen)
    assert analysis.rows == list(range(3, sum(FOLD_SIZES.values())))
    assert {name for name, _, _ in reads} == set(views.LORA_QUANTITIES)
    assert all(isinstance(module, int) for _, module, _ in reads), {(n, str(m)) for n, m, _ in reads}
    assert max(shape[0] for _, _, shape in reads) <= views.ROWS_PER_READ
    # The same numbers as every frame in memory.
    reader.read = read
    for checkpoint in ("trained", "random_twin"):
        groups = views.sampled_groups(reader, lora.name, checkpoint, views.fold_groups(reader, lora.name,
                                                                                       analysis.rows))
        for quantity in views.LORA_QUANTITIES:
            memory = spectra.spectrum(views.lora_matrices(reader, lora.name, checkpoint, quantity, groups))
            for got, want in zip(analysis.spectra[quantity][checkpoint].singular, memory.singular, strict=True):
                for x, y in zip(got, want, strict=True):
                    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9 * y.max())
    from loralens.analysis import cka

    groups = views.fold_groups(reader, lora.name, analysis.rows)
    for kind in ("activation", "gradient"):
        a = views.lora_matrices(reader, lora.name, "trained", f"lora_a_{kind}", groups)
        b = views.lora_matrices(reader, lora.name, "trained", f"lora_b_{kind}", groups)
        want = [np.mean([cka.linear_cka(x, y) for x, y in zip(xs, ys, strict=True)]) for xs, ys in zip(a, b,
                                                                                                         strict=True)]
        np.testing.assert_allclose(analysis.cka_ab[kind], want, rtol=1e-6)
