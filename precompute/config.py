"""The training configuration: what ``loralens train`` was asked to do, saved as ``config.json`` in every run."""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from loralens.store.schema import UserError

Window = Literal["trim", "full"]
"""The encoder's input window (see ``loralens.precompute.windowing``)."""
WINDOWS: tuple[Window, ...] = ("trim", "full")
Method = Literal["lora", "frozen", "full"]
Schedule = Literal["constant", "linear"]
"""How the learning rates move over a fold's steps (see ``loralens.precompute.train.lr_schedule``)."""
SCHEDULES: tuple[Schedule, ...] = ("constant", "linear")
Precision = Literal["fp32", "bf16"]
"""The numeric regime of a run's forward passes: float32, or bfloat16 autocast
(see ``loralens.precompute.windowing.autocast``)."""
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
# Epochs per fold when none are given, per method, chosen on training loss: LoRA's is 0.001-0.003 after 10 epochs;
# the head alone on a frozen encoder learns slower (EmoDB: ~0.1-0.2 after 10 epochs, ~0.02 after 30), and a
# baseline stopped before it converges flatters LoRA. Frozen runs encode each clip once, so epochs cost little.
DEFAULT_EPOCHS: dict[Method, int] = {"lora": 10, "frozen": 30, "full": 1}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
LIBRARIES = ("loralens", "torch", "transformers", "peft", "nnsight", "zarr", "numpy")
# Fields that may change between an interrupted run and its resumption without changing its results.
RESUMABLE_FIELDS = ("device", "skip_bad")
LATER_FIELDS = {"freeze_a": False}
"""Fields added after runs were first written, with the value a run written before them had: a run's fingerprint
leaves them out at that value, so a run resumed (its config.json rewritten with them) still matches its trace."""

INTERVENTION_KINDS = ("lora_off", "lora_only", "lora_off_from", "erase", "patch")
"""The causal lens's interventions inside the model (``precompute.intervene``): LoRA off at a layer, on at a layer
only, off from a layer up, a layer's block erased, a layer's output patched in from a partner run. The audio
counterfactuals are ``loralens.analysis.counterfactuals.AUDIO_KINDS``."""


@dataclass
class TrainConfig:
    """One training run: a model, a data set, a method, and the cross-validation protocol."""

    model: str
    """``--model SPEC``: a HF id or directory, ``ct2:DIR``, ``bundled:tiny.en``, ``bundled:base`` or ``random:NAME``
    (see ``loralens.precompute.models``)."""
    data: str
    """``--data SPEC``, e.g. ``emodb:../shared/data/emodb``."""
    method: Method = "lora"
    """``lora``: LoRA on the encoder plus the head; ``frozen``: the head alone on the untouched encoder; ``full``: a
    fully fine-tuned encoder (only ``loralens import`` makes such runs; each fold's weights stay where they were)."""
    emotions: list[str] | None = field(default_factory=lambda: ["anger", "happiness", "neutral", "sadness"])
    """The class set in label order; None takes every label the data set has."""
    rank: int = 32
    """LoRA rank r."""
    alpha: float = 64.0
    """LoRA alpha (the update is scaled by alpha / r)."""
    dropout: float = 0.1
    """LoRA dropout."""
    targets: list[str] = field(default_factory=lambda: ["v_proj"])
    """Encoder modules LoRA adapts (any of q_proj, k_proj, v_proj, out_proj, fc1, fc2)."""
    rslora: bool = False
    """Rank-stabilised LoRA: the update scaled by alpha / sqrt(r) instead of alpha / r."""
    freeze_a: bool = False
    """``--freeze-a``: every LoRA A stays at its random initialisation and only B (and the head) trains, the asymmetry
    of Zhu et al., "Asymmetry in Low-Rank Adapters of Foundation Models" (ICML 2024). LoRA runs only."""
    window: Window = "trim"
    """``trim``: the encoder sees only the clip's frames; ``full``: stock 30 s padding, pooled over 1500 frames."""
    folds: str = "loso"
    """``loso`` (leave one speaker out), an integer K (K folds grouped by speaker), ``split``, or ``given`` (each
    fold's test set given to ``loralens import``)."""
    epochs: int | None = None
    """Training epochs per fold (the most, with ``epoch_selection='inner'``); None takes ``DEFAULT_EPOCHS``."""
    epoch_selection: Literal["fixed", "inner"] = "fixed"
    """``fixed``: keep the last epoch; ``inner``: keep the epoch best on an inner validation speaker."""
    lr: float = 5e-4
    """AdamW learning rate of the LoRA weights."""
    head_lr: float = 1e-3
    """AdamW learning rate of the head (projector and classifier), trained from scratch."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    schedule: Schedule = "constant"
    """Learning rates over a fold's steps: ``constant``, or ``linear`` decay to zero (Hugging Face Trainer's)."""
    warmup: float = 0.0
    """Fraction of a fold's steps over which the learning rates rise linearly from zero."""
    batch_size: int = 8
    """Utterances per optimiser step."""
    seed: int = 0
    """Seed of fold k is seed + k: head init, LoRA init, shuffling, dropout."""
    long: Literal["crop", "error"] = "crop"
    """Clips over 30 s: crop them with a warning, or stop with an error."""
    skip_bad: bool = False
    """Skip unreadable or empty audio files (counted in the log) instead of stopping."""
    merge_excitement: bool = True
    """IEMOCAP: count excitement as happiness, as is customary."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``."""
    source: dict | None = None
    """None for a run ``loralens train`` trained; for one ``loralens import`` made: ``kind`` (``lora`` or
    ``whole``), the ``checkpoints`` it read (one per fold), ``held_out`` (False: the one model may have trained on
    any utterance, so its predictions are not held out) and ``test_sets``."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Numeric regime of training and of its predictions: ``fp32``, or ``bf16`` autocast; ``auto`` is bf16 on CUDA
    and fp32 elsewhere. Fixed when the run starts (``config.json`` holds the choice, never ``auto``; a resumed run
    keeps its own) and the regime ``loralens trace`` uses by default."""

    def __post_init__(self):
        if self.method not in ("lora", "frozen", "full"):
            raise UserError(f"method={self.method!r}; expected 'lora' or 'frozen'")
        if self.method == "full" and self.source is None:
            raise UserError("method='full' is for fully fine-tuned models that loralens import reads; loralens "
                             "trains 'lora' or 'frozen'")
        if self.epochs is None:
            self.epochs = DEFAULT_EPOCHS[self.method]
        if self.freeze_a and self.method != "lora":
            raise UserError(f"freeze_a=True with method={self.method!r}: only LoRA has an A to freeze; drop --freeze-a "
                            "or use --method lora")
        if self.window not in WINDOWS:
            raise UserError(f"window={self.window!r}; expected one of {WINDOWS}")
        if bad := [t for t in self.targets if t not in LORA_TARGETS]:
            raise UserError(f"targets={bad}; expected any of {LORA_TARGETS}")
        if not self.targets:
            raise UserError(f"targets is empty; expected any of {LORA_TARGETS}")
        for name in ("rank", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)}; expected a positive integer")
        for name in ("lr", "head_lr", "alpha"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name}={getattr(self, name)}; expected a positive number")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout={self.dropout}; expected a number in [0, 1)")
        k_folds = self.folds.isascii() and self.folds.isdigit() and int(self.folds) >= 2  # not "²": int() refuses
        if self.folds not in ("loso", "split", "given") and not k_folds:
            raise UserError(f"folds={self.folds!r}; expected 'loso', 'split' or an integer K >= 2")
        if self.folds == "given" and self.source is None:
            raise UserError("folds='given' is for runs loralens import makes (their test sets are given to it)")
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule={self.schedule!r}; expected 'constant' or 'linear'")
        if not 0 <= self.warmup < 1:
            raise UserError(f"warmup={self.warmup}; expected a fraction of the steps in [0, 1)")
        if self.epoch_selection not in ("fixed", "inner"):
            raise UserError(f"epoch_selection={self.epoch_selection!r}; expected 'fixed' or 'inner'")
        if self.precision not in ("auto", *PRECISIONS):
            raise UserError(f"precision={self.precision!r}; expected 'auto' or one of {PRECISIONS}")

    def to_json(self) -> dict:
        """The config as a JSON-able dict, with the library versions that ran it."""
        return {**asdict(self), "versions": library_versions()}

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """Rebuild a config written by ``to_json``; unknown keys are ignored, missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        """Write ``config.json`` (sorted keys), in one step: a grid's folds of one run write it at once."""
        from loralens.precompute.files import write_atomic

        write_atomic(path, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that differ from ``other`` and would change a run's results."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine
                if k not in RESUMABLE_FIELDS and mine[k] != theirs[k]]


def default_precision(device_type: str) -> Precision:
    """What ``precision='auto'`` means on a device of this type (``cuda``, ``cpu``, ...): bf16 on CUDA only."""
    return "bf16" if device_type == "cuda" else "fp32"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose behaviour shapes the artifacts."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunError(UserError):
    """A run directory that cannot be used as asked."""


def read_config(run: Path) -> TrainConfig:
    """The ``config.json`` of a run directory."""
    path = run / "config.json"
    if not path.is_file():
        raise RunError(f"{run} is not a loralens run directory (no config.json); create one with loralens train")
    return TrainConfig.from_json(json.loads(path.read_text()))


def completed_folds(run: Path) -> list[int]:
    """Indices of the folds whose directory is complete."""
    return sorted(int(p.name[5:]) for p in run.glob("fold_[0-9][0-9]") if (p / "metrics.json").is_file())
