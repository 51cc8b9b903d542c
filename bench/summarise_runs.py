"""Print the LoRA-vs-frozen table of a directory of runs (as written by bench/train_emodb.sh).

    python bench/summarise_runs.py runs/emodb
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(run: Path) -> dict | None:
    path = run / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/emodb")
    for model in ("base", "tiny.en"):
        for window in ("trim", "full"):
            lora, frozen = (load(root / f"{model}-{m}-{window}") for m in ("lora", "frozen"))
            if not lora or not frozen or not lora.get("n_done") or not frozen.get("n_done"):
                print(f"{model} {window}: incomplete or missing")
                continue
            fl = {f["fold"]: f for f in lora["folds"]}
            ff = {f["fold"]: f for f in frozen["folds"]}
            common = sorted(set(fl) & set(ff))
            print(f"\n{model}, window {window}: {len(common)} common folds "
                  f"(LoRA {lora['n_done']}/{lora['n_folds']}, frozen {frozen['n_done']}/{frozen['n_folds']})")
            print(f"{'fold':>4} {'speaker':>7} {'LoRA UAR':>9} {'frozen UAR':>10} {'LoRA WAR':>9} {'frozen WAR':>10}")
            for i in common:
                print(f"{i:>4} {','.join(fl[i]['test_speakers']):>7} {fl[i]['uar']:>9.3f} {ff[i]['uar']:>10.3f} "
                      f"{fl[i]['war']:>9.3f} {ff[i]['war']:>10.3f}")
            for key in ("uar", "war"):
                a = [fl[i][key] for i in common]
                b = [ff[i][key] for i in common]
                mean = lambda v: sum(v) / len(v)  # noqa: E731
                std = lambda v: (sum((x - mean(v)) ** 2 for x in v) / len(v)) ** 0.5  # noqa: E731
                print(f"{key.upper()}: LoRA {mean(a):.3f} ± {std(a):.3f}, frozen {mean(b):.3f} ± {std(b):.3f}, "
                      f"difference {mean(a) - mean(b):+.3f}")
            wins = sum(fl[i]["uar"] > ff[i]["uar"] for i in common)
            ties = sum(fl[i]["uar"] == ff[i]["uar"] for i in common)
            print(f"LoRA ahead in {wins} of {len(common)} folds (ties {ties})")


if __name__ == "__main__":
    main()
