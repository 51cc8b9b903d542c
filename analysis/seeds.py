"""Runs that differ only in seed: which runs those are, and every statistic over them with its interval.

It owns two things: the rule of one *configuration* (a run's training config but for its seed, read from the
store's checkpoint attributes), and the statistics over seeds (a Student's t interval of the mean, the spread over
fold models, "holds in k of n seeds", the paired test of LoRA against frozen over folds x seeds, and an A-frozen
configuration set against its ordinary partner). Each LoRA run meets the frozen run of its own seed by
``views.frozen_partner``'s rule. Everything but ``members`` is pure over plain values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from loralens.analysis import views
from loralens.store.reader import StoreReader

NOT_CONFIGURATION = ("seed", "device", "versions")
LATER_DEFAULTS = {"freeze_a": False}
"""Training fields added after runs were first traced, at the value those runs had (``precompute.config``'s
``LATER_FIELDS``): left out of a configuration at that value, so a run traced before them and one after are one."""
"""``TrainConfig`` keys that do not make two runs different configurations: the seed itself, where the run trained
and the library versions it recorded."""

CONFIDENCE = 0.95
"""The confidence of every interval over seeds."""

PAIRED_TEST = ("paired t-test (scipy.stats.ttest_rel) of LoRA against frozen over every (seed, fold) pair, with the "
               "Wilcoxon signed-rank test (scipy.stats.wilcoxon) beside it; pairs of one fold share its test speakers "
               "across seeds, so they are not independent and the p-values are descriptive")
"""What the paired comparison of LoRA with frozen is, as the report states it."""


@dataclass
class Member:
    """One run of a store, as a member of its configuration."""

    store: str
    """The store's path or URL."""
    info: views.RunInfo
    """The run."""
    seed: int | None
    """Its training seed (None where the store did not record its training config, e.g. a hand-written store)."""
    configuration: str
    """Its training config but for ``NOT_CONFIGURATION``, as sorted JSON: equal strings, one configuration."""
    frozen: views.RunInfo | None = None
    """The frozen run it is compared with (LoRA runs; ``views.frozen_partner``'s rule), in the same store."""

    @property
    def label(self) -> str:
        """``seed S`` (``run`` where the seed is unknown)."""
        return f"seed {self.seed}" if self.seed is not None else self.info.name


@dataclass(frozen=True)
class Interval:
    """The mean of values over seeds with its Student's t interval."""

    mean: float
    low: float
    """Lower bound (NaN with fewer than 2 values)."""
    high: float
    """Upper bound (NaN with fewer than 2 values)."""
    std: float
    """Sample standard deviation (ddof 1; NaN with fewer than 2 values)."""
    n: int
    """How many finite values it is over (NaN and inf are left out)."""
    confidence: float = CONFIDENCE

    def to_json(self) -> dict:
        """``mean``, ``ci`` ([low, high]), ``std``, ``n``, ``confidence``; NaN as None."""
        return {"mean": _finite(self.mean), "ci": [_finite(self.low), _finite(self.high)], "std": _finite(self.std),
                "n": self.n, "confidence": self.confidence}

    def __str__(self) -> str:
        if self.n == 0:
            return "–"
        if self.n < 2:
            return f"{self.mean:.3f} (one value)"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def t_interval(values, confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> Interval:
    """The mean of ``values`` with its two-sided Student's t confidence interval.

    ``mean ± t_{(1+confidence)/2, n-1} · s / sqrt(n)``, ``s`` the sample standard deviation (ddof 1): what
    ``scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=s / sqrt(n))`` gives, cut to ``bounds``. Non-finite
    values are left out; with fewer than 2 values the bounds and ``std`` are NaN (one seed says nothing about the
    spread).

    Args:
        values: one value per seed, ``(n,)``.
        confidence: in (0, 1).
        bounds: the values the statistic can take (UAR and WAR: ``(0, 1)``); the interval is cut to them, where a
            few widely spread seeds would otherwise claim, say, a UAR above 1.

    Raises:
        ValueError: ``confidence`` outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; expected a number in (0, 1), e.g. 0.95")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(np.nan, np.nan, np.nan, np.nan, 0, confidence)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, np.nan, np.nan, np.nan, 1, confidence)
    from scipy import stats  # 3 s to import: not while the app's pages load

    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / np.sqrt(n)
    low, high = np.clip([mean - half, mean + half], *(bounds or (-np.inf, np.inf)))
    return Interval(mean, float(low), float(high), std, n, confidence)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _corpus(data: str) -> str:
    """A ``--data SPEC`` as its corpus, relative and absolute paths alike (``views.frozen_partner``'s rule)."""
    scheme, _, location = data.partition(":")
    return f"{scheme}:{PurePath(location.rstrip('/')).name}"


def configuration(info: views.RunInfo, train_config: dict) -> str:
    """The configuration a run belongs to: its training config but for ``NOT_CONFIGURATION``, as sorted JSON.

    The data set counts by its corpus (``emodb:../data/emodb`` and ``emodb:/abs/emodb`` are one). Without a
    recorded training config (a hand-written store) the run's model, method, window, rank, targets and corpus.
    """
    if train_config:
        key = {k: v for k, v in train_config.items()
               if k not in NOT_CONFIGURATION and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
        key["data"] = _corpus(str(key.get("data", "")))
    else:
        key = {"model": info.model, "method": info.method, "window": info.window, "data": _corpus(info.data),
               **({"rank": info.rank, "targets": list(info.targets)} if info.method == "lora" else {})}
    return json.dumps(key, sort_keys=True, default=str)


def describe(member: Member) -> str:
    """A configuration in words: model, method (rank and targets), window, corpus."""
    key = json.loads(member.configuration)
    method = key.get("method", member.info.method)
    targets = key.get("targets") or member.info.targets
    frozen_a = ", A frozen" if key.get("freeze_a") else ""
    kind = {"lora": f"LoRA r={key.get('rank', member.info.rank)} on {','.join(targets)}{frozen_a}",
            "frozen": "frozen encoder",
            "full": "fully fine-tuned"}.get(method, method)
    return f"{key.get('model', member.info.model)}, {kind}, {key.get('window', member.info.window)}, {key.get('data')}"


def members(reader: StoreReader) -> list[Member]:
    """Every run of the store with its seed, configuration and (LoRA runs) frozen partner."""
    runs = views.run_info(reader)
    return [Member(reader.path, r, r.seed,
                   configuration(r, dict(reader.attrs(r.name, r.checkpoints[0]).get("train_config") or {})),
                   views.frozen_partner(runs, r) if r.method == "lora" else None) for r in runs]


def configurations(found: list[Member]) -> list[list[Member]]:
    """``found`` grouped by configuration, in order of first appearance; each group sorted by seed."""
    groups: dict[str, list[Member]] = {}
    for m in found:
        groups.setdefault(m.configuration, []).append(m)
    return [sorted(g, key=lambda m: (m.seed is None, m.seed if m.seed is not None else 0)) for g in groups.values()]


def fold_values(metrics: dict, key: str) -> dict[int, float]:
    """Fold -> a run's ``key`` (``uar``, ``war``) from its metrics as traced (empty where it recorded none)."""
    return {int(f["fold"]): float(f[key]) for f in metrics.get("folds", []) if f.get(key) is not None}


def over_seeds(per_seed: list[float], per_fold: list[dict[int, float]] | None = None,
               bounds: tuple[float, float] | None = None) -> dict:
    """One statistic over seeds: its values, mean and t interval, and its spread over fold models within each seed.

    Args:
        per_seed: the statistic of each seed's run, ``(n_seeds,)``.
        per_fold: for each seed, fold -> the statistic within that fold model (None: not computed per fold).
        bounds: the values the statistic can take (see ``t_interval``).

    Returns:
        ``per_seed``, ``mean``, ``ci``, ``std`` (over seeds), ``n``, ``confidence`` and, with ``per_fold``,
        ``fold_std`` (per seed, ddof 1 over its folds; None with one fold) and ``fold_std_mean``.
    """
    out = {"per_seed": [_finite(v) for v in per_seed], **t_interval(per_seed, bounds=bounds).to_json()}
    if per_fold is not None:
        stds = [float(np.std(v, ddof=1)) if len(v := [x for x in f.values() if np.isfinite(x)]) > 1 else np.nan
                for f in per_fold]
        out["fold_std"] = [_finite(s) for s in stds]
        finite = [s for s in stds if np.isfinite(s)]
        out["fold_std_mean"] = float(np.mean(finite)) if finite else None
    return out


def paired(lora: list[dict[int, float]], frozen: list[dict[int, float]], test: str = PAIRED_TEST) -> dict:
    """LoRA minus frozen, fold by fold of each seed, with the paired tests of ``PAIRED_TEST``.

    Args:
        lora: per seed, fold -> the LoRA run's score.
        frozen: per seed (the same order), fold -> its frozen partner's score; folds in both are paired.
        test: the tests in words, as the report states them (another pair of runs than LoRA and frozen).

    Returns:
        ``n_pairs``, ``difference`` (``over_seeds``' interval fields over the pairs), ``t``, ``p`` (two-sided
        paired t-test), ``wilcoxon_p`` (None where the differences are all zero or fewer than 2), and ``test``.
    """
    a, b = [], []
    for mine, theirs in zip(lora, frozen, strict=True):
        for fold in sorted(set(mine) & set(theirs)):
            a.append(mine[fold])
            b.append(theirs[fold])
    a, b = np.asarray(a), np.asarray(b)
    out = {"n_pairs": len(a), "difference": t_interval(a - b).to_json(), "t": None, "p": None, "wilcoxon_p": None,
           "test": test}
    if len(a) >= 2 and np.ptp(a - b) > 0:
        from scipy import stats

        test = stats.ttest_rel(a, b)
        out["t"], out["p"] = float(test.statistic), float(test.pvalue)
    if len(a) >= 2 and np.any(a != b):
        from scipy import stats

        out["wilcoxon_p"] = float(stats.wilcoxon(a, b).pvalue)
    return out


SCORE_BOUNDS = (0.0, 1.0)
"""What UAR and WAR can be: their intervals over seeds are cut to it."""


def metrics(group: list[Member]) -> dict:
    """UAR and WAR of a configuration's seeds and of their frozen partners, over seeds, and LoRA against frozen.

    Returns:
        ``uar``, ``war`` -> ``lora`` and ``frozen`` (``over_seeds`` of each seed's mean over folds, with the spread
        over folds; ``frozen`` None without partners) and ``paired`` (``paired``; None without partners).
    """
    out = {}
    for key in ("uar", "war"):
        mine = [fold_values(m.info.metrics, key) for m in group]
        theirs = [fold_values(m.frozen.metrics, key) if m.frozen else {} for m in group]
        mean = lambda folds: float(np.mean(list(folds.values()))) if folds else np.nan  # noqa: E731
        out[key] = {"lora": over_seeds([mean(f) for f in mine], mine, SCORE_BOUNDS),
                    "frozen": over_seeds([mean(f) for f in theirs], theirs, SCORE_BOUNDS) if any(theirs) else None,
                    "paired": paired(mine, theirs) if any(theirs) else None}
    return out


def findings(group: list[Member], per_run: list[list[dict]], per_fold: list[dict[int, list[dict]] | None],
             kind: str = "paper") -> list[dict]:
    """Each finding over a configuration's seeds: holds in k of n, and each of its statistics over seeds.

    Args:
        group: the configuration's runs, one per seed.
        per_run: per member, its findings (``finding``, ``holds``, ``criterion``, ``statistics``: name -> value).
        per_fold: per member, fold -> its findings within that fold model (None: not computed per fold).
        kind: ``paper`` or ``causal``, recorded in each entry.

    Returns:
        Per finding (in order of first appearance): ``finding``, ``kind``, ``criterion``, ``seeds`` (labels of the
        members it was computed for), ``holds`` (per those), ``k``, ``n``, ``holds_in`` ("k of n seeds"), and
        ``statistics``: name -> ``over_seeds``.
    """
    names = list(dict.fromkeys(f["finding"] for found in per_run for f in found))
    out = []
    for name in names:
        entries = [(m, next((f for f in found if f["finding"] == name), None), folds)
                   for m, found, folds in zip(group, per_run, per_fold, strict=True)]
        entries = [(m, f, folds) for m, f, folds in entries if f is not None]
        holds = [bool(f["holds"]) for _, f, _ in entries]
        stats = {}
        for stat in dict.fromkeys(s for _, f, _ in entries for s in f.get("statistics", {})):
            per_seed = [_number(f.get("statistics", {}).get(stat)) for _, f, _ in entries]
            by_fold = None
            if all(folds is not None for _, _, folds in entries):
                by_fold = [{fold: _number(next((g.get("statistics", {}).get(stat) for g in found
                                                if g["finding"] == name), None))
                            for fold, found in folds.items()} for _, _, folds in entries]
            stats[stat] = over_seeds(per_seed, by_fold)
        out.append({"finding": name, "kind": kind, "criterion": entries[0][1]["criterion"],
                    "seeds": [m.label for m, _, _ in entries], "holds": holds, "k": sum(holds), "n": len(holds),
                    "holds_in": f"{sum(holds)} of {len(holds)} seeds", "statistics": stats})
    return out


def _number(x) -> float:
    return float(x) if x is not None else np.nan


A_FROZEN_FINDINGS = ("A compression and B reconstruction", "forward alignment and backward differentiation")
"""The findings whose statistics (A and B concentration, CKA(A, B)) the A-frozen comparison sets side by side."""
A_FROZEN_TEST = ("the paper's reading that A aligns the forward pass and B differentiates the backward one (Zhu et "
                 "al., ICML 2024): with every A kept at its random start only B learns, so if UAR holds while A's "
                 "concentration falls, what A learns is not what the adapter needs")
"""What setting A frozen against A trained tests, as the report states it."""
A_FROZEN_PAIRED_TEST = ("paired t-test (scipy.stats.ttest_rel) of A frozen against A trained over every (seed, fold) "
                        "pair of the same seed, with the Wilcoxon signed-rank test (scipy.stats.wilcoxon) beside it; "
                        "descriptive p-values, as for LoRA against frozen")
"""The paired comparison of A frozen with A trained, as the report states it."""


def a_frozen_partners(groups: list[list[Member]]) -> list[tuple[list[Member], list[Member]]]:
    """Each A-frozen configuration (``freeze_a`` true) with the ordinary one that differs from it in ``freeze_a`` alone.

    Returns:
        ``(a_frozen, a_trained)`` pairs of groups, in the order of ``groups``; an A-frozen configuration without an
        ordinary partner is left out.
    """
    ordinary = {g[0].configuration: g for g in groups if not json.loads(g[0].configuration).get("freeze_a")}
    out = []
    for g in groups:
        key = json.loads(g[0].configuration)
        if key.pop("freeze_a", False) and (partner := ordinary.get(json.dumps(key, sort_keys=True, default=str))):
            out.append((g, partner))
    return out


def a_frozen_against_a_trained(a_frozen: list[Member], a_trained: list[Member], a_frozen_findings: list[dict],
                               a_trained_findings: list[dict]) -> dict:
    """An A-frozen configuration beside its ordinary partner: UAR, WAR, and the A/B spectra and CKA statistics.

    Args:
        a_frozen: the A-frozen configuration's runs, one per seed.
        a_trained: the ordinary configuration's runs.
        a_frozen_findings: ``findings`` of ``a_frozen``.
        a_trained_findings: ``findings`` of ``a_trained``.

    Returns:
        ``metrics``: ``uar``, ``war`` -> ``a_frozen`` and ``a_trained`` (``over_seeds``) and ``paired`` (``paired`` of
        A frozen minus A trained, each fold against the same fold of the same seed; seeds in both only); and
        ``statistics``: per statistic of ``A_FROZEN_FINDINGS``, ``finding``, ``statistic``, ``a_frozen`` and
        ``a_trained`` (``over_seeds``) and ``difference`` (A frozen's mean minus A trained's; None where either has
        no value).
    """
    trained_of = {m.seed: m for m in a_trained if m.seed is not None}
    both = [(m, trained_of[m.seed]) for m in a_frozen if m.seed in trained_of]
    mine, theirs = metrics(a_frozen), metrics(a_trained)
    out: dict = {"metrics": {}, "statistics": [], "test": A_FROZEN_TEST}
    for key in ("uar", "war"):
        pairs = paired([fold_values(f.info.metrics, key) for f, _ in both],
                       [fold_values(t.info.metrics, key) for _, t in both], A_FROZEN_PAIRED_TEST)
        out["metrics"][key] = {"a_frozen": mine[key]["lora"], "a_trained": theirs[key]["lora"], "paired": pairs}
    trained = {f["finding"]: f["statistics"] for f in a_trained_findings}
    for f in a_frozen_findings:
        if f["finding"] not in A_FROZEN_FINDINGS or f["finding"] not in trained:
            continue
        for stat, value in f["statistics"].items():
            if (other := trained[f["finding"]].get(stat)) is None:
                continue
            difference = (value["mean"] - other["mean"] if value["mean"] is not None and other["mean"] is not None
                          else None)
            out["statistics"].append({"finding": f["finding"], "statistic": stat, "a_frozen": value,
                                      "a_trained": other, "difference": difference})
    return out
