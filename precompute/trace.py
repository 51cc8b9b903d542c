"""``loralens trace``: capture a run's checkpoints over chosen utterances into a store.

Every utterance is traced with the model of the fold that held it out, so its predictions are honest.
Stages: prepare (utterance table and checkpoint groups; one process), capture (rows; several processes may
take disjoint shards), commit (mark the run complete). By default one command does all three, and running it
again after an interruption captures only the rows not yet written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import WhisperFeatureExtractor

from loralens.analysis.intruders import ATTR
from loralens.precompute import windowing
from loralens.precompute.audio import load_audio
from loralens.precompute.capture import SAMPLED, CaptureOptions, Capturer, lora_modules, module_name
from loralens.precompute.checkpoints import FoldModels, load_fold_model, retrained, run_fingerprint, run_precision
from loralens.precompute.config import Precision, RunError, completed_folds, read_config
from loralens.precompute.data import Utterance, load_corpus
from loralens.precompute.intruders import record, run_intruders
from loralens.precompute.models import feature_extractor
from loralens.precompute.train import resolve_device
from loralens.store.schema import UserError
from loralens.store.writer import StoreWriter, UtteranceRow, open_worker, write_in_worker

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """Which utterances to trace."""

    per_class: int | None = 25
    """Class-balanced: this many per emotion (seeded by the run's seed), as the paper's 100."""
    all: bool = False
    """Every utterance of the run's completed folds."""
    utterances: Path | None = None
    """A file of utterance ids, one per line: as the store and the explorer show them (``emodb/wav/03a01Fa``) or as
    in the run's folds.json (``wav/03a01Fa``)."""


def held_out_fold(run: Path) -> dict[str, int]:
    """Utterance id (as in the run's ``folds.json``) -> the fold that held it out."""
    folds = json.loads((run / "folds.json").read_text())["folds"]
    return {uid: f["index"] for f in folds for uid in f["test"]}


def select(run: Path, data: str, selection: Selection) -> list[tuple[Utterance, int]]:
    """The utterances to trace with the fold each was held out by, in a deterministic order."""
    config = read_config(run)
    fold_of = held_out_fold(run)
    done = set(completed_folds(run))
    if not done:
        raise RunError(f"{run} has no completed fold; finish training first (loralens train ... --out {run})")
    corpus = load_corpus(data, tuple(config.emotions), merge_excitement=config.merge_excitement)
    available = [(u, fold_of[u.id]) for u in corpus.utterances if fold_of.get(u.id) in done]
    if selection.utterances is not None:
        wanted = [line.strip() for line in Path(selection.utterances).read_text().splitlines() if line.strip()]
        # The data set's own ids (folds.json) and the store's (the explorer's: dataset/id) alike.
        by_id = {key: (u, f) for u, f in available for key in (u.id, store_id(u))}
        if missing := [w for w in wanted if w not in by_id]:
            raise RunError(f"{selection.utterances}: {len(missing)} id(s) are not held out by a completed fold of "
                           f"{run} (e.g. {missing[0]!r})")
        return [by_id[w] for w in wanted]
    if selection.all:
        return available
    rng = np.random.default_rng(config.seed)
    chosen = []
    for emotion in config.emotions:
        pool = [item for item in available if item[0].emotion == emotion]
        if len(pool) < selection.per_class:
            log.warning("only %d %s utterances in completed folds (asked for %d)", len(pool), emotion,
                        selection.per_class)
        picks = sorted(rng.choice(len(pool), size=min(len(pool), selection.per_class), replace=False))
        chosen.extend(pool[i] for i in picks)
    return sorted(chosen, key=lambda item: item[0].id)


def store_id(u: Utterance) -> str:
    """The utterance's id in the store (unique across data sets)."""
    return f"{u.dataset}/{u.id}"


def log_mel_input(extractor: WhisperFeatureExtractor, audio: np.ndarray) -> np.ndarray:
    """The log-mel input the utterance table keeps: over the clip's real frames, ``(n_mels, 2 * n_frames)``."""
    return windowing.extract(extractor, [audio], "trim").input_features[0].numpy().astype(np.float16)


def default_writers(store: str) -> int:
    """Writer processes for a trace into ``store`` by default: a quarter of the cores, at most 4.

    Zarr encodes and stores each chunk in Python, far slower than a GPU captures a batch; processes write in
    parallel where there are cores to spare. None (a thread) on
    machines of fewer than 4 cores, or for an in-memory store.
    """
    if store.startswith("memory://"):
        return 0
    return min(4, (os.cpu_count() or 1) // 4)


@contextlib.contextmanager
def prefetched(items: list, load: Callable, ahead: int = 2) -> Iterator[Iterator]:
    """An iterator of ``load(item)`` for each of ``items`` in order, each computed on a thread ahead of use.

    Up to ``ahead`` items are loaded before they are asked for, the first from the moment the block is entered. An
    item's error is raised when it is asked for; leaving the block cancels the loads not yet started and waits
    for the one under way. A trace reads the next batches' audio so (libsndfile decodes outside the GIL) while it
    loads a fold's model and the device captures the batch before.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audio-reader")
    pending = deque(pool.submit(load, item) for item in items[:ahead])

    def results() -> Iterator:
        for i in range(len(items)):
            if i + ahead < len(items):
                pending.append(pool.submit(load, items[i + ahead]))
            yield pending.popleft().result()

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _settle(write: Future, bar: tqdm) -> int:
    """Wait for a batch's write (raising its error here); count its rows on ``bar``; return how many."""
    n = write.result()
    bar.update(n)
    return n


class Tracer:
    """Traces one run directory into one store."""

    def __init__(self, run: Path, data: str, store: str, *, name: str | None = None,
                 selection: Selection | None = None, options: CaptureOptions | None = None,
                 batch_size: int = 8, device: str = "cpu", storage_options: dict | None = None,
                 precision: Precision | None = None, writers: int | None = None):
        """Open the run and the store and select the utterances.

        ``precision`` (None: the run's own, so the store predicts what training predicted) sets the capture
        options' regime. ``writers``: processes that write the captured batches into the store (None:
        ``default_writers``; 0: a thread of this process). Each batch's rows own their chunks, so writers never
        share one.
        """
        self.run = run
        self.config = read_config(run)
        self.data = data
        self.name = name or run.resolve().name
        self.selection = selection or Selection()
        self.train_precision = run_precision(run)
        self.options = replace(options or CaptureOptions(), precision=precision or self.train_precision)
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.writer = StoreWriter(store, storage_options)
        self.storage_options = storage_options
        self.writers = default_writers(store) if writers is None else writers
        if self.writers < 0:
            raise UserError(f"writers={self.writers}; expected 0 (a thread) or more processes")
        if self.writers and store.startswith("memory://"):
            raise UserError("an in-memory store (memory://) lives in this process: trace it with writers=0")
        self.items = select(run, data, self.selection)
        self.checkpoints = ["trained", "random_twin"] if self.config.method == "lora" else ["trained"]

    def prepare(self, replace_run: bool = False) -> list[int]:
        """Add the utterances to the table and create the run's checkpoint groups; return the rows.

        A store that traced another training of this run (``checkpoints.retrained``) is refused, naming what changed,
        unless ``replace_run``: then the store's run (checkpoints, summary, interventions) is deleted first.

        Raises:
            RunError: the store holds another training of the run and ``replace_run`` is False.
        """
        fingerprint = run_fingerprint(self.run)
        if held := self.writer.runs().get(self.name):  # (a run whose checkpoints repair removed holds none)
            old = self.writer.attrs(self.name, held[0])
            if changes := retrained(old.get("fingerprint", {}), fingerprint, old.get("train_config"), self.config):
                if not replace_run:
                    raise RunError(f"{self.writer.path} holds run {self.name!r} traced from another training of "
                                   f"{self.run} ({'; '.join(changes)}); trace it under a new --name, into a new "
                                   "--store, or replace the store's copy with --replace")
                log.info("%s: replacing run %s (%s)", self.writer.path, self.name, "; ".join(changes))
                self.writer.remove_run(self.name)
        probe = load_fold_model(self.run, self.items[0][1], "trained")
        whisper = windowing.whisper_of(probe)
        extractor = feature_extractor(whisper.config)
        rows = []
        for u, _ in tqdm(self.items, desc="reading audio", unit="file"):
            audio = load_audio(u.path, long=self.config.long)
            rows.append(UtteranceRow(store_id(u), u.dataset, str(u.path), u.speaker, u.emotion, audio,
                                     windowing.encoder_frames(len(audio)), log_mel_input(extractor, audio)))
        indices = self.writer.add_utterances(rows)
        modules = lora_modules(probe)
        widths = [getattr(whisper.encoder.layers[i].self_attn, t, None) or getattr(whisper.encoder.layers[i], t)
                  for i, t in modules]
        sizes = {"boundary": whisper.config.encoder_layers + 1, "layer": whisper.config.encoder_layers,
                 "d_model": whisper.config.d_model, "class": len(self.config.emotions),
                 "module": len(modules), "rank": self.config.rank,
                 "d_out": max((m.base_layer.out_features for m in widths), default=0)}
        metrics_path = self.run / "metrics.json"
        attrs = {
            "method": self.config.method, "model": self.config.model, "data": self.data,
            "window": self.config.window, "emotions": list(self.config.emotions), "rank": self.config.rank,
            "alpha": self.config.alpha, "targets": list(self.config.targets),
            "modules": [module_name(i, t) for i, t in modules], "n_layers": whisper.config.encoder_layers,
            "d_model": whisper.config.d_model, "train_config": self.config.to_json(),
            "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else {},
            "capture": self.options.to_json(), "run_dir": str(self.run.resolve()), "fingerprint": fingerprint,
        }
        for checkpoint in self.checkpoints:
            self.writer.create_checkpoint(self.name, checkpoint, attrs, sizes, lora=bool(modules),
                                          per_frame_b=self.options.per_frame_b)
        return indices

    def rows(self) -> list[int]:
        """The table rows of the selected utterances (the table must hold them: prepare first)."""
        ids = self.writer._column("id")
        index = {uid: i for i, uid in enumerate(ids)}
        missing = [store_id(u) for u, _ in self.items if store_id(u) not in index]
        if missing or self.name not in self.writer.runs():
            raise RunError(f"{self.writer.path} is not prepared for run {self.name!r}; run the same loralens trace "
                           "command with --prepare-only first")
        return [index[store_id(u)] for u, _ in self.items]

    def capture(self, rows: list[int], shard: tuple[int, int] = (0, 1)) -> int:
        """Capture every unwritten row of this shard; return how many rows were written.

        ``shard`` ``(k, n)`` takes the batches k, k + n, ... of ``batches(rows)``.
        """
        k, n = shard
        fold_of_row = {row: fold for row, (_, fold) in zip(rows, self.items, strict=True)}
        # Trace the source audio, not the store's 16-bit copy, so predictions match the run's exactly.
        path_of_row = {row: u.path for row, (u, _) in zip(rows, self.items, strict=True)}
        label_of = {e: i for i, e in enumerate(self.config.emotions)}
        emotion = self.writer._column("emotion")
        ids = self.writer._column("id")
        done, started = 0, time.perf_counter()
        log.info("%s: tracing on %s under %s (training ran under %s)", self.name, self.device,
                 self.options.precision, self.train_precision)
        for checkpoint in self.checkpoints:
            # Stores traced before the setting have no precision in their capture options: they ran in fp32.
            recorded = self.writer.attrs(self.name, checkpoint).get("capture", {}).get("precision", "fp32")
            if recorded != self.options.precision:
                raise RunError(f"{self.writer.path}: {self.name}/{checkpoint} was traced under {recorded}, not "
                               f"{self.options.precision}; repeat it with --precision {recorded}, or trace into "
                               "another --store (or --name)")
            written = self.writer.written(self.name, checkpoint)
            # The batches one process forms over every row; a shard takes every n-th of them, less what is written.
            # So each utterance is captured in the batch one process would put it in, and the store holds the same
            # bits however many shards wrote it (batched matrix products differ in the last bits with the batch).
            mine = [[r for r in batch if not written[r]] for i, batch in enumerate(self.batches(rows)) if i % n == k]
            mine = [batch for batch in mine if batch]
            if not mine:
                continue
            bar = tqdm(total=sum(map(len, mine)), desc=f"{self.name}/{checkpoint}", unit="utt")
            # The store writes batches on its own thread or processes while the device captures the next ones; a
            # bounded number in flight bounds the memory, and leaving the block waits for them, so an interrupt
            # keeps what was captured.
            with self._writers() as pool, prefetched(mine, lambda batch: [
                    load_audio(path_of_row[r], long=self.config.long) for r in batch]) as audio_of:
                in_flight: deque[Future] = deque()
                models, capturer, extractor = FoldModels(self.run, checkpoint, self.device), None, None
                model_fold = None
                for batch, audio in zip(mine, audio_of, strict=True):
                    fold = fold_of_row[batch[0]]
                    if fold != model_fold:  # batches come fold by fold: the same module, that fold's weights in
                        model, model_fold = models.load(fold), fold
                    if capturer is None:  # so its capturer and extractor serve every fold
                        capturer = Capturer(model, self.config.window, self.options)
                        extractor = feature_extractor(windowing.whisper_of(model).config)
                    features = windowing.extract(extractor, audio, self.config.window, device=self.device)
                    labels = torch.tensor([label_of[emotion[r]] for r in batch], device=self.device)
                    captured = []
                    for r, arrays in zip(batch, capturer.run(features, labels), strict=True):
                        arrays["fold"] = np.int16(fold)
                        if not self.options.keeps_frames(ids[r]):
                            arrays = {k: v for k, v in arrays.items() if k not in SAMPLED}
                        captured.append(arrays)
                    while len(in_flight) >= max(1, self.writers):
                        done += _settle(in_flight.popleft(), bar)
                    in_flight.append(self._submit(pool, checkpoint, batch, captured))
                while in_flight:
                    done += _settle(in_flight.popleft(), bar)
            bar.close()
        if done:
            seconds = time.perf_counter() - started
            log.info("%s: captured and wrote %d utterance-checkpoints in %.1f s (%.1f a second; models loaded "
                     "per fold included)", self.name, done, seconds, done / seconds)
        return done

    def batches(self, rows: list[int]) -> list[list[int]]:
        """``rows`` (the selected utterances' table rows) in capture batches: by fold, in order, ``batch_size`` each.

        Shard ``k`` of ``n`` captures the batches ``k, k + n, ...`` of this list.
        """
        fold_of_row = {row: fold for row, (_, fold) in zip(rows, self.items, strict=True)}
        out = []
        for fold in sorted(set(fold_of_row.values())):
            fold_rows = [r for r in rows if fold_of_row[r] == fold]
            out += [fold_rows[i: i + self.batch_size] for i in range(0, len(fold_rows), self.batch_size)]
        return out

    def _writers(self) -> Executor:
        """Where batches are written: a thread of this process (``writers`` 0), or that many processes."""
        if self.writers == 0:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        return ProcessPoolExecutor(self.writers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=open_worker, initargs=(self.writer.path, self.storage_options))

    def _submit(self, pool: Executor, checkpoint: str, rows: list[int], arrays: list[dict]) -> Future:
        if self.writers == 0:
            return pool.submit(self._write, checkpoint, rows, arrays)
        return pool.submit(write_in_worker, self.name, checkpoint, rows, arrays)

    def _write(self, checkpoint: str, rows: list[int], arrays: list[dict]) -> int:
        self.writer.write_rows(self.name, checkpoint, rows, arrays)
        return len(rows)

    def commit(self, rows: list[int], maps: tuple[str, ...] | None = ("umap", "tsne")) -> dict[str, bool]:
        """Mark the run's checkpoints complete when every selected row is written; record the agreement.

        A LoRA run's intruder dimensions (``precompute.intruders``) are recorded once every checkpoint is complete.
        Then summarise it (``analysis.summary``, fitting ``maps`` at every layer; None: leave that to ``loralens
        summarise``), and renew the summaries of the runs compared with it.
        """
        state = self.writer.commit(self.name, rows)
        for checkpoint, complete in state.items():
            if not complete:
                log.warning("%s/%s is not complete yet: capture the remaining shards, then commit",
                            self.name, checkpoint)
        if state.get("trained"):
            agreement = self.agreement(rows)
            self.writer.group(self.name, "trained").attrs.update({"prediction_agreement": agreement})
            if agreement["n_compared"]:
                log.info("%s: the store predicts as training's predictions.csv for %d of %d utterances (%.1f %%; "
                         "trace %s, training %s)%s", self.name, agreement["n_agree"], agreement["n_compared"],
                         100 * agreement["rate"], agreement["trace_precision"], agreement["train_precision"],
                         f"; differing: {', '.join(agreement['differing'])}" if agreement["differing"] else "")
            else:
                log.warning("%s: no traced utterance is in the run's predictions.csv files to compare with",
                            self.name)
        if self.config.method == "lora" and all(state.values()) and ATTR not in self.writer.attrs(self.name):
            # From the weights alone, once: the dynamics page and the report read it from the store.
            record(self.writer, self.name, self.run, run_intruders(self.run, device=self.device))
        if maps is not None and all(state.values()):
            from loralens.analysis.summary import summarise  # pandas, joblib: only where a run summarises

            # this run, and the runs whose summaries compared with it
            summarise(self.writer.path, None, maps, storage_options=self.storage_options)
        return state

    def agreement(self, rows: list[int]) -> dict:
        """How many traced utterances the store predicts as training did (each fold's ``predictions.csv``).

        Returns:
            ``rate`` (None when nothing could be compared), ``n_agree``, ``n_compared``, ``differing`` (up to ten
            store ids), ``trace_precision`` and ``train_precision``.
        """
        stored = self.writer.read(self.name, "trained", "prediction", rows)
        trained: dict[tuple[int, str], str] = {}
        for fold in sorted({fold for _, fold in self.items}):
            with open(self.run / f"fold_{fold:02d}" / "predictions.csv", newline="") as f:
                trained |= {(fold, r["id"]): r["predicted"] for r in csv.DictReader(f)}
        agree, compared, differing = 0, 0, []
        for (u, fold), predicted in zip(self.items, stored, strict=True):
            expected = trained.get((fold, u.id))
            if expected is None:
                continue
            compared += 1
            if self.config.emotions[int(predicted)] == expected:
                agree += 1
            elif len(differing) < 10:
                differing.append(store_id(u))
        return {"rate": agree / compared if compared else None, "n_agree": agree, "n_compared": compared,
                "differing": differing, "trace_precision": self.options.precision,
                "train_precision": self.train_precision}


@dataclass
class ShardJob:
    """One shard of a trace: the unit of work of ``loralens trace --ray`` (picklable, to travel to a Ray worker).

    Every field is a ``Tracer`` argument but ``shard``.
    """

    run: Path
    """The run directory (absolute: a worker's current directory is not the driver's)."""
    data: str
    """The ``--data`` SPEC the run is traced from."""
    store: str
    """The store's path or URL."""
    name: str
    """The run's name in the store."""
    selection: Selection
    """Which utterances (the same in every shard: the shard picks rows among them)."""
    options: CaptureOptions
    """What to capture, in which numeric regime."""
    batch_size: int
    """Utterances per captured batch."""
    device: str
    """Where the worker captures (``auto``: the GPU Ray gave the task, if any)."""
    shard: tuple[int, int]
    """``(k, n)``: this job captures the unwritten rows of batches k, k + n, ... (see ``Tracer.batches``)."""
    writers: int | None = None
    """Writer processes of the worker (see ``Tracer``)."""
    storage_options: dict | None = None
    """fsspec options of ``store``."""

    def __str__(self) -> str:
        return f"{self.name} shard {self.shard[0]}/{self.shard[1]}"


def capture_shard(job: ShardJob) -> int:
    """Capture one shard of a prepared store (``loralens trace --shard K/N``); return the rows it wrote.

    A row already marked written is skipped, so a shard run again after its worker died writes only what is
    missing, and no two shards share a row.
    """
    tracer = Tracer(job.run, job.data, job.store, name=job.name, selection=job.selection, options=job.options,
                    batch_size=job.batch_size, device=job.device, storage_options=job.storage_options,
                    precision=job.options.precision, writers=job.writers)
    return tracer.capture(tracer.rows(), job.shard)

