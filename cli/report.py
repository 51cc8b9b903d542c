"""``loralens report``: every figure and the paper's findings of one or more stores, and their seeds, as files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loralens.cli import options

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens report``'s parser to ``sub``."""
    p = sub.add_parser("report", help="render every figure and check the paper's findings on a store")
    p.add_argument("--store", required=True, action="append",
                   help="a directory or fsspec URL; repeat it for several stores (each store's report in OUT/<its "
                        "name>, and runs that differ only in seed compared across them)")
    p.add_argument("--out", required=True, type=Path, help="directory for the figures and summary.{json,md}")
    p.add_argument("--threshold", type=float, default=0.9, help="energy threshold of the effective rank")
    options.add_storage(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens report``; returns its exit status."""
    from loralens.app.report import build

    summary = build(args.store, args.out, args.threshold, options.storage(args))
    for name, run in summary.get("runs", {}).items():
        for item in run["findings"]:
            log.info("%s: %s: %s (%s)", name, item["finding"], "holds" if item["holds"] else "does not hold",
                     item["evidence"])
    for configuration in summary["seeds"]:
        for item in configuration["findings"]:
            log.info("%s: %s: holds in %s", configuration["configuration"], item["finding"], item["holds_in"])
    log.info("wrote %s", args.out / "summary.md")
    return 0
