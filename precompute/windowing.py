"""The encoder's input window: stock 30 s (``full``) or only the clip's own frames (``trim``).

``full`` is stock Whisper: every clip padded to 30 s (3000 mel frames, 1500 encoder frames) and the head
mean-pools all 1500 frames, as the paper does. ``trim`` runs the encoder over the clip's own frames: the
positional embeddings are sliced to the batch's length, padded frames are masked out of every attention
layer's keys and out of the pooling, so a clip's result does not depend on what it is batched with.

Devices: a batch's log-mel lives on the model's device, its lengths (``n_frames``) on the host, and every mask is
made on the device of the log-mel it meets. ``autocast`` sets the numeric regime (``fp32`` or ``bf16``) of a run's
forward passes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from peft import PeftModel
from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

from loralens.precompute.audio import SAMPLE_RATE
from loralens.precompute.config import WINDOWS, Precision, Window  # noqa: F401  (re-exported: W.Window)

HOP = 160
"""Samples per mel frame; an encoder frame spans two mel frames (conv2 has stride 2)."""

# The window is set by mutating the encoder for the duration of a forward pass; one at a time per process.
_LOCK = threading.RLock()


@dataclass
class Features:
    """A batch of log-mel inputs."""

    input_features: torch.Tensor
    """Log-mel spectrograms, shape ``(batch, n_mels, 2 * n_positions)``, on the model's device."""
    n_frames: torch.Tensor
    """Encoder frames that hold the clip (the rest is padding), shape ``(batch,)``, on the host: lengths shape
    masks and slices, and reading them must not wait for the device."""
    window: Window
    """How the batch was windowed."""

    @property
    def n_positions(self) -> int:
        """Encoder frames in the batch (the longest clip in ``trim``, 1500 in ``full``)."""
        return self.input_features.shape[-1] // 2

    def pooling_mask(self) -> torch.Tensor:
        """Which encoder frames the head pools: shape ``(batch, n_positions)``, 1.0 where pooled.

        ``full`` pools every frame (stock Whisper); ``trim`` only the clip's own. Made on ``input_features``'
        device, where the hidden states it masks live.
        """
        device = self.input_features.device
        if self.window == "full":
            return torch.ones(len(self.n_frames), self.n_positions, device=device)
        positions = torch.arange(self.n_positions, device=device)
        return (positions[None, :] < self.n_frames.to(device)[:, None]).float()

    def to(self, device: torch.device | str) -> Features:
        """The same batch with its log-mel on ``device`` (its lengths stay on the host)."""
        return Features(self.input_features.to(device), self.n_frames.cpu(), self.window)


def encoder_frames(n_samples: int) -> int:
    """Encoder frames covering ``n_samples`` of 16 kHz audio (at least one)."""
    return max(1, -(-(n_samples // HOP) // 2))


def extract(extractor: WhisperFeatureExtractor, audios: Sequence[np.ndarray], window: Window,
            max_positions: int = 1500, device: torch.device | str = "cpu") -> Features:
    """Log-mel features for a batch of 16 kHz clips, computed on ``device`` and left there.

    Each clip is transformed alone, so its features do not depend on the batch: a training run, its trace, the
    causal lens and ``predict`` give a clip the same input bits however they batch it. ``trim`` pads the batch with
    zeros, which is what the encoder's first convolution pads with too. The extractor's STFT runs on ``device`` (a
    GPU's takes a 30 s ``full`` window off the host; it agrees with the host's to about 1e-5).
    """
    device = torch.device(device)
    on = {"device": str(device)} if device.type != "meta" else {}  # meta: shapes only, computed on the host
    n_frames = torch.tensor([min(encoder_frames(len(a)), max_positions) for a in audios])
    if window == "full":
        mels = [extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="max_length",
                          **on).input_features[0] for audio in audios]
        return Features(torch.stack(mels).float(), n_frames, window).to(device)
    length = int(n_frames.max()) * 2
    batch = torch.zeros(len(audios), extractor.feature_size, length)
    for i, audio in enumerate(audios):
        mel = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="longest",
                        **on).input_features[0]
        mel = mel[:, : int(n_frames[i]) * 2]
        batch[i, :, : mel.shape[-1]] = mel
    return Features(batch, n_frames, window).to(device)


def whisper_of(model: torch.nn.Module) -> WhisperForAudioClassification:
    """The ``WhisperForAudioClassification`` inside ``model`` (a PEFT model injects LoRA into it in place)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not isinstance(base, WhisperForAudioClassification):
        raise TypeError(f"expected a WhisperForAudioClassification, got {type(base).__name__}")
    return base


@contextmanager
def encoder_window(model: torch.nn.Module, features: Features) -> Iterator[None]:
    """Set ``model``'s encoder to ``features``' window for the forward passes run inside the block."""
    whisper = whisper_of(model)
    encoder = whisper.encoder
    n = features.n_positions
    if n > encoder.embed_positions.weight.shape[0]:
        raise ValueError(f"{n} encoder frames exceed the model's {encoder.embed_positions.weight.shape[0]} positions")
    handles = []
    with _LOCK:
        saved = (encoder.config.max_source_positions, encoder.embed_positions.num_embeddings)
        encoder.config.max_source_positions = n
        encoder.embed_positions.num_embeddings = n  # the forward embeds arange(num_embeddings): the first n rows
        try:
            if features.window == "trim" and bool((features.n_frames < n).any()):
                keys = features.pooling_mask()
                mask = (1.0 - keys)[:, None, None, :] * torch.finfo(torch.float32).min

                def add_mask(module, args, kwargs):
                    mask_ = mask.to(args[0].dtype) if mask.dtype != args[0].dtype else mask
                    return (args[0], mask_, *args[2:]), kwargs

                handles = [layer.register_forward_pre_hook(add_mask, with_kwargs=True) for layer in encoder.layers]
            yield
        finally:
            for h in handles:
                h.remove()
            encoder.config.max_source_positions, encoder.embed_positions.num_embeddings = saved


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the frames where ``mask`` is 1, the frame axis being the second to last.

    Args:
        hidden: shape ``(batch, ..., frames, d)``, e.g. ``(batch, frames, d_model)`` or
            ``(batch, boundary, frames, d_model)``.
        mask: shape ``(batch, frames)``, on ``hidden``'s device.

    Returns:
        Shape ``(batch, ..., d)``.
    """
    m = mask.to(hidden.dtype).reshape(mask.shape[0], *([1] * (hidden.dim() - 3)), mask.shape[1], 1)
    return (hidden * m).sum(-2) / m.sum(-2).clamp(min=1)


def head_logits(model: torch.nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The head on a mean-pooled encoder output: ``(batch, d_model)`` -> ``(batch, n_classes)``.

    The projector is affine, so projecting the pooled vector equals pooling the projected frames.
    """
    whisper = whisper_of(model)
    return whisper.classifier(whisper.projector(pooled))


def logit_lens(model: torch.nn.Module, residual: torch.Tensor, pooling_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The logit lens: the one rule for the trace, the causal lens and ``predict``.

    Each boundary's residual goes through the encoder's final layer norm, is mean-pooled as the head pools, and goes
    through the trained projector and classifier. Computed in float32 outside autocast whatever regime the forward
    ran in, so it is the same numbers wherever it is read.

    Args:
        model: the classifier (a ``PeftModel`` too).
        residual: ``(batch, boundary, frames, d_model)``.
        pooling_mask: ``(batch, frames)``, what the head pools (``Features.pooling_mask``).

    Returns:
        The normed residual ``(batch, boundary, frames, d_model)`` and the lens logits ``(batch, boundary, class)``,
        both float32.
    """
    whisper = whisper_of(model)
    device = residual.device.type  # the meta device (shapes only) knows no autocast: nothing to leave there
    outside = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else \
        contextlib.nullcontext()
    with outside:
        normed = whisper.encoder.layer_norm(residual.float())
        return normed, head_logits(model, masked_mean(normed, pooling_mask))


def encode(model: torch.nn.Module, features: Features) -> torch.Tensor:
    """The encoder's last hidden state under ``features``' window, ``(batch, n_positions, d_model)``."""
    with encoder_window(model, features):
        return whisper_of(model).encoder(features.input_features).last_hidden_state


def classify(model: torch.nn.Module, features: Features) -> torch.Tensor:
    """Logits of the full model (encoder, projector, pooling, classifier), ``(batch, n_classes)``."""
    hidden = encode(model, features)
    return head_logits(model, masked_mean(hidden, features.pooling_mask()))


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The numeric regime of the forward passes run inside the block.

    Args:
        device: where the model runs.
        precision: ``fp32`` (no autocast: the model's own float32) or ``bf16`` (autocast to bfloat16 on
            ``device``'s type; CUDA and CPU support it).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class ClipMel:
    """One clip's log-mel input as a training run keeps it between epochs: its window less its constant end.

    ``full`` pads a clip with zeros to 30 s, whose log-mel is one column repeated to the window's end (2,800 of
    3,000 columns for a 2 s clip): keeping the columns before it and that column takes a fifteenth of the memory
    and rebuilds the same bits with no extraction per step. A ``trim`` clip keeps every column and ends in
    zeros, which is what a batch of clips of different lengths is padded with.
    """

    head: torch.Tensor
    """The columns up to the last one that differs from ``tail``, shape ``(n_mels, k)``, on the host."""
    tail: torch.Tensor
    """The column the window goes on with after ``head``, shape ``(n_mels,)`` (``trim``: zeros)."""
    width: int
    """Columns of the clip's whole window (``full``: 3,000; ``trim``: twice its encoder frames)."""
    n_frames: int
    """Encoder frames that hold the clip."""
    window: Window


def clip_mel(extractor: WhisperFeatureExtractor, audio: np.ndarray, window: Window,
             device: torch.device | str = "cpu") -> ClipMel:
    """``audio``'s log-mel in ``window``, extracted on ``device`` and kept compact on the host (see ``ClipMel``).

    Extracted where a trace on ``device`` extracts it (a GPU's STFT differs from the host's by about 1e-5), so a run
    and its trace see the same input bits. The ``meta`` device has no values: extracted on the host.
    """
    device = torch.device(device)
    features = extract(extractor, [audio], window, device=device if device.type != "meta" else "cpu")
    x = features.input_features[0].cpu()
    n_frames = int(features.n_frames[0])
    if window == "trim":
        return ClipMel(x, x.new_zeros(x.shape[0]), x.shape[-1], n_frames, window)
    tail = x[:, -1]
    differs = (x != tail[:, None]).any(0).nonzero()
    k = int(differs[-1]) + 1 if len(differs) else 0
    return ClipMel(x[:, :k].clone(), tail.clone(), x.shape[-1], n_frames, window)


def batch_of(clips: Sequence[ClipMel], device: torch.device | str = "cpu") -> Features:
    """The batch of ``clips`` on ``device``, as ``extract`` would have made it from their audio.

    Each row is its clip's columns then its tail, to the widest clip's window. The host sends the columns and
    tails in one copy each; the rows are filled on the device.
    """
    windows = {c.window for c in clips}
    if len(windows) != 1:
        raise ValueError(f"cannot batch log-mel of different windows: {sorted(windows)}")
    device = torch.device(device)
    width = max(c.width for c in clips)
    widths = [c.head.shape[-1] for c in clips]
    heads = torch.cat([c.head for c in clips], dim=-1).to(device, non_blocking=True)
    tails = torch.stack([c.tail for c in clips]).to(device, non_blocking=True)
    batch = tails[:, :, None].expand(-1, -1, width).contiguous()
    start = 0
    for i, k in enumerate(widths):
        batch[i, :, :k] = heads[:, start: start + k]
        start += k
    return Features(batch, torch.tensor([c.n_frames for c in clips]), clips[0].window)
