"""The input window: full is stock Whisper; trim is independent of batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperForAudioClassification

from loralens.precompute import models, windowing
from tests.conftest import tiny_config


def _model():
    torch.manual_seed(0)
    return WhisperForAudioClassification(tiny_config()).eval()


def _clips():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 23456, 8000)]


def test_full_window_equals_stock_whisper():
    model = _model()
    features = windowing.extract(models.feature_extractor(model.config), _clips(), "full")
    assert features.input_features.shape[-1] == 3000
    with torch.no_grad():
        assert torch.allclose(windowing.classify(model, features), model(features.input_features).logits, atol=1e-6)


def test_trim_is_independent_of_batch_and_restores_the_model():
    model = _model()
    extractor = models.feature_extractor(model.config)
    clips = _clips()
    batch = windowing.extract(extractor, clips, "trim")
    assert batch.n_frames.tolist() == [50, 73, 25] and batch.n_positions == 73
    with torch.no_grad():
        together = windowing.classify(model, batch)
        for i, clip in enumerate(clips):
            alone = windowing.classify(model, windowing.extract(extractor, [clip], "trim"))
            assert torch.allclose(alone[0], together[i], atol=1e-5)
    assert model.config.max_source_positions == 1500 and model.encoder.embed_positions.num_embeddings == 1500


@pytest.mark.parametrize("window", ["trim", "full"])
def test_a_batch_of_clip_mels_is_the_batch_extract_makes(window):
    """Training keeps each clip's log-mel and builds its batches from them: the same bits as extracting the batch."""
    extractor = models.feature_extractor(_model().config)
    clips = _clips()
    mels = [windowing.clip_mel(extractor, c, window) for c in clips]
    for picked in ([0, 1, 2], [2, 0], [1]):
        batch = windowing.batch_of([mels[i] for i in picked])
        expected = windowing.extract(extractor, [clips[i] for i in picked], window)
        assert torch.equal(batch.input_features, expected.input_features)
        assert torch.equal(batch.n_frames, expected.n_frames) and batch.window == window
    if window == "full":  # kept compact: a 1.5 s clip's 30 s window is its first ~150 columns and one repeated
        expected = [pytest.approx(2 * windowing.encoder_frames(len(c)), abs=4) for c in clips]
        assert [m.head.shape[-1] for m in mels] == expected
    with pytest.raises(ValueError, match="different windows"):
        windowing.batch_of([mels[0], windowing.clip_mel(extractor, clips[0], "full" if window == "trim" else "trim")])


def test_pooling_mask():
    f = windowing.Features(torch.zeros(2, 80, 8), torch.tensor([4, 2]), "trim")
    assert f.pooling_mask().tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert windowing.Features(f.input_features, f.n_frames, "full").pooling_mask().sum() == 8


def test_masked_mean_over_extra_leading_dims():
    """One masked mean serves the head's pooling (batch, frame, d) and capture's (batch, boundary, frame, d)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = windowing.masked_mean(x, mask)
    assert pooled.shape == (2, 3, 4)
    for j in range(3):
        assert torch.equal(pooled[:, j], windowing.masked_mean(x[:, j], mask))
    assert torch.allclose(pooled[0], x[0, :, :3].mean(1)) and torch.allclose(pooled[1], x[1].mean(1))
