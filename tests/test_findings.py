"""The report's "holds / does not hold" flags, on small stores built so that each finding holds, or does not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loralens.analysis import views
from loralens.analysis.counterfactuals import CHANGES
from loralens.app import report
from loralens.store.reader import StoreReader
from loralens.store.writer import StoreWriter, UtteranceRow
from tests.conftest import checkpoint_attrs, checkpoint_sizes, random_row

EMOTIONS = ["anger", "happiness", "neutral", "sadness"]
N_LAYERS, D, RANK, FRAMES, PER_CLASS = 6, 8, 4, 12, 6
SIZES = checkpoint_sizes(N_LAYERS, D, RANK)


def _attrs(method: str) -> dict:
    return checkpoint_attrs(method, N_LAYERS, D, RANK, EMOTIONS)


def _lens(label: int, settles_at: int, rng) -> np.ndarray:
    """Lens logits per boundary: another class before ``settles_at``, the true one from there on."""
    logits = np.zeros((N_LAYERS + 1, 4), dtype=np.float32)
    for b in range(N_LAYERS + 1):
        logits[b, label if b >= settles_at else (label + 1 + rng.integers(3)) % 4] = 4.0
    return logits


def _low_rank(rng, k: int, dim: int, module: int) -> np.ndarray:
    """``FRAMES`` frames in ``module``'s fixed ``k``-dimensional subspace of ``dim`` dimensions."""
    basis = np.random.default_rng(100 + module).standard_normal((k, dim))  # the same in every utterance
    return (rng.standard_normal((FRAMES, k)) @ basis).astype(np.float32)


def _row(rng, method: str, checkpoint: str, label: int, holds: bool) -> dict[str, np.ndarray]:
    out = random_row(rng, method == "lora", SIZES, FRAMES)
    out["fold"], out["label"], out["prediction"] = np.int16(0), np.int16(label), np.int16(label)
    lora = method == "lora"
    # delayed specialization: LoRA settles at boundary 5 of 7 (holds) or is right from the start (does not)
    out["lens_logits"] = _lens(label, 5 if holds and lora else 0, rng)
    out["logits"] = out["lens_logits"][-1]
    # contributions: in the last layers LoRA writes more, against the residual (holds), or less, along it
    ratio = np.full((N_LAYERS, FRAMES), 0.5, np.float16)
    cosine = np.full((N_LAYERS, FRAMES), 0.2, np.float16)
    if lora:
        ratio[-2:] = 0.9 if holds else 0.2
        cosine[-2:] = -0.3 if holds else 0.3
    for part in ("attention", "mlp", "block"):
        out[f"{part}_norm_ratio"], out[f"{part}_cosine"] = ratio, cosine
    if lora:
        trained = checkpoint == "trained"
        compress = trained and holds
        w = np.random.default_rng(99).standard_normal((RANK, D)).astype(np.float32)  # the same B in every row
        a = np.stack([_low_rank(rng, 1 if compress else RANK, RANK, m) for m in range(N_LAYERS)])
        out["lora_a_activation"] = a
        # B's output is A's output through B: aligned in the forward pass (holds), or unrelated (does not)
        out["lora_b_activation"] = a @ w if holds else np.stack([_low_rank(rng, D, D, m) for m in range(N_LAYERS)])
        if not compress and holds:
            out["lora_b_activation"] = a @ w + 0.3 * rng.standard_normal((N_LAYERS, FRAMES, D)).astype(np.float32)
        g = rng.standard_normal((N_LAYERS, FRAMES, RANK)).astype(np.float32)
        out["lora_a_gradient"] = g
        # gradients: unrelated (holds: backward differentiation), or B's a linear image of A's (does not)
        out["lora_b_gradient"] = rng.standard_normal((N_LAYERS, FRAMES, D)).astype(np.float32) if holds else g @ w
        out["lora_a_pooled"] = out["lora_a_activation"].mean(1)
        out["lora_b_pooled"] = out["lora_b_activation"].mean(1)
    return out


def _store(path: str, holds: bool) -> StoreReader:
    rng = np.random.default_rng(0)
    writer = StoreWriter(path)
    labels = [e for e in range(4) for _ in range(PER_CLASS)]
    rows = writer.add_utterances([
        UtteranceRow(f"s/{i}", "s", f"/x/{i}.wav", f"spk{i % 3}", EMOTIONS[e], np.zeros(FRAMES * 320, np.float32),
                     FRAMES, np.zeros((80, 2 * FRAMES), np.float16)) for i, e in enumerate(labels)])
    for run, method, checkpoints in (("lora", "lora", ("trained", "random_twin")), ("frozen", "frozen", ("trained",))):
        for checkpoint in checkpoints:
            writer.create_checkpoint(run, checkpoint, _attrs(method), SIZES, lora=method == "lora", per_frame_b=True)
            for row, label in zip(rows, labels, strict=True):
                writer.write(run, checkpoint, row, _row(rng, method, checkpoint, label, holds))
        writer.commit(run, rows)
    return StoreReader(path)


@pytest.mark.parametrize("holds", [True, False])
def test_each_finding_flag(tmp_path, holds):
    reader = _store(str(tmp_path / "s.zarr"), holds)
    ((lora, frozen),) = views.pairs(reader)
    analysis = report.analyse(reader, lora, frozen)
    assert len(analysis.rows) == 4 * PER_CLASS
    found = {f["finding"]: f for f in report.findings(analysis)}
    assert list(found) == ["delayed specialization", "late-layer contribution growth with negative cosine",
                           "A compression and B reconstruction", "forward alignment and backward differentiation"]
    for name, finding in found.items():
        assert finding["holds"] is holds, (name, finding["evidence"])
    if holds:
        assert analysis.lens.resolution_depth.mean() == 5 and analysis.ratios["lora_a_activation"] >= 2


def test_report_uses_one_set_of_utterances(tmp_path):
    """Rows the LoRA run traced but the frozen run did not stay out of every number, spectra and CKA included."""
    path = str(tmp_path / "s.zarr")
    _store(path, True)
    writer = StoreWriter(path)
    writer.unmark("frozen", "trained", [0, 1, 2])
    writer.commit("frozen", [])
    reader = StoreReader(path)
    ((lora, frozen),) = views.pairs(reader)
    analysis = report.analyse(reader, lora, frozen)
    assert analysis.rows == list(range(3, 4 * PER_CLASS))
    alone = views.spectra_of(reader, "lora", rows=analysis.rows)
    everything = views.spectra_of(reader, "lora")
    assert np.allclose(analysis.spectra["lora_a_gradient"]["trained"].curves,
                       alone["lora_a_gradient"]["trained"].curves)
    assert not np.allclose(alone["lora_a_gradient"]["trained"].curves,
                           everything["lora_a_gradient"]["trained"].curves)
    ab = views.cka_a_vs_b(reader, "lora", rows=analysis.rows)
    assert np.allclose(analysis.cka_ab["gradient"], ab["gradient"])


def _causal_metrics(off: list[float], patch: list[float], noise_flipped: list[float]) -> pd.DataFrame:
    rows = [{"condition": "none", "kind": "none", "layer": -1, "strength": np.nan, "uar_drop": 0.0, "flipped": 0.0}]
    rows += [{"condition": f"lora_off@{k}", "kind": "lora_off", "layer": k, "strength": np.nan, "uar_drop": v,
              "flipped": v} for k, v in enumerate(off)]
    rows += [{"condition": f"patch@{k}", "kind": "patch", "layer": k, "strength": np.nan, "uar_drop": v,
              "flipped": v} for k, v in enumerate(patch)]
    rows += [{"condition": f"noise@{s:g}", "kind": "noise", "layer": -1, "strength": s, "uar_drop": f, "flipped": f}
             for s, f in zip((20.0, 10.0, 0.0), noise_flipped, strict=True)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("holds", [True, False])
def test_causal_finding_flags(holds):
    """Each causal finding holds on interventions built so that it does, and not on its mirror image."""
    from loralens.analysis import causal

    late = [0.01, 0.02, 0.05, 0.10, 0.30, 0.20]
    profile = late if holds else late[::-1]
    lora = _causal_metrics(profile, profile, [0.05, 0.3, 0.6] if holds else [0.4, 0.5, 0.7])
    flags = {f["finding"]: f["holds"] for f in causal.findings(lora, None, N_LAYERS)}
    assert list(flags.values()) == [holds] * 3, flags
    evidence = causal.findings(lora, None, N_LAYERS)[0]["evidence"]
    assert f"largest at layer {4 if holds else 1}" in evidence
    # Without a kind's conditions its finding is left out.
    assert [f["finding"] for f in causal.findings(lora[lora["kind"] != "patch"], None, N_LAYERS)] == [
        "delayed specialization, causally: LoRA matters most in late layers",
        "predictions robust to mild audio changes"]


def _mild_pair(strengths: tuple[float, ...], identity: float) -> bool:
    """Whether the grid's mildest strength below the identity and its mildest above are equally far (to rounding)."""
    below, above = [s for s in strengths if s < identity], [s for s in strengths if s > identity]
    return bool(below and above) and np.isclose(identity - max(below), min(above) - identity)


@pytest.mark.parametrize("kind", [k for k, c in CHANGES.items()
                                  if np.isfinite(c.identity) and _mild_pair(c.strengths, c.identity)])
def test_the_mildest_audio_change_counts_both_directions(kind):
    """A symmetric grid's two mildest strengths (pitch -2 and +2, tempo 0.9 and 1.1) are equally mild, though
    |0.9 - 1| < |1.1 - 1| in floating point: either one flipping a third of the predictions breaks robustness."""
    from loralens.analysis import causal

    identity, strengths = CHANGES[kind].identity, sorted(CHANGES[kind].strengths, key=lambda s: s)
    below = max(s for s in strengths if s < identity)
    for harsh in (below, 2 * identity - below):  # the flip at the one mild side, then at the other
        rows = [{"condition": "none", "kind": "none", "layer": -1, "strength": np.nan, "uar_drop": 0.0,
                 "flipped": 0.0}]
        rows += [{"condition": f"{kind}@{s:g}", "kind": kind, "layer": -1, "strength": s, "uar_drop": 0.0,
                  "flipped": 0.35 if np.isclose(s, harsh) else 0.05} for s in strengths]
        (robust,) = causal.findings(pd.DataFrame(rows), None, N_LAYERS)
        assert robust["finding"] == "predictions robust to mild audio changes" and not robust["holds"], (kind, harsh)
