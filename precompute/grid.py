"""``loralens grid``: every model x method x rank x seed x window of a spec file, one job per fold.

A grid writes the run directories ``loralens train`` writes (``OUT/<model>-<method>-<window>[-r<rank>]-seed<seed>``,
``<method>`` one of ``GRID_METHODS``; one ``fold_KK`` per fold) and ``OUT/grid.json`` (the resolved spec, with the
library versions). The unit of work is ``train_fold``, one fold of one run, through ``train.train(..., only=[fold])``:
an executor (``loralens.precompute.executors``) runs the jobs here one after the other, or as Ray tasks. Rerunning the
command submits only the folds not yet complete, and a fold cut short resumes after its last finished epoch.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from loralens.precompute.config import (
    WINDOWS,
    RunError,
    TrainConfig,
    Window,
    completed_folds,
    library_versions,
    read_config,
)
from loralens.precompute.data import absolute_spec
from loralens.precompute.executors import Executor, Outcome, describe
from loralens.precompute.files import write_atomic
from loralens.store.schema import UserError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

GRID_FIELDS = ("model", "data", "method", "freeze_a", "rank", "alpha", "seed", "window", "folds")
"""The ``TrainConfig`` fields a grid sets itself; ``train`` may not set them."""
GridMethod = Literal["lora", "lora-freeze-a", "frozen"]
"""A grid's methods: ``loralens train --method lora``, the same with ``--freeze-a``, and ``--method frozen``."""
GRID_METHODS: tuple[GridMethod, ...] = ("lora", "lora-freeze-a", "frozen")


@dataclass
class GridSpec:
    """What a grid trains: every model x method x rank x seed x window, on one data set and fold scheme."""

    models: list[str]
    """``--model`` SPECs (``bundled:tiny.en``, ``random:large-v3?layers=2``, a HF id or directory, ``ct2:DIR``)."""
    data: str
    """The ``--data`` SPEC (``emodb:DIR``, ``csv:FILE``, ...); a relative path is taken from the current directory."""
    methods: list[GridMethod] = field(default_factory=lambda: ["lora"])
    """Any of ``lora``, ``lora-freeze-a`` (LoRA with every A kept at its random initialisation, ``loralens train
    --freeze-a``: the run beside ``lora`` that asks whether A matters) and ``frozen``; a frozen run has no rank, so it
    is trained once per model, seed and window. The method names the run's directory."""
    ranks: list[int] = field(default_factory=lambda: [32])
    """LoRA ranks, one run each."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds, one run each (fold k of a run is seeded with seed + k, as in ``loralens train``)."""
    folds: str = "loso"
    """``loso``, an integer K (grouped by speaker) or ``split``, as ``loralens train --folds``."""
    windows: list[Window] = field(default_factory=lambda: ["trim"])
    """``trim`` and/or ``full``, one run each."""
    alpha_per_rank: float | None = 2.0
    """LoRA alpha as a multiple of the rank (2.0: alpha 64 at r=32, as the README's runs); None takes
    ``train["alpha"]``, else ``TrainConfig``'s default, for every rank."""
    train: dict[str, Any] = field(default_factory=dict)
    """Every other ``loralens train`` setting, by ``TrainConfig`` field name (``epochs``, ``targets``, ``batch_size``,
    ``schedule``, ``precision``, ...); the same for every run."""

    def __post_init__(self):
        for name in ("models", "methods", "ranks", "seeds", "windows"):
            values = getattr(self, name)
            if not isinstance(values, list) or not values:
                raise UserError(f"{name}={values!r}; expected a non-empty list")
            if len(set(map(str, values))) < len(values):
                raise UserError(f"{name}={values!r}; expected distinct values")
        if bad := [m for m in self.methods if m not in GRID_METHODS]:
            raise UserError(f"methods={bad}; expected any of {', '.join(map(repr, GRID_METHODS))}")
        if bad := [w for w in self.windows if w not in WINDOWS]:
            raise UserError(f"windows={bad}; expected any of {WINDOWS}")
        if bad := [r for r in self.ranks if not isinstance(r, int) or r < 1]:
            raise UserError(f"ranks={bad}; expected positive integers")
        if bad := [s for s in self.seeds if not isinstance(s, int) or s < 0]:
            raise UserError(f"seeds={bad}; expected integers >= 0")
        if self.alpha_per_rank is not None and self.alpha_per_rank <= 0:
            raise UserError(f"alpha_per_rank={self.alpha_per_rank}; expected a positive number, or none")
        known = {f.name for f in fields(TrainConfig)}
        if owned := sorted(set(self.train) & set(GRID_FIELDS)):
            raise UserError(f"train sets {owned}, which the grid sets itself; use the grid's models, data, methods "
                             "(lora-freeze-a for freeze_a), ranks, seeds, windows, folds and alpha_per_rank")
        if unknown := sorted(set(self.train) - known):
            raise UserError(f"train has unknown settings {unknown}; expected TrainConfig fields: "
                             f"{', '.join(sorted(known - set(GRID_FIELDS)))}")
        if self.alpha_per_rank is not None and "alpha" in self.train:
            raise UserError(f"train sets alpha={self.train['alpha']} while alpha_per_rank={self.alpha_per_rank}; set "
                             "alpha_per_rank = \"none\" to give every rank that alpha")
        names = [run.name for run in self.runs()]  # builds every TrainConfig: a bad setting fails here
        if len(set(names)) < len(names):
            raise UserError(f"models={self.models}: two models would share a run directory name; give them "
                             "distinct final path components")

    def runs(self) -> list[GridRun]:
        """Every run of the grid, in a fixed order (frozen runs once per model, seed and window)."""
        out = []
        for model in self.models:
            for window in self.windows:
                for method in self.methods:
                    lora = method != "frozen"
                    for rank in self.ranks if lora else self.ranks[:1]:
                        for seed in self.seeds:
                            settings = {**self.train, "model": model, "data": self.data,
                                        "method": "lora" if lora else "frozen", "freeze_a": method == "lora-freeze-a",
                                        "rank": rank, "seed": seed, "window": window, "folds": self.folds}
                            if self.alpha_per_rank is not None:
                                settings["alpha"] = self.alpha_per_rank * rank
                            rank_part = f"-r{rank}" if lora else ""
                            out.append(GridRun(f"{model_slug(model)}-{method}-{window}{rank_part}-seed{seed}",
                                               TrainConfig(**settings)))
        return out

    def to_json(self) -> dict:
        """The spec as a JSON-able dict, with the library versions that ran it."""
        return {**asdict(self), "versions": library_versions()}


@dataclass
class GridRun:
    """One run directory of a grid."""

    name: str
    """Its directory name under the grid's ``--out``."""
    config: TrainConfig
    """What ``loralens train`` would be asked to do."""


@dataclass
class FoldJob:
    """One fold of one run: the grid's unit of work (picklable, to travel to a Ray worker)."""

    run: Path
    """The run directory (absolute: a worker's current directory is not the driver's)."""
    config: TrainConfig
    """The run's configuration."""
    fold: int
    """The fold to train."""

    def __str__(self) -> str:
        return f"{self.run.name}/fold_{self.fold:02d}"


@dataclass
class GridResult:
    """What one ``loralens grid`` command did."""

    n_folds: int
    """Folds in the grid."""
    skipped: list[str] = field(default_factory=list)
    """Folds complete before the command started (``run/fold_KK``), left as they were."""
    trained: list[dict] = field(default_factory=list)
    """Folds trained now, with the fold's UAR and WAR, its seconds, and the host and process that trained it."""
    failed: list[str] = field(default_factory=list)
    """Folds whose job failed, with why; rerunning the command resumes them."""

    @property
    def complete(self) -> bool:
        """Whether every fold of the grid is complete."""
        return not self.failed and len(self.skipped) + len(self.trained) == self.n_folds


def model_slug(spec: str) -> str:
    """A directory-safe short name of a model SPEC.

    ``bundled:tiny.en`` -> ``tiny.en``, ``random:base?layers=2`` -> ``base-layers-2``, ``openai/whisper-small`` ->
    ``whisper-small``, ``./models/mine`` -> ``mine``.
    """
    rest = spec.partition(":")[2] if ":" in spec and not Path(spec).exists() else spec
    tail = rest.rstrip("/").rsplit("/", 1)[-1].replace("?", "-").replace("&", "-").replace("=", "-")
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in tail) or "model"


def load_spec(path: Path) -> GridSpec:
    """Read a grid spec from a TOML or JSON file; errors name the file and the fix.

    Relative paths in ``data`` and in local ``models`` are made absolute (from the current directory), so workers
    on other processes or nodes find them.
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the grid spec ({e})") from e
    try:
        raw = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        kind = "JSON" if Path(path).suffix == ".json" else "TOML (name it .json for JSON)"
        raise UserError(f"{path}: not valid {kind}: {e}") from e
    raw.pop("versions", None)  # a saved grid.json can be run again as it is
    known = {f.name for f in fields(GridSpec)}
    if unknown := sorted(set(raw) - known):
        raise UserError(f"{path}: unknown key(s) {unknown}; expected {', '.join(sorted(known))}")
    if missing := [f.name for f in fields(GridSpec) if f.name in ("models", "data") and f.name not in raw]:
        raise UserError(f"{path}: missing {missing}; a grid needs at least models = [...] and data = \"...\"")
    if raw.get("alpha_per_rank", 2.0) == "none":  # TOML has no null
        raw["alpha_per_rank"] = None
    try:
        spec = GridSpec(**raw)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {e}") from e
    spec.data = absolute_spec(spec.data)
    spec.models = [_absolute_model(m) for m in spec.models]
    return spec


def _absolute_model(spec: str) -> str:
    """A local model's path made absolute (``./model`` -> ``/abs/model``, ``ct2:../m`` -> ``ct2:/abs/m``)."""
    scheme, sep, rest = spec.partition(":")
    if sep and scheme == "ct2":
        return absolute_spec(spec)
    return os.path.abspath(spec) if Path(spec).exists() else spec


def plan(spec: GridSpec, out: Path, spec_path: Path | None = None,
         only: list[int] | None = None) -> tuple[list[FoldJob], list[str]]:
    """The grid's fold jobs still to train, and the folds already complete; creates the run directories.

    ``only``: fold indices to train now (None: all), as ``loralens train --only-folds``; the others are left out of
    both lists.

    Raises:
        RunError: a run directory holds a run of another configuration, or a fold of ``only`` it does not have.
    """
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "grid.json", json.dumps(spec.to_json(), indent=2, sort_keys=True) + "\n")
    corpora: dict[tuple, Any] = {}
    jobs, done = [], []
    for run in spec.runs():
        run_jobs, run_done = fold_jobs(out / run.name, run.config, only, spec_path, corpora)
        jobs += run_jobs
        done += run_done
    return jobs, done


def fold_jobs(path: Path, config: TrainConfig, only: list[int] | None = None, spec_path: Path | None = None,
              corpora: dict[tuple, Any] | None = None) -> tuple[list[FoldJob], list[str]]:
    """One run's fold jobs still to train, and its folds already complete; creates the run directory.

    ``corpora``: corpora read so far, by data spec and classes (filled here), so a grid reads each once.

    Raises:
        RunError: ``path`` holds a run of another configuration, or has no fold of ``only``.
    """
    from loralens.precompute.data import load_corpus
    from loralens.precompute.folds import make_folds

    path = path.resolve()
    corpora = {} if corpora is None else corpora
    n_folds = _existing_folds(path, config, spec_path)
    if n_folds is None:
        key = (config.data, tuple(config.emotions) if config.emotions else None, config.merge_excitement)
        if key not in corpora:
            corpora[key] = load_corpus(config.data, key[1], merge_excitement=config.merge_excitement)
        n_folds = len(make_folds(corpora[key], config.folds, inner_validation=config.epoch_selection == "inner",
                                 seed=config.seed))
    if only is not None and (unknown := sorted(set(only) - set(range(n_folds)))):
        raise RunError(f"--only-folds {unknown}: {path.name} has folds 0..{n_folds - 1}")
    path.mkdir(parents=True, exist_ok=True)  # before any job: no job of a run removes the directory another works in
    wanted = [k for k in range(n_folds) if only is None or k in only]
    finished = set(completed_folds(path))
    return ([FoldJob(path, config, k) for k in wanted if k not in finished],
            [f"{path.name}/fold_{k:02d}" for k in wanted if k in finished])


def _existing_folds(path: Path, config: TrainConfig, spec_path: Path | None) -> int | None:
    """A run directory's fold count (None where it has none yet); refuses one that holds another configuration."""
    if not (path / "config.json").is_file():
        return None
    previous = read_config(path)
    mine = TrainConfig.from_json(asdict(config))
    if mine.precision == "auto":  # resolved by the run's first fold, on its device
        mine.precision = previous.precision
    if diff := mine.differences(previous):
        where = f"the grid spec {spec_path}" if spec_path else "the grid spec"
        raise RunError(f"{path} holds a run of another configuration than {where} asks ({'; '.join(diff)}); "
                       "use a new --out, or the spec that made it")
    if not (path / "folds.json").is_file():
        return None
    return len(json.loads((path / "folds.json").read_text())["folds"])


def train_fold(job: FoldJob) -> dict:
    """Train one fold of one run (``loralens train --only-folds K``): the unit of work of a grid.

    A fold already complete is left as it is; one cut short resumes after its last finished epoch.

    Returns:
        The fold's ``uar``, ``war``, ``macro_f1`` (None for a fold scored before it) and ``seconds``, the ``host``
        and ``pid`` that trained it, and its ``setup_seconds``: the fold's own (``Trainer.train_fold``) and
        ``imports``, the seconds this job took to import the trainer (torch, transformers, peft: the first job of a
        worker process only).
    """
    started = time.time()
    from loralens.precompute.train import train

    imports = round(time.time() - started, 3)
    train(job.config, job.run, only=[job.fold])
    metrics = json.loads((job.run / f"fold_{job.fold:02d}" / "metrics.json").read_text())
    return {"fold": str(job), "uar": metrics["uar"], "war": metrics["war"], "macro_f1": metrics.get("macro_f1"),
            "seconds": metrics["seconds"],
            "host": socket.gethostname(), "pid": os.getpid(),
            "setup_seconds": {"imports": imports, **metrics.get("setup_seconds", {})}}


def run_grid(spec: GridSpec, out: Path, executor: Executor, spec_path: Path | None = None,
             only: list[int] | None = None) -> GridResult:
    """Train every fold of ``spec`` not yet complete under ``out`` through ``executor``; collect each run's metrics.

    Args:
        spec: the grid.
        out: the directory of its run directories (and ``grid.json``).
        executor: where the folds train (``LocalExecutor``, ``RayExecutor``).
        spec_path: the spec's file, named in errors.
        only: fold indices to train now (None: all); the same command without it trains the rest later.
    """
    jobs, done = plan(spec, out, spec_path, only)
    return run_jobs(jobs, done, executor, out)


def run_jobs(jobs: list[FoldJob], done: list[str], executor: Executor, out: Path) -> GridResult:
    """Train ``jobs`` through ``executor`` (``done``: the folds complete before); collect each run's metrics.

    The loop of ``loralens grid`` and of ``loralens train --jobs N``; ``out`` names where in the log.
    """
    result = GridResult(n_folds=len(jobs) + len(done), skipped=done)
    if done:
        log.info("%s: %d of %d folds already complete", out, len(done), result.n_folds)
    outcome: Outcome
    for outcome in executor.map(train_fold, jobs, desc="folds"):
        if outcome.ok:
            result.trained.append(outcome.result)
            log.info("%s: UAR %.3f, WAR %.3f in %.0f s (%s, pid %d)", outcome.job, outcome.result["uar"],
                     outcome.result["war"], outcome.result["seconds"], outcome.result["host"], outcome.result["pid"])
        else:
            result.failed.append(f"{outcome.job}: {describe(outcome.error)}")
    from loralens.precompute.folds import write_run_metrics

    for run in sorted({job.run for job in jobs}):
        if (run / "folds.json").is_file():  # every run's metrics.json holds all its folds, whichever job ended last
            write_run_metrics(run)
    if setup := setup_medians(result.trained):
        log.info("%s: start-up of a fold, median over the %d trained: %s", out, len(result.trained), setup)
    return result


def setup_medians(trained: list[dict]) -> str:
    """The median of each part of the trained folds' ``setup_seconds`` (see ``train_fold``), as text ("" if none)."""
    parts: dict[str, list[float]] = {}
    for fold in trained:
        for name, seconds in fold.get("setup_seconds", {}).items():
            if seconds is not None:
                parts.setdefault(name, []).append(seconds)
    return ", ".join(f"{name.replace('_', ' ')} {statistics.median(values):.1f} s" for name, values in parts.items())
