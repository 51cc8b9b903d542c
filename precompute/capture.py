"""Capture everything the store keeps of one batch, with nnsight (the one module that traces with it).

A model and a batch in; per-utterance NumPy arrays out, named as in ``loralens.store.schema.CHECKPOINT_ARRAYS``.
The causal lens (``loralens.precompute.intervene``) is not a capture: it changes the forward pass and reads
only the residual stream around its changes, with plain PyTorch forward hooks.
Everything up to ``to_numpy`` runs on the model's device; ``to_numpy`` is the one place tensors leave it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from nnsight import NNsight
from peft import PeftModel

from loralens.precompute import windowing
from loralens.precompute.config import PRECISIONS, Precision
from loralens.store.schema import CHECKPOINT_ARRAYS

PER_FRAME = {name for name, spec in CHECKPOINT_ARRAYS.items() if spec.per_frame}
SAMPLED = {name for name, spec in CHECKPOINT_ARRAYS.items() if spec.sampled}
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_TARGETS = ("fc1", "fc2")


@dataclass
class CaptureOptions:
    """What to capture beyond the always-kept pooled residuals, contributions and logit lens."""

    per_frame_b: bool = True
    """Keep LoRA B activations and gradients per frame (frames x d_out each); large for big models."""
    gradients: bool = True
    """Capture gradients of the cross-entropy on the true label w.r.t. LoRA A and B outputs."""
    per_frame_sample: float = 1.0
    """Share of utterances whose sampled per-frame arrays (LoRA A/B per frame, ``ArraySpec.sampled``)
    are kept; pooled arrays cover every utterance. Chosen by a hash of the utterance id, so every run traced
    with the same share keeps the same utterances, whatever the order, shard or machine."""
    precision: Precision = "fp32"
    """Numeric regime of the traced forward and backward passes: ``fp32``, or ``bf16`` autocast (``loralens trace``
    uses the run's own, so the store predicts what training did); the arrays are reduced in float32 either way."""

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; expected one of {PRECISIONS}")
        if not 0 < self.per_frame_sample <= 1:
            raise ValueError(f"per_frame_sample={self.per_frame_sample}; expected a share in (0, 1]")

    def keeps_frames(self, utterance_id: str) -> bool:
        """Whether the sampled per-frame arrays of ``utterance_id`` are kept (see ``per_frame_sample``)."""
        if self.per_frame_sample >= 1:
            return True
        digest = hashlib.sha256(utterance_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.per_frame_sample

    def to_json(self) -> dict:
        """A JSON-able dict."""
        return asdict(self)


class _Classifier(torch.nn.Module):
    """The whole classifier as one module with a tensor-only forward, for nnsight to trace."""

    def __init__(self, model: torch.nn.Module, window: windowing.Window):
        super().__init__()
        self.model = model
        self.window = window

    def forward(self, input_features: torch.Tensor, n_frames: list[int]) -> torch.Tensor:
        # The lengths come as a list: nnsight moves every tensor input to the model's device, and they belong on
        # the host (see ``windowing.Features.n_frames``).
        return windowing.classify(self.model, windowing.Features(input_features, torch.tensor(n_frames), self.window))


def lora_modules(model: torch.nn.Module) -> list[tuple[int, str]]:
    """(layer, target) of every LoRA-adapted encoder module, in forward order."""
    if not isinstance(model, PeftModel):
        return []
    targets = [t for t in (*ATTENTION_TARGETS, *MLP_TARGETS)
               if hasattr(getattr(windowing.whisper_of(model).encoder.layers[0].self_attn, t, None), "lora_A")
               or hasattr(getattr(windowing.whisper_of(model).encoder.layers[0], t, None), "lora_A")]
    return [(i, t) for i in range(len(windowing.whisper_of(model).encoder.layers)) for t in targets]


def module_name(layer: int, target: str) -> str:
    """The store's name of a LoRA module, e.g. ``layer_3.v_proj``."""
    return f"layer_{layer}.{target}"


class Capturer:
    """Traces one model (a fold's checkpoint) batch after batch."""

    def __init__(self, model: torch.nn.Module, window: windowing.Window, options: CaptureOptions):
        self.model = model.eval()
        self.options = options
        self.modules = lora_modules(model)
        if self.modules and options.gradients:
            for name, param in model.named_parameters():  # a loaded adapter is frozen: no graph to differentiate
                if "lora_" in name:
                    param.requires_grad_(True)
        self.traced = NNsight(_Classifier(model, window))
        root = self.traced.model
        self.whisper_envoy = root.base_model.model if isinstance(model, PeftModel) else root

    def _lora_envoy(self, layer, target: str):
        parent = layer.self_attn if target in ATTENTION_TARGETS else layer
        module = getattr(parent, target)
        return module.lora_A["default"], module.lora_B["default"]

    def run(self, features: windowing.Features, labels: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """Capture one batch.

        Args:
            features: the batch (its ``n_frames`` says how many frames of each are real), on the model's device.
            labels: true class indices, shape ``(batch,)``, on any device.

        Returns:
            Per utterance, arrays named as in ``loralens.store.schema``; per-frame arrays hold only the real frames.
        """
        layers = self.whisper_envoy.encoder.layers
        n_layers = len(windowing.whisper_of(self.model).encoder.layers)
        residual, attention, mlp, a_out, b_out, a_grad, b_grad = [], [], [], [], [], [], []
        by_layer: dict[int, list[str]] = {}
        for i, t in self.modules:
            by_layer.setdefault(i, []).append(t)
        with_grad = bool(self.modules) and self.options.gradients
        context = torch.enable_grad() if with_grad else torch.no_grad()
        device = next(self.model.parameters()).device
        labels = labels.to(device)
        with context, windowing.autocast(device, self.options.precision), \
                self.traced.trace(features.input_features, features.n_frames.tolist()):
            residual.append(layers[0].input.save())
            for i in range(n_layers):
                layer = layers[i]
                for t in by_layer.get(i, []):
                    if t in ATTENTION_TARGETS:
                        a, b = self._lora_envoy(layer, t)
                        a_out.append(a.output.save())
                        b_out.append(b.output.save())
                attention.append(layer.self_attn.output[0].save())
                for t in by_layer.get(i, []):
                    if t in MLP_TARGETS:
                        a, b = self._lora_envoy(layer, t)
                        a_out.append(a.output.save())
                        b_out.append(b.output.save())
                mlp.append(layer.fc2.output.save())
                residual.append(layer.output.save())
            logits = self.traced.output.save()
            if with_grad:
                loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
                with loss.backward():  # gradients arrive in reverse forward order
                    for k in reversed(range(len(a_out))):
                        b_grad.insert(0, b_out[k].grad.save())
                        a_grad.insert(0, a_out[k].grad.save())
        return self._per_utterance(features, labels, residual, attention, mlp, a_out, b_out, a_grad, b_grad,
                                   logits)

    @torch.no_grad()
    def _per_utterance(self, features, labels, residual, attention, mlp, a_out, b_out, a_grad, b_grad,
                       logits) -> list[dict[str, np.ndarray]]:
        whisper = windowing.whisper_of(self.model)
        # Per-frame arrays keep the real frames of the longest clip and reduce no more: in the full window the
        # other ~1,400 of 1,500 frames are padding, which cost a 2 s clip's batch of base 2.8 of 16.9 s on the CPU
        # (the per-frame logit lens over them) and would have crossed to the host from a GPU.
        m = int(features.n_frames.max())
        h = torch.stack([r.detach().float() for r in residual], 1)  # (batch, boundary, frame, d)
        attn = torch.stack([a.detach().float() for a in attention], 1)  # (batch, layer, frame, d)
        ffn = torch.stack([f.detach().float() for f in mlp], 1)
        pool = features.pooling_mask()  # what the head pools: every frame in the full window
        real = windowing.Features(features.input_features, features.n_frames, "trim").pooling_mask()[:, :m]
        normed, pooled_lens = windowing.logit_lens(self.model, h, pool)  # (batch, boundary, class)
        frame_logits = whisper.classifier(whisper.projector(normed[:, :, :m]))  # (batch, boundary, frame, class)
        h_in, attn_m, ffn_m = h[:, :-1, :m], attn[:, :, :m], ffn[:, :, :m]
        h_norm = h_in.norm(dim=-1).clamp(min=1e-12)
        update = h[:, 1:, :m] - h_in  # attention + MLP output: the layer's whole write to the residual stream
        batched = {
            "residual_pooled": windowing.masked_mean(h, pool),
            "lens_logits": pooled_lens,
            "attention_norm_ratio": attn_m.norm(dim=-1) / h_norm,
            "attention_cosine": torch.nn.functional.cosine_similarity(attn_m, h_in, dim=-1),
            "mlp_norm_ratio": ffn_m.norm(dim=-1) / h_norm,
            "mlp_cosine": torch.nn.functional.cosine_similarity(ffn_m, h_in, dim=-1),
            "block_norm_ratio": update.norm(dim=-1) / h_norm,
            "block_cosine": torch.nn.functional.cosine_similarity(update, h_in, dim=-1),
            "logits": logits.detach().float(),
            "lens_logits_frames": frame_logits,
        }
        if a_out:
            # (batch, module, frame, rank)
            batched["lora_a_activation"] = torch.stack([a.detach()[:, :m].float() for a in a_out], 1)
            b_stack = [b.detach()[:, :m].float() for b in b_out]
            width = max(b.shape[-1] for b in b_stack)
            batched["lora_b_activation"] = torch.stack([_pad_last(b, width) for b in b_stack], 1)
            if a_grad:
                batched["lora_a_gradient"] = torch.stack([g.detach()[:, :m].float() for g in a_grad], 1)
                batched["lora_b_gradient"] = torch.stack([_pad_last(g.detach()[:, :m].float(), width)
                                                          for g in b_grad], 1)
            else:
                batched["lora_a_gradient"] = torch.zeros_like(batched["lora_a_activation"])
                batched["lora_b_gradient"] = torch.zeros_like(batched["lora_b_activation"])
            batched["lora_a_pooled"] = windowing.masked_mean(batched["lora_a_activation"], real)
            batched["lora_b_pooled"] = windowing.masked_mean(batched["lora_b_activation"], real)
        arrays = {name: to_numpy(value) for name, value in batched.items()}
        predictions = arrays["logits"].argmax(-1)
        label_values = to_numpy(labels)
        out = []
        for k, n in enumerate(features.n_frames.tolist()):
            row = {"label": np.int16(label_values[k]), "prediction": np.int16(predictions[k])}
            for name, value in arrays.items():
                per_frame = name in PER_FRAME
                row[name] = value[k, ..., :n, :] if per_frame and value.ndim == 4 else (
                    value[k, :, :n] if per_frame else value[k])
            out.append(row)
        return out


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values on the host: where capture's results leave the model's device."""
    return tensor.detach().cpu().numpy()


def _pad_last(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x
