"""``loralens demo``: build (once) an offline demo store in the user cache, then open the explorer on it."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loralens.precompute import real_speech
from loralens.precompute.config import DEFAULT_EPOCHS, TrainConfig, completed_folds
from loralens.precompute.models import cache_dir
from loralens.precompute.synth import CORPUS_VERSION, synthesise
from loralens.precompute.trace import Selection, Tracer
from loralens.precompute.train import train
from loralens.store.reader import StoreReader
from loralens.store.schema import INTERVENTION_VERSION, SCHEMA_VERSION
from loralens.store.validate import validate

log = logging.getLogger(__name__)


@dataclass
class DemoPlan:
    """What the demo builds; the defaults keep a first build on 2 CPU cores within 15 minutes."""

    data: str | None = None
    """``--data SPEC``; None synthesises the offline corpus."""
    model: str = "bundled:base"
    """The Whisper checkpoint."""
    ranks: tuple[int, ...] = (32,)
    """LoRA ranks to train (each is a run; the frozen baseline is always added)."""
    folds: str = "2"
    """Speaker-grouped folds (each utterance is traced by the fold that held it out)."""
    epochs: int = 4
    """LoRA's training epochs per fold: brief, as befits a demo (training loss 0.06-0.26 by then, 0.02 at 6)."""
    frozen_epochs: int = DEFAULT_EPOCHS["frozen"]
    """The frozen baseline's: as many as a real run's, so the demo does not flatter LoRA (they cost seconds)."""
    per_class: int = 20
    """Utterances traced per emotion (the paper traces 25; 20 keeps the first build, the real-speech model's trace
    included, within its budget)."""
    corpus: int = CORPUS_VERSION
    """The synthetic corpus's version (part of the key: a new corpus builds a new demo)."""

    def key(self) -> str:
        """A directory name that changes whenever the plan does."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{'synthetic' if self.data is None else self.data.split(':', 1)[0]}-{digest}"


def demo_dir(plan: DemoPlan) -> Path:
    """Where the plan's demo lives."""
    return cache_dir() / "demo" / plan.key()


def build(plan: DemoPlan, rebuild: bool = False) -> str:
    """Build the demo store (resuming an interrupted build); return its path."""
    root = demo_dir(plan)
    # Runs are kept across loralens versions; the store is re-traced when its schema changes.
    store = root / f"store-v{SCHEMA_VERSION}.zarr"
    ready = root / f"READY-v{SCHEMA_VERSION}"
    if rebuild and root.exists():
        shutil.rmtree(root)
    if ready.is_file():
        _remove_stale(root, store, ready)
        _intervene(root, store)  # a demo built before the causal lens gains it (once)
        if not real_speech_traced(root, store).is_file():  # a demo built before the real-speech model gains it
            _real_speech(root, store, json.loads(ready.read_text()).get("data") or _corpus_spec(root, plan))
        return str(store)
    started = time.time()
    root.mkdir(parents=True, exist_ok=True)
    data = plan.data
    if data is None:
        log.info("step 1/6: synthesising the offline corpus (espeak-ng)")
        data = _corpus_spec(root, plan)
    common = {"model": plan.model, "data": data, "folds": plan.folds, "batch_size": 8, "alpha_per_rank": 2.0}
    runs = []
    for rank in plan.ranks:
        log.info("step 2/6: training LoRA r=%d (%s, %s folds, %d epochs)", rank, plan.model, plan.folds,
                 plan.epochs)
        runs.append(root / "runs" / f"lora-r{rank}")
        train(_config(common, method="lora", rank=rank, epochs=plan.epochs), runs[-1])
    log.info("step 3/6: training the frozen-encoder baseline (%d epochs)", plan.frozen_epochs)
    runs.append(root / "runs" / "frozen")
    train(_config(common, method="frozen", rank=plan.ranks[0], epochs=plan.frozen_epochs), runs[-1])
    log.info("step 4/6: tracing %d utterances per emotion into %s", plan.per_class, store)
    for run in runs:
        tracer = Tracer(run, data, str(store), selection=Selection(per_class=plan.per_class))
        rows = tracer.prepare()
        tracer.capture(rows)
        tracer.commit(rows)
    _intervene(root, store)
    _real_speech(root, store, data)
    report = validate(str(store))
    if not report.ok:
        raise RuntimeError(f"the demo store {store} did not validate: {report.problems[:3]}")
    ready.write_text(json.dumps({"plan": asdict(plan), "data": data, "seconds": round(time.time() - started)}) + "\n")
    _remove_stale(root, store, ready)
    log.info("demo built in %.0f s: %s", time.time() - started, store)
    return str(store)


DEMO_STRENGTHS = {"pitch": (-4.0, 4.0), "tempo": (0.8, 1.25), "loudness": (-20.0, 10.0), "noise": (20.0, 0.0),
                  "bandlimit": (3400.0, 1000.0)}
"""The demo's audio changes at two strengths each (pitch and tempo one down and one up, the others a mild and a strong
one): the full grids (three or four each) would take the demo over its time budget; ``loralens intervene``
adds the rest to the store when asked."""


def intervened(root: Path, store: Path) -> Path:
    """The mark a demo's interventions are done (for this store and this version of the interventions group)."""
    return root / f"INTERVENED-v{INTERVENTION_VERSION}-{store.name}"


def _intervene(root: Path, store: Path) -> None:
    """Step 5: the causal lens on every run, LoRA and frozen patched from each other (``loralens intervene``)."""
    from loralens.precompute import intervene  # torch and peft: loaded only here

    mark = intervened(root, store)
    if mark.is_file():
        return
    # The trained runs: the real-speech model is traced for Upload and exploration, not put under interventions
    # here (they would cost the first build a minute; loralens intervene adds them).
    runs = sorted(r for r in (root / "runs").iterdir() if r.name != real_speech.RUN_NAME)
    frozen = root / "runs" / "frozen"
    lora = [r for r in runs if r != frozen]
    log.info("step 5/6: interventions (LoRA per layer, erasure, patching, audio changes) on %d runs", len(runs))
    for run in runs:
        intervene.run(run, str(store), partner=lora[0] if run == frozen else frozen, strengths=DEMO_STRENGTHS)
    mark.write_text(json.dumps({"runs": [r.name for r in runs]}) + "\n")


def _corpus_spec(root: Path, plan: DemoPlan) -> str:
    """The demo's ``--data`` spec: the plan's, else the offline corpus (synthesised once)."""
    return plan.data or f"synthetic:{synthesise(root / 'corpus').parent}"


def real_speech_run(root: Path) -> Path:
    """The demo's run of the real-speech model (``precompute.real_speech``)."""
    return root / "runs" / real_speech.RUN_NAME


def default_run() -> Path:
    """The default demo's real-speech run, which ``loralens predict`` uses unless given a run.

    Made on first use: the offline corpus and the import, not the whole demo.
    """
    plan = DemoPlan()
    root = demo_dir(plan)
    run = real_speech_run(root)
    if not completed_folds(run):
        real_speech.make_run(run, _corpus_spec(root, plan))
    return run


def real_speech_traced(root: Path, store: Path) -> Path:
    """The mark that the real-speech model is traced into ``store``."""
    return root / f"REAL-SPEECH-{store.name}"


def _real_speech(root: Path, store: Path, data: str) -> None:
    """Step 6: the shipped real-speech model, imported over the demo's data and traced beside the trained runs."""
    mark = real_speech_traced(root, store)
    if mark.is_file():
        return
    run = real_speech_run(root)
    reader = StoreReader(str(store))
    log.info("step 6/6: the real-speech model (EmoDB-trained LoRA, shipped with loralens): import and trace")
    real_speech.make_run(run, data)
    ids = root / "real-speech-utterances.txt"  # the utterances the trained runs traced: the pages compare like
    ids.write_text("\n".join(reader.utterances()["id"].tolist()) + "\n")
    tracer = Tracer(run, data, str(store), selection=Selection(utterances=ids))
    rows = tracer.prepare()
    tracer.capture(rows)
    tracer.commit(rows)
    mark.write_text(json.dumps({"run": str(run)}) + "\n")


def _remove_stale(root: Path, store: Path, ready: Path) -> None:
    """Delete the stores (and their marks) of earlier schema versions, once this version's is ready."""
    for stale in [*root.glob("store*.zarr"), *root.glob("READY*"), *root.glob("INTERVENED*"),
                  *root.glob("REAL-SPEECH*")]:
        if stale not in (store, ready, intervened(root, store), real_speech_traced(root, store)):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def _config(common: dict, method: str, rank: int, epochs: int) -> TrainConfig:
    fields = {k: v for k, v in common.items() if k != "alpha_per_rank"}
    return TrainConfig(**fields, method=method, rank=rank, alpha=common["alpha_per_rank"] * rank, epochs=epochs)
