"""``loralens train``: cross-validated LoRA or frozen-encoder emotion models."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loralens.cli import options
from loralens.store.schema import UserError

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens train``'s parser to ``sub``."""
    from loralens.precompute.config import DEFAULT_EPOCHS, LORA_TARGETS, PRECISIONS, SCHEDULES, TrainConfig

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
    p.add_argument("--freeze-a", action="store_true",
                   help="keep every LoRA A at its random initialisation and train only B and the head (Zhu et al. "
                        "2024, 'Asymmetry in Low-Rank Adapters'); LoRA only")
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
    p.add_argument("--only-folds", type=options.fold_indices, default=None,
                   help="comma list of fold indices to train now (default all)")
    options.add_jobs(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens train``; returns its exit status."""
    from loralens.precompute.config import TrainConfig
    from loralens.precompute.data import parse_emotions

    emotions = parse_emotions(args.emotions)
    config = TrainConfig(
        model=args.model, data=args.data, method=args.method,
        emotions=list(emotions) if emotions is not None else None,
        rank=args.rank, alpha=args.alpha, dropout=args.dropout, freeze_a=args.freeze_a,
        targets=[t.strip() for t in args.targets.split(",") if t.strip()], window=args.window, folds=args.folds,
        epochs=args.epochs, epoch_selection=args.epoch_selection, lr=args.lr, head_lr=args.head_lr,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup=args.warmup, batch_size=args.batch_size,
        seed=args.seed, long=args.long,
        skip_bad=args.skip_bad, merge_excitement=not args.keep_excitement, device=args.device,
        precision=args.precision)
    only = args.only_folds
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected a positive number")
    if args.jobs == 1:
        from loralens.precompute.train import train

        summary = train(config, args.out, only)
    else:  # the grid's loop over one run: one job per fold, in --jobs processes (this one imports no torch before)
        from loralens.precompute.executors import ProcessExecutor
        from loralens.precompute.grid import fold_jobs, run_jobs

        jobs, done = fold_jobs(args.out, config, only)
        result = run_jobs(jobs, done, ProcessExecutor(args.jobs), args.out)
        if result.failed:
            log.error("failed: %s; run the same command again to resume them (finished folds are kept)",
                      ", ".join(result.failed))
            return 1
        from loralens.precompute.folds import write_run_metrics

        summary = write_run_metrics(args.out)
    if summary.get("n_done"):
        names = {"uar": "UAR", "war": "WAR", "macro_f1": "macro-F1"}
        scored = ", ".join(f"{name} {summary[key]['mean']:.3f} ± {summary[key]['std']:.3f}"
                           for key, name in names.items() if key in summary)
        log.info("%s: %d/%d folds, %s", args.out, summary["n_done"], summary["n_folds"], scored)
    return 0
