"""Print the LoRA-vs-frozen tables of one or more directories of runs (as written by bench/train_emodb.sh).

    python bench/summarise_runs.py runs/emodb
    python bench/summarise_runs.py runs/emodb/seed-0 runs/old-run

Each directory holds ``MODEL-METHOD-WINDOW`` run directories, or ``seed-S`` directories that do (each counts
as one directory). With several directories (the same runs under other seeds), a last table compares them
side by side and averages each fold's UAR over them, so one seed's luck on a 39-clip test speaker weighs
less, and checks issue #2's goal on those averages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import fmean, pstdev

MODELS = ("base", "tiny.en")
WINDOWS = ("trim", "full")
# Issue #2's goal: LoRA UAR at least 0.80 and at least 0.08 above frozen, LoRA ahead in at least 8 of 10 folds.
GOAL_UAR, GOAL_MARGIN, GOAL_AHEAD = 0.80, 0.08, 0.8


def load(run: Path) -> dict | None:
    path = run / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pair(root: Path, model: str, window: str) -> tuple[dict, dict] | None:
    """Per-fold metrics of the LoRA and frozen runs, keyed by fold index, or None if either has no fold."""
    lora, frozen = (load(root / f"{model}-{m}-{window}") for m in ("lora", "frozen"))
    if not lora or not frozen or not lora.get("n_done") or not frozen.get("n_done"):
        return None
    return {f["fold"]: f for f in lora["folds"]}, {f["fold"]: f for f in frozen["folds"]}


def describe(root: Path, model: str, window: str) -> str:
    """The protocol of a root's LoRA and frozen runs, from their config.json files."""
    configs = {m: json.loads((root / f"{model}-{m}-{window}" / "config.json").read_text()) for m in ("lora", "frozen")}
    c = configs["lora"]
    schedule = c.get("schedule", "constant")  # runs from before --schedule were constant
    warmup = f", warmup {c['warmup']:g}" if c.get("warmup") else ""
    epochs = ", ".join(f"{m} {configs[m]['epochs']}" for m in ("lora", "frozen"))
    return f"seed {c['seed']}, epochs {epochs}, epoch selection {c['epoch_selection']}, {schedule} lr{warmup}"


def table(root: Path, model: str, window: str, runs: tuple[dict, dict] | None) -> None:
    if runs is None:
        print(f"\n{model} {window}: incomplete or missing in {root}")
        return
    fl, ff = runs
    common = sorted(set(fl) & set(ff))
    print(f"\n{model}, window {window}, {root} ({describe(root, model, window)}): {len(common)} common folds")
    print(f"{'fold':>4} {'speaker':>7} {'LoRA UAR':>9} {'frozen UAR':>10} {'LoRA WAR':>9} {'frozen WAR':>10}")
    for i in common:
        print(f"{i:>4} {','.join(fl[i]['test_speakers']):>7} {fl[i]['uar']:>9.3f} {ff[i]['uar']:>10.3f} "
              f"{fl[i]['war']:>9.3f} {ff[i]['war']:>10.3f}")
    for key in ("uar", "war"):
        a = [fl[i][key] for i in common]
        b = [ff[i][key] for i in common]
        print(f"{key.upper()}: LoRA {fmean(a):.3f} ± {pstdev(a):.3f}, frozen {fmean(b):.3f} ± {pstdev(b):.3f}, "
              f"difference {fmean(a) - fmean(b):+.3f}")
    wins = sum(fl[i]["uar"] > ff[i]["uar"] for i in common)
    ties = sum(fl[i]["uar"] == ff[i]["uar"] for i in common)
    print(f"LoRA ahead in {wins} of {len(common)} folds (ties {ties})")


def across(runs: dict[Path, tuple[dict, dict]], model: str, window: str) -> None:
    """The same comparison under each root, then each fold's UAR averaged over the roots."""
    if len(runs) < 2:
        return
    folds = sorted(set.intersection(*(set(fl) & set(ff) for fl, ff in runs.values())))
    print(f"\n{model}, window {window}: {len(runs)} directories, {len(folds)} folds in all of them")
    print(f"{'directory':<28} {'LoRA UAR':>9} {'frozen UAR':>10} {'difference':>10} {'LoRA ahead':>10}")
    margins = []
    for root, (fl, ff) in runs.items():
        a, b = fmean(fl[i]["uar"] for i in folds), fmean(ff[i]["uar"] for i in folds)
        margins.append(a - b)
        wins = sum(fl[i]["uar"] > ff[i]["uar"] for i in folds)
        print(f"{str(root):<28} {a:>9.3f} {b:>10.3f} {a - b:>+10.3f} {wins:>7} of {len(folds)}")
    lora = [fmean(fl[i]["uar"] for fl, _ in runs.values()) for i in folds]
    frozen = [fmean(ff[i]["uar"] for _, ff in runs.values()) for i in folds]
    wins = sum(x > y for x, y in zip(lora, frozen))
    print(f"difference over directories: {fmean(margins):+.3f} ± {pstdev(margins):.3f}")
    print(f"each fold's UAR averaged over directories: LoRA {fmean(lora):.3f} ± {pstdev(lora):.3f}, "
          f"frozen {fmean(frozen):.3f} ± {pstdev(frozen):.3f}, LoRA ahead in {wins} of {len(folds)} folds")
    uar, margin, needed = fmean(lora), fmean(lora) - fmean(frozen), GOAL_AHEAD * len(folds)
    checks = [(f"LoRA UAR {uar:.3f} >= {GOAL_UAR}", uar >= GOAL_UAR),
              (f"difference {margin:+.3f} >= +{GOAL_MARGIN}", margin >= GOAL_MARGIN),
              (f"ahead in {wins} >= {needed:g} of {len(folds)} folds", wins >= needed)]
    print("goal on the averages: " + "; ".join(f"{text}: {'met' if ok else 'NOT met'}" for text, ok in checks))


def expand(root: Path) -> list[Path]:
    """A directory of runs, or the ``seed-S`` directories of runs that bench/train_emodb.sh writes into it."""
    if not root.is_dir():
        sys.exit(f"{root}: no such directory of runs; make one with bench/train_emodb.sh {root}")
    seeds = sorted(root.glob("seed-*/"), key=lambda d: (len(d.name), d.name))
    return seeds or [root]


def main() -> None:
    roots = [d for a in sys.argv[1:] or ["runs/emodb"] for d in expand(Path(a))]
    for model in MODELS:
        for window in WINDOWS:
            runs = {root: pair(root, model, window) for root in roots}
            for root, found in runs.items():
                if len(roots) == 1 or found is not None:
                    table(root, model, window, found)
            across({root: found for root, found in runs.items() if found is not None}, model, window)


if __name__ == "__main__":
    main()
