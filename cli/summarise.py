"""``loralens summarise``: what the explorer's pages draw first, computed once into the store."""

from __future__ import annotations

import argparse
import logging

from loralens.cli import options

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens summarise``'s parser to ``sub``."""
    p = sub.add_parser("summarise", help="compute what the explorer's pages draw first, once, into the store",
                       description="Spectra, CKA, contributions and every 2-D map of each committed run, stored "
                                   "with the store (loralens trace does this when it commits a run).")
    p.add_argument("store", help="a directory or fsspec URL")
    p.add_argument("--run", action="append", default=None, help="only this run (repeatable; default: every run)")
    p.add_argument("--maps", default="umap,tsne", help="the 2-D maps to fit at every layer (default umap,tsne)")
    p.add_argument("--force", action="store_true", help="recompute current summaries too")
    options.add_storage(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens summarise``; returns its exit status."""
    from loralens.analysis.summary import summarise

    done = summarise(args.store, args.run, options.maps(args.maps), force=args.force,
                     storage_options=options.storage(args))
    if not done:
        log.error("%s: no run%s to summarise", args.store, f" named {args.run}" if args.run else "")
        return 1
    for run, seconds in done.items():
        if seconds is None:
            log.info("%s: %s is current (or not committed)", args.store, run)
    return 0
