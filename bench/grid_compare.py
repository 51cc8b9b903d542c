"""Compare the run directories of two grids fold by fold, and check each fold was trained to completion once.

Usage: python bench/grid_compare.py REFERENCE OTHER [--bytes] [--seconds-ref S --seconds-other S]

For every fold of every run directory of REFERENCE, in OTHER: the same metrics (UAR, WAR, confusion matrix, every
predicted label), and whether the bytes are the same too (predictions.csv's probabilities, head.safetensors, the
LoRA adapter, the loss curve): float32 sums taken by another number of threads (a Ray task holds 1 core, a
process alone takes all) round differently in the last bits. Each fold's "fold_KK (test ...): UAR" line (logged
once per fold completed) must appear once in OTHER's train.log, and no fold_KK.partial be left. Exits 1 when a
metric differs, a fold was completed twice or not at all, or (with --bytes) any byte differs.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

METRICS = ("uar", "war", "confusion", "epoch", "n_train", "n_test", "test_speakers")


def predictions(fold: Path) -> tuple[list[str], np.ndarray]:
    with open(fold / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["predicted"] for r in rows], np.array([[float(v) for k, v in r.items() if k.startswith("p_")]
                                                     for r in rows])


def compare(reference: Path, other: Path) -> tuple[list[str], int, int, float]:
    """Problems, folds compared, folds identical byte for byte, the largest difference of a probability."""
    problems, n_folds, n_bytes, largest = [], 0, 0, 0.0
    runs = sorted(p for p in reference.iterdir() if (p / "config.json").is_file())
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
            if differ := [k for k in METRICS if ma[k] != mb[k]]:
                problems.append(f"{run.name}/{name}: {differ} differ")
            (la, pa), (lb, pb) = predictions(a), predictions(b)
            if la != lb:
                problems.append(f"{run.name}/{name}: predicted labels differ")
            largest = max(largest, float(np.abs(pa - pb).max()))
            files = [p.relative_to(a) for p in sorted(a.rglob("*")) if p.is_file() and p.name != "metrics.json"]
            n_bytes += ma["loss_curve"] == mb["loss_curve"] and all(
                (b / f).is_file() and (b / f).read_bytes() == (a / f).read_bytes() for f in files)
            completions = len(re.findall(rf"{name} \(test [^)]*\): UAR", log))
            if completions != 1:
                problems.append(f"{run.name}/{name}: completed {completions} times in {twin / 'train.log'}")
        if partial := sorted(p.name for p in twin.glob("*.partial")):
            problems.append(f"{run.name}: left {partial}")
        uar_a = json.loads((run / "metrics.json").read_text())["uar"]["mean"]
        uar_b = json.loads((twin / "metrics.json").read_text())["uar"]["mean"]
        print(f"{run.name:<32} folds {len(folds):>2}  mean UAR {uar_a:.4f} | {uar_b:.4f}")
    return problems, n_folds, n_bytes, largest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--bytes", action="store_true", help="fail unless every byte is the same")
    parser.add_argument("--seconds-ref", type=float, default=None)
    parser.add_argument("--seconds-other", type=float, default=None)
    args = parser.parse_args()
    problems, n_folds, n_bytes, largest = compare(args.reference, args.other)
    print(f"{n_folds} folds: metrics (UAR, WAR, confusion, every predicted label) "
          + ("identical" if not problems else "DIFFER") + f", each fold completed once; bytes (weights, "
          f"probabilities, loss curve) identical in {n_bytes} of {n_folds} folds (largest probability difference "
          f"{largest:.1g})")
    for p in problems:
        print(f"  - {p}")
    if args.seconds_ref and args.seconds_other:
        print(f"wall time: {args.reference.name} {args.seconds_ref:.0f} s, {args.other.name} "
              f"{args.seconds_other:.0f} s, ratio {args.seconds_ref / args.seconds_other:.2f}x")
    return 1 if problems or (args.bytes and n_bytes < n_folds) else 0


if __name__ == "__main__":
    sys.exit(main())
