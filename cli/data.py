"""``loralens data``: synthesise the offline corpus, or download EmoDB."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens data``'s parser to ``sub``."""
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
    from loralens.precompute.synth import synthesise

    manifest = synthesise(args.out, args.seed, args.sentences)
    log.info("use it with --data synthetic:%s", manifest.parent)
    return 0


def _run_get(args: argparse.Namespace) -> int:
    from loralens.precompute.download import get_emodb

    out = get_emodb(args.out)
    log.info("use it with --data emodb:%s", out)
    return 0
