"""Compare the run directories of two grids fold by fold, and check each fold was trained to completion once.

Usage: python bench/grid_compare.py REFERENCE OTHER [--seconds-ref S --seconds-other S]

For every run directory of REFERENCE: the same folds in OTHER, with byte-identical predictions.csv,
head.safetensors and LoRA adapter weights, and the same metrics.json but for its seconds; each fold's
"fold_KK (test ...): UAR" line (logged once per fold completed) appears once in OTHER's train.log, and no
fold_KK.partial is left. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

VOLATILE = ("seconds",)  # wall time; everything else of a fold's metrics must be equal


def fold_files(fold: Path) -> list[Path]:
    return sorted(p for p in fold.rglob("*") if p.is_file() and p.name != "metrics.json")


def compare(reference: Path, other: Path) -> list[str]:
    problems = []
    runs = sorted(p for p in reference.iterdir() if (p / "config.json").is_file())
    n_folds = 0
    for run in runs:
        twin = other / run.name
        folds = sorted(p.name for p in run.glob("fold_[0-9][0-9]"))
        if sorted(p.name for p in twin.glob("fold_[0-9][0-9]")) != folds:
            problems.append(f"{run.name}: folds differ")
            continue
        log = (twin / "train.log").read_text()
        for name in folds:
            n_folds += 1
            a, b = run / name, twin / name
            ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
            for key in VOLATILE:
                ma.pop(key), mb.pop(key)
            if ma != mb:
                problems.append(f"{run.name}/{name}: metrics.json differs: "
                                f"{sorted(k for k in ma if ma[k] != mb.get(k))}")
            for path in fold_files(a):
                twin_path = b / path.relative_to(a)
                if not twin_path.is_file() or twin_path.read_bytes() != path.read_bytes():
                    problems.append(f"{run.name}/{name}: {path.relative_to(a)} differs")
            completions = len(re.findall(rf"{name} \(test [^)]*\): UAR", log))
            if completions != 1:
                problems.append(f"{run.name}/{name}: completed {completions} times in {twin / 'train.log'}")
        if partial := sorted(p.name for p in twin.glob("*.partial")):
            problems.append(f"{run.name}: left {partial}")
        uar_a = json.loads((run / "metrics.json").read_text())["uar"]["mean"]
        uar_b = json.loads((twin / "metrics.json").read_text())["uar"]["mean"]
        print(f"{run.name:<40} folds {len(folds):>2}  UAR {uar_a:.4f} | {uar_b:.4f}")
    print(f"{len(runs)} runs, {n_folds} folds compared: "
          + ("identical (predictions, weights, metrics)" if not problems else f"{len(problems)} difference(s)"))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--seconds-ref", type=float, default=None)
    parser.add_argument("--seconds-other", type=float, default=None)
    args = parser.parse_args()
    problems = compare(args.reference, args.other)
    for p in problems:
        print(f"  - {p}")
    if args.seconds_ref and args.seconds_other:
        print(f"wall time: {args.reference.name} {args.seconds_ref:.0f} s, {args.other.name} "
              f"{args.seconds_other:.0f} s, ratio {args.seconds_ref / args.seconds_other:.2f}x")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
