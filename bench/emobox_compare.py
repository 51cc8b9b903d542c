"""Print EmoDB 7-class scores of loralens runs beside EmoBox's published EmoDB results, with what differs.

    python bench/emobox_compare.py runs/emodb7/base-lora runs/emodb7/base-frozen

For each run directory (``loralens train --emotions all``, as bench/emodb7.sh writes them): UAR, WAR and macro-F1
as the mean ± std over its folds (``metrics.json``), and the same three pooled over every fold's test predictions
(``predictions.csv``: each utterance counted once, as one confusion matrix over the whole corpus). Then EmoBox's
published numbers and the protocol differences, each as far as it was checked (see ``PROTOCOL``).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

EMOBOX = [
    # (model, how it was trained, UA, WA, macro-F1) in %, None where not quoted here.
    ("Whisper large-v3", "frozen encoder, features to a small downstream model", None, 92.43, None),
    ("WavLM large", "frozen encoder, features to a small downstream model", None, 92.67, None),
]
"""EmoBox's intra-corpus EmoDB results as issue #37 quotes them from its leaderboard (emo-box.github.io, an image
in the repository's README); only WA is quoted. Not re-read here: check the leaderboard before citing UA or F1."""

PROTOCOL = """\
Protocol differences (checked in emo-box/EmoBox unless marked otherwise):
  * Folds. EmoBox splits EmoDB into 5 folds from the corpus's lists/cv_k_fold1..5
    (EmoBox/preprocess/scripts/emodb.py); fold 1's test list (data/emodb/fold_1) holds utterances of all ten
    speakers, so every test speaker is also in training: speaker-DEPENDENT. loralens here: leave one speaker out,
    10 folds, speaker-independent, which is harder; the numbers are not the same measurement.
  * Audio. EmoBox reads the original 16 kHz files whole (its fold-1 test list gives lengths of 1.4-6 s). The copy
    here (../shared/data/emodb) is each file's first 2.0 s at 22.05 kHz, resampled to 16 kHz: longer utterances
    lose their ends.
  * Model and head. EmoBox's rows: Whisper large-v3 / WavLM large, frozen, their features to a downstream model
    trained per fold (the README's example recipe: dumped features, a speechbrain model of hidden size 128; which
    settings the leaderboard used was not checked). loralens here: Whisper base (bundled:base: 6 encoder layers of
    width 512, against large-v3's 32 of 1280), mean-pooled, a linear projector and classifier; frozen, or LoRA r=32
    on v_proj; fixed epochs, no validation split.
  * Metrics. The same three (sklearn balanced accuracy = UA/UAR, accuracy = WA/WAR, macro-F1). EmoBox scores each
    fold's test set (EmoBox/EmoEval.py); how its leaderboard combines the 5 folds was not checked. loralens's
    mean over folds is per held-out speaker; the pooled line scores all 535 predictions at once.
  * Classes. The same 7 (anger, boredom, disgust, fear, happiness, neutral, sadness)."""


def fold_predictions(run: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every completed fold's test labels and predictions, as class indices, and the class set."""
    emotions = json.loads((run / "config.json").read_text())["emotions"]
    index = {e: i for i, e in enumerate(emotions)}
    labels, predicted = [], []
    for path in sorted(run.glob("fold_[0-9][0-9]/predictions.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                labels.append(index[row["emotion"]])
                predicted.append(index[row["predicted"]])
    return np.array(labels), np.array(predicted), emotions


def describe(run: Path) -> list[str]:
    """The run's lines of the table."""
    summary = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    name = f"{config['model']} {config['method']}" + (" (A frozen)" if config.get("freeze_a") else "")
    cells = [f"{100 * summary[k]['mean']:5.2f} ± {100 * summary[k]['std']:5.2f}" if k in summary else "      –      "
             for k in ("uar", "war", "macro_f1")]
    done = f"{summary['n_done']}/{summary['n_folds']} folds"
    lines = [f"{name:<34} {'mean over folds':<17} " + "  ".join(cells) + f"   {done}"]
    labels, predicted, emotions = fold_predictions(run)
    if len(emotions) != 7:
        lines.append(f"  (!) {len(emotions)} classes ({','.join(emotions)}): not the 7-class task; use --emotions all")
    if len(labels):
        pooled = [balanced_accuracy_score(labels, predicted), float(np.mean(labels == predicted)),
                  f1_score(labels, predicted, labels=np.unique(labels), average="macro", zero_division=0)]
        lines.append(f"{'':<34} {'pooled':<17} " + "  ".join(f"{100 * v:5.2f}        " for v in pooled)
                     + f"   {len(labels)} utterances")
    return lines


def main(argv: list[str]) -> int:
    runs = [Path(a) for a in argv]
    if not runs or any(not (r / "metrics.json").is_file() for r in runs):
        print(__doc__)
        print("each argument must be a loralens run directory with a metrics.json")
        return 2
    print(f"{'EmoDB, 7 classes (%)':<34} {'':<17} {'UAR':^13}  {'WAR':^13}  {'macro-F1':^13}")
    for run in runs:
        print("\n".join(describe(run)))
    print()
    for model, how, *values in EMOBOX:
        cells = [f"{v:5.2f}        " if v is not None else "  –          " for v in values]
        print(f"{'EmoBox: ' + model:<34} {'5-fold, published':<17} " + "  ".join(cells) + f"   ({how})")
    print("EmoBox's WA as issue #37 quotes its intra-corpus leaderboard (emo-box.github.io; not re-read here, check it "
          "before citing);\nUA and macro-F1 not quoted.")
    print()
    print(PROTOCOL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
