"""Interventions on a fold model, the core of the causal lens (issue #24).

LoRA switched off or on per layer, a layer's block erased, a layer's output patched in from another run, the audio
changed in one property; and what each does to the class probabilities and the logit-lens trajectory.

A condition is named ``<kind>@<layer>`` or, for an audio counterfactual, ``<kind>@<strength>``:

- ``lora_off@k``: the adapters of encoder layer k off (PEFT's per-layer adapter switch), every other on;
- ``lora_only@k``: every adapter off but layer k's;
- ``lora_off_from@k``: the adapters of layer k and every layer above it off;
- ``erase@k``: layer k's block skipped, its output replaced by its input (its update to the residual stream is
  zero), for LoRA and frozen runs alike;
- ``patch@k``: layer k's output (the residual at boundary k + 1) replaced by the partner run's on the same
  utterance: the frozen encoder's residual patched into the LoRA model, or LoRA's into the frozen one;
- ``pitch@s``, ``tempo@s``, ``loudness@s``, ``noise@s``, ``bandlimit@s``: the utterance's audio changed
  (``loralens.analysis.counterfactuals``), the model as trained.

``outcome`` runs a batch under whatever condition is applied and returns what the store keeps per condition: the
final class probabilities and the lens (each boundary's residual through the final layer norm, mean-pooled over
the frames the head pools, through the trained projector and classifier: the trace's ``lens_logits``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm

from loralens.analysis import causal, counterfactuals  # torch-free; shared with the explorer
from loralens.analysis.counterfactuals import AUDIO_KINDS, CHANGES
from loralens.precompute import windowing
from loralens.precompute.audio import load_audio
from loralens.precompute.checkpoints import FoldModels, retrained, run_fingerprint, run_precision
from loralens.precompute.config import INTERVENTION_KINDS, RunError, completed_folds, read_config
from loralens.precompute.models import feature_extractor
from loralens.precompute.trace import held_out_fold, prefetched
from loralens.precompute.train import resolve_device
from loralens.store.schema import UserError
from loralens.store.writer import StoreWriter

LORA_KINDS = tuple(k for k in INTERVENTION_KINDS if k.startswith("lora_"))
KINDS = ("none", *INTERVENTION_KINDS, *AUDIO_KINDS)
"""Every kind of condition, in the order ``conditions`` lists them; ``none`` is the model as trained."""


@dataclass(frozen=True)
class Condition:
    """One intervention: a kind (``KINDS``) at an encoder layer, or an audio change at a strength."""

    kind: str
    layer: int = 0
    """The encoder layer (counted from 0) of the kinds inside the model."""
    strength: float | None = None
    """The audio counterfactuals' strength, in the unit of ``counterfactuals.CHANGES[kind]``."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"unknown intervention {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind in AUDIO_KINDS:
            if self.strength is None:
                raise UserError(f"{self.kind}: an audio change needs a strength ({CHANGES[self.kind].unit})")
            counterfactuals.check(self.kind, self.strength)
        elif self.layer < 0:
            raise UserError(f"{self.kind}@{self.layer}: layers count from 0")

    @property
    def audio(self) -> bool:
        """Whether it changes the audio (not the model)."""
        return self.kind in AUDIO_KINDS

    @property
    def name(self) -> str:
        """``<kind>@<layer>`` or ``<kind>@<strength>`` (``none`` alone), its name in the store and the explorer."""
        if self.kind == "none":
            return "none"
        return counterfactuals.name(self.kind, self.strength) if self.audio else f"{self.kind}@{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Condition:
        """The condition a name (``erase@3``, ``pitch@-2``, ``none``) stands for."""
        if text == "none":
            return cls("none", 0)
        kind, sep, at = text.partition("@")
        if kind in AUDIO_KINDS:
            try:
                return cls(kind, strength=float(at))
            except ValueError as e:
                raise UserError(f"intervention {text!r}: expected KIND@STRENGTH, e.g. pitch@-2 or noise@10 "
                                 f"({e})") from e
        if not sep or not at.isdigit():
            raise UserError(f"intervention {text!r}: expected KIND@LAYER, e.g. lora_off@3 or erase@0")
        return cls(kind, int(at))


def conditions(model: torch.nn.Module, kinds: tuple[str, ...] = KINDS, strengths: dict | None = None,
               partner: bool = False) -> list[Condition]:
    """Every condition of ``kinds`` for ``model``: each layer for the model's kinds, each strength for the audio's.

    The LoRA kinds only for a PEFT model, ``patch`` only with a ``partner`` to patch from. ``strengths`` (kind ->
    strengths) overrides the audio changes' default grids (``counterfactuals.CHANGES``).
    """
    n_layers = len(windowing.whisper_of(model).encoder.layers)
    lora = isinstance(model, PeftModel)
    out = []
    for kind in kinds:
        if kind == "none":
            out.append(Condition("none"))
        elif kind in AUDIO_KINDS:
            out += [Condition(kind, strength=float(v)) for v in (strengths or {}).get(kind, CHANGES[kind].strengths)]
        elif (lora or kind not in LORA_KINDS) and (partner or kind != "patch"):
            out += [Condition(kind, k) for k in range(n_layers)]
    return out


def _lora_layers(model: torch.nn.Module) -> dict[int, list[LoraLayer]]:
    """Encoder layer index -> the PEFT LoRA modules inside it."""
    out: dict[int, list[LoraLayer]] = {}
    for k, layer in enumerate(windowing.whisper_of(model).encoder.layers):
        out[k] = [m for m in layer.modules() if isinstance(m, LoraLayer)]
    return out


@contextmanager
def _output_replaced(layer: torch.nn.Module, replace) -> Iterator[None]:
    handle = layer.register_forward_hook(replace, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def applied(model: torch.nn.Module, condition: Condition, source: list[torch.Tensor] | None = None) -> Iterator[None]:
    """Run the block's forward passes under ``condition``; the model is as it was afterwards, also on errors.

    Args:
        model: a fold model.
        condition: what to do; the audio kinds change the input, not the model: nothing happens here.
        source: for ``patch``, the partner's output of every encoder layer on the same batch (``layer_outputs``).
    """
    encoder = windowing.whisper_of(model).encoder
    n_layers = len(encoder.layers)
    if condition.kind == "none" or condition.audio:
        yield
        return
    if condition.layer >= n_layers:
        raise UserError(f"{condition.name}: the encoder has layers 0 to {n_layers - 1}")
    layer = encoder.layers[condition.layer]
    if condition.kind == "erase":
        with _output_replaced(layer, lambda module, args, kwargs, output: args[0] if args else kwargs["hidden_states"]):
            yield
        return
    if condition.kind == "patch":
        if source is None or len(source) != n_layers:
            raise UserError(f"{condition.name}: needs the partner run's output of each of the {n_layers} layers on "
                             "the same batch (layer_outputs)")
        patched = source[condition.layer]

        def patch(module, args, kwargs, output):
            if patched.shape != output.shape:
                raise UserError(f"{condition.name}: the partner's layer output is {tuple(patched.shape)}, this "
                                 f"model's {tuple(output.shape)}; patch between runs of one base model and window")
            return patched.to(output.dtype)

        with _output_replaced(layer, patch):
            yield
        return
    if not isinstance(model, PeftModel):
        raise UserError(f"{condition.name}: the model has no LoRA adapters (a frozen-encoder run)")
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


def condition_features(condition: Condition, audio: list[np.ndarray], ids: list[str], features: windowing.Features,
                       extractor, window: windowing.Window, device: torch.device) -> windowing.Features:
    """A batch's model input under ``condition``.

    ``features`` as they are; for an audio change, the audio altered (each clip's noise seeded by its id,
    ``counterfactuals.seed_of``) and its features extracted again.
    """
    if not condition.audio:
        return features
    altered = [counterfactuals.alter(a, condition.kind, condition.strength, counterfactuals.seed_of(i))
               for a, i in zip(audio, ids, strict=True)]
    return windowing.extract(extractor, altered, window, device=device)


@torch.no_grad()
def layer_outputs(model: torch.nn.Module, features: windowing.Features) -> list[torch.Tensor]:
    """Each encoder layer's output on one batch, ``n_layers`` x ``(batch, frame, d_model)``: what ``patch`` reads."""
    out: list[torch.Tensor] = []
    layers = windowing.whisper_of(model).encoder.layers
    handles = [layer.register_forward_hook(lambda module, args, output: out.append(output)) for layer in layers]
    try:
        windowing.classify(model, features)
    finally:
        for handle in handles:
            handle.remove()
    return out


@torch.no_grad()
def outcome(model: torch.nn.Module, features: windowing.Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(batch, class)`` and lens logits ``(batch, boundary, class)`` of one batch.

    Under the conditions ``applied`` at the time; the lens is computed as the trace computes ``lens_logits``.
    """
    whisper = windowing.whisper_of(model)
    layers = whisper.encoder.layers
    residual: list[torch.Tensor] = []
    handles = [layers[0].register_forward_pre_hook(lambda module, args: residual.append(args[0]))]
    handles += [layer.register_forward_hook(lambda module, args, output: residual.append(output)) for layer in layers]
    try:
        logits = windowing.classify(model, features)
    finally:
        for handle in handles:
            handle.remove()
    h = torch.stack([r.float() for r in residual], 1)  # (batch, boundary, frame, d)
    _, lens = windowing.logit_lens(model, h, features.pooling_mask())
    return logits.float().softmax(-1), lens.float()


@dataclass
class _Batch:
    fold: int
    partner_fold: int | None
    positions: list[int]
    """Into the run's traced rows."""
    ids: list[str]


def _partner_folds(run_dir: Path, partner: Path, ids: list[str]) -> list[int]:
    """The partner's fold model for each utterance (store ids): the one that held it out, as for the run."""
    mine, theirs = read_config(run_dir), read_config(partner)
    if (mine.window, mine.long) != (theirs.window, theirs.long):
        raise RunError(f"--partner {partner}: window {theirs.window} (long: {theirs.long}), the run's "
                       f"{mine.window} ({mine.long}); patch between runs of one window")
    fold_of = held_out_fold(partner)
    done = set(completed_folds(partner))
    folds = [fold_of.get(uid.partition("/")[2], -1) for uid in ids]
    if missing := [uid for uid, f in zip(ids, folds, strict=True) if f not in done]:
        raise RunError(f"--partner {partner}: {len(missing)} traced utterance(s) are not held out by a completed "
                       f"fold of it (e.g. {missing[0]}); train it on the same data and folds")
    return folds


def _partner_name(writer: StoreWriter, partner: Path) -> str:
    """The partner's name in the store where it is traced there (whatever ``--name`` it got), else its directory's."""
    here = str(partner.resolve())
    for run, checkpoints in writer.runs().items():
        if checkpoints and writer.attrs(run, checkpoints[0]).get("run_dir") == here:
            return run
    return partner.resolve().name


def _fingerprint(partner: Path) -> str:
    """A fingerprint of a partner run: its directory, its config and every finished fold's metrics.

    What tells it from another run of the same name (another seed's, a retrained one).
    """
    digest = hashlib.sha256(str(partner.resolve()).encode())
    for path in [partner / "config.json", *sorted(partner.glob("fold_*/metrics.json"))]:
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]


def run(run_dir: Path, store: str, *, name: str | None = None, kinds: tuple[str, ...] | None = None,
        strengths: dict[str, tuple[float, ...]] | None = None, partner: Path | None = None, batch_size: int = 8,
        device: str = "cpu", storage_options: dict | None = None) -> dict[str, dict]:
    """Compute every condition of ``kinds`` on the run's traced utterances into the store (``loralens intervene``).

    Each utterance runs through the fold model that held it out (as in the trace), in the run's numeric regime,
    from its source audio; ``patch`` reads the ``partner`` run's fold model that held it out. Conditions already
    written are kept (an interrupted run resumes; a run asking for more adds them); a trace that grew since makes
    them all again.

    Args:
        run_dir: the run's directory.
        store: the store the run is traced into (a directory or fsspec URL).
        name: the run's name in the store (default: the directory's name).
        kinds: of ``KINDS`` (``none`` is always computed); default all (``patch`` where there is a partner).
        strengths: the audio changes' grids, kind -> strengths (default ``counterfactuals.CHANGES``).
        partner: the run directory ``patch`` patches from (the frozen run for a LoRA run, and the reverse).
        batch_size: utterances per forward pass.
        device: where the models run (``resolve_device``).
        storage_options: fsspec options of the store.

    Returns:
        Per condition name: ``uar`` and ``war`` of its predictions, ``kl`` the mean KL(none || condition) and
        ``flipped`` the share of utterances whose prediction differs from ``none``'s (``loralens.analysis.causal``).
    """
    if kinds is None:
        kinds = tuple(k for k in KINDS if k != "patch" or partner is not None)
    if "patch" in kinds and partner is None:
        raise RunError("patch needs a partner run to patch from: --partner RUN_DIR (the frozen run for a LoRA run, "
                       "and the reverse), traced or not")
    name = name or run_dir.resolve().name
    writer = StoreWriter(store, storage_options)
    if name not in writer.runs():
        raise RunError(f"{store} holds no run {name!r} (it has {sorted(writer.runs())}); trace it first: loralens "
                       f"trace --run {run_dir} --store {store}")
    traced = writer.attrs(name, "trained")
    if changes := retrained(traced.get("fingerprint", {}), run_fingerprint(run_dir), traced.get("train_config"),
                            read_config(run_dir)):
        raise RunError(f"{store} traced another training of {run_dir} as run {name!r} ({'; '.join(changes)}): its "
                       f"interventions would run these weights against that trace. Trace it again first: loralens "
                       f"trace --run {run_dir} --store {store} --replace")
    rows = np.flatnonzero(writer.written(name, "trained")).tolist()
    if not rows:
        raise RunError(f"{store}: run {name} has no traced utterance; finish its trace first")
    folds = writer.read(name, "trained", "fold", rows).astype(int)
    labels = writer.read(name, "trained", "label", rows).astype(int)
    sources = writer._column("source")[rows]
    ids = [str(i) for i in writer._column("id")[rows]]
    config = read_config(run_dir)
    precision = run_precision(run_dir)
    target = resolve_device(device)
    models = FoldModels(run_dir, "trained", target)
    model = models.load(int(folds[0]))
    whisper = windowing.whisper_of(model)
    chosen = conditions(model, ("none", *(k for k in kinds if k != "none")), strengths, partner is not None)
    if partner is not None and not any(c.kind == "patch" for c in chosen):
        partner = None
    partner_folds = _partner_folds(run_dir, partner, ids) if partner is not None else [None] * len(rows)
    partners = FoldModels(partner, "trained", target) if partner is not None else None
    partner_precision = run_precision(partner) if partner is not None else precision
    n_boundaries, n_classes = len(whisper.encoder.layers) + 1, whisper.config.num_labels
    held = writer.create_interventions(name, [c.name for c in chosen], rows, n_boundaries, n_classes,
                                       basis=int(writer.attrs(name, "trained").get("n_written", len(rows))),
                                       partner=_partner_name(writer, partner) if partner is not None else None,
                                       partner_key=_fingerprint(partner) if partner is not None else None)
    index = {n: i for i, n in enumerate(held)}
    done = writer.interventions(name).done
    pending = [c for c in chosen if not done[index[c.name]]]
    extractor = feature_extractor(whisper.config)
    batches = []  # which rows go together; their audio is read and extracted when a batch is computed
    for fold, partner_fold in sorted({(int(f), p) for f, p in zip(folds, partner_folds, strict=True)} if pending
                                     else (), key=lambda fp: (fp[0], -1 if fp[1] is None else fp[1])):
        positions = [i for i in range(len(rows)) if folds[i] == fold and partner_folds[i] == partner_fold]
        for start in range(0, len(positions), batch_size):
            part = positions[start: start + batch_size]
            batches.append(_Batch(fold, partner_fold, part, [ids[i] for i in part]))

    def read(batch: _Batch) -> list[np.ndarray]:  # on prefetched's thread, ahead of the device
        return [load_audio(sources[i], long=config.long) for i in batch.positions]

    bar = tqdm(total=len(pending) * len(batches), desc=f"{name} interventions", unit="batch")
    # Conditions of a kind run together (patch reads the partner once per batch), an audio change alone; each
    # condition is written whole once its kind is done, so an interrupted run loses at most one kind.
    for _, group in groupby(pending, key=lambda c: c.name if c.audio else c.kind):
        group = list(group)
        probabilities = np.zeros((len(group), len(rows), n_classes), np.float32)
        lens = np.zeros((len(group), len(rows), n_boundaries, n_classes), np.float32)
        with prefetched(batches, read) as audios:
            for batch, audio in zip(batches, audios, strict=True):
                original = windowing.extract(extractor, audio, config.window, device=target)
                source = None
                if group[0].kind == "patch":
                    with windowing.autocast(target, partner_precision):  # the partner's residual as it computes it
                        source = layer_outputs(partners.load(batch.partner_fold), original)
                model = models.load(batch.fold)
                for j, condition in enumerate(group):
                    features = condition_features(condition, audio, batch.ids, original, extractor, config.window,
                                                  target)
                    with applied(model, condition, source), windowing.autocast(target, precision):
                        p, lens_logits = outcome(model, features)
                    probabilities[j, batch.positions] = p.cpu().numpy()
                    lens[j, batch.positions] = lens_logits.cpu().numpy()
                    bar.update(1)
        for j, condition in enumerate(group):
            writer.write_intervention(name, index[condition.name], probabilities[j], lens[j])
    bar.close()
    result = writer.interventions(name).finished()
    frame = causal.metrics(result.conditions, result.probabilities, labels)
    return {r.condition: {k: getattr(r, k) for k in ("uar", "war", "kl", "flipped")} for r in frame.itertuples()}
