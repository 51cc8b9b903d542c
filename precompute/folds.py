"""Speaker-independent cross-validation folds and the metrics each fold reports."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loralens.precompute.config import completed_folds
from loralens.precompute.data import Corpus
from loralens.precompute.files import write_atomic
from loralens.store.schema import UserError


@dataclass
class Fold:
    """One train/test partition; no speaker is on both sides."""

    index: int
    """Position among the run's folds (``fold_00`` ...)."""
    test_speakers: list[str]
    """Speakers held out for testing."""
    val_speakers: list[str]
    """Training speakers held out to choose the epoch (empty with fixed epochs)."""
    train: list[str]
    """Utterance ids trained on."""
    val: list[str]
    """Utterance ids validated on."""
    test: list[str]
    """Utterance ids tested on."""

    @property
    def name(self) -> str:
        """The fold's directory name."""
        return f"fold_{self.index:02d}"

    def to_json(self) -> dict:
        """A JSON-able dict."""
        return asdict(self)


def make_folds(corpus: Corpus, scheme: str, *, inner_validation: bool, seed: int = 0) -> list[Fold]:
    """Split ``corpus`` by speaker.

    Args:
        corpus: the utterances.
        scheme: ``loso``, an integer K (stratified, grouped by speaker), or ``split`` (the data set's own
            ``split`` column: train, test and optionally val).
        inner_validation: hold one training speaker out of each fold to choose the epoch.
        seed: shuffling seed for K folds.

    Returns:
        The folds, in a deterministic order.
    """
    utts = corpus.utterances
    speakers = corpus.speakers
    if scheme == "split":
        missing = [u.id for u in utts if u.split not in ("train", "val", "test")]
        if missing:
            raise UserError(f"--folds split needs a split column of train/val/test for every utterance; "
                             f"{len(missing)} have none (e.g. {missing[0]})")
        by = {s: [u for u in utts if u.split == s] for s in ("train", "val", "test")}
        return [Fold(0, sorted({u.speaker for u in by["test"]}), sorted({u.speaker for u in by["val"]}),
                     [u.id for u in by["train"]], [u.id for u in by["val"]], [u.id for u in by["test"]])]
    if scheme == "loso":
        test_groups = [[s] for s in speakers]
    else:
        from sklearn.model_selection import StratifiedGroupKFold  # a second of imports: only for K folds

        k = int(scheme)
        if k > len(speakers):
            raise UserError(f"--folds {k}: the data has only {len(speakers)} speakers; use at most that or loso")
        labels = [u.emotion for u in utts]
        groups = [u.speaker for u in utts]
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        test_groups = [sorted({groups[i] for i in test}) for _, test in splitter.split(utts, labels, groups)]
    if len(speakers) < (3 if inner_validation else 2):
        raise UserError(f"speaker-independent folds need at least {3 if inner_validation else 2} speakers; "
                         f"the data has {len(speakers)}: {speakers}")
    folds = []
    for index, test_speakers in enumerate(test_groups):
        rest = [s for s in speakers if s not in test_speakers]
        # The validation speaker is the next one after the test speakers, cyclically: every speaker serves once.
        val_speakers = [rest[index % len(rest)]] if inner_validation else []
        pick = lambda keep: [u.id for u in utts if u.speaker in keep]  # noqa: E731
        train_speakers = [s for s in rest if s not in val_speakers]
        folds.append(Fold(index, test_speakers, val_speakers, pick(train_speakers), pick(val_speakers),
                          pick(test_speakers)))
    return folds


METRICS = ("uar", "war", "macro_f1")
"""A fold's scores, EmoBox's three: UAR (its UA), WAR (its WA) and macro-F1."""


def scores(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> dict:
    """UAR, WAR, macro-F1 and the confusion matrix of one fold's predictions.

    UAR is the mean per-class recall and macro-F1 the mean per-class F1, both over the classes present in
    ``labels``: a speaker held out without a class (leave-one-speaker-out) is not scored on it. scikit-learn's
    ``f1_score(average="macro")`` as EmoBox calls it averages over the classes in labels or predictions; the two
    agree where every class is in the test set (EmoBox's EmoDB folds). A class never predicted has F1 0.

    Args:
        labels: true class indices, shape ``(n,)``.
        predictions: predicted class indices, shape ``(n,)``.
        n_classes: size of the class set (rows and columns of the confusion matrix).
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score  # imported here: see make_folds

    return {
        "uar": float(balanced_accuracy_score(labels, predictions)),
        "war": float(np.mean(labels == predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=np.unique(labels), average="macro", zero_division=0)),
        "confusion": confusion_matrix(labels, predictions, labels=list(range(n_classes))).tolist(),
    }


def over_folds(fold_metrics: list[dict]) -> dict:
    """Mean, standard deviation and per-fold values of each of ``METRICS`` over folds.

    A metric some fold lacks (a fold scored before loralens computed it) is left out.
    """
    out = {}
    for key in METRICS:
        if not all(key in m for m in fold_metrics):
            continue
        values = np.array([m[key] for m in fold_metrics])
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0)),
                    "per_fold": [float(v) for v in values]}
    return out


def write_run_metrics(run: Path, n_folds: int | None = None) -> dict:
    """Collect a run's completed folds' metrics into ``RUN/metrics.json`` (replaced in one step); return them.

    ``n_folds``: the run's fold count (None: from its ``folds.json``).
    """
    if n_folds is None:
        n_folds = len(json.loads((run / "folds.json").read_text())["folds"])
    per_fold = [json.loads((run / f"fold_{i:02d}" / "metrics.json").read_text()) for i in completed_folds(run)]
    summary = {"complete": len(per_fold) == n_folds, "n_folds": n_folds,
               "n_done": len(per_fold), **(over_folds(per_fold) if per_fold else {}),
               "folds": [{k: m[k] for k in ("fold", "test_speakers", *METRICS, "confusion", "epoch") if k in m}
                         for m in per_fold]}
    write_atomic(run / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary
