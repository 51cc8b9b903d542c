"""``loralens train``: speaker-independent cross-validation of LoRA and frozen-encoder emotion models.

A run directory holds ``config.json``, ``folds.json``, ``train.log``, ``metrics.json`` and one directory per
completed fold (see ``loralens.precompute.checkpoints``). Folds are written as ``fold_KK.partial`` and renamed when
complete, so an interrupted run resumes at its first unfinished fold with the same command, after that fold's
last finished epoch.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.optimization import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from loralens.precompute import windowing
from loralens.precompute.audio import AudioError, load_audio
from loralens.precompute.checkpoints import (
    HEAD_FILE,
    PROGRESS_FILE,
    Progress,
    attach_lora,
    load_progress,
    randomise_lora,
    save_head,
    save_progress,
)
from loralens.precompute.config import RunError, TrainConfig, completed_folds, default_precision, read_config
from loralens.precompute.data import Corpus, Utterance, load_corpus
from loralens.precompute.files import open_as_umask, write_atomic
from loralens.precompute.folds import Fold, make_folds, scores, write_run_metrics
from loralens.precompute.models import feature_extractor, load_classifier, parse_model_spec

log = logging.getLogger(__name__)


@dataclass
class Example:
    """An utterance ready for the model."""

    utterance: Utterance
    label: int
    features: windowing.ClipMel
    """Its log-mel in the run's window, extracted once: every epoch's batches are built from it."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_examples(corpus: Corpus, config: TrainConfig, extractor,
                  device: torch.device | str = "cpu") -> tuple[list[Example], int]:
    """Read every utterance's audio and log-mel (extracted on ``device``); bad files stop a run unless ``skip_bad``."""
    examples, bad = [], 0
    label_of = {e: i for i, e in enumerate(corpus.emotions)}
    for u in tqdm(corpus.utterances, desc="reading audio", unit="file"):
        try:
            audio = load_audio(u.path, long=config.long)
        except AudioError as e:
            if not config.skip_bad:
                raise AudioError(f"{e}. Fix or remove the file, or pass --skip-bad to skip such files") from e
            log.warning("skipped: %s", e)
            bad += 1
            continue
        examples.append(Example(u, label_of[u.emotion], windowing.clip_mel(extractor, audio, config.window, device)))
    if bad:
        log.warning("skipped %d unreadable or empty audio file(s) (--skip-bad)", bad)
    if not examples:
        raise RunError(f"--data {corpus.spec}: no readable audio")
    return examples, bad


# The last data set's examples, kept for the next Trainer of this process: a grid's worker trains fold after fold of
# runs on one data set, and reading EmoDB's 339 clips (resampling, log-mel) takes ~20 s on 2 cores, longer than
# training a fold of tiny.en for a few epochs. Keyed by every file's size and mtime: a changed file is read again.
_EXAMPLES: dict[tuple, tuple[list[Example], int]] = {}


def cached_examples(corpus: Corpus, config: TrainConfig, extractor,
                    device: torch.device | str = "cpu") -> tuple[list[Example], int]:
    """``load_examples``, or the examples this process read last for the same files, settings and device."""
    files = []
    for u in corpus.utterances:
        try:
            stat = Path(u.path).stat()
            files.append((str(u.path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            files.append((str(u.path), None, None))  # load_examples reports it
    key = (tuple(files), tuple((u.id, u.speaker, u.emotion) for u in corpus.utterances), tuple(corpus.emotions),
           config.window, config.long, config.skip_bad, extractor.feature_size, extractor.sampling_rate,
           extractor.hop_length, extractor.n_fft, str(device))
    if key not in _EXAMPLES:
        _EXAMPLES.clear()  # one data set at a time: the memory of one
        _EXAMPLES[key] = load_examples(corpus, config, extractor, device)
    return _EXAMPLES[key]


def batch_features(examples: list[Example], device: torch.device | str = "cpu") -> windowing.Features:
    """The model input for a batch of examples, on ``device``, from the log-mel each holds.

    Each clip's log-mel is extracted once, when the run reads its audio, never per step: a ``full`` window's 30 s
    log-mel costs more than a small model's step.
    """
    return windowing.batch_of([e.features for e in examples], device)


def batches(items: list, size: int, generator: torch.Generator | None = None) -> list[list]:
    """``items`` in batches of ``size``, shuffled with ``generator`` when given."""
    order = torch.randperm(len(items), generator=generator).tolist() if generator else range(len(items))
    ordered = [items[i] for i in order]
    return [ordered[i: i + size] for i in range(0, len(ordered), size)]


def lr_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                epochs_done: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of one fold, positioned after ``epochs_done`` epochs (a resumed fold)."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup * total)
    for group in optimizer.param_groups:  # what a scheduler made at step 0 would have recorded
        group.setdefault("initial_lr", group["lr"])
    last = epochs_done * steps_per_epoch - 1
    if config.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total, last_epoch=last)
    return get_constant_schedule_with_warmup(optimizer, warmup, last_epoch=last)


class Trainer:
    """Trains the folds of one run directory."""

    def __init__(self, config: TrainConfig, run: Path):
        self.config = config
        self.run = run
        self.device = resolve_device(config.device)
        self._prepare_seconds = 0.0
        """``prepare``'s seconds, reported by the first fold this trainer trains (see ``train_fold``)."""

    # -- setup ------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Resolve the data and folds, check them against an existing run, and read the audio."""
        started = time.time()
        config = self.config
        parse_model_spec(config.model)  # a bad --model fails before any data is read
        emotions = tuple(config.emotions) if config.emotions is not None else None
        self.corpus = load_corpus(config.data, emotions, merge_excitement=config.merge_excitement)
        config.emotions = list(self.corpus.emotions)
        previous = read_config(self.run) if (self.run / "config.json").is_file() else None
        if previous is not None and previous.precision == "auto":  # written before the setting existed: it ran
            previous.precision = default_precision(self.device.type)  # under this device's default
        if config.precision == "auto":  # fixed when the run starts; a run resumed on another device keeps its own
            config.precision = previous.precision if previous is not None else default_precision(self.device.type)
        if previous is not None and (diff := config.differences(previous)):
            raise RunError(f"{self.run} holds a run with a different configuration ({'; '.join(diff)}); "
                           "use a new --out, or repeat the original command to resume it")
        self.run.mkdir(parents=True, exist_ok=True)
        config.save(self.run / "config.json")
        probe = load_classifier(config.model, config.emotions, seed=config.seed)
        self.extractor = feature_extractor(probe.config)
        if config.method == "lora" and probe.config.dropout > 0:
            log.warning("the encoder has dropout %.2f: frozen and LoRA runs see different noise",
                        probe.config.dropout)
        self.examples, self.n_bad = cached_examples(self.corpus, config, self.extractor, self.device)
        self.by_id = {e.utterance.id: e for e in self.examples}
        self.folds = self.make_folds()
        for fold in self.folds:  # files skipped with --skip-bad leave the folds
            fold.train, fold.val, fold.test = ([i for i in ids if i in self.by_id]
                                               for ids in (fold.train, fold.val, fold.test))
        folds_json = {"emotions": config.emotions, "n_skipped_audio": self.n_bad,
                      "skipped": dict(self.corpus.skipped), "folds": [f.to_json() for f in self.folds]}
        write_atomic(self.run / "folds.json", json.dumps(folds_json, indent=2) + "\n")
        self._pooled: torch.Tensor | None = None
        self._probe = probe if config.method == "frozen" else None
        self._prepare_seconds = time.time() - started

    def make_folds(self) -> list[Fold]:
        """The run's folds, as its config says."""
        return make_folds(self.corpus, self.config.folds, inner_validation=self.config.epoch_selection == "inner",
                          seed=self.config.seed)

    # -- the two methods --------------------------------------------------------------------------------
    def pooled_encoder_outputs(self) -> torch.Tensor:
        """Frozen runs: every utterance's pooled encoder output, computed once (the encoder never changes).

        Training the head on these equals training the whole model with a frozen encoder: the encoder has
        no dropout, and the affine projector commutes with mean pooling.
        """
        if self._pooled is None:
            model = self._probe.to(self.device)
            out = []
            with torch.no_grad():
                for chunk in tqdm(batches(self.examples, self.config.batch_size), desc="encoding (frozen)",
                                  unit="batch"):
                    f = batch_features(chunk, self.device)
                    with self._autocast():
                        hidden = windowing.encode(model, f)
                    out.append(windowing.masked_mean(hidden.float(), f.pooling_mask()))
            self._pooled = torch.cat(out)  # kept on the device: each batch indexes it there
            self._row = {e.utterance.id: i for i, e in enumerate(self.examples)}
        return self._pooled

    def logits(self, model: torch.nn.Module, chunk: list[Example]) -> torch.Tensor:
        """Logits for a batch, through the whole model (LoRA) or the head on cached outputs (frozen).

        Only the model runs in the run's precision: the log-mel stays in float32.
        """
        if self.config.method == "frozen":
            pooled = self.pooled_encoder_outputs()[[self._row[e.utterance.id] for e in chunk]]
            with self._autocast():
                return windowing.head_logits(model, pooled)
        features = batch_features(chunk, self.device)
        with self._autocast():
            return windowing.classify(model, features)

    def _autocast(self):
        return windowing.autocast(self.device, self.config.precision)

    def predict(self, model: torch.nn.Module, ids: list[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(ids), n_classes)``."""
        model.eval()
        out = []
        with torch.no_grad():
            for chunk in batches([self.by_id[i] for i in ids], self.config.batch_size):
                out.append(self.logits(model, chunk).float().softmax(-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.config.emotions)))

    def build(self, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """A fresh model for one fold (LoRA attached, or the encoder frozen) on the device, and its optimizer.

        Only parameters that require grad are optimised: with ``freeze_a`` every LoRA A is left out.
        """
        config = self.config
        model = load_classifier(config.model, config.emotions, seed=seed)
        if config.method == "lora":
            model = attach_lora(model, config)
            if config.freeze_a:  # A keeps PEFT's random start: out of the optimizer, so no step or decay moves it
                for name, param in model.named_parameters():
                    if "lora_A" in name:
                        param.requires_grad_(False)
        else:
            model.requires_grad_(False)
            windowing.whisper_of(model).projector.requires_grad_(True)
            windowing.whisper_of(model).classifier.requires_grad_(True)
        model.to(self.device)
        head = [p for n, p in model.named_parameters() if p.requires_grad and ("projector" in n or "classifier" in n)]
        lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        groups = [{"params": head, "lr": config.head_lr}] + ([{"params": lora, "lr": config.lr}] if lora else [])
        return model, torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    def step(self, model: torch.nn.Module, chunk: list[Example], optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler) -> torch.Tensor:
        """One optimiser step on a batch; returns its mean loss, still on the device (reading it waits for it)."""
        labels = torch.tensor([e.label for e in chunk], device=self.device)
        loss = torch.nn.functional.cross_entropy(self.logits(model, chunk).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss.detach()

    # -- one fold ---------------------------------------------------------------------------------------
    def train_fold(self, fold: Fold) -> dict:
        """Train, evaluate and save one fold into ``fold_KK.partial``, then rename it to ``fold_KK``.

        After every epoch the fold's state is saved in ``fold_KK.partial``; an interrupted fold resumes there.
        """
        config = self.config
        seed = config.seed + fold.index
        generator = seed_everything(seed)
        started = time.time()
        model, optimizer = self.build(seed)
        # Where a fold's start-up goes (folds at once on one GPU spend much of their time starting): the trainer's
        # preparation (audio, features, probe model; reported by its first fold), this fold's model on the device,
        # and its first step (the device's first kernels); in metrics.json as setup_seconds.
        setup = {"prepare": round(self._prepare_seconds, 3), "model": round(time.time() - started, 3),
                 "first_step": None}
        self._prepare_seconds = 0.0
        progress, best = self._resume(fold, model, optimizer, generator)
        train = [self.by_id[i] for i in fold.train]
        scheduler = lr_schedule(config, optimizer, math.ceil(len(train) / config.batch_size), progress.epochs_done)
        for epoch in tqdm(range(progress.epochs_done, config.epochs), desc=f"{fold.name} epochs", unit="epoch",
                          initial=progress.epochs_done, total=config.epochs):
            model.train()
            total, count = 0.0, 0
            for chunk in tqdm(batches(train, config.batch_size, generator), desc=f"epoch {epoch + 1}",
                              unit="batch", leave=False):
                step_started = time.time()
                loss = self.step(model, chunk, optimizer, scheduler)
                total += loss.item() * len(chunk)
                count += len(chunk)
                if setup["first_step"] is None:
                    setup["first_step"] = round(time.time() - step_started, 3)
            progress.losses.append(total / max(count, 1))
            if fold.val:
                probs = self.predict(model, fold.val)
                uar = scores(self._labels(fold.val), probs.argmax(1), len(config.emotions))["uar"]
                progress.val_uars.append(uar)
                if uar > progress.best_uar:
                    best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                    progress.best_uar, progress.best_epoch = uar, epoch + 1
            log.info("%s epoch %d: train loss %.4f%s", fold.name, epoch + 1, progress.losses[-1],
                     f", val UAR {progress.val_uars[-1]:.3f}" if fold.val else "")
            progress.epochs_done = epoch + 1
            progress.seconds += time.time() - started
            started = time.time()
            save_progress(self._partial(fold) / PROGRESS_FILE, progress, model, optimizer, generator, best)
        if best is not None:
            with torch.no_grad():
                params = dict(model.named_parameters())
                for n, v in best.items():
                    params[n].copy_(v)
        probs = self.predict(model, fold.test)
        labels = self._labels(fold.test)
        metrics = {
            "fold": fold.index, "test_speakers": fold.test_speakers, "val_speakers": fold.val_speakers,
            **scores(labels, probs.argmax(1), len(config.emotions)),
            "loss_curve": progress.losses, "val_uar_curve": progress.val_uars,
            "epoch": progress.best_epoch if best is not None else config.epochs,
            "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
            "seconds": round(progress.seconds + time.time() - started, 1), "device": str(self.device),
            "precision": config.precision, "setup_seconds": setup,
        }
        self._save_fold(fold, model, probs, metrics, seed)
        return metrics

    def _partial(self, fold: Fold) -> Path:
        return self.run / f"{fold.name}.partial"

    def _resume(self, fold: Fold, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                generator: torch.Generator) -> tuple[Progress, dict[str, torch.Tensor] | None]:
        """The fold's saved progress restored into ``model``, ``optimizer`` and ``generator``, or a fresh start."""
        partial = self._partial(fold)
        path = partial / PROGRESS_FILE
        if path.is_file():
            try:
                progress, best = load_progress(path, model, optimizer, generator)
                log.info("%s: resuming after epoch %d of %d", fold.name, progress.epochs_done, self.config.epochs)
                return progress, best
            except RunError as e:
                log.warning("%s; training %s from its first epoch", e, fold.name)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        return Progress(), None

    def _labels(self, ids: list[str]) -> np.ndarray:
        return np.array([self.by_id[i].label for i in ids])

    def _save_fold(self, fold: Fold, model: torch.nn.Module, probs: np.ndarray, metrics: dict, seed: int) -> None:
        final = self.run / fold.name
        partial = self._partial(fold)
        model.cpu()
        save_head(model, partial / HEAD_FILE)
        if self.config.method == "lora":
            model.save_pretrained(partial / "adapter")
            randomise_lora(model, seed=10_000 + seed)
            model.save_pretrained(partial / "random_twin")
        with open(partial / "predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "speaker", "emotion", "predicted", *[f"p_{e}" for e in self.config.emotions]])
            for uid, p in zip(fold.test, probs, strict=True):
                u = self.by_id[uid].utterance
                writer.writerow([uid, u.speaker, u.emotion, self.config.emotions[int(p.argmax())],
                                 *[f"{x:.6f}" for x in p]])
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (partial / PROGRESS_FILE).unlink(missing_ok=True)
        open_as_umask(partial)
        partial.rename(final)

    # -- the whole run ----------------------------------------------------------------------------------
    def run_all(self, only: list[int] | None = None) -> dict:
        """Train every unfinished fold (or those of ``only``) and write ``metrics.json``; return it."""
        self.prepare()
        done = set(completed_folds(self.run))
        if only is not None and (unknown := sorted(set(only) - {f.index for f in self.folds})):
            raise RunError(f"--only-folds {unknown}: this run has folds 0..{len(self.folds) - 1}")
        todo = [f for f in self.folds if f.index not in done and (only is None or f.index in only)]
        if done:
            log.info("resuming %s: %d of %d folds already complete", self.run, len(done), len(self.folds))
        for fold in todo:
            metrics = self.train_fold(fold)
            log.info("%s (test %s): UAR %.3f, WAR %.3f, macro-F1 %.3f in %.0f s", fold.name,
                     ",".join(fold.test_speakers), metrics["uar"], metrics["war"], metrics["macro_f1"],
                     metrics["seconds"])
            self.write_metrics()
        return self.write_metrics()

    def write_metrics(self) -> dict:
        """Collect the completed folds' metrics into ``RUN/metrics.json``."""
        return write_run_metrics(self.run, len(self.folds))


def train(config: TrainConfig, run: Path, only: list[int] | None = None) -> dict:
    """Train the folds of ``config`` into ``run`` (resuming a partial run); return the metrics summary.

    Args:
        config: what to train.
        run: the run directory.
        only: fold indices to train now (None: all); the others can follow later with the same command.
    """
    return run_logged(Trainer(copy.deepcopy(config), run), only)


def run_logged(trainer: Trainer, only: list[int] | None = None) -> dict:
    """``trainer.run_all(only)`` with the run's ``train.log`` recording it (and why it stopped, if it did).

    A run refused before it wrote its config leaves no directory.
    """
    run = trainer.run
    new = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger(__package__)  # loralens.precompute: every module of training
    level = package_log.level
    if package_log.getEffectiveLevel() > logging.INFO:  # the log file always records the run
        package_log.setLevel(logging.INFO)
    package_log.addHandler(handler)
    try:
        return trainer.run_all(only)
    except BaseException as e:
        # The run's own log says why it stopped; a run refused before it wrote its config leaves no directory.
        handler.emit(logging.makeLogRecord({"name": __name__, "levelno": logging.ERROR, "levelname": "ERROR",
                                            "msg": f"stopped: {type(e).__name__}: {e}"}))
        raise
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(level)
        handler.close()
        if new and not (run / "config.json").exists():
            shutil.rmtree(run)
