"""``loralens demo``: build (the first time) the offline demo store and serve the explorer on it."""

from __future__ import annotations

import argparse
import sys


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens demo``'s parser to ``sub``."""
    p = sub.add_parser("demo", help="build (first time) an offline demo store and open the explorer on it")
    p.add_argument("--data", default=None, help="build it from this --data SPEC (default: synthetic speech)")
    p.add_argument("--ranks", type=_ranks, default=None,
                   help="LoRA ranks, one run each (default 32; 8,32,64 adds the paper's rank comparison to the "
                        "Clusters page, at about 3 more minutes per rank on 2 CPU cores)")
    p.add_argument("--rebuild", action="store_true", help="discard the cached demo and build it again")
    p.add_argument("--build-only", action="store_true", help="build the store, print its path, do not serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    """Run ``loralens demo``; returns its exit status."""
    import os

    from loralens.precompute.demo import DemoPlan, build

    plan = DemoPlan(data=args.data) if args.ranks is None else DemoPlan(data=args.data, ranks=args.ranks)
    store = build(plan, rebuild=args.rebuild)
    if args.build_only:
        print(store)
        return 0
    # Serve from a fresh interpreter: this one holds the build's models, and nnsight's patches break the
    # server's event loop (anyio refuses the 'save' attribute nnsight adds to classes).
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "loralens.cli", "app", "--store", store, "--host", args.host,
                              "--port", str(args.port)])
