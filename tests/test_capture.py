"""The nnsight capture against direct computations: logit lens, LoRA B output, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperForAudioClassification

from loralens.precompute import models, windowing
from loralens.precompute.capture import CaptureOptions, Capturer
from loralens.precompute.checkpoints import attach_lora
from loralens.precompute.config import TrainConfig
from tests.conftest import tiny_config


@pytest.fixture()
def lora_model():
    torch.manual_seed(0)
    model = WhisperForAudioClassification(tiny_config()).eval()
    model = attach_lora(model, TrainConfig(model="x", data="y", rank=4, alpha=8, targets=["v_proj", "fc1"])).eval()
    with torch.no_grad():  # a trained-looking adapter: B nonzero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return model


def _batch(model, window="trim"):
    rng = np.random.default_rng(1)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000, 12000)]
    return windowing.extract(models.feature_extractor(model.config), clips, window), torch.tensor([1, 2, 0])


def _residual(model, features) -> list[np.ndarray]:
    """Each clip's residual stream over its real frames, ``(boundary, frame, d)``, taken by plain forward hooks
    (capture keeps it pooled only: the checks below build on it)."""
    layers = windowing.whisper_of(model).encoder.layers
    seen: list[torch.Tensor] = []
    hooks = [layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))]
    hooks += [layer.register_forward_hook(lambda m, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
              for layer in layers]
    try:
        with torch.no_grad():
            windowing.classify(model, features)
    finally:
        for hook in hooks:
            hook.remove()
    h = torch.stack(seen, 1).float().numpy()
    return [h[k, :, :n] for k, n in enumerate(features.n_frames.tolist())]


@pytest.mark.parametrize("window", ["trim", "full"])
def test_lens_at_last_layer_is_the_model(lora_model, window):
    features, labels = _batch(lora_model, window)
    rows = Capturer(lora_model, window, CaptureOptions()).run(features, labels)
    residual = _residual(lora_model, features)
    with torch.no_grad():
        logits = windowing.classify(lora_model, features).numpy()
    for k, row in enumerate(rows):
        assert np.allclose(row["lens_logits"][-1], logits[k], atol=1e-4)
        assert np.allclose(row["logits"], logits[k], atol=1e-5)
        assert row["prediction"] == logits[k].argmax()
        n = int(features.n_frames[k])
        assert row["residual_pooled"].shape == (3, 32) and row["lens_logits_frames"].shape == (3, n, 4)
        if window == "trim":  # the head pools the real frames
            assert np.allclose(row["residual_pooled"], residual[k].mean(1), atol=1e-5)


@pytest.mark.parametrize("window", ["trim", "full"])
def test_lora_b_output_is_the_adapter_delta(lora_model, window):
    features, labels = _batch(lora_model, window)
    rows = Capturer(lora_model, window, CaptureOptions()).run(features, labels)
    residual = _residual(lora_model, features)
    whisper = windowing.whisper_of(lora_model)
    for layer in range(2):
        v = whisper.encoder.layers[layer].self_attn.v_proj
        # The input of v_proj is the layer-normed residual entering the layer.
        for k, row in enumerate(rows):
            n = int(features.n_frames[k])
            x = whisper.encoder.layers[layer].self_attn_layer_norm(torch.from_numpy(residual[k][layer]))
            a = x @ v.lora_A["default"].weight.T
            delta = a @ v.lora_B["default"].weight.T
            module = row["lora_a_activation"][2 * layer]
            assert module.shape == (n, 4)
            assert np.allclose(module, a.detach().numpy(), atol=1e-3)
            assert np.allclose(row["lora_b_activation"][2 * layer][:, :32], delta.detach().numpy(), atol=1e-3)
            # scaled, it is exactly what LoRA adds to v_proj's output
            full = v(x) - v.base_layer(x)
            assert np.allclose(delta.detach().numpy() * v.scaling["default"], full.detach().numpy(), atol=1e-3)


@pytest.mark.parametrize("window", ["trim", "full"])
def test_gradients_equal_autograd(lora_model, window):
    features, labels = _batch(lora_model, window)
    rows = Capturer(lora_model, window, CaptureOptions()).run(features, labels)
    outputs = []
    hooks = [module.register_forward_hook(lambda m, i, o: outputs.append(o))
             for name, module in lora_model.named_modules() if name.endswith(("lora_A.default", "lora_B.default"))]
    logits = windowing.classify(lora_model, features)
    for h in hooks:
        h.remove()
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    grads = torch.autograd.grad(loss, outputs)
    # forward order: per layer v_proj A, v_proj B, fc1 A, fc1 B
    a_grads, b_grads = grads[0::2], grads[1::2]
    for k, row in enumerate(rows):
        n = int(features.n_frames[k])
        for m in range(4):
            assert np.allclose(row["lora_a_gradient"][m], a_grads[m][k, :n].numpy(), atol=1e-5, rtol=1e-3)
            width = b_grads[m].shape[-1]
            assert np.allclose(row["lora_b_gradient"][m][:, :width], b_grads[m][k, :n].numpy(), atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("window", ["trim", "full"])
def test_contributions_are_norm_ratios_and_cosines(lora_model, window):
    features, labels = _batch(lora_model, window)
    (row, *_) = Capturer(lora_model, window, CaptureOptions()).run(features, labels)
    assert row["attention_norm_ratio"].shape == row["mlp_cosine"].shape == (2, 50)
    assert (row["attention_norm_ratio"] >= 0).all() and (np.abs(row["mlp_cosine"]) <= 1 + 1e-5).all()
    h = _residual(lora_model, features)[0].astype(np.float64)  # the block's update: consecutive residuals' difference
    update, h_in = h[1:] - h[:-1], h[:-1]
    ratio = np.linalg.norm(update, axis=-1) / np.linalg.norm(h_in, axis=-1)
    cosine = (update * h_in).sum(-1) / (np.linalg.norm(update, axis=-1) * np.linalg.norm(h_in, axis=-1))
    assert np.allclose(row["block_norm_ratio"], ratio, rtol=1e-3) and np.allclose(row["block_cosine"], cosine,
                                                                                   atol=1e-3)


def test_full_window_reduces_only_the_real_frames(lora_model):
    """The full window's ~1,450 padding frames of these clips are pooled by the head, but no per-frame array keeps
    them: reducing them (the per-frame logit lens above all) cost a sixth of a full-window capture of base."""
    features, labels = _batch(lora_model, "full")
    longest = int(features.n_frames.max())
    assert features.input_features.shape[-1] // 2 == 1500 > 10 * longest
    rows_in = []
    projector = windowing.whisper_of(lora_model).projector
    hook = projector.register_forward_hook(lambda m, i, o: rows_in.append(i[0].numel() // i[0].shape[-1]))
    try:
        rows = Capturer(lora_model, "full", CaptureOptions()).run(features, labels)
    finally:
        hook.remove()
    residual = _residual(lora_model, features)
    boundaries, batch = 3, 3
    # the model's own pooled head, the pooled lens, and the per-frame lens over the longest clip's frames
    assert sorted(rows_in) == [batch, batch * boundaries, batch * boundaries * longest]
    with torch.no_grad():  # the per-frame lens still reads each real frame as the head would
        whisper = windowing.whisper_of(lora_model)
        for k, row in enumerate(rows):
            lens = whisper.classifier(whisper.projector(whisper.encoder.layer_norm(
                torch.from_numpy(residual[k]))))
            assert np.allclose(row["lens_logits_frames"], lens.numpy(), atol=1e-4)


def test_frozen_model_has_no_lora_arrays():
    torch.manual_seed(0)
    model = WhisperForAudioClassification(tiny_config()).eval()
    features, labels = _batch(model)
    (row, *_) = Capturer(model, "trim", CaptureOptions()).run(features, labels)
    assert not any(k.startswith("lora_") for k in row)


def test_capture_on_bundled_tiny_en_real_speech(emodb):
    """The same checks on real converted weights and real EmoDB speech."""
    from loralens.precompute.audio import load_audio

    model = models.load_classifier("bundled:tiny.en", ["anger", "happiness", "neutral", "sadness"])
    model = attach_lora(model, TrainConfig(model="bundled:tiny.en", data="y", rank=8, alpha=16)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    clips = [load_audio(emodb / "wav" / name) for name in ("03a01Wa.wav", "08a02Ab.wav", "16b10Tb.wav")]
    features = windowing.extract(models.feature_extractor(model.config), clips, "trim")
    labels = torch.tensor([0, 1, 3])
    rows = Capturer(model, "trim", CaptureOptions()).run(features, labels)
    with torch.no_grad():
        logits = windowing.classify(model, features).numpy()
    outputs = []
    hooks = [m.register_forward_hook(lambda mod, i, o: outputs.append(o))
             for n, m in model.named_modules() if n.endswith("lora_B.default")]
    loss = torch.nn.functional.cross_entropy(windowing.classify(model, features), labels, reduction="sum")
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(loss, outputs)
    for k, row in enumerate(rows):
        n = int(features.n_frames[k])
        assert np.allclose(row["lens_logits"][-1], logits[k], atol=1e-3)
        for m in range(4):
            assert np.allclose(row["lora_b_activation"][m], outputs[m][k, :n].detach().numpy(), atol=2e-3)
            assert np.allclose(row["lora_b_gradient"][m], grads[m][k, :n].numpy(), atol=1e-4, rtol=1e-2)


@pytest.mark.parametrize("window", ["trim", "full"])
def test_contributions_equal_what_plain_forward_hooks_see(lora_model, window):
    """The paper's Fig. 1 from first principles: each layer's attention and MLP outputs taken by plain PyTorch hooks
    (not nnsight), over each clip's real frames; attention + MLP is the layer's whole step in the residual stream."""
    features, labels = _batch(lora_model, window)
    rows = Capturer(lora_model, window, CaptureOptions()).run(features, labels)
    whisper = windowing.whisper_of(lora_model)
    seen: dict[str, list[torch.Tensor]] = {"input": [], "attention": [], "mlp": [], "output": []}
    hooks = []
    for layer in whisper.encoder.layers:
        hooks += [layer.register_forward_pre_hook(lambda m, args: seen["input"].append(args[0])),
                  layer.self_attn.register_forward_hook(lambda m, args, out: seen["attention"].append(out[0])),
                  layer.fc2.register_forward_hook(lambda m, args, out: seen["mlp"].append(out)),
                  layer.register_forward_hook(lambda m, args, out: seen["output"].append(
                      out[0] if isinstance(out, tuple) else out))]
    try:
        with torch.no_grad():
            windowing.classify(lora_model, features)
    finally:
        for hook in hooks:
            hook.remove()
    for k, row in enumerate(rows):
        n = int(features.n_frames[k])
        for i in range(len(whisper.encoder.layers)):
            h, attn, mlp = (seen[key][i][k, :n].double().numpy() for key in ("input", "attention", "mlp"))
            step = seen["output"][i][k, :n].double().numpy() - h
            np.testing.assert_allclose(attn + mlp, step, atol=1e-5)  # nothing else writes to the stream
            norm = np.linalg.norm(h, axis=-1)
            cos = lambda a, b: (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))  # noqa: E731
            for name, value in (("attention_norm_ratio", np.linalg.norm(attn, axis=-1) / norm),
                                ("mlp_norm_ratio", np.linalg.norm(mlp, axis=-1) / norm),
                                ("block_norm_ratio", np.linalg.norm(step, axis=-1) / norm),
                                ("attention_cosine", cos(attn, h)), ("mlp_cosine", cos(mlp, h)),
                                ("block_cosine", cos(step, h))):
                np.testing.assert_allclose(row[name][i], value, rtol=2e-3, atol=2e-3, err_msg=f"{name} layer {i}")
