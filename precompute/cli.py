"""The ``loralens`` command: parsing and dispatch only."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("loralens")

# Errors that are the user's to fix: shown as one line, never as a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, OSError)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from precompute.config import DEFAULT_EPOCHS, LORA_TARGETS, PRECISIONS, SCHEDULES, TrainConfig

    d = TrainConfig(model="", data="")
    p = sub.add_parser("train", help="cross-validate LoRA or frozen-encoder emotion models",
                       description="Train with speaker-independent cross-validation; re-run to resume.")
    p.add_argument("--model", required=True,
                   help="HF id or dir, ct2:DIR, bundled:tiny.en, bundled:base, or random:NAME[?layers=N] (a real "
                        "geometry with random weights, e.g. random:large-v3?layers=2)")
    p.add_argument("--data", required=True, help="emodb:DIR, ravdess:DIR, cremad:DIR, iemocap:DIR, csv:FILE, "
                                                 "synthetic:DIR")
    p.add_argument("--out", required=True, type=Path, help="run directory (resumed if it exists)")
    p.add_argument("--method", choices=["lora", "frozen"], default=d.method)
    p.add_argument("--emotions", default=None,
                   help="comma list of classes, or 'all' (default anger,happiness,neutral,sadness)")
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--targets", default=",".join(d.targets), help=f"comma list of {', '.join(LORA_TARGETS)}")
    p.add_argument("--window", choices=["trim", "full"], default=d.window)
    p.add_argument("--folds", default=d.folds, help="loso, an integer K (grouped by speaker), or split")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per fold (default " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items())
                        + ": the frozen head converges slower)")
    p.add_argument("--epoch-selection", choices=["fixed", "inner"], default=d.epoch_selection,
                   help="keep the last epoch, or the best on an inner validation speaker")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of the LoRA weights")
    p.add_argument("--head-lr", type=float, default=d.head_lr, help="learning rate of the head")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="learning rates constant, or decaying linearly to zero over each fold's steps")
    p.add_argument("--warmup", type=float, default=d.warmup,
                   help="fraction of each fold's steps over which the learning rates rise from zero")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--long", choices=["crop", "error"], default=d.long, help="clips over 30 s")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable audio files (counted in the log)")
    p.add_argument("--keep-excitement", action="store_true", help="IEMOCAP: keep excitement apart from happiness")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", *PRECISIONS], default=d.precision,
                   help="numeric regime of training and its predictions (auto: bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--only-folds", default=None, help="comma list of fold indices to train now (default all)")
    _add_jobs(p)
    p.set_defaults(func=_run_train)


def _add_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="folds trained at once, each in its own process on --device (default 1: one after the other "
                        "in this process); on a GPU, a small model's LoRA folds keep it busier together (each process "
                        "holds its own model in GPU memory; frozen runs gain little, as each process encodes every "
                        "utterance)")


def _run_train(args: argparse.Namespace) -> int:
    from precompute.config import TrainConfig
    from precompute.data import parse_emotions

    emotions = parse_emotions(args.emotions)
    config = TrainConfig(
        model=args.model, data=args.data, method=args.method,
        emotions=list(emotions) if emotions is not None else None,
        rank=args.rank, alpha=args.alpha, dropout=args.dropout,
        targets=[t.strip() for t in args.targets.split(",") if t.strip()], window=args.window, folds=args.folds,
        epochs=args.epochs, epoch_selection=args.epoch_selection, lr=args.lr, head_lr=args.head_lr,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup=args.warmup, batch_size=args.batch_size,
        seed=args.seed, long=args.long,
        skip_bad=args.skip_bad, merge_excitement=not args.keep_excitement, device=args.device,
        precision=args.precision)
    only = [int(i) for i in args.only_folds.split(",")] if args.only_folds else None
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: expected a positive number")
    if args.jobs == 1:
        from precompute.train import train

        summary = train(config, args.out, only)
    else:  # the grid's loop over one run: one job per fold, in --jobs processes (this one imports no torch before)
        from precompute.executors import ProcessExecutor
        from precompute.grid import fold_jobs, run_jobs

        jobs, done = fold_jobs(args.out, config, only)
        result = run_jobs(jobs, done, ProcessExecutor(args.jobs), args.out)
        if result.failed:
            log.error("failed: %s; run the same command again to resume them (finished folds are kept)",
                      ", ".join(result.failed))
            return 1
        from precompute.folds import write_run_metrics

        summary = write_run_metrics(args.out)
    if summary.get("n_done"):
        log.info("%s: %d/%d folds, UAR %.3f ± %.3f, WAR %.3f ± %.3f", args.out, summary["n_done"],
                 summary["n_folds"], summary["uar"]["mean"], summary["uar"]["std"], summary["war"]["mean"],
                 summary["war"]["std"])
    return 0


def _add_grid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grid", help="train every model x method x rank x seed x window of a spec file",
                       description="One job per fold of every run of the spec (TOML or JSON; see precompute.grid."
                                   "GridSpec), here or on Ray (--ray); the run directories loralens train writes. "
                                   "Re-run to resume: finished folds are kept.")
    p.add_argument("spec", type=Path, help="the grid spec: models, data, methods, ranks, seeds, folds, windows, "
                                           "alpha_per_rank, [train] settings")
    p.add_argument("--out", required=True, type=Path, help="directory of the run directories (resumed if it exists)")
    p.add_argument("--only-folds", default=None, help="comma list of fold indices to train now in every run (default "
                                                      "all; the same command without it trains the rest later)")
    _add_jobs(p)
    _add_cluster(p, "fold")
    p.set_defaults(func=_run_grid)


def _add_cluster(p: argparse.ArgumentParser, unit: str) -> None:
    """The flags that run a command's jobs on Ray (see ``precompute.executors.RayExecutor``)."""
    g = p.add_argument_group("Ray (the cluster extra: pip install -e \".[cluster]\")")
    g.add_argument("--ray", action="store_true", help=f"run each {unit} as a Ray task (default: one after the other "
                                                      "in this process)")
    g.add_argument("--address", default=None, help="the Ray cluster (auto, HOST:6379, ray://HOST:10001; default "
                                                   "$RAY_ADDRESS, else a local one on this machine)")
    g.add_argument("--cpus", type=float, default=1, metavar="N", help=f"CPU cores each {unit}'s task holds (default 1)")
    g.add_argument("--gpus", type=float, default=None, metavar="N",
                   help=f"GPUs each {unit}'s task holds (default 1 where the cluster has GPUs, else 0)")
    g.add_argument("--retries", type=int, default=1,
                   help="times Ray reruns a task whose worker or node died (default 1; finished work is kept)")


def _executor(args: argparse.Namespace):
    from precompute.executors import LocalExecutor, ProcessExecutor, RayExecutor

    jobs = getattr(args, "jobs", 1)
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: expected a positive number")
    if args.ray and jobs > 1:
        raise ValueError("--jobs runs folds in processes of this machine, --ray on a Ray cluster; choose one")
    if not args.ray:
        return LocalExecutor() if jobs == 1 else ProcessExecutor(jobs)
    return RayExecutor(address=args.address, num_cpus=args.cpus, num_gpus=args.gpus, max_retries=args.retries)


def _run_grid(args: argparse.Namespace) -> int:
    from precompute.grid import load_spec, run_grid

    only = [int(i) for i in args.only_folds.split(",")] if args.only_folds else None
    result = run_grid(load_spec(args.spec), args.out, _executor(args), spec_path=args.spec, only=only)
    log.info("%s: %d folds: %d trained now, %d complete before, %d failed", args.out, result.n_folds,
             len(result.trained), len(result.skipped), len(result.failed))
    if result.failed:
        log.error("failed: %s; run the same command again to resume them (finished folds are kept)",
                  ", ".join(result.failed))
        return 1
    return 0


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model utilities")
    msub = p.add_subparsers(dest="model_command", required=True)
    e = msub.add_parser("export", help="write SPEC's encoder and a head as a plain Hugging Face directory")
    e.add_argument("spec", help="HF id or dir, ct2:DIR, bundled:tiny.en, bundled:base, or random:NAME[?layers=N] (a "
                                "real geometry with random weights, e.g. random:large-v3?layers=2)")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--emotions", default=None, help="comma list of classes (default the four of the paper)")
    e.add_argument("--seed", type=int, default=0, help="seed of the (untrained) head")
    e.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from precompute.data import DEFAULT_EMOTIONS, parse_emotions
    from precompute.models import export

    emotions = parse_emotions(args.emotions) or DEFAULT_EMOTIONS
    out = export(args.spec, args.out, list(emotions), seed=args.seed)
    log.info("wrote %s (load it with WhisperForAudioClassification.from_pretrained)", out)
    print(json.dumps({"out": str(out), "source": args.spec, "emotions": list(emotions)}))
    return 0


def _add_trace(sub: argparse._SubParsersAction) -> None:
    from precompute.config import PRECISIONS

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
    which.add_argument("--utterances", type=Path, default=None, help="a file of utterance ids, one per line")
    p.add_argument("--no-per-frame-b", action="store_true",
                   help="skip per-frame LoRA B activations and gradients (large for big models)")
    p.add_argument("--per-frame-sample", type=float, default=1.0, metavar="SHARE",
                   help="keep per-frame residuals and LoRA A/B for this share of utterances (same ids in every run "
                        "traced with the same share); pooled arrays cover all (default 1: every utterance)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or auto (default cpu; with --ray, auto: the GPU Ray gives each worker)")
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
    p.add_argument("--no-summary", action="store_true",
                   help="commit without computing the summary (run loralens summarise STORE later)")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="prepare, capture N shards (one job each: Ray tasks with --ray, else one after the other "
                        "here), commit (default with --ray: as many as the cluster runs at once)")
    _add_storage(p)
    _add_cluster(p, "shard")
    p.set_defaults(func=_run_trace)
    v = sub.add_parser("validate", help="check a store: schema, shapes, NaN/Inf, completeness")
    v.add_argument("store", help="a directory or fsspec URL")
    v.add_argument("--repair", action="store_true",
                   help="repair what does not decode: table rows are read again from their source audio, layer-"
                        "major copies rebuilt, checkpoint rows unmarked so the same loralens trace captures them")
    _add_storage(v)
    v.set_defaults(func=_run_validate)


def _add_storage(p: argparse.ArgumentParser) -> None:
    """The flags that reach a store on object storage (fsspec storage options; see ``store.reader.storage_options``)."""
    g = p.add_argument_group("object storage (a store at an s3://, gs://, ... URL)")
    g.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="an S3-compatible server, e.g. http://127.0.0.1:9000 (MinIO, Ceph)")
    g.add_argument("--anonymous", action="store_true", help="read a public bucket without credentials")
    g.add_argument("--profile", default=None, help="a profile of the AWS credentials file")
    g.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to fsspec as is (repeatable; a JSON VALUE is parsed: anon=true, "
                        "client_kwargs='{\"region_name\": \"eu-west-1\"}')")


def _storage(args: argparse.Namespace) -> dict | None:
    from store.reader import storage_options

    return storage_options(args.endpoint_url, args.anonymous, args.profile, args.storage_option)


def _run_trace(args: argparse.Namespace) -> int:
    from precompute.capture import CaptureOptions
    from precompute.config import read_config
    from precompute.trace import Selection, Tracer

    if args.per_class < 1:
        raise ValueError(f"--per-class {args.per_class}: expected a positive number")
    sharded = args.ray or args.shards is not None
    if sharded and (args.shard or args.prepare_only or args.commit_only):
        raise ValueError("--ray and --shards prepare, capture and commit in one command; leave out --shard, "
                         "--prepare-only and --commit-only (or use those without --ray and --shards)")
    if args.shards is not None and args.shards < 1:
        raise ValueError(f"--shards {args.shards}: expected a positive number")
    if args.name is not None and len(args.run) > 1:
        raise ValueError(f"--name names one run, and {len(args.run)} --run were given; trace the runs one command "
                         "each to name them, or leave out --name (each is named after its directory)")
    shard = _shard(args.shard) if args.shard else None
    maps = None if args.no_summary or args.prepare_only or shard else _maps(args.maps)  # a bad --maps fails now
    if maps is not None:  # as would a summary that cannot be imported; without one, its second of imports is spared
        from app.summary import summarise
    selection = Selection(per_class=args.per_class, all=args.all, utterances=args.utterances)
    status, committed = 0, False
    for run in args.run:
        tracer = Tracer(run, args.data or read_config(run).data, args.store, name=args.name, selection=selection,
                        options=CaptureOptions(per_frame_b=not args.no_per_frame_b,
                                               per_frame_sample=args.per_frame_sample),
                        batch_size=args.batch_size, device="cpu" if sharded else args.device or "cpu",
                        precision=args.precision, writers=args.writers, storage_options=_storage(args))
        if sharded:  # this process prepares and commits (on the CPU: it never touches a GPU); the shards capture
            state = _trace_shards(args, tracer)
        elif shard:
            written = tracer.capture(tracer.rows(), shard)
            log.info("%s shard %d/%d: wrote %d rows", tracer.name, *shard, written)
            continue
        else:
            rows = tracer.prepare() if not args.commit_only else tracer.rows()
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
        summarise(args.store, None, maps, storage_options=_storage(args))
    return status


def _shard(text: str) -> tuple[int, int]:
    """``--shard K/N`` as ``(k, n)``."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError as e:
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4") from e
    if not 0 <= k < n:
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return k, n


def _trace_shards(args: argparse.Namespace, tracer) -> dict[str, bool] | None:
    """``loralens trace --shards N`` / ``--ray``: prepare, one ``capture_shard`` job per shard, commit.

    Returns:
        The run's checkpoints' completeness, or None where a shard failed.
    """
    from dataclasses import replace

    from precompute.data import absolute_spec
    from precompute.executors import describe
    from precompute.trace import ShardJob, capture_shard

    executor = _executor(args)
    rows = tracer.prepare()
    n = args.shards or (executor.capacity() if args.ray else 1)
    local = "://" not in args.store  # paths travel absolute: a worker's current directory is not this one's
    listed = tracer.selection.utterances
    selection = replace(tracer.selection, utterances=listed.resolve() if listed else None)
    jobs = [ShardJob(tracer.run.resolve(), absolute_spec(tracer.data),
                     str(Path(args.store).resolve()) if local else args.store, tracer.name, selection, tracer.options,
                     args.batch_size, args.device or ("auto" if args.ray else "cpu"), (k, n), args.writers,
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


def _sizes_text(store: str, storage_options: dict | None = None) -> str:
    from store.validate import sizes

    parts = sizes(store, storage_options)
    return "\n".join([f"stored: {sum(parts.values()) / 2**30:.2f} GiB",
                      *(f"  {part}: {n / 2**20:,.1f} MiB" for part, n in parts.items())])


def _run_validate(args: argparse.Namespace) -> int:
    from store.validate import repair, validate

    options = _storage(args)
    report = validate(args.store, options)
    if report.ok:
        print(f"{report.summary}\n{_sizes_text(args.store, options)}")  # one write, once all is known
        return 0
    print(f"{args.store}: {len(report.problems)} problem(s)")
    for problem in report.problems:
        print(f"  - {problem}")
    if not args.repair:
        return 1
    for done in repair(report, options):
        print(done)
    if report.table_rows:
        from precompute.trace import restore_utterances

        restored, left = restore_utterances(args.store, report.table_rows, report.lost_columns, options)
        if restored:
            print(f"wrote {restored} row(s) of the utterance table again from their source audio files")
        for problem in left:
            print(f"  - not repaired: {problem}")
    return 1


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render every figure and check the paper's findings on a store")
    p.add_argument("--store", required=True, help="a directory or fsspec URL")
    p.add_argument("--out", required=True, type=Path, help="directory for the figures and summary.{json,md}")
    p.add_argument("--threshold", type=float, default=0.9, help="energy threshold of the effective rank")
    _add_storage(p)
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from app.report import build

    summary = build(args.store, args.out, args.threshold, _storage(args))
    for name, run in summary["runs"].items():
        for item in run["findings"]:
            log.info("%s: %s: %s (%s)", name, item["finding"], "holds" if item["holds"] else "does not hold",
                     item["evidence"])
    log.info("wrote %s", args.out / "summary.md")
    return 0


def _add_intervene(sub: argparse._SubParsersAction) -> None:
    from app.analysis.counterfactuals import CHANGES
    from precompute.config import INTERVENTION_KINDS

    grids = "; ".join(f"{c.kind} {', '.join(f'{v:g}' for v in c.strengths)} ({c.unit})" for c in CHANGES.values())
    p = sub.add_parser("intervene", help="the causal lens: the run's traced utterances under interventions",
                       description="Each traced utterance of the run, through the fold model that held it out, under "
                                   "every condition: LoRA off at one layer (lora_off@k), on at one layer only "
                                   "(lora_only@k), off from a layer up (lora_off_from@k), a layer's block erased "
                                   "(erase@k), a layer's output patched in from --partner (patch@k), and the audio "
                                   f"changed ({grids}); class probabilities and lens trajectories into the store. "
                                   "Re-run to resume, or with more --kinds to add them.")
    p.add_argument("--run", required=True, type=Path, help="a run directory traced into --store")
    p.add_argument("--store", required=True, help="a directory or fsspec URL")
    p.add_argument("--name", default=None, help="the run's name in the store (default: the run directory's name)")
    p.add_argument("--kinds", default=None,
                   help=f"comma list of {', '.join((*INTERVENTION_KINDS, *CHANGES))} (default all: a frozen run has "
                        "no LoRA kinds, patch needs --partner)")
    p.add_argument("--partner", type=Path, default=None,
                   help="the run directory patch@k patches from: the frozen run for a LoRA run, the LoRA run for a "
                        "frozen one (same data, folds and window)")
    p.add_argument("--strength", action="append", default=[], metavar="KIND=S1,S2,...",
                   help="an audio change's strengths instead of its default grid, e.g. pitch=-6,6 (repeatable)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    _add_storage(p)
    p.set_defaults(func=_run_intervene)


def _strengths(items: list[str]) -> dict[str, tuple[float, ...]]:
    from app.analysis.counterfactuals import CHANGES

    out = {}
    for item in items:
        kind, _, values = item.partition("=")
        try:
            if kind not in CHANGES:
                raise ValueError(f"{kind!r} is not an audio change ({', '.join(CHANGES)})")
            out[kind] = tuple(float(v) for v in values.split(",") if v.strip())
            if not out[kind]:
                raise ValueError("no strength given")
        except ValueError as e:
            raise ValueError(f"--strength {item!r}: {e}; expected KIND=S1,S2,..., e.g. pitch=-6,6") from e
    return out


def _run_intervene(args: argparse.Namespace) -> int:
    from precompute import intervene

    kinds = None
    if args.kinds is not None:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        if unknown := [k for k in kinds if k not in intervene.KINDS]:
            raise ValueError(f"--kinds {args.kinds!r}: unknown {unknown}; expected a comma list of "
                             f"{', '.join(intervene.KINDS[1:])}")
    results = intervene.run(args.run, args.store, name=args.name, kinds=kinds, strengths=_strengths(args.strength),
                            partner=args.partner, batch_size=args.batch_size, device=args.device,
                            storage_options=_storage(args))
    print(f"{'condition':<18} {'UAR':>6} {'WAR':>6} {'KL':>8} {'flipped':>8}")
    for condition, m in results.items():
        print(f"{condition:<18} {m['uar']:6.3f} {m['war']:6.3f} {m['kl']:8.4f} {m['flipped']:8.3f}")
    return 0


def _add_summarise(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summarise", help="compute what the explorer's pages draw first, once, into the store",
                       description="Spectra, CKA, contributions and every 2-D map of each committed run, stored "
                                   "with the store (loralens trace does this when it commits a run).")
    p.add_argument("store", help="a directory or fsspec URL")
    p.add_argument("--run", action="append", default=None, help="only this run (repeatable; default: every run)")
    p.add_argument("--maps", default="umap,tsne", help="the 2-D maps to fit at every layer (default umap,tsne)")
    p.add_argument("--force", action="store_true", help="recompute current summaries too")
    _add_storage(p)
    p.set_defaults(func=_run_summarise)


def _maps(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    if unknown := [m for m in methods if m not in ("umap", "tsne")]:
        raise ValueError(f"--maps {text!r}: unknown {unknown}; expected a comma list of umap, tsne")
    return methods


def _run_summarise(args: argparse.Namespace) -> int:
    from app.summary import summarise

    done = summarise(args.store, args.run, _maps(args.maps), force=args.force, storage_options=_storage(args))
    if not done:
        log.error("%s: no run%s to summarise", args.store, f" named {args.run}" if args.run else "")
        return 1
    for run, seconds in done.items():
        if seconds is None:
            log.info("%s: %s is current (or not committed)", args.store, run)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="per-layer emotion predictions for audio files")
    p.add_argument("--run", required=True, type=Path, help="a run directory written by loralens train")
    p.add_argument("--fold", type=int, default=None, help="the fold's checkpoint (default: the first completed)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("audio", nargs="+", type=Path)
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from precompute.audio import AudioError
    from precompute.predict import Predictor

    predictor = Predictor(args.run, args.fold, device=args.device)
    failed = 0
    for path in args.audio:
        try:
            results = predictor.predict_file(path)
        except AudioError as e:
            log.error("%s", e)
            failed += 1
            continue
        if len(results) > 1:
            log.info("%s: longer than 30 s, analysed in %d windows of 30 s", path, len(results))
        for result in results:
            if args.json:
                print(json.dumps(result.to_json()))
                continue
            label = path if len(results) == 1 else result.name
            print(f"{label}: {result.prediction} (settles at boundary {result.resolution_depth} of "
                  f"{len(result.probabilities) - 1}, {result.duration:.1f} s, fold {predictor.fold})")
            print("  boundary  " + "  ".join(f"{e[:9]:>9}" for e in result.emotions))
            for b, probs in enumerate(result.probabilities):
                print(f"  {b:>8}  " + "  ".join(f"{p:9.3f}" for p in probs))
    return 1 if failed else 0


def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="open the explorer on a store")
    p.add_argument("--store", default=None, help="a directory or fsspec URL (default: $LORALENS_STORE)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default localhost only)")
    p.add_argument("--port", type=int, default=8501)
    _add_storage(p)
    p.set_defaults(func=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    import os

    store = args.store or os.environ.get("LORALENS_STORE")
    if not store:
        raise ValueError("no store given: loralens app --store PATH (or set LORALENS_STORE)")
    return serve(store, args.host, args.port, _storage(args))


def serve(store: str, host: str, port: int, storage_options: dict | None = None) -> NoReturn:
    """Run the Streamlit explorer on ``store`` until interrupted (``storage_options``: fsspec's, for a URL)."""
    import os

    import app as app_package
    from store.probe import probe
    from store.reader import STORAGE_OPTIONS_ENV

    if not probe(store):  # a bad store fails here, in one line, before a server starts
        from store.reader import StoreReader

        StoreReader(store, storage_options)
    if storage_options:
        os.environ[STORAGE_OPTIONS_ENV] = json.dumps(storage_options)
    main_script = Path(app_package.__file__).parent / "main.py"
    root = main_script.parents[1]
    log.info("serving %s at http://%s:%d (Ctrl+C stops it)", store, host, port)
    os.environ["LORALENS_STORE"] = store
    if (root / ".streamlit" / "config.toml").is_file():  # the theme and upload limit
        os.chdir(root)
    # scikit-learn (the Causal page's UAR; 0.8 s of imports) before the server listens: imported by the warm-up
    # thread below it held a freshly opened page back by as long (the thread holds the interpreter while importing),
    # and imported by the page itself it made the Causal page's first draw 4 s.
    import sklearn.metrics  # noqa: F401
    # The app's own imports (pandas, Altair, Zarr: over half a second of CPU here) run while the browser loads the
    # page, not after the first visitor connects.
    threading.Thread(target=_warm_imports, args=(host, port), name="loralens-warm-imports", daemon=True).start()
    # Streamlit runs in this process (no child): a signal to it (Ctrl+C, kill, a supervisor's SIGTERM) reaches
    # Streamlit itself and never leaves an orphaned server holding the port.
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", "run", str(main_script), "--server.address", host, "--server.port", str(port),
                "--server.headless", "true", "--runner.magicEnabled", "false", "--server.fileWatcherType", "none",
                "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    streamlit_cli.main()
    sys.exit(0)


def _warm_imports(host: str, port: int) -> None:
    """Import the app's modules once the server listens (not before: they would slow its start)."""
    import importlib
    import socket
    import time

    for _ in range(600):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0:
                break
        time.sleep(0.05)
    # First what the first page needs, then what the Utterance page adds.
    for name in ("app.data", "app.charts", "app.widgets", "app.state", "scipy.special", "PIL.Image"):
        importlib.import_module(name)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data sets: synthesise the offline corpus, or download EmoDB")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="an offline acted corpus synthesised with espeak-ng")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sentences", type=int, default=10, help="sentences per speaker and emotion (1-10)")
    s.set_defaults(func=_run_synth)
    g = dsub.add_parser("get", help="download a public corpus (needs internet)")
    g.add_argument("name", choices=["emodb"])
    g.add_argument("--out", required=True, type=Path)
    g.set_defaults(func=_run_get)


def _run_synth(args: argparse.Namespace) -> int:
    from precompute.synth import synthesise

    manifest = synthesise(args.out, args.seed, args.sentences)
    log.info("use it with --data synthetic:%s", manifest.parent)
    return 0


def _run_get(args: argparse.Namespace) -> int:
    from precompute.download import get_emodb

    out = get_emodb(args.out)
    log.info("use it with --data emodb:%s", out)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build (first time) an offline demo store and open the explorer on it")
    p.add_argument("--data", default=None, help="build it from this --data SPEC (default: synthetic speech)")
    p.add_argument("--ranks", type=_ranks, default=None,
                   help="LoRA ranks, one run each (default 32; 8,32,64 adds the paper's rank comparison to the "
                        "Clusters page, at about 3 more minutes per rank on 2 CPU cores)")
    p.add_argument("--rebuild", action="store_true", help="discard the cached demo and build it again")
    p.add_argument("--build-only", action="store_true", help="build the store, print its path, do not serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=_run_demo)


def _ranks(text: str) -> tuple[int, ...]:
    """``--ranks``: a comma list of distinct positive integers."""
    try:
        ranks = tuple(int(t) for t in text.split(","))
    except ValueError:
        ranks = ()
    if not ranks or min(ranks) < 1 or len(set(ranks)) < len(ranks):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct positive integers separated by commas, "
                                         "like 8,32,64")
    return ranks


def _run_demo(args: argparse.Namespace) -> int:
    import os

    from precompute.demo import DemoPlan, build

    plan = DemoPlan(data=args.data) if args.ranks is None else DemoPlan(data=args.data, ranks=args.ranks)
    store = build(plan, rebuild=args.rebuild)
    if args.build_only:
        print(store)
        return 0
    # Serve from a fresh interpreter: this one holds the build's models, and nnsight's patches break the
    # server's event loop (anyio refuses the 'save' attribute nnsight adds to classes).
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "precompute.cli", "app", "--store", store, "--host", args.host,
                              "--port", str(args.port)])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``loralens`` subcommand."""
    parser = argparse.ArgumentParser(prog="loralens", description="What LoRA does inside a Whisper emotion model.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_grid(sub)
    _add_model(sub)
    _add_trace(sub)
    _add_report(sub)
    _add_summarise(sub)
    _add_intervene(sub)
    _add_predict(sub)
    _add_app(sub)
    _add_data(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loralens`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # peft asks transformers a deprecated question on every adapter load; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to resume")
        return 130
    except USER_ERRORS as e:
        if args.verbose:
            raise
        log.error("%s", e)
        return 2


def _ignore_interrupts() -> None:
    """Ignore SIGINT from here on, quietly.

    ``signal.signal`` races with a SIGINT that lands while it runs: in its Python wrapper the signal raises
    KeyboardInterrupt (caught: try again); inside the change CPython writes "Signal 2 ignored due to race condition"
    as an unraisable error (dropped). Both were seen in CI runs of the test of ``script``. (Blocking SIGINT with
    ``pthread_sigmask`` instead blocks it in this thread only: the kernel hands it to another, and CPython raises it
    here all the same.)
    """
    report = sys.unraisablehook

    def quiet(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, OSError) and "race condition" in str(unraisable.exc_value)):
            report(unraisable)

    sys.unraisablehook = quiet
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


def script() -> NoReturn:
    """The console script: ``main``, then an exit that a late Ctrl+C cannot turn into a failure.

    Once ``main`` has returned, the work is done and saved. A SIGINT that lands while the interpreter shuts down
    (flushing output, joining threads) would otherwise end a finished command with status -2 or an
    "Exception ignored" traceback, telling a user or a supervisor it failed.
    """
    code = main()
    _ignore_interrupts()
    sys.exit(code)


if __name__ == "__main__":
    script()
