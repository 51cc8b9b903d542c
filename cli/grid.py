"""``loralens grid``: every run of a spec file, here or on Ray."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loralens.cli import options

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens grid``'s parser to ``sub``."""
    p = sub.add_parser("grid", help="train every model x method x rank x seed x window of a spec file",
                       description="One job per fold of every run of the spec (TOML or JSON; see precompute.grid."
                                   "GridSpec), here or on Ray (--ray); the run directories loralens train writes. "
                                   "Re-run to resume: finished folds are kept.")
    p.add_argument("spec", type=Path, help="the grid spec: models, data, methods (lora, lora-freeze-a, frozen), ranks, "
                                           "seeds, folds, windows, alpha_per_rank, [train] settings")
    p.add_argument("--out", required=True, type=Path, help="directory of the run directories (resumed if it exists)")
    p.add_argument("--only-folds", type=options.fold_indices, default=None,
                   help="comma list of fold indices to train now in every run (default all; the same command "
                        "without it trains the rest later)")
    options.add_jobs(p)
    options.add_cluster(p, "fold")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens grid``; returns its exit status."""
    from loralens.precompute.grid import load_spec, run_grid

    only = args.only_folds
    result = run_grid(load_spec(args.spec), args.out, options.executor(args), spec_path=args.spec, only=only)
    log.info("%s: %d folds: %d trained now, %d complete before, %d failed", args.out, result.n_folds,
             len(result.trained), len(result.skipped), len(result.failed))
    if result.failed:
        log.error("failed: %s; run the same command again to resume them (finished folds are kept)",
                  ", ".join(result.failed))
        return 1
    return 0
