"""``loralens trace``: a run's traces into a Zarr store, in one process, in shards or on Ray."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loralens.cli import options
from loralens.store.schema import UserError

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens trace``'s parser to ``sub``."""
    from loralens.precompute.config import PRECISIONS

    p = sub.add_parser("trace", help="capture a run's traces into a Zarr store",
                       description="Trace each utterance with the fold model that held it out; re-run to resume.")
    p.add_argument("--run", required=True, type=Path, action="append",
                   help="a run directory written by loralens train; repeat it to trace several runs into the store "
                        "one after the other in this process (start-up paid once, the summaries computed once at "
                        "the end)")
    p.add_argument("--data", default=None, help="the --data SPEC (default: the run's own)")
    p.add_argument("--store", required=True, help="a directory or fsspec URL (memory://, s3://, file://)")
    p.add_argument("--name", default=None,
                   help="the run's name in the store (default: the run directory's name; only with one --run)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--per-class", type=int, default=25, help="class-balanced: N per emotion (default 25)")
    which.add_argument("--all", action="store_true", help="every utterance of the completed folds")
    which.add_argument("--utterances", type=Path, default=None,
                       help="a file of utterance ids, one per line, as the explorer shows them (emodb/wav/03a01Fa)")
    p.add_argument("--no-per-frame-b", action="store_true",
                   help="skip per-frame LoRA B activations and gradients (large for big models)")
    p.add_argument("--per-frame-sample", type=float, default=1.0, metavar="SHARE",
                   help="keep per-frame LoRA A/B for this share of utterances (same ids in every run "
                        "traced with the same share); pooled arrays cover all (default 1: every utterance)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto",
                   help="auto (default: CUDA where there is one; with --ray, the GPU Ray gives each worker), cpu, "
                        "cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="numeric regime of the trace (default: the run's own, so the store predicts as training did)")
    p.add_argument("--writers", type=int, default=None, metavar="N",
                   help="processes that write the captured batches into the store while the next are captured "
                        "(default: a quarter of the cores, at most 4; 0: a thread of the tracing process)")
    stage = p.add_mutually_exclusive_group()
    stage.add_argument("--prepare-only", action="store_true", help="only add utterances and create the run")
    stage.add_argument("--shard", default=None,
                       help="K/N: capture only batches K, K+N, K+2N, ... (after prepare; N shards store the bits one "
                            "process would)")
    stage.add_argument("--commit-only", action="store_true", help="only mark the run complete if it is")
    p.add_argument("--maps", default="umap,tsne",
                   help="the 2-D maps the summary fits at every layer when the run commits (default umap,tsne)")
    p.add_argument("--replace", action="store_true",
                   help="the store holds another training of the run (retrained with another seed, rate, ...): "
                        "delete the store's copy of the run (its rows, summary and interventions) and trace it anew")
    p.add_argument("--no-summary", action="store_true",
                   help="commit without computing the summary (run loralens summarise STORE later)")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="prepare, capture N shards (one job each: Ray tasks with --ray, else one after the other "
                        "here), commit (default with --ray: as many as the cluster runs at once)")
    options.add_storage(p)
    options.add_cluster(p, "shard")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens trace``; returns its exit status."""
    from loralens.precompute.capture import CaptureOptions
    from loralens.precompute.config import read_config
    from loralens.precompute.trace import Selection, Tracer

    if args.per_class < 1:
        raise UserError(f"--per-class {args.per_class}: expected a positive number")
    sharded = args.ray or args.shards is not None
    if sharded and (args.shard or args.prepare_only or args.commit_only):
        raise UserError("--ray and --shards prepare, capture and commit in one command; leave out --shard, "
                         "--prepare-only and --commit-only (or use those without --ray and --shards)")
    if args.shards is not None and args.shards < 1:
        raise UserError(f"--shards {args.shards}: expected a positive number")
    if args.name is not None and len(args.run) > 1:
        raise UserError(f"--name names one run, and {len(args.run)} --run were given; trace the runs one command "
                         "each to name them, or leave out --name (each is named after its directory)")
    shard = _shard(args.shard) if args.shard else None
    maps = None if args.no_summary or args.prepare_only or shard else options.maps(args.maps)  # a bad --maps fails now
    if maps is not None:  # as would a summary that cannot be imported; without one, its second of imports is spared
        from loralens.analysis.summary import summarise
    selection = Selection(per_class=args.per_class, all=args.all, utterances=args.utterances)
    status, committed = 0, False
    for run in args.run:
        tracer = Tracer(run, args.data or read_config(run).data, args.store, name=args.name, selection=selection,
                        options=CaptureOptions(per_frame_b=not args.no_per_frame_b,
                                               per_frame_sample=args.per_frame_sample),
                        batch_size=args.batch_size, device="cpu" if sharded else args.device,
                        precision=args.precision, writers=args.writers, storage_options=options.storage(args))
        if sharded:  # this process prepares and commits (on the CPU: it never touches a GPU); the shards capture
            state = _trace_shards(args, tracer)
        elif shard:
            written = tracer.capture(tracer.rows(), shard)
            log.info("%s shard %d/%d: wrote %d rows", tracer.name, *shard, written)
            continue
        else:
            rows = tracer.prepare(args.replace) if not args.commit_only else tracer.rows()
            if args.prepare_only:
                log.info("prepared %s for run %s: %d utterances", args.store, tracer.name, len(rows))
                continue
            if not args.commit_only:
                tracer.capture(rows)
            state = tracer.commit(rows, maps=None)  # summarised once, after every run
            log.info("%s: run %s, %d utterances, %s", args.store, tracer.name, len(rows),
                     ", ".join(f"{c} {'complete' if ok else 'INCOMPLETE'}" for c, ok in state.items()))
        if state is None or not all(state.values()):
            status = 1
        else:
            committed = True
    if committed and maps is not None:  # once for all the runs: a run's summary compares it with the others
        summarise(args.store, None, maps, storage_options=options.storage(args))
    return status


def _shard(text: str) -> tuple[int, int]:
    """``--shard K/N`` as ``(k, n)``."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError as e:
        raise UserError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4") from e
    if not 0 <= k < n:
        raise UserError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return k, n


def _trace_shards(args: argparse.Namespace, tracer) -> dict[str, bool] | None:
    """``loralens trace --shards N`` / ``--ray``: prepare, one ``capture_shard`` job per shard, commit.

    Returns:
        The run's checkpoints' completeness, or None where a shard failed.
    """
    from dataclasses import replace

    from loralens.precompute.data import absolute_spec
    from loralens.precompute.executors import describe
    from loralens.precompute.trace import ShardJob, capture_shard

    executor = options.executor(args)
    rows = tracer.prepare(args.replace)
    n = args.shards or (executor.capacity() if args.ray else 1)
    local = "://" not in args.store  # paths travel absolute: a worker's current directory is not this one's
    listed = tracer.selection.utterances
    selection = replace(tracer.selection, utterances=listed.resolve() if listed else None)
    jobs = [ShardJob(tracer.run.resolve(), absolute_spec(tracer.data),
                     str(Path(args.store).resolve()) if local else args.store, tracer.name, selection, tracer.options,
                     args.batch_size, args.device, (k, n), args.writers,
                     tracer.storage_options) for k in range(n)]
    failed = [f"{o.job} ({describe(o.error)})" for o in executor.map(capture_shard, jobs, desc="trace") if not o.ok]
    if failed:
        log.error("failed: %s; run the same command again to capture what they left (written rows are kept)",
                  ", ".join(failed))
        return None
    state = tracer.commit(rows, maps=None)  # summarised by the caller, after every run
    log.info("%s: run %s, %d utterances in %d shards, %s", args.store, tracer.name, len(rows), n,
             ", ".join(f"{c} {'complete' if ok else 'INCOMPLETE'}" for c, ok in state.items()))
    return state
