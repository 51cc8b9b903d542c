"""Intruder dimensions of a run directory's fold models, from their weights alone, and their record in a store.

It owns two things: reading each fold's adapted matrices (``W0``, LoRA A and B and PEFT's scaling, trained adapter
and random twin) into ``analysis.intruders``, and writing the result into a traced store's checkpoint attributes
(``analysis.intruders.ATTR``), where the app's LoRA dynamics page and the report read it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from loralens.analysis.intruders import ATTR, TOP_K, Intruders, adapted, base_vectors, top_similarity
from loralens.precompute.capture import ATTENTION_TARGETS, lora_modules, module_name
from loralens.precompute.checkpoints import FoldModels, Variant, retrained, run_fingerprint
from loralens.precompute.config import RunError, completed_folds, read_config
from loralens.precompute.windowing import whisper_of
from loralens.store.schema import StoreError

log = logging.getLogger(__name__)

VARIANTS: tuple[Variant, ...] = ("trained", "random_twin")


def _lora_layer(model: torch.nn.Module, layer: int, target: str) -> torch.nn.Module:
    block = whisper_of(model).encoder.layers[layer]
    return getattr(block.self_attn if target in ATTENTION_TARGETS else block, target)


def _matrices(module: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A PEFT LoRA layer's ``W0 (d_out, d_in)``, ``A (rank, d_in)``, ``B (d_out, rank)`` and scaling."""
    name = next(iter(module.lora_A))  # the one adapter a loralens fold model holds
    return (*(t.detach().float().cpu().numpy() for t in (module.base_layer.weight, module.lora_A[name].weight,
                                                            module.lora_B[name].weight)),
            float(module.scaling[name]))


def run_intruders(run: Path, k: int = TOP_K, folds: list[int] | None = None,
                  device: str = "cpu") -> dict[str, Intruders]:
    """The intruder dimensions of every LoRA module of every completed fold model, trained and random twin.

    ``W0``'s SVD is computed once per module: the base encoder is the same in every fold and in both variants.

    Args:
        run: a LoRA run directory written by ``loralens train`` (or ``loralens import``).
        k: how many leading singular vectors of each fine-tuned matrix to examine.
        folds: the fold models (default: every completed fold).
        device: where the fold models are rebuilt (the SVDs run on the CPU in float64).

    Returns:
        ``{"trained": Intruders, "random_twin": Intruders}``, each ``(n_folds, n_modules, k)``.

    Raises:
        RunError: not a LoRA run, no completed fold, or a fold that is not complete.
    """
    config = read_config(run)
    if config.method != "lora":
        raise RunError(f"{run} is a {config.method} run: intruder dimensions are those of LoRA-adapted matrices; "
                       "point at a LoRA run directory")
    folds = completed_folds(run) if folds is None else folds
    if not folds:
        raise RunError(f"{run} has no completed fold; train it first (loralens train ... --out {run})")
    bases: dict[str, np.ndarray] = {}
    out = {}
    for variant in VARIANTS:
        models = FoldModels(run, variant, device)
        singular, similarity, names = [], [], []
        for fold in folds:
            model = models.load(fold)
            modules = lora_modules(model)
            names = [module_name(i, t) for i, t in modules]
            per_module = []
            for (layer, target), name in zip(modules, names, strict=True):
                w0, a, b, scaling = _matrices(_lora_layer(model, layer, target))
                if name not in bases:
                    bases[name] = base_vectors(w0)
                per_module.append(top_similarity(None, adapted(w0, a, b, scaling), k, base=bases[name]))
            singular.append([s for s, _ in per_module])
            similarity.append([c for _, c in per_module])
        out[variant] = Intruders(tuple(names), tuple(folds), np.asarray(singular), np.asarray(similarity))
        log.debug("%s/%s: intruders of %d modules in %d fold models", run.name, variant, len(names), len(folds))
    return out


def record(writer, name: str, run: Path, result: dict[str, Intruders]) -> None:
    """Write ``result`` into a store's checkpoints of run ``name`` (attribute ``analysis.intruders.ATTR``).

    Args:
        writer: an open ``loralens.store.writer.StoreWriter``.
        name: the run's name in the store.
        run: the run directory the result was computed from (its training must be the one the store traced).
        result: ``run_intruders(run)``.

    Raises:
        StoreError: the store has no such run, or it traced another training of ``run``.
    """
    held = writer.runs().get(name)
    if not held:
        raise StoreError(f"{writer.path} has no run {name!r} (it holds {sorted(writer.runs())}); trace it first, or "
                         "name the store's run with --name")
    old = writer.attrs(name, held[0])
    if changes := retrained(old.get("fingerprint", {}), run_fingerprint(run), old.get("train_config"),
                            read_config(run)):
        raise StoreError(f"{writer.path}'s run {name!r} was traced from another training of {run} "
                         f"({'; '.join(changes)}); trace the run again (loralens trace --replace) first")
    for checkpoint in held:
        if checkpoint in result:
            writer.group(name, checkpoint).attrs.update({ATTR: result[checkpoint].to_json()})
