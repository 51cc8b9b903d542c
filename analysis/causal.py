"""The causal lens's figures of merit (``loralens intervene``): what each intervention does to a run's decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from loralens.analysis.counterfactuals import AUDIO_KINDS, CHANGES

KIND_LABELS = {"lora_off": "LoRA off at k", "lora_only": "LoRA only at k", "lora_off_from": "LoRA off from k up",
               "erase": "block k erased", "patch": "layer k patched in"}
"""The interventions inside the model, in the order the heatmaps list them, as they are labelled there."""


def parse(name: str) -> tuple[str, int, float]:
    """A condition's name (``erase@3``, ``pitch@-2``, ``none``) as its kind, layer and audio strength.

    Layer -1 and strength NaN where the condition has none; ``loralens.precompute.intervene.Condition`` checks the name.
    """
    kind, _, at = name.partition("@")
    audio = kind in AUDIO_KINDS
    return kind, int(at) if at and not audio else -1, float(at) if audio else np.nan


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) over the last axis, in nats (probabilities floored at 1e-12)."""
    from scipy.special import rel_entr  # here, not at import: see metrics

    return rel_entr(np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)).sum(-1)


def metrics(conditions: list[str], probabilities: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """What each condition did to a run's decisions, one row per condition.

    Columns: ``condition``, ``kind``, ``layer`` (-1: none), ``strength`` (of an audio change, else NaN), ``uar``,
    ``war``, ``kl`` (mean KL(none || condition)), ``flipped`` (share of predictions changed), ``uar_drop``.

    Args:
        conditions: names (``loralens.precompute.intervene``), ``none`` first.
        probabilities: ``(condition, utterance, class)``.
        labels: true class per utterance, ``(utterance,)``.
    """
    # Imported here: at import time scikit-learn (through app.views) held every page of a freshly started explorer
    # back by a second.
    from sklearn.metrics import balanced_accuracy_score

    if not conditions or conditions[0] != "none":
        raise ValueError(f"conditions must start with none (the model as trained), got {conditions[:1]}")
    baseline = probabilities[0]
    rows = []
    for name, p in zip(conditions, probabilities, strict=True):
        kind, layer, strength = parse(name)
        predicted = p.argmax(-1)
        rows.append({"condition": name, "kind": kind, "layer": layer, "strength": strength,
                     "uar": float(balanced_accuracy_score(labels, predicted)),
                     "war": float(np.mean(labels == predicted)), "kl": float(kl(baseline, p).mean()),
                     "flipped": float(np.mean(predicted != baseline.argmax(-1)))})
    frame = pd.DataFrame(rows)
    frame["uar_drop"] = frame["uar"].iloc[0] - frame["uar"]
    return frame


def _profile(frame: pd.DataFrame, kind: str) -> pd.Series:
    """UAR drop per layer of one kind, indexed by layer (empty where the kind was not computed)."""
    rows = frame[frame["kind"] == kind].sort_values("layer")
    return pd.Series(rows["uar_drop"].to_numpy(), index=rows["layer"].to_numpy(), dtype=float)


def _numbers(profile: pd.Series) -> str:
    return ", ".join(f"{v:+.3f}" for v in profile)


def findings(lora: pd.DataFrame, frozen: pd.DataFrame | None, n_layers: int) -> list[dict]:
    """The report's causal findings from a LoRA run's interventions (``metrics``) and its frozen partner's.

    Each: ``finding``, ``holds``, ``evidence`` (the numbers), ``criterion`` and ``statistics`` (name -> the number
    the criterion reads), like the report's other findings; a finding whose conditions were not computed is left out.
    """
    out = []
    second_half = n_layers / 2
    off = _profile(lora, "lora_off")
    if len(off):
        worst = int(off.idxmax())
        off_from = _profile(lora, "lora_off_from")
        out.append({
            "finding": "delayed specialization, causally: LoRA matters most in late layers",
            "holds": bool(worst >= second_half),
            "evidence": f"UAR drop with one layer's LoRA off, layers 0-{n_layers - 1}: {_numbers(off)}; largest at "
                        f"layer {worst}" + (f"; LoRA off from layer k up: {_numbers(off_from)}" if len(off_from)
                                            else ""),
            "criterion": f"switching off one layer's adapter costs the most UAR in the second half of the layers "
                         f"(layer >= {second_half:g})",
            "statistics": {"layer of the largest UAR drop": float(worst), "largest UAR drop": float(off.max())}})
    patch = _profile(lora, "patch")
    if len(patch):
        worst = int(patch.idxmax())
        reverse = _profile(frozen, "patch") if frozen is not None else ()
        out.append({
            "finding": "frozen residuals patched into LoRA destroy its decision late, not early",
            "holds": bool(worst >= second_half and patch.iloc[-1] > patch.iloc[0]),
            "evidence": f"UAR drop with layer k's output replaced by the frozen encoder's: {_numbers(patch)}; largest "
                        f"at layer {worst}" + (f"; frozen with LoRA's residual patched in: {_numbers(reverse)}"
                                               if len(reverse) else ""),
            "criterion": "LoRA's later layers recover from an early frozen residual but not from a late one: the "
                         f"drop is largest in the second half (layer >= {second_half:g}) and larger at the last layer "
                         "than at the first",
            "statistics": {"layer of the largest UAR drop": float(worst),
                           "last minus first layer's UAR drop": float(patch.iloc[-1] - patch.iloc[0])}})
    audio = lora[lora["kind"].isin(AUDIO_KINDS)]
    if len(audio):
        parts, mildest = [], {}
        for kind in AUDIO_KINDS:
            rows = audio[audio["kind"] == kind]
            if not len(rows):
                continue
            identity = CHANGES[kind].identity
            distance = (rows["strength"] - identity).abs() if np.isfinite(identity) else -rows["strength"]
            # Both sides of a symmetric grid (pitch -2 and +2, tempo 0.9 and 1.1: |0.9 - 1| < |1.1 - 1| in floats)
            mild = np.isclose(distance, distance.min(), rtol=1e-9, atol=1e-9)
            mildest[kind] = float(rows.loc[mild, "flipped"].max())
            theirs = frozen[frozen["condition"].isin(rows["condition"])] if frozen is not None else None
            parts.append(f"{kind}: " + ", ".join(
                f"{r.condition.partition('@')[2]} {r.flipped:.0%}" for r in rows.itertuples())
                + (f" (frozen {', '.join(f'{v:.0%}' for v in theirs['flipped'])})" if theirs is not None
                   and len(theirs) else ""))
        out.append({
            "finding": "predictions robust to mild audio changes",
            "holds": bool(max(mildest.values()) < 0.25),
            "evidence": "share of predictions flipped per strength: " + "; ".join(parts),
            "criterion": "at the mildest strength of every audio change fewer than 25% of the predictions flip",
            "statistics": {"largest share flipped at a mildest strength": max(mildest.values())}})
    return out
