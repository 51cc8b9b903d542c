"""Interventions on a fold model, the core of the causal lens (issue #24).

LoRA switched off or on per layer, a layer's block erased, and what each does to the class probabilities and the
logit-lens trajectory.

A condition is named ``<kind>@<layer>``:

- ``lora_off@k``: the adapters of encoder layer k off (PEFT's per-layer adapter switch), every other on;
- ``lora_only@k``: every adapter off but layer k's;
- ``lora_off_from@k``: the adapters of layer k and every layer above it off;
- ``erase@k``: layer k's block skipped, its output replaced by its input (its update to the residual stream is
  zero), for LoRA and frozen runs alike.

``outcome`` runs a batch under whatever condition is applied and returns what the store keeps per condition: the
final class probabilities and the lens (each boundary's residual through the final layer norm, mean-pooled over
the frames the head pools, through the trained projector and classifier: the trace's ``lens_logits``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm

from app.analysis import causal  # the analyses live with the app; torch-free
from precompute import window as W
from precompute.audio import load_audio
from precompute.checkpoints import FoldModels, RunError, read_config, run_precision
from precompute.config import INTERVENTION_KINDS
from precompute.models import feature_extractor
from precompute.train import resolve_device
from store.writer import StoreWriter

LORA_KINDS = tuple(k for k in INTERVENTION_KINDS if k.startswith("lora_"))
KINDS = ("none", *INTERVENTION_KINDS)
"""Every kind of condition, in the order ``conditions`` lists them; ``none`` is the model as trained."""


@dataclass(frozen=True)
class Condition:
    """One intervention: a kind (``KINDS``) at an encoder layer."""

    kind: str
    layer: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown intervention {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.layer < 0:
            raise ValueError(f"{self.kind}@{self.layer}: layers count from 0")

    @property
    def name(self) -> str:
        """``<kind>@<layer>`` (``none`` alone), the condition's name in the store and the explorer."""
        return "none" if self.kind == "none" else f"{self.kind}@{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Condition:
        """The condition a name (``erase@3``, ``none``) stands for."""
        if text == "none":
            return cls("none", 0)
        kind, sep, layer = text.partition("@")
        if not sep or not layer.isdigit():
            raise ValueError(f"intervention {text!r}: expected KIND@LAYER, e.g. lora_off@3 or erase@0")
        return cls(kind, int(layer))


def conditions(model: torch.nn.Module, kinds: tuple[str, ...] = KINDS) -> list[Condition]:
    """Every condition of ``kinds`` at every encoder layer of ``model`` (the LoRA kinds only for a PEFT model)."""
    n_layers = len(W.whisper_of(model).encoder.layers)
    lora = isinstance(model, PeftModel)
    return [Condition(kind, k) for kind in kinds if lora or kind not in LORA_KINDS
            for k in (range(1) if kind == "none" else range(n_layers))]


def _lora_layers(model: torch.nn.Module) -> dict[int, list[LoraLayer]]:
    """Encoder layer index -> the PEFT LoRA modules inside it."""
    out: dict[int, list[LoraLayer]] = {}
    for k, layer in enumerate(W.whisper_of(model).encoder.layers):
        out[k] = [m for m in layer.modules() if isinstance(m, LoraLayer)]
    return out


@contextmanager
def applied(model: torch.nn.Module, condition: Condition) -> Iterator[None]:
    """Run the block's forward passes under ``condition``; the model is as it was afterwards, also on errors."""
    encoder = W.whisper_of(model).encoder
    n_layers = len(encoder.layers)
    if condition.kind == "none":
        yield
        return
    if condition.layer >= n_layers:
        raise ValueError(f"{condition.name}: the encoder has layers 0 to {n_layers - 1}")
    if condition.kind == "erase":
        handle = encoder.layers[condition.layer].register_forward_hook(
            lambda module, args, kwargs, output: args[0] if args else kwargs["hidden_states"], with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
        return
    if not isinstance(model, PeftModel):
        raise ValueError(f"{condition.name}: the model has no LoRA adapters (a frozen-encoder run)")
    k = condition.layer
    off = {"lora_off": {k}, "lora_only": set(range(n_layers)) - {k},
           "lora_off_from": set(range(k, n_layers))}[condition.kind]
    switched = [m for i, modules in _lora_layers(model).items() if i in off for m in modules]
    saved = [m._disable_adapters for m in switched]
    try:
        for m in switched:
            m._disable_adapters = True  # what PEFT's disable_adapter() sets on every layer, here on these alone
        yield
    finally:
        for m, value in zip(switched, saved, strict=True):
            m._disable_adapters = value


@torch.no_grad()
def outcome(model: torch.nn.Module, features: W.Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(batch, class)`` and lens logits ``(batch, boundary, class)`` of one batch.

    Under the conditions ``applied`` at the time; the lens is computed as the trace computes ``lens_logits``.
    """
    whisper = W.whisper_of(model)
    layers = whisper.encoder.layers
    residual: list[torch.Tensor] = []
    handles = [layers[0].register_forward_pre_hook(lambda module, args: residual.append(args[0]))]
    handles += [layer.register_forward_hook(lambda module, args, output: residual.append(output)) for layer in layers]
    try:
        logits = W.classify(model, features)
    finally:
        for handle in handles:
            handle.remove()
    h = torch.stack([r.float() for r in residual], 1)  # (batch, boundary, frame, d)
    lens = W.head_logits(model, W.masked_mean(whisper.encoder.layer_norm(h), features.pooling_mask()))
    return logits.float().softmax(-1), lens.float()


def run(run_dir: Path, store: str, *, name: str | None = None, kinds: tuple[str, ...] = KINDS, batch_size: int = 8,
        device: str = "cpu", storage_options: dict | None = None) -> dict[str, dict]:
    """Compute every condition of ``kinds`` on the run's traced utterances into the store (``loralens intervene``).

    Each utterance runs through the fold model that held it out (as in the trace), in the run's numeric regime,
    from its source audio. Conditions already written are kept (an interrupted run resumes); a trace that grew
    since makes them all again.

    Returns:
        Per condition name: ``uar`` and ``war`` of its predictions, ``kl`` the mean KL(none || condition) and
        ``flipped`` the share of utterances whose prediction differs from ``none``'s (``app.analysis.causal``).
    """
    name = name or run_dir.resolve().name
    writer = StoreWriter(store, storage_options)
    if name not in writer.runs():
        raise RunError(f"{store} holds no run {name!r} (it has {sorted(writer.runs())}); trace it first: loralens "
                       f"trace --run {run_dir} --store {store}")
    rows = np.flatnonzero(writer.written(name, "trained")).tolist()
    if not rows:
        raise RunError(f"{store}: run {name} has no traced utterance; finish its trace first")
    folds = writer.read(name, "trained", "fold", rows).astype(int)
    labels = writer.read(name, "trained", "label", rows).astype(int)
    sources = writer._column("source")[rows]
    config = read_config(run_dir)
    precision = run_precision(run_dir)
    target = resolve_device(device)
    models = FoldModels(run_dir, "trained", target)
    model = models.load(int(folds[0]))
    whisper = W.whisper_of(model)
    chosen = conditions(model, kinds if "none" in kinds else ("none", *kinds))
    names = [c.name for c in chosen]
    n_boundaries, n_classes = len(whisper.encoder.layers) + 1, whisper.config.num_labels
    writer.create_interventions(name, names, rows, n_boundaries, n_classes,
                                basis=int(writer.attrs(name, "trained").get("n_written", len(rows))))
    extractor = feature_extractor(whisper.config)
    batches = []  # (fold, positions in rows, features), extracted once for every condition
    for fold in sorted(set(folds.tolist())):
        positions = np.flatnonzero(folds == fold).tolist()
        for start in range(0, len(positions), batch_size):
            part = positions[start: start + batch_size]
            audio = [load_audio(sources[i], long=config.long) for i in part]
            batches.append((fold, part, W.extract(extractor, audio, config.window, device=target)))
    done = writer.interventions(name).done
    bar = tqdm(total=int((~done).sum()) * len(batches), desc=f"{name} interventions", unit="batch")
    for index, condition in enumerate(chosen):
        if done[index]:
            continue
        probabilities = np.zeros((len(rows), n_classes), np.float32)
        lens = np.zeros((len(rows), n_boundaries, n_classes), np.float32)
        for fold, part, features in batches:
            model = models.load(fold)
            with applied(model, condition), W.autocast(target, precision):
                p, lens_logits = outcome(model, features)
            probabilities[part], lens[part] = p.cpu().numpy(), lens_logits.cpu().numpy()
            bar.update(1)
        writer.write_intervention(name, index, probabilities, lens)
    bar.close()
    result = writer.interventions(name)
    frame = causal.metrics(result.conditions, result.probabilities, labels)
    return {r.condition: {k: getattr(r, k) for k in ("uar", "war", "kl", "flipped")} for r in frame.itertuples()}
