"""Where units of work run: one after the other in this process, in processes of this machine, or on Ray.

``loralens grid`` trains folds and ``loralens trace --ray`` captures shards through the same seam: a unit of work
is a module-level function of one picklable job (``precompute.grid.train_fold``, ``precompute.trace.capture_shard``),
and an executor maps it over the jobs, yielding each job's outcome as it finishes. The local executor and the Ray
executor run the very same function, so the two paths cannot drift; another scheduler (SLURM arrays, say) would be
one more class with a ``map``. ``ProcessExecutor`` runs jobs at once in processes of this machine, sharing its cores
and its GPU: a training step of a small model is bound by the host's Python, so several folds at once keep one GPU
busy (figures in docs/benchmarks.md).

Ray is imported only by ``RayExecutor`` (the ``cluster`` extra); the package imports without it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from tqdm.auto import tqdm

from loralens.store.schema import UserError

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class Outcome(Generic[J, R]):
    """What became of one job: its result, or the error that ended it."""

    job: J
    """The job as it was submitted."""
    result: R | None = None
    """The unit of work's return value (None when it failed)."""
    error: BaseException | None = None
    """Why it failed (a crashed Ray worker, an exception of the unit of work), or None."""

    @property
    def ok(self) -> bool:
        """Whether the job finished."""
        return self.error is None


class Executor(Protocol):
    """Runs a unit of work over jobs; yields each job's outcome as it finishes (in any order)."""

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], desc: str) -> Iterator[Outcome[J, R]]:
        """Run ``fn(job)`` for every job; a failed job is reported in its outcome and the others go on."""
        ...


class LocalExecutor:
    """One job after the other, in this process (the path of ``loralens train`` and of a trace without Ray)."""

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], desc: str) -> Iterator[Outcome[J, R]]:
        """Run ``fn`` over ``jobs`` in order; an ``Exception`` ends its job only (Ctrl+C ends them all)."""
        for job in tqdm(jobs, desc=desc, unit="job"):
            try:
                yield Outcome(job, result=fn(job))
            except Exception as e:  # reported with the job; the caller names it and what to do
                log.error("%s: %s", job, describe(e))
                yield Outcome(job, error=e)


@dataclass
class ProcessExecutor:
    """Jobs at once in ``workers`` processes of this machine (spawned, so that none inherits a CUDA context).

    Each worker process runs job after job, with the machine's cores shared out (``OMP_NUM_THREADS``) and tqdm bars
    off; every job uses the device its own settings name, so on one GPU the workers share it (mind its memory: each
    holds its own model). A worker that dies (killed, out of memory) fails the jobs it held and the ones still
    queued; rerunning the command resumes them.
    """

    workers: int
    """Processes at once (at most one per job)."""

    def __post_init__(self):
        if self.workers < 1:
            raise UserError(f"workers={self.workers}; expected a positive number")

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], desc: str) -> Iterator[Outcome[J, R]]:
        """Submit every job to the pool, then yield outcomes as they finish; Ctrl+C cancels the queued ones."""
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if not jobs:
            return
        workers = min(self.workers, len(jobs))
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        # Workers read these when they start (torch its threads, tqdm its defaults); the pool spawns them on submit.
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TQDM_DISABLE": "1"}
        log.info("%s: %d job(s) in %d processes, %s threads each", desc, len(jobs), workers, threads)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        progress = _Progress(len(jobs), desc)
        try:
            with _environment(env):
                pending = {pool.submit(in_worker, fn, job): job for job in jobs}
            for future in as_completed(pending):
                try:
                    outcome = progress.ok(pending[future], future.result())
                except Exception as e:  # the job raised, or its worker died (BrokenProcessPool)
                    outcome = progress.failed(pending[future], e)
                yield outcome
        finally:  # Ctrl+C, or a consumer that stopped early: queued jobs never start, running ones are waited for
            pool.shutdown(wait=True, cancel_futures=True)
            progress.close()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, as processes started meanwhile inherit it; restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def in_worker(fn: Callable[[J], R], job: J) -> R:
    """``fn(job)`` in a worker (Ray's, or ``ProcessExecutor``'s), which first shows warnings as ``loralens`` does.

    Its warnings reach the driver's terminal (Ray prefixes them with the task and pid); INFO lines go to each run's
    own log, and tqdm bars stay off (``TQDM_DISABLE``): the driver logs each job as it ends and shows the progress of
    all.
    """
    import warnings

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)  # (train.train sets precompute's loggers to INFO for its run's log file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    return fn(job)


@dataclass
class RayExecutor:
    """Each job a Ray task with its own resources, on the cluster at ``address`` (or a local one started here).

    A task sees only the GPUs it asked for (Ray sets ``CUDA_VISIBLE_DEVICES``), so a unit of work picks its device
    inside the task (``auto``); nothing here touches CUDA before the workers start.
    """

    address: str | None = None
    """A running cluster (``auto``, ``ray://host:10001``, ``host:6379``); None: the one this process already joined,
    else ``RAY_ADDRESS``, else a local cluster on this machine's cores and GPUs."""
    num_cpus: float = 1
    """CPU cores each task holds."""
    num_gpus: float | None = None
    """GPUs each task holds; None: 1 where the cluster has GPUs, 0 on a CPU-only cluster."""
    max_retries: int = 1
    """Times Ray runs a task again when its worker process or node dies (its finished work is kept, see the
    units of work); 0: a dead worker fails its job, and rerunning the command resumes it."""

    def __post_init__(self):
        if self.num_cpus < 0 or (self.num_gpus is not None and self.num_gpus < 0):
            raise UserError(f"num_cpus={self.num_cpus}, num_gpus={self.num_gpus}; expected numbers >= 0")
        if self.max_retries < 0:
            raise UserError(f"max_retries={self.max_retries}; expected 0 or more")

    def _connect(self):
        try:
            import ray
        except ImportError as e:
            raise UserError("Ray is not installed: pip install -e \".[cluster]\" (or pip install 'ray[default]'), "
                               "or run without --ray") from e
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            # A local Ray lives as long as this command: its dashboard would only take cores from the jobs.
            local = {} if address else {"include_dashboard": False}
            ray.init(address=address, logging_level=logging.WARNING, **local)
        return ray

    def gpus_per_task(self) -> float:
        """The GPUs each task asks for (``num_gpus``, or 1 if the cluster has any)."""
        ray = self._connect()
        if self.num_gpus is not None:
            return self.num_gpus
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0

    def capacity(self) -> int:
        """Tasks the cluster runs at once: its GPUs per task's GPUs where tasks hold GPUs, else its CPUs per task's."""
        ray = self._connect()
        resources, gpus = ray.cluster_resources(), self.gpus_per_task()
        if gpus > 0:
            return max(1, int(resources.get("GPU", 0) // gpus))
        return max(1, int(resources.get("CPU", 1) // max(self.num_cpus, 1e-3)))

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], desc: str) -> Iterator[Outcome[J, R]]:
        """Submit every job as a task, then yield outcomes as ``ray.wait`` returns them; Ctrl+C cancels the rest."""
        if not jobs:  # (a finished grid run again: no cluster to join)
            return
        ray = self._connect()
        gpus = self.gpus_per_task()
        # max_calls=0 reuses a worker for task after task, GPU tasks too (Ray's default for those is a new process
        # each): the unit of work keeps what it read (a grid's audio, ~20 s for EmoDB) for the next job.
        remote = ray.remote(
            num_cpus=self.num_cpus, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False, max_calls=0,
            runtime_env={"env_vars": {"TQDM_DISABLE": "1"}})(in_worker).options(name=fn.__name__)
        log.info("%s: %d job(s) on Ray (%s CPU, %s GPU each; cluster: %s)", desc, len(jobs), self.num_cpus, gpus,
                 _resources(ray.cluster_resources()))
        pending = {remote.remote(fn, job): job for job in jobs}
        progress = _Progress(len(jobs), desc)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        outcome = progress.ok(job, ray.get(ref))
                    except ray.exceptions.RayError as e:  # the task raised, or its worker or node died
                        outcome = progress.failed(job, e)
                    yield outcome
        finally:
            for ref in pending:  # Ctrl+C, or a consumer that stopped early: leave no task running for nothing
                ray.cancel(ref, force=True)
            progress.close()


class _Progress:
    """A map's progress bar over its jobs: each outcome counted, each failure logged and counted beside it."""

    def __init__(self, total: int, desc: str):
        self.bar = tqdm(total=total, desc=desc, unit="job")
        self.n_failed = 0

    def ok(self, job: J, result: R) -> Outcome[J, R]:
        """A job that finished, with its result."""
        self.bar.update()
        return Outcome(job, result=result)

    def failed(self, job: J, error: BaseException) -> Outcome[J, R]:
        """A job that failed (its own exception, or its worker's death): logged with what to know of it."""
        log.error("%s: %s", job, describe(error))
        self.n_failed += 1
        self.bar.set_postfix(failed=self.n_failed)
        self.bar.update()
        return Outcome(job, error=error)

    def close(self) -> None:
        self.bar.close()


def _resources(resources: dict) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def describe(error: BaseException) -> str:
    """One line for a job's error: a task's own exception (not Ray's wrapper), or what happened to its worker."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
