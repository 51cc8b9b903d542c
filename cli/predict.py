"""``loralens predict``: per-layer emotion predictions for audio files."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens predict``'s parser to ``sub``."""
    p = sub.add_parser("predict", help="per-layer emotion predictions for audio files")
    p.add_argument("--run", type=Path, default=None,
                   help="a run directory written by loralens train or import (default: the real-speech model shipped "
                        "with loralens, an EmoDB-trained LoRA on bundled:base, prepared on first use)")
    p.add_argument("--fold", type=int, default=None, help="the fold's checkpoint (default: the first completed)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--device", default="auto", help="auto (default: CUDA where there is one), cpu, cuda or cuda:N")
    p.add_argument("audio", nargs="+", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens predict``; returns its exit status."""
    from loralens.precompute.audio import AudioError
    from loralens.precompute.predict import Predictor

    if args.run is None:
        from loralens.precompute import demo

        args.run = demo.default_run()
        log.info("the real-speech model (trained on EmoDB's German acted speech; see %s): %s",
                 "loralens/precompute/shipped/real-speech/README.md", args.run)
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
