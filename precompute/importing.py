"""``loralens import``: checkpoints trained elsewhere as a run directory every other command takes.

Two kinds of checkpoint, one per fold:

- a PEFT LoRA adapter (``save_pretrained``'s directory, or Hugging Face Trainer's ``checkpoint-N/`` or the folder
  above them), its head inside it (``modules_to_save=["projector", "classifier"]``) or given apart;
- a whole ``WhisperForAudioClassification`` directory (``config.json`` and ``model.safetensors``): a frozen-encoder
  baseline where its encoder is the base model's, bit for bit, else a fully fine-tuned model (method ``full``: the
  run points at each fold's weights; the LoRA views say they do not apply).

Each fold's model is rebuilt on the base model (``--model``), its LoRA weights and head written in the layout
``loralens train`` writes (``checkpoints``), a random twin drawn from the adapter's own config, and the model
evaluated on the utterances it never saw, so ``metrics.json`` and ``predictions.csv`` hold what a trained run's do.
What loralens cannot analyse (another PEFT type, DoRA, per-module ranks, some layers only, trained biases,
adapters outside the encoder) is refused in one line naming the setting.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file

from loralens.precompute import windowing
from loralens.precompute.checkpoints import ADAPTER_FILE, WEIGHTS_FILE, head_state
from loralens.precompute.config import LORA_TARGETS, RunError, TrainConfig, completed_folds
from loralens.precompute.data import DEFAULT_EMOTIONS, canonical_emotion, load_corpus
from loralens.precompute.folds import Fold, make_folds, scores
from loralens.precompute.models import load_classifier
from loralens.precompute.train import Trainer, run_logged
from loralens.store.schema import UserError

log = logging.getLogger(__name__)

HEAD_MODULES = ("projector", "classifier")
"""The head of ``WhisperForAudioClassification``: what ``modules_to_save`` holds in an adapter trained with it."""
ADAPTER_CONFIG = "adapter_config.json"
REFUSED = {"use_dora": "DoRA (use_dora=true)", "rank_pattern": "per-module ranks (rank_pattern)",
           "alpha_pattern": "per-module alphas (alpha_pattern)",
           "layers_to_transform": "adapters on some layers only (layers_to_transform)",
           "lora_bias": "a bias on LoRA B (lora_bias=true)", "use_qalora": "QA-LoRA (use_qalora)",
           "layer_replication": "replicated layers (layer_replication)",
           "target_parameters": "LoRA on parameters (target_parameters)",
           "trainable_token_indices": "trainable tokens (trainable_token_indices)",
           "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)"}
"""adapter_config.json settings (set to anything but their default) that change what A and B mean: refused."""
WHOLE_FILES = ("config.json", "model.safetensors")
PICKLES = ("adapter_model.bin", "pytorch_model.bin")


class CheckpointError(RunError):
    """A checkpoint that cannot be imported as asked; the message names the file, the setting and the way out."""


@dataclass
class Checkpoint:
    """One fold's checkpoint as found on disk."""

    path: Path
    """The directory holding the weights (a Trainer ``checkpoint-N/`` where one was picked)."""
    kind: str
    """``lora`` (a PEFT adapter) or ``whole`` (a whole ``WhisperForAudioClassification``)."""
    given: Path
    """The directory the user named."""

    @property
    def weights(self) -> Path:
        """The safetensors file of the weights."""
        return self.path / (ADAPTER_FILE if self.kind == "lora" else "model.safetensors")


@dataclass
class ImportPlan:
    """What ``loralens import`` makes into a run: a base model, a data set, and one checkpoint per fold."""

    model: str
    """``--model SPEC`` of the base the checkpoints were trained on (a HF id or directory, ``ct2:``, ``bundled:``,
    ``random:``)."""
    data: str
    """``--data SPEC`` of the data set whose utterances the folds held out."""
    checkpoints: list[Path]
    """One directory per fold, in fold order."""
    folds: str | None = "loso"
    """Test sets as ``loralens train`` makes them (``loso`` or ``split``; K random folds could not match the
    checkpoints'): fold k is the k-th checkpoint. None where ``test_speakers``, ``test_ids`` or ``held_out=False``
    say it instead."""
    test_speakers: list[list[str]] | None = None
    """Per checkpoint, the speakers it never trained on."""
    test_ids: list[Path] | None = None
    """Per checkpoint, a file of the utterance ids (as in the data set, one a line) it never trained on."""
    held_out: bool = True
    """False: the user cannot say which utterances the one checkpoint trained on; every utterance is traced, and
    the store and report say its predictions are not held out."""
    emotions: list[str] | None = None
    """The checkpoints' classes in label order (index 0 first). None: a whole model's ``id2label``; for adapters
    (which carry no labels) the paper's four, anger, happiness, neutral, sadness."""
    heads: list[Path] | None = None
    """Per checkpoint, a safetensors file of the head (``projector.*``, ``classifier.*``) where the adapter has none."""
    window: str = "full"
    """The input window the imported models run in: ``full`` (30 s padding, what Trainer-based code trains with)
    or ``trim``."""
    compare_windows: bool = True
    """With ``window="trim"``: count the test predictions the full window would make otherwise (``changed_by_trim``),
    for checkpoints trained in the full window, as Trainer-based code trains; False for ones trained in trim."""
    precision: str = "fp32"
    """The numeric regime the models are evaluated and traced in."""
    device: str = "auto"
    """Where the models are evaluated."""
    batch_size: int = 8
    """Utterances per evaluation batch."""
    seed: int = 0
    """Seed of the random twin (fold k's is drawn from ``10_000 + seed + k``, as a trained run's)."""
    merge_excitement: bool = True
    """IEMOCAP: count excitement as happiness."""
    found: list[Checkpoint] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if not self.checkpoints:
            raise UserError("no checkpoint given: name one directory per fold")
        given = [name for name, value in (("--test-speakers", self.test_speakers), ("--test-ids", self.test_ids))
                 if value is not None]
        if len(given) > 1 or (given and not self.held_out):
            raise UserError("say which utterances each checkpoint never saw one way: --folds, --test-speakers, "
                             "--test-ids or --not-held-out")
        for name, value in (("--test-speakers", self.test_speakers), ("--test-ids", self.test_ids),
                            ("--head", self.heads)):
            if value is not None and len(value) != len(self.checkpoints):
                raise UserError(f"{name} given {len(value)} time(s) for {len(self.checkpoints)} checkpoint(s); "
                                 "give it once per checkpoint, in the same order")
        if not self.held_out and len(self.checkpoints) > 1:
            raise UserError("--not-held-out takes one checkpoint: with several, loralens cannot tell which model "
                             "should trace an utterance; give each one's test speakers (--test-speakers)")
        if given or not self.held_out:
            self.folds = None
        if self.window not in ("full", "trim"):
            raise UserError(f"window={self.window!r}; expected 'full' or 'trim'")


def find_checkpoint(path: Path) -> Checkpoint:
    """The weights a directory holds: an adapter, a whole model, or Trainer's ``checkpoint-N/`` folders.

    Among ``checkpoint-N/`` folders, the one Trainer's ``trainer_state.json`` names its best
    (``best_model_checkpoint``, with ``load_best_model_at_end``), else the last.

    Raises:
        CheckpointError: nothing loralens can read there (pickled ``.bin`` weights included: never unpickled).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory; give one checkpoint directory per fold")
    if (path / ADAPTER_CONFIG).is_file():
        if not (path / ADAPTER_FILE).is_file():
            raise CheckpointError(_pickle_message(path) if (path / PICKLES[0]).is_file() else
                               f"{path}: {ADAPTER_CONFIG} but no {ADAPTER_FILE} beside it")
        return Checkpoint(path, "lora", path)
    if (path / WHOLE_FILES[0]).is_file():
        if not (path / WHOLE_FILES[1]).is_file():
            raise CheckpointError(_pickle_message(path) if (path / PICKLES[1]).is_file() else
                               f"{path}: config.json but no model.safetensors beside it")
        return Checkpoint(path, "whole", path)
    steps = sorted((int(m.group(1)), p) for p in path.glob("checkpoint-*")
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    if not steps:
        raise CheckpointError(f"{path}: neither a PEFT adapter ({ADAPTER_CONFIG}), a whole model (config.json) nor "
                              "Trainer's checkpoint-N folders")
    chosen = steps[-1][1]
    state = chosen / "trainer_state.json"
    best = json.loads(state.read_text()).get("best_model_checkpoint") if state.is_file() else None
    if best and (path / Path(best).name).is_dir():
        chosen = path / Path(best).name
    log.info("%s: using %s (%s)", path, chosen.name, "Trainer's best" if best else "the last checkpoint")
    found = find_checkpoint(chosen)
    return Checkpoint(found.path, found.kind, path)


CARD_FIELDS = ("datasets", "language", "license")
"""What a model card's metadata says that a run keeps: the data the checkpoint learned from, its language, licence."""


def model_card(checkpoint: Checkpoint) -> dict:
    """``CARD_FIELDS`` of the checkpoint's model card, as lists of strings.

    The card is ``README.md`` beside the weights or in the directory given (Hugging Face's convention); empty where
    there is none or it says none of them.
    """
    from huggingface_hub import ModelCard

    for folder in dict.fromkeys([checkpoint.path, checkpoint.given]):
        if (folder / "README.md").is_file():
            data = ModelCard.load(folder / "README.md", ignore_metadata_errors=True).data.to_dict()
            return {k: [str(v) for v in (data[k] if isinstance(data[k], list) else [data[k]])]
                    for k in CARD_FIELDS if data.get(k)}
    return {}


def _pickle_message(path: Path) -> str:
    return (f"{path}: its weights are a pickle (.bin), which loralens never loads (it can run code); save them as "
            "safetensors (save_pretrained(..., safe_serialization=True), the default of current transformers and "
            "peft) and import that directory")


def adapter_config(checkpoint: Checkpoint) -> LoraConfig:
    """The adapter's LoRA config, checked for what loralens analyses; its head left out (``modules_to_save``).

    Raises:
        CheckpointError: another PEFT type, DoRA, per-module ranks or alphas, some layers only, trained biases.
    """
    path = checkpoint.path / ADAPTER_CONFIG
    raw = json.loads(path.read_text())
    if (kind := raw.get("peft_type", "LORA")) != "LORA":
        raise CheckpointError(f"{path}: peft_type {kind}; loralens analyses LoRA adapters only")
    for key, what in REFUSED.items():
        if raw.get(key) not in (None, False, {}, [], ""):
            raise CheckpointError(f"{path}: {what}; loralens analyses plain LoRA, one rank on every layer of the "
                                  "encoder")
    if raw.get("bias", "none") != "none":
        raise CheckpointError(f"{path}: bias={raw['bias']!r} trains the base model's biases; loralens compares "
                              "adapters on an untouched base (bias='none')")
    if extra := [m for m in raw.get("modules_to_save") or [] if m not in HEAD_MODULES]:
        raise CheckpointError(f"{path}: modules_to_save {extra} beyond the head {list(HEAD_MODULES)}; loralens "
                              "compares adapters on an untouched encoder")
    config = LoraConfig.from_pretrained(str(checkpoint.path))
    config.base_model_name_or_path = None  # the base is --model's, whatever it was called where it trained
    config.modules_to_save = None
    config.inference_mode = False
    return config


def adapted_targets(model: PeftModel, path: Path) -> list[str]:
    """The encoder module names (``v_proj``, ...) an adapter adapts, the same in every layer.

    Raises:
        CheckpointError: a module outside the encoder's attention and MLP projections, or layers adapted unevenly.
    """
    from peft.tuners.lora import LoraLayer

    adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    targets = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    if outside := [n for n in adapted if ".encoder.layers." not in n or n.rsplit(".", 1)[-1] not in LORA_TARGETS]:
        raise CheckpointError(f"{path}: adapts {outside[0]}; loralens analyses LoRA on the encoder's "
                              f"{', '.join(LORA_TARGETS)}")
    n_layers = len(windowing.whisper_of(model).encoder.layers)
    if len(adapted) != n_layers * len(targets):
        raise CheckpointError(f"{path}: adapts {len(adapted)} modules, not {', '.join(targets)} in each of the "
                              f"{n_layers} layers; loralens analyses one set of targets on every layer")
    return [t for t in LORA_TARGETS if t in targets]


def checkpoint_labels(checkpoint: Checkpoint) -> list[str] | None:
    """A whole model's classes in label order, canonical names (None for an adapter: it carries none)."""
    if checkpoint.kind != "whole":
        return None
    id2label = json.loads((checkpoint.path / "config.json").read_text()).get("id2label") or {}
    labels = [canonical_emotion(id2label[k]) for k in sorted(id2label, key=int)]
    return None if all(re.fullmatch(r"label_\d+", label) for label in labels) else labels  # transformers' default


class Importer(Trainer):
    """Makes a run directory of checkpoints trained elsewhere: a ``Trainer`` whose folds load instead of train."""

    def __init__(self, plan: ImportPlan, run: Path):
        self.plan = plan
        plan.found = [find_checkpoint(p) for p in plan.checkpoints]
        kinds = {c.kind for c in plan.found}
        if len(kinds) > 1:
            raise CheckpointError("the checkpoints mix PEFT adapters and whole models; import each kind as a run of "
                                  "its own (--out)")
        self.kind = kinds.pop()
        emotions = self._emotions()
        base = dict(model=plan.model, data=plan.data, emotions=emotions, window=plan.window,
                    folds=plan.folds or "given", seed=plan.seed, device=plan.device, precision=plan.precision,
                    batch_size=plan.batch_size, merge_excitement=plan.merge_excitement, epochs=1,
                    source=self._source())
        if self.kind == "lora":
            self.lora = [adapter_config(c) for c in plan.found]
            first = self.lora[0]
            shape = lambda c: (c.r, c.lora_alpha, sorted(c.target_modules or []), bool(c.use_rslora))  # noqa: E731
            if differing := [c.given for c, lc in zip(plan.found, self.lora, strict=True) if shape(lc) != shape(first)]:
                raise CheckpointError(f"{differing[0]}: its rank, alpha or targets differ from "
                                      f"{plan.found[0].given}'s; a run's folds share one adapter shape (import the "
                                      "others as a run of their own)")
            config = TrainConfig(method="lora", rank=first.r, alpha=float(first.lora_alpha),
                                 dropout=float(first.lora_dropout), rslora=bool(first.use_rslora),
                                 targets=self._targets(first, emotions), **base)
        else:  # a frozen baseline where fold 0's encoder is the base's, else fully fine-tuned
            probe = load_classifier(plan.model, emotions)
            first = plan.found[0]
            method = "frozen" if self._encoder_is_base(probe, load_file(first.weights), first) else "full"
            config = TrainConfig(method=method, **base)
        super().__init__(config, run)

    def _targets(self, lora: LoraConfig, emotions: list[str]) -> list[str]:
        """The encoder modules the adapters adapt: from the config's list, or (a pattern) from the base itself."""
        names = lora.target_modules
        if isinstance(names, (list, set, tuple)) and all(n.rsplit(".", 1)[-1] in LORA_TARGETS for n in names):
            if decoder := [n for n in names if "decoder" in n]:
                raise CheckpointError(f"{self.plan.found[0].path / ADAPTER_CONFIG}: targets {decoder[0]}; loralens "
                                      "analyses adapters on the encoder")
            return [t for t in LORA_TARGETS if t in {n.rsplit(".", 1)[-1] for n in names}]
        probe = get_peft_model(load_classifier(self.plan.model, emotions), lora)
        return adapted_targets(probe, self.plan.found[0].path / ADAPTER_CONFIG)

    def _emotions(self) -> list[str]:
        """The classes in label order: given, else a whole model's ``id2label``, else the paper's four."""
        plan = self.plan
        labels = [checkpoint_labels(c) for c in plan.found]
        if other := next(((c, lab) for c, lab in zip(plan.found, labels, strict=True) if lab != labels[0]), None):
            raise CheckpointError(f"the checkpoints' labels differ ({plan.found[0].given}: {labels[0]}; "
                                  f"{other[0].given}: {other[1]}); a run has one class set")
        given = [canonical_emotion(e) for e in plan.emotions] if plan.emotions else None
        if given and labels[0] and given != labels[0]:
            raise CheckpointError(f"--emotions {given} but {plan.found[0].path / 'config.json'} labels its classes "
                                  f"{labels[0]} (in label order); leave out --emotions or give that order")
        emotions = given or labels[0] or list(DEFAULT_EMOTIONS)
        corpus = load_corpus(plan.data, None, merge_excitement=plan.merge_excitement)
        if missing := [e for e in emotions if e not in corpus.emotions]:
            excitement = (" (IEMOCAP counts excitement as happiness unless --keep-excitement)"
                          if "excitement" in missing else "")
            raise CheckpointError(f"the checkpoints' classes {emotions} and --data {plan.data}'s "
                                  f"{list(corpus.emotions)} differ: the data has no {', '.join(missing)}{excitement}. "
                                  "Give the checkpoints' classes in label order with --emotions, or the data set they "
                                  "were trained on")
        return emotions

    def _source(self) -> dict:
        """Where the run came from, kept in its config.json (and so in every store it is traced into)."""
        plan = self.plan
        given = plan.test_speakers or [[str(Path(f).resolve()), _digest(Path(f))] for f in plan.test_ids or []]
        return {"tool": "loralens import", "kind": self.kind,
                "checkpoints": [str(c.path.resolve()) for c in plan.found], "held_out": plan.held_out,
                "test_sets": plan.folds or ("speakers" if plan.test_speakers else "ids" if plan.test_ids else "all"),
                "given": given, "heads": [[str(Path(h).resolve()), _digest(Path(h))] for h in plan.heads or []],
                "card": model_card(plan.found[0])}

    # -- the folds -----------------------------------------------------------------------------------------
    def make_folds(self) -> list[Fold]:
        """One fold per checkpoint, its test set as the plan says; the same as a resumed run's finished folds."""
        folds = self._folds()
        previous = self.run / "folds.json"
        if previous.is_file() and (done := completed_folds(self.run)):
            before = {f["index"]: f["test"] for f in json.loads(previous.read_text())["folds"]}
            if changed := [k for k in done if k < len(folds) and before.get(k) != folds[k].test]:
                raise CheckpointError(f"{self.run} holds fold {changed[0]} imported with another test set; import "
                                      "into a new --out (its finished folds were scored on their own test sets)")
        for fold, checkpoint in zip(folds, self.plan.found, strict=True):
            log.info("fold %d: %s, tested on %s", fold.index, checkpoint.path, ", ".join(fold.test_speakers))
        return folds

    def _folds(self) -> list[Fold]:
        plan, utts = self.plan, self.corpus.utterances
        n = len(plan.found)
        if plan.folds is not None:
            if plan.folds not in ("loso", "split"):
                raise CheckpointError(f"--folds {plan.folds}: K speaker-grouped folds are drawn at random, so they "
                                      "would not be the folds the checkpoints trained on; give each checkpoint's "
                                      "test speakers (--test-speakers) or ids (--test-ids)")
            folds = make_folds(self.corpus, plan.folds, inner_validation=False, seed=plan.seed)
            if len(folds) != n:
                raise CheckpointError(f"--folds {plan.folds} makes {len(folds)} folds of --data {plan.data} "
                                      f"(test speakers {', '.join('/'.join(f.test_speakers) for f in folds)}) and "
                                      f"{n} checkpoint(s) were given; give one per fold, in that order, or each one's "
                                      "test speakers (--test-speakers)")
            return folds
        if not plan.held_out:
            ids = [u.id for u in utts]
            return [Fold(0, sorted({u.speaker for u in utts}), [], [], [], ids)]
        folds = []
        for k in range(n):
            if plan.test_speakers is not None:
                speakers = plan.test_speakers[k]
                if unknown := [s for s in speakers if s not in self.corpus.speakers]:
                    raise CheckpointError(f"--test-speakers {','.join(speakers)}: {', '.join(unknown)} not among "
                                          f"--data {plan.data}'s speakers ({', '.join(self.corpus.speakers)})")
                test = [u.id for u in utts if u.speaker in speakers]
            else:
                listed = [line.strip() for line in plan.test_ids[k].read_text().splitlines() if line.strip()]
                known = {key: u.id for u in utts for key in (u.id, f"{u.dataset}/{u.id}")}  # data's, store's
                if unknown := [i for i in listed if i not in known]:
                    raise CheckpointError(f"{plan.test_ids[k]}: {len(unknown)} id(s) not in --data {plan.data} "
                                          f"(e.g. {unknown[0]!r}; ids as the explorer shows them, e.g. "
                                          f"{utts[0].dataset + '/' + utts[0].id!r})")
                test = list(dict.fromkeys(known[i] for i in listed))
                speakers = sorted({u.speaker for u in utts if u.id in set(test)})
            if not test:
                raise CheckpointError(f"{plan.found[k].given}: its test set is empty (--test-speakers or --test-ids "
                                      f"number {k + 1}); give the speakers or ids it never trained on")
            held = set(test)
            folds.append(Fold(k, speakers, [], [u.id for u in utts if u.id not in held], [], test))
        return folds

    def train_fold(self, fold: Fold) -> dict:
        """Load fold ``fold``'s checkpoint onto the base, evaluate it on its test set, save it as a run's fold."""
        checkpoint = self.plan.found[fold.index]
        started = time.time()
        model = self.load_model(fold.index).to(self.device)
        probs = self.predict(model, fold.test)
        labels = self._labels(fold.test)
        metrics = {"fold": fold.index, "test_speakers": fold.test_speakers, "val_speakers": [],
                   **scores(labels, probs.argmax(1), len(self.config.emotions)), "loss_curve": [],
                   "val_uar_curve": [], "epoch": _trainer_epoch(checkpoint.path), "n_train": len(fold.train),
                   "n_val": 0, "n_test": len(fold.test), "seconds": round(time.time() - started, 1),
                   "device": str(self.device),
                   "precision": self.config.precision, "imported_from": str(checkpoint.path.resolve())}
        if self.config.window == "trim" and self.plan.compare_windows:
            metrics["changed_by_trim"] = self._changed_by_trim(model, fold, probs)
        shutil.rmtree(self._partial(fold), ignore_errors=True)
        self._partial(fold).mkdir(parents=True)
        if self.config.method == "full":  # its encoder is its own: the run points at the weights, never copies them
            pointer = {"path": str(checkpoint.weights.resolve()), "bytes": checkpoint.weights.stat().st_size}
            (self._partial(fold) / WEIGHTS_FILE).write_text(json.dumps(pointer, indent=2) + "\n")
        self._save_fold(fold, model, probs, metrics, self.config.seed + fold.index)
        return metrics

    def load_model(self, k: int) -> torch.nn.Module:
        """Fold ``k``'s model: the base, the checkpoint's head and (an adapter) its LoRA weights, on the CPU."""
        checkpoint = self.plan.found[k]
        model = load_classifier(self.config.model, self.config.emotions, seed=self.config.seed + k)
        try:
            weights = load_file(checkpoint.weights)
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"{checkpoint.weights}: unreadable ({e})") from e
        if outside := next((k_ for k_ in weights if ".decoder." in k_ or k_.startswith("decoder.")), None):
            raise CheckpointError(f"{checkpoint.weights}: {outside} is on the decoder; loralens analyses the "
                                  "encoder of WhisperForAudioClassification (adapters and heads on the encoder)")
        if self.kind == "whole":
            same = self._encoder_is_base(model, weights, checkpoint)
            if self.config.method == "frozen" and not same:
                raise CheckpointError(f"{checkpoint.weights}: its encoder differs from {self.config.model}'s while "
                                      f"{self.plan.found[0].given}'s is the base's: a run's folds are all frozen "
                                      "baselines or all fully fine-tuned; import them as runs of their own")
            if self.config.method == "full":
                windowing.whisper_of(model).load_state_dict({k_: v for k_, v in weights.items()
                                                             if k_.startswith("encoder.")}, strict=False)
            head = {k_: v for k_, v in weights.items() if k_.split(".")[0] in HEAD_MODULES}
        else:
            model = get_peft_model(model, self.lora[k])
            adapted_targets(model, checkpoint.weights)
            head = {_head_key(k_): v for k_, v in weights.items() if _head_key(k_) is not None}
            self._load_lora(model, {k_: v for k_, v in weights.items() if "lora_" in k_}, checkpoint)
        if self.plan.heads is not None:
            head = {_head_key(k_) or k_: v for k_, v in load_file(self.plan.heads[k]).items()}
        self._load_head(model, head, checkpoint)
        return model.eval()

    def _load_lora(self, model: PeftModel, weights: dict[str, torch.Tensor], checkpoint: Checkpoint) -> None:
        expected = {n: p for n, p in model.named_parameters() if "lora_" in n}
        for key, value in weights.items():
            name = re.sub(r"\.(lora_[AB])\.", r".\1.default.", key)
            if name in expected and expected[name].shape != value.shape:
                raise CheckpointError(f"{checkpoint.weights}: {key} is {tuple(value.shape)}, the base "
                                      f"{self.config.model} takes {tuple(expected[name].shape)} there: the adapter "
                                      "was trained on another model; give --model the base it was trained on")
        result = set_peft_model_state_dict(model, weights)
        missing = sorted(n for n in expected if n in set(result.missing_keys))
        if result.unexpected_keys or missing:
            raise CheckpointError(f"{checkpoint.weights}: does not fit the base {self.config.model} (unexpected "
                                  f"{sorted(result.unexpected_keys)[:2]}, missing {missing[:2]}); give --model the "
                                  "base it was trained on")

    def _load_head(self, model: torch.nn.Module, head: dict[str, torch.Tensor], checkpoint: Checkpoint) -> None:
        expected = head_state(model)
        if not head:
            raise CheckpointError(f"{checkpoint.given}: no head (projector, classifier) in it; train with "
                                  "modules_to_save=['projector', 'classifier'] or give the head with --head FILE")
        if missing := sorted(expected.keys() - head.keys()):
            raise CheckpointError(f"{checkpoint.weights}: the head lacks {missing[:2]}")
        for key, value in expected.items():
            if head[key].shape != value.shape:
                raise CheckpointError(f"{checkpoint.weights}: {key} is {tuple(head[key].shape)}, the model with "
                                      f"{len(self.config.emotions)} classes ({', '.join(self.config.emotions)}) takes "
                                      f"{tuple(value.shape)}: give the checkpoint's classes with --emotions")
        windowing.whisper_of(model).load_state_dict({k: head[k] for k in expected}, strict=False)

    def _encoder_is_base(self, model: torch.nn.Module, weights: dict[str, torch.Tensor],
                         checkpoint: Checkpoint) -> bool:
        """Whether a whole model's encoder is the base's, bit for bit in its own dtype (a frozen baseline).

        Refuses one that is no ``WhisperForAudioClassification`` of the base's geometry, or holds more than the
        encoder and the head.
        """
        if extra := sorted(k for k in weights if k.split(".")[0] not in ("encoder", *HEAD_MODULES)):
            raise CheckpointError(f"{checkpoint.weights}: {extra[0]} is neither the encoder nor the head "
                                  "(use_weighted_layer_sum's layer_weights?); loralens analyses the head on the "
                                  "encoder's last layer")
        base = {f"encoder.{k}": v for k, v in windowing.whisper_of(model).encoder.state_dict().items()}
        missing = sorted(base.keys() - weights.keys())
        if missing:
            raise CheckpointError(f"{checkpoint.weights}: no {missing[0]}; is it a WhisperForAudioClassification of "
                                  f"{self.plan.model}?")
        for key, value in base.items():
            theirs = weights[key]
            if theirs.shape != value.shape:
                raise CheckpointError(f"{checkpoint.weights}: {key} is {tuple(theirs.shape)}, the base "
                                      f"{self.plan.model}'s {tuple(value.shape)}; give --model the base it was "
                                      "trained on")
        return all(torch.equal(weights[key], value.to(weights[key].dtype)) for key, value in base.items())

    def _changed_by_trim(self, model: torch.nn.Module, fold: Fold, trimmed: np.ndarray) -> float:
        """The share of the fold's test predictions that the trim window changes against the full (30 s) window."""
        full = self._predict_full(model, [self.by_id[i] for i in fold.test])
        share = float(np.mean(full.argmax(1) != trimmed.argmax(1))) if len(full) else 0.0
        log.info("fold %d: the trim window changes %.1f%% of the test predictions the full window makes (models "
                 "trained with Hugging Face's feature extractor saw the full window)", fold.index, 100 * share)
        return share

    def _predict_full(self, model: torch.nn.Module, examples: list) -> np.ndarray:
        from loralens.precompute.audio import load_audio

        out = []
        with torch.no_grad():
            for start in range(0, len(examples), self.config.batch_size):
                chunk = examples[start:start + self.config.batch_size]
                audio = [load_audio(e.utterance.path, long=self.config.long) for e in chunk]
                features = windowing.extract(self.extractor, audio, "full", device=self.device)
                with self._autocast():
                    out.append(windowing.classify(model, features).float().softmax(-1).cpu())
        return torch.cat(out).numpy()


def _head_key(key: str) -> str | None:
    """A head tensor's name in the head file (``projector.weight``), from an adapter's; None for other tensors.

    PEFT saves ``modules_to_save`` as ``base_model.model.projector.weight`` (older versions with
    ``modules_to_save.default`` inside); ``original_module`` copies are the untrained head, never the one to use.
    """
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in HEAD_MODULES:
            rest = [p for p in parts[i + 1:] if p not in ("modules_to_save", "default", "original_module")]
            return ".".join([part, *rest]) if "original_module" not in parts else None
    return None


def _digest(path: Path) -> str:
    """A file's SHA-256, to notice a changed file on a resumed import."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def _trainer_epoch(path: Path) -> float | None:
    state = path / "trainer_state.json"
    return json.loads(state.read_text()).get("epoch") if state.is_file() else None


def import_run(plan: ImportPlan, run: Path) -> dict:
    """Make ``run`` from ``plan``'s checkpoints (resumed if it exists with the same plan); return its metrics.

    A new run that fails before its first fold is saved leaves no directory, so the corrected command starts afresh.
    """
    new = not run.exists()
    try:
        summary = run_logged(Importer(plan, run))
    except BaseException:
        if new and run.exists() and not completed_folds(run):
            shutil.rmtree(run, ignore_errors=True)
        raise
    log.info("%s: imported %d fold(s) from %s", run, len(completed_folds(run)), plan.found[0].given.parent)
    return summary
