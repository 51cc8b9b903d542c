"""Fold checkpoints of a run directory: the trained LoRA adapter, its random twin, and the head.

Layout of ``RUN/fold_KK``: ``head.safetensors`` (projector and classifier), ``adapter/`` and
``random_twin/`` (PEFT ``save_pretrained`` directories, LoRA runs only), ``metrics.json``,
``predictions.csv``. A fold directory exists only once complete (it is written as ``fold_KK.partial``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from precompute.config import TrainConfig
from precompute.models import load_classifier
from precompute.window import whisper_of

Variant = Literal["trained", "random_twin"]
HEAD_FILE = "head.safetensors"
TWIN_STD = 0.02
"""Standard deviation of the random twin's LoRA A and B entries."""


class RunError(ValueError):
    """A run directory that cannot be used as asked."""


def lora_config(config: TrainConfig) -> LoraConfig:
    """The PEFT config of a LoRA run."""
    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.targets), bias="none")


def head_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's weights (projector and classifier)."""
    whisper = whisper_of(model)
    return {f"{name}.{k}": v.detach().cpu().contiguous() for name in ("projector", "classifier")
            for k, v in getattr(whisper, name).state_dict().items()}


def save_head(model: torch.nn.Module, path: Path) -> None:
    """Write the head as safetensors."""
    save_file(head_state(model), path)


def randomise_lora(model: PeftModel, seed: int) -> None:
    """Redraw every LoRA A and B matrix from N(0, TWIN_STD^2): the untrained baseline for SVD and CKA."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * TWIN_STD)


def read_config(run: Path) -> TrainConfig:
    """The ``config.json`` of a run directory."""
    path = run / "config.json"
    if not path.is_file():
        raise RunError(f"{run} is not a loralens run directory (no config.json); create one with loralens train")
    return TrainConfig.from_json(json.loads(path.read_text()))


def completed_folds(run: Path) -> list[int]:
    """Indices of the folds whose directory is complete."""
    return sorted(int(p.name[5:]) for p in run.glob("fold_[0-9][0-9]") if (p / "metrics.json").is_file())


def load_fold_model(run: Path, fold: int, variant: Variant = "trained") -> torch.nn.Module:
    """Rebuild a fold's model: the base encoder, the fold's head and, for LoRA runs, its adapter.

    Args:
        run: the run directory.
        fold: the fold index.
        variant: the trained adapter, or its random-initialised twin (same head).

    Returns:
        The model in eval mode on the CPU (a ``PeftModel`` for LoRA runs).
    """
    config = read_config(run)
    fold_dir = run / f"fold_{fold:02d}"
    if not (fold_dir / "metrics.json").is_file():
        raise RunError(f"{fold_dir} is missing or incomplete; finish it with the same loralens train command "
                       f"(completed folds: {completed_folds(run)})")
    model = load_classifier(config.model, list(config.emotions), seed=config.seed + fold)
    whisper_of(model).load_state_dict(load_file(fold_dir / HEAD_FILE), strict=False)
    if config.method == "frozen":
        if variant != "trained":
            raise RunError(f"{run} is a frozen-encoder run: it has no LoRA and no random twin")
        return model.eval()
    adapter = fold_dir / ("adapter" if variant == "trained" else "random_twin")
    return PeftModel.from_pretrained(model, adapter).eval()


def attach_lora(model: torch.nn.Module, config: TrainConfig) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters; the head stays trainable, the rest of the encoder frozen."""
    peft_model = get_peft_model(model, lora_config(config))
    for name in ("projector", "classifier"):
        getattr(whisper_of(peft_model), name).requires_grad_(True)
    return peft_model
