"""Fold checkpoints of a run directory: the trained LoRA adapter, its random twin, and the head.

Layout of ``RUN/fold_KK``: ``head.safetensors`` (projector and classifier), ``adapter/`` and
``random_twin/`` (PEFT ``save_pretrained`` directories, LoRA runs only), ``metrics.json``,
``predictions.csv``. A fold directory exists only once complete (it is written as ``fold_KK.partial``).
While a fold trains, ``fold_KK.partial/progress.safetensors`` holds its state after the last finished epoch
(trainable weights, optimizer, random number generators, curves), so an interrupted fold resumes there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from loralens.precompute.config import (
    LATER_FIELDS,
    RESUMABLE_FIELDS,
    Precision,
    RunError,
    TrainConfig,
    completed_folds,
    default_precision,
    read_config,
)
from loralens.precompute.models import load_classifier
from loralens.precompute.windowing import whisper_of

Variant = Literal["trained", "random_twin"]
HEAD_FILE = "head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
"""What PEFT's ``save_pretrained`` names an adapter's weights inside ``adapter/`` and ``random_twin/``."""
PROGRESS_FILE = "progress.safetensors"
WEIGHTS_FILE = "weights.json"
"""A fully fine-tuned fold's pointer to its whole model's weights (``path``, ``bytes``): imported, never copied."""
TWIN_STD = 0.02
"""Standard deviation of the random twin's LoRA A and B entries."""


def lora_config(config: TrainConfig) -> LoraConfig:
    """The PEFT config of a LoRA run."""
    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.targets), bias="none", use_rslora=config.rslora)


def head_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's weights (projector and classifier)."""
    whisper = whisper_of(model)
    return {f"{name}.{k}": v.detach().cpu().contiguous() for name in ("projector", "classifier")
            for k, v in getattr(whisper, name).state_dict().items()}


def save_head(model: torch.nn.Module, path: Path) -> None:
    """Write the head as safetensors."""
    save_file(head_state(model), path)


def load_head(model: torch.nn.Module, path: Path) -> None:
    """Load a head written by ``save_head`` into ``model``; refuse a file that does not hold exactly its weights.

    Raises:
        RunError: keys missing, extra or of another shape (a head from another model or class set would
            otherwise leave the freshly initialised, random head in place).
    """
    expected = head_state(model)
    try:
        saved = load_file(path)
    except (OSError, SafetensorError) as e:
        raise RunError(f"{path}: unreadable ({e}); retrain the fold (delete its directory and repeat the same "
                       "loralens train command)") from e
    missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    shapes = [f"{k} {tuple(saved[k].shape)} (the model's: {tuple(v.shape)})" for k, v in expected.items()
              if k in saved and saved[k].shape != v.shape]
    if missing or extra or shapes:
        raise RunError(f"{path} does not fit this run's model ({_difference(missing, extra, shapes)}); it was "
                       "written for another model or class set: retrain the fold (delete its directory and repeat "
                       "the same loralens train command) or point --run at the run it belongs to")
    whisper_of(model).load_state_dict(saved, strict=False)  # the head's keys only: the encoder is the base's


def _difference(missing: list[str], extra: list[str], shapes: list[str]) -> str:
    """What differs between a head file and the model, in a few words."""
    parts = ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {extra[:3]}"] if extra else []) + (
        [f"shapes {shapes[:2]}"] if shapes else [])
    return "; ".join(parts)


def randomise_lora(model: PeftModel, seed: int) -> None:
    """Redraw every LoRA A and B matrix from N(0, TWIN_STD^2): the untrained baseline for SVD and CKA.

    The draws come from a CPU generator, so a twin is the same whatever device the model is on; ``copy_`` takes
    them to each parameter's device.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * TWIN_STD)


def run_fingerprint(run: Path) -> dict:
    """What tells this training of a run from another of the same directory (another seed, rate, epoch count).

    Returns:
        ``config``: a digest of ``config.json`` but for the settings a resumed run may change, the library
        versions, and settings added later at the value runs before them had (``LATER_FIELDS``); ``folds``: fold
        index (as a string) -> a digest of its weights and metrics, for every completed fold (folds completed later
        add entries without changing the others).
    """
    config = {k: v for k, v in json.loads((run / "config.json").read_text()).items()
              if k not in (*RESUMABLE_FIELDS, "versions") and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    folds = {}
    for k in completed_folds(run):
        fold_dir = run / f"fold_{k:02d}"
        digest = hashlib.sha256()
        for name in ("metrics.json", HEAD_FILE, f"adapter/{ADAPTER_FILE}", f"random_twin/{ADAPTER_FILE}", WEIGHTS_FILE):
            if (fold_dir / name).is_file():
                digest.update(name.encode() + (fold_dir / name).read_bytes())
        folds[str(k)] = digest.hexdigest()[:16]
    return {"config": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16], "folds": folds}


def retrained(old: dict, new: dict, old_config: dict | None = None,
              new_config: TrainConfig | None = None) -> list[str]:
    """What differs between the training a store traced (``old``) and the run now (``new``), in words.

    Empty if nothing does. Folds that only one of them has are no difference (a run resumed and traced again).
    """
    changes = []
    named = new_config.differences(TrainConfig.from_json(old_config)) if old_config and new_config else []
    if ("config" in old and old["config"] != new["config"]) or ("config" not in old and named):
        changes.append("its settings (" + ("; ".join(named) or "config.json") + ")")  # a store from before digests
    if changed := sorted((k for k in old.get("folds", {}) if k in new["folds"] and old["folds"][k] != new["folds"][k]),
                         key=int):
        changes.append(f"fold{'s' if len(changed) > 1 else ''} {', '.join(changed)} trained again")
    return changes


def run_precision(run: Path) -> Precision:
    """The numeric regime a run trained under (see ``TrainConfig.precision``).

    Runs from before that setting have ``auto`` in their config.json: they trained under bf16 where a fold ran on
    CUDA (its metrics.json names the device), else fp32.
    """
    config = read_config(run)
    if config.precision != "auto":
        return config.precision
    devices = {json.loads((run / f"fold_{i:02d}" / "metrics.json").read_text()).get("device", "cpu")
               for i in completed_folds(run)}
    return "bf16" if any(default_precision(torch.device(d).type) == "bf16" for d in devices) else "fp32"


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
    load_head(model, fold_dir / HEAD_FILE)
    if config.method == "full":
        if variant != "trained":
            raise RunError(f"{run} is a fully fine-tuned run: it has no LoRA and no random twin")
        load_whole(model, fold_dir)
        return model.eval()
    if config.method == "frozen":
        if variant != "trained":
            raise RunError(f"{run} is a frozen-encoder run: it has no LoRA and no random twin")
        return model.eval()
    adapter = fold_dir / ("adapter" if variant == "trained" else "random_twin")
    return PeftModel.from_pretrained(model, adapter).eval()


def load_whole(model: torch.nn.Module, fold_dir: Path) -> None:
    """Load a fully fine-tuned fold's whole model (encoder and head) into ``model``, from where ``weights.json`` says.

    Raises:
        RunError: the file is gone, has changed size since the import, or does not fit the model.
    """
    pointer = json.loads((fold_dir / WEIGHTS_FILE).read_text())
    path = Path(pointer["path"])
    if not path.is_file() or path.stat().st_size != pointer["bytes"]:
        raise RunError(f"{fold_dir}: its weights were imported from {path}, which is gone or has changed; put it back "
                       "or import the checkpoints again (loralens import ... --out NEW_DIR)")
    result = whisper_of(model).load_state_dict(load_file(path, device=str(_device_of(model))), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RunError(f"{path}: does not fit the run's model (missing {result.missing_keys[:2]}, unexpected "
                       f"{result.unexpected_keys[:2]})")


class FoldModels:
    """A run's fold models, one after another, on one device: built once, then each fold's weights swapped in.

    The base encoder is the same in every fold of a run (LoRA and frozen runs train only the head and the adapter),
    so rebuilding it per fold (``load_fold_model``) repeats the work of loading it, which took about half of a
    GPU trace's capture loop on EmoDB. ``load(fold)`` returns the same module each time, holding that fold's head
    and adapter; a model from an earlier ``load`` changes with it.
    """

    def __init__(self, run: Path, variant: Variant, device: torch.device | str):
        self.run, self.variant, self.device = run, variant, torch.device(device)
        self.model: torch.nn.Module | None = None
        self.fold: int | None = None
        """The fold whose weights the model holds."""

    def load(self, fold: int) -> torch.nn.Module:
        """Fold ``fold``'s model (see ``load_fold_model``), in eval mode on the device."""
        if self.model is None:
            self.model = load_fold_model(self.run, fold, self.variant).to(self.device)
            self.fold = fold
            return self.model
        if fold == self.fold:
            return self.model.eval()
        fold_dir = self.run / f"fold_{fold:02d}"
        if not (fold_dir / "metrics.json").is_file():
            raise RunError(f"{fold_dir} is missing or incomplete; finish it with the same loralens train command "
                           f"(completed folds: {completed_folds(self.run)})")
        self.fold = None  # until the whole swap is done: a failed one leaves no fold's weights
        load_head(self.model, fold_dir / HEAD_FILE)
        if (fold_dir / WEIGHTS_FILE).is_file():  # a fully fine-tuned fold: its own encoder
            load_whole(self.model, fold_dir)
        if isinstance(self.model, PeftModel):
            path = fold_dir / ("adapter" if self.variant == "trained" else "random_twin") / ADAPTER_FILE
            try:
                saved = load_file(path, device=str(self.device))
            except (OSError, SafetensorError) as e:
                raise RunError(f"{path}: unreadable ({e}); retrain the fold (delete its directory and repeat the "
                               "same loralens train command)") from e
            expected = {n for n, _ in self.model.named_parameters() if "lora_" in n}
            try:
                result = set_peft_model_state_dict(self.model, saved)
            except RuntimeError as e:  # tensors of other shapes (another rank or target)
                raise RunError(f"{path}: does not fit the run's first fold's adapter ({str(e).splitlines()[-1]}); "
                               "retrain the fold") from e
            if result.unexpected_keys or (missing := expected & set(result.missing_keys)):
                raise RunError(f"{path}: does not fit the run's first fold's adapter (unexpected "
                               f"{sorted(result.unexpected_keys)[:3]}, missing {sorted(missing)[:3]}); retrain "
                               "the fold")
        self.fold = fold
        return self.model.eval()


def attach_lora(model: torch.nn.Module, config: TrainConfig) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters; the head stays trainable, the rest of the encoder frozen."""
    peft_model = get_peft_model(model, lora_config(config))
    for name in ("projector", "classifier"):
        getattr(whisper_of(peft_model), name).requires_grad_(True)
    return peft_model


@dataclass
class Progress:
    """Where an unfinished fold stands after its last finished epoch (the tensors travel beside it)."""

    epochs_done: int = 0
    losses: list[float] = field(default_factory=list)
    val_uars: list[float] = field(default_factory=list)
    best_uar: float = -1.0
    best_epoch: int = 0
    seconds: float = 0.0


def save_progress(path: Path, progress: Progress, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  shuffle: torch.Generator, best: dict[str, torch.Tensor] | None) -> None:
    """Write a fold's state after an epoch, atomically: an interruption leaves the previous epoch's state."""
    tensors = {f"model/{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    tensors |= {f"best/{n}": v.cpu().contiguous() for n, v in (best or {}).items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors |= {f"optimizer/{index}/{k}": v.cpu().contiguous() for k, v in state.items()}
    tensors["rng/torch"] = torch.get_rng_state()
    tensors["rng/shuffle"] = shuffle.get_state()
    device = _device_of(model)
    if device.type == "cuda":  # the generator of the GPU that trains (dropout), not whichever is current
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={"progress": json.dumps(asdict(progress))})
    os.replace(tmp, path)


def load_progress(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  shuffle: torch.Generator) -> tuple[Progress, dict[str, torch.Tensor] | None]:
    """Restore what ``save_progress`` wrote into a freshly built model and optimizer.

    Returns:
        The progress and the best epoch's trainable weights (None when no epoch was validated).

    Raises:
        RunError: the file is unreadable or belongs to a different model; the caller restarts the fold.
    """
    try:
        with safe_open(path, "pt") as f:
            progress = Progress(**json.loads(f.metadata()["progress"]))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path}: unreadable ({e})") from e
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    if saved.keys() != trainable.keys() or any(saved[n].shape != p.shape for n, p in trainable.items()):
        raise RunError(f"{path}: its weights do not fit this run's model")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(saved[n])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    shuffle.set_state(tensors["rng/shuffle"])
    device = _device_of(model)
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    best = {k.removeprefix("best/"): v for k, v in tensors.items() if k.startswith("best/")}
    return progress, best or None


def _device_of(model: torch.nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
