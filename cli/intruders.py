"""``loralens intruders``: intruder dimensions of a LoRA run's fold models, from the run directory's weights alone."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from loralens.cli import options
from loralens.store.schema import UserError

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens intruders``'s parser to ``sub``."""
    from loralens.analysis.intruders import EPSILON, TOP_K

    p = sub.add_parser(
        "intruders", help="intruder dimensions per layer of a LoRA run, trained vs random twin (no trace needed)",
        description="For each LoRA module of each fold model, the top-k left singular vectors of W0 + (alpha/r) B A "
                    "whose largest |cosine| with every singular vector of W0 is below epsilon (Shuttleworth et al., "
                    "arXiv 2410.21228): their count per layer, trained adapter vs random twin. With --store, also "
                    "recorded in the store's copy of the run, for the explorer's LoRA dynamics page.")
    p.add_argument("run", type=Path, help="a LoRA run directory (loralens train --out)")
    p.add_argument("--top-k", type=int, default=TOP_K, help=f"leading singular vectors examined (default {TOP_K})")
    p.add_argument("--epsilon", type=float, default=EPSILON,
                   help=f"an intruder's largest |cosine| with W0's singular vectors is below this (default {EPSILON}; "
                        "the store records the similarities: the explorer shows 0.5, 0.7 and 0.9)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--store", default=None, help="record it in this store's copy of the run (a directory or URL)")
    p.add_argument("--name", default=None, help="the run's name in --store (default the run directory's name)")
    p.add_argument("--device", default="cpu", help="where the fold models are rebuilt (default cpu)")
    options.add_storage(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens intruders``; returns its exit status."""
    import pandas as pd

    from loralens.analysis.intruders import count_table
    from loralens.precompute.intruders import record, run_intruders

    if not 0 < args.epsilon <= 1:
        raise UserError(f"--epsilon {args.epsilon}: expected a cosine in (0, 1], e.g. 0.5")
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: expected a positive number of singular vectors, e.g. 10")
    result = run_intruders(args.run, args.top_k, device=args.device)
    judged = {checkpoint: r.at(args.epsilon) for checkpoint, r in result.items()}
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        log.info("%s: intruders per module among the top %d singular vectors at epsilon %s (mean over fold models, "
                 "then each fold's):\n%s", args.run, args.top_k, args.epsilon, count_table(judged).to_string())
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run.resolve()), "epsilon": args.epsilon,
                                        **{c: r.to_json() for c, r in result.items()}}, indent=1))
        log.info("wrote %s", args.out)
    if args.store:
        from loralens.store.writer import StoreWriter

        name = args.name or args.run.resolve().name
        record(StoreWriter(args.store, options.storage(args)), name, args.run, result)
        log.info("%s: recorded in run %s (the LoRA dynamics page shows it)", args.store, name)
    return 0
