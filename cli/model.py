"""``loralens model export``: a model SPEC as a plain Hugging Face directory."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens model``'s parser to ``sub``."""
    p = sub.add_parser("model", help="model utilities")
    msub = p.add_subparsers(dest="model_command", required=True)
    e = msub.add_parser("export", help="write SPEC's encoder and a head as a plain Hugging Face directory")
    e.add_argument("spec", help="HF id or dir, ct2:DIR, bundled:tiny.en, bundled:base, or random:NAME[?layers=N] (a "
                                "real geometry with random weights, e.g. random:large-v3?layers=2)")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--emotions", default=None, help="comma list of classes (default the four of the paper)")
    e.add_argument("--seed", type=int, default=0, help="seed of the (untrained) head")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens model``; returns its exit status."""
    from loralens.precompute.data import DEFAULT_EMOTIONS, parse_emotions
    from loralens.precompute.models import export

    emotions = parse_emotions(args.emotions) or DEFAULT_EMOTIONS
    out = export(args.spec, args.out, list(emotions), seed=args.seed)
    log.info("wrote %s (load it with WhisperForAudioClassification.from_pretrained)", out)
    print(json.dumps({"out": str(out), "source": args.spec, "emotions": list(emotions)}))
    return 0
