"""Stored LoRA gradients keep float32's precision: compared with torch.autograd.grad after a store round trip.

A model trained to a low loss has gradients far below float16's normal range (6.1e-5), where float16 keeps only
a few significant bits; the paper's gradient spectra and CKA are computed from these values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperForAudioClassification

from loralens.precompute import models, windowing
from loralens.precompute.capture import CaptureOptions, Capturer, lora_modules, module_name
from loralens.precompute.checkpoints import attach_lora
from loralens.precompute.config import TrainConfig
from loralens.store.reader import StoreReader
from loralens.store.writer import StoreWriter, UtteranceRow
from tests.conftest import tiny_config, tone

FLOAT16_NORMAL = float(np.finfo(np.float16).tiny)


CLIPS = [tone(0.5 + 0.1 * k, 16000, 200 * (k + 1), seed=k) for k in range(4)]


@pytest.fixture(scope="module")
def trained():
    """A tiny LoRA model trained (in the trim window, the cheap one) on four tones until its loss is low."""
    torch.manual_seed(0)
    model = WhisperForAudioClassification(tiny_config()).eval()
    model = attach_lora(model, TrainConfig(model="x", data="y", rank=4, alpha=8, dropout=0.0,
                                           targets=["v_proj", "fc1"]))
    features = windowing.extract(models.feature_extractor(model.config), CLIPS, "trim")
    labels = torch.arange(4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(400):
        loss = torch.nn.functional.cross_entropy(windowing.classify(model, features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 2e-4:
            break
    assert loss.item() < 1e-2, "the tiny model did not train"
    return model.eval()


def _autograd(model, features, labels) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """d cross-entropy / d LoRA A and B outputs, in forward order, straight from torch.autograd.grad."""
    outputs = []
    hooks = [m.register_forward_hook(lambda mod, i, o: outputs.append(o))
             for name, m in model.named_modules() if name.endswith(("lora_A.default", "lora_B.default"))]
    with torch.enable_grad():
        logits = windowing.classify(model, features)
    for h in hooks:
        h.remove()
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    grads = torch.autograd.grad(loss, outputs)
    return list(grads[0::2]), list(grads[1::2])


@pytest.mark.parametrize("window", ["trim", "full"])
def test_stored_gradients_are_float32_exact(tmp_path, trained, window):
    model, labels = trained, torch.arange(4)
    features = windowing.extract(models.feature_extractor(model.config), CLIPS, window)
    rows = Capturer(model, window, CaptureOptions()).run(features, labels)
    whisper = windowing.whisper_of(model)
    path = str(tmp_path / "store.zarr")
    writer = StoreWriter(path)
    mels = windowing.extract(models.feature_extractor(model.config), [np.zeros(8000, np.float32)] * 4, "trim")
    table = writer.add_utterances([
        UtteranceRow(f"t/{k}", "t", f"/x/{k}.wav", "s", "anger", np.zeros(16000, np.float32),
                     int(features.n_frames[k]), mels.input_features[k].numpy()) for k in range(4)])
    modules = lora_modules(model)
    attrs = {"method": "lora", "model": "tiny", "data": "d", "window": window, "emotions": ["a", "b", "c", "d"],
             "rank": 4, "alpha": 8, "targets": ["v_proj", "fc1"], "modules": [module_name(*m) for m in modules],
             "n_layers": 2, "d_model": 32, "train_config": {}, "metrics": {}, "capture": {"per_frame_b": True}}
    sizes = {"boundary": 3, "layer": 2, "d_model": 32, "class": 4, "module": len(modules), "rank": 4,
             "d_out": max(whisper.config.d_model, whisper.config.encoder_ffn_dim)}
    writer.create_checkpoint("run", "trained", attrs, sizes, lora=True, per_frame_b=True)
    for row, arrays in zip(table, rows, strict=True):
        writer.write("run", "trained", row, arrays | {"fold": np.int16(0)})
    writer.commit("run", table)

    reader = StoreReader(path)
    a_grads, b_grads = _autograd(model, features, labels)
    values = torch.cat([g.flatten() for g in a_grads + b_grads]).abs()
    subnormal = float(((values > 0) & (values < FLOAT16_NORMAL)).float().mean())
    assert subnormal > 0.2, f"only {subnormal:.0%} of the gradients lie below float16's normal range: not a test"
    for k in range(4):
        n = int(features.n_frames[k])
        for name, grads in (("lora_a_gradient", a_grads), ("lora_b_gradient", b_grads)):
            stored = reader.read("run", "trained", name, k)
            for m, g in enumerate(grads):
                expected = g[k, :n].double().numpy()
                got = stored[m, :n, : expected.shape[-1]].astype(np.float64)
                scale = np.abs(expected).max()
                # relative error at most 1e-3, counted on every value above float32 round-off of the largest one
                significant = np.abs(expected) > 1e-5 * scale
                error = np.abs(got - expected)[significant] / np.abs(expected)[significant]
                assert error.max() <= 1e-3, (name, m, k, float(error.max()))
                assert np.abs(got - expected).max() <= 1e-5 * scale
