"""Print ordinary LoRA against LoRA with A frozen (``--freeze-a``) over seeds, from a grid bench/freeze_a.sh ran.

    python bench/freeze_a_compare.py runs/freeze-a

The grid's run directories ``MODEL-lora-WINDOW-rR-seedS`` and ``MODEL-lora-freeze-a-WINDOW-rR-seedS``: each run's
UAR, WAR and macro-F1 (mean over its folds), then per method the mean over seeds with a 95 % Student's t interval
(n - 1 degrees of freedom; with 3 seeds the interval is wide: t = 4.30), and the paired difference freeze-A minus
LoRA of each seed with its interval. Seeds change the head, the LoRA initialisation and the shuffling; the folds
(test speakers) are the same in every run, so the interval says how much a seed moves the number, not how it
would move on other speakers.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from scipy import stats

NAME = re.compile(r"^(?P<model>.+)-(?P<method>lora|lora-freeze-a)-(?P<window>trim|full)-r(?P<rank>\d+)"
                  r"-seed(?P<seed>\d+)$")
METRICS = (("uar", "UAR"), ("war", "WAR"), ("macro_f1", "macro-F1"))


def interval(values: list[float], confidence: float = 0.95) -> str:
    """``mean [low, high]`` of a Student's t interval of the mean (just the value for one)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return f"{x.mean():.3f} (one seed: no interval)"
    half = stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():.3f} [{x.mean() - half:.3f}, {x.mean() + half:.3f}]"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__)
        return 2
    runs: dict[tuple, dict[int, dict]] = {}
    for path in sorted(Path(argv[0]).iterdir()):
        if (m := NAME.match(path.name)) and (path / "metrics.json").is_file():
            key = (m["model"], m["window"], int(m["rank"]), m["method"])
            runs.setdefault(key, {})[int(m["seed"])] = json.loads((path / "metrics.json").read_text())
    if not runs:
        print(f"{argv[0]}: no run directories of methods lora / lora-freeze-a with a metrics.json")
        return 1
    for (model, window, rank, method), by_seed in sorted(runs.items()):
        print(f"{model} {window} r={rank} {method}")
        for seed, m in sorted(by_seed.items()):
            cells = ", ".join(f"{name} {m[k]['mean']:.3f}" for k, name in METRICS if k in m)
            print(f"  seed {seed}: {cells} ({m['n_done']}/{m['n_folds']} folds)")
        for k, name in METRICS:
            if all(k in m for m in by_seed.values()):
                print(f"  {name} over {len(by_seed)} seeds: {interval([m[k]['mean'] for m in by_seed.values()])}")
    print()
    for (model, window, rank, method), lora in sorted(runs.items()):
        frozen_a = runs.get((model, window, rank, "lora-freeze-a"))
        if method != "lora" or not frozen_a:
            continue
        seeds = sorted(set(lora) & set(frozen_a))
        complete = [s for s in seeds if lora[s]["complete"] and frozen_a[s]["complete"]]
        diff = [frozen_a[s]["uar"]["mean"] - lora[s]["uar"]["mean"] for s in seeds]
        print(f"{model} {window} r={rank}: UAR freeze-A minus LoRA, paired by seed {seeds}: {interval(diff)}"
              + ("" if len(complete) == len(seeds) else f"  (complete in seeds {complete} only)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
