"""Overview: the store's runs and their scores (a configuration's seeds together), and the utterance table."""

import numpy as np
import pandas as pd
import streamlit as st

from loralens.analysis import seeds
from loralens.app import cache, charts, state, widgets


@st.cache_data(show_spinner=False)
def seed_table(path: str) -> tuple[dict[str, int | None], pd.DataFrame]:
    """Run -> its seed, and a row per configuration with runs that differ only in seed (``analysis.seeds``)."""
    found = seeds.members(cache.reader(path))
    rows = []
    for group in seeds.configurations(found):
        if len(group) < 2:
            continue
        m = seeds.metrics(group)
        spread = m["uar"]["lora"]["fold_std_mean"]
        paired = m["uar"]["paired"]
        rows.append({"configuration": seeds.describe(group[0]), "seeds": ", ".join(m.label for m in group),
                     "runs": ", ".join(m.info.name for m in group),
                     "UAR": interval(m["uar"]["lora"]), "WAR": interval(m["war"]["lora"]),
                     "UAR spread over folds": f"{spread:.3f}" if spread is not None else "–",
                     "frozen UAR": interval(m["uar"]["frozen"]),
                     "minus frozen, per fold": (f"{interval(paired['difference'])}, p = {paired['p']:.2g}"
                                                if paired and paired["p"] is not None else
                                                interval(paired["difference"]) if paired else "–")})
    return {m.info.name: m.seed for m in found}, pd.DataFrame(rows)


def interval(entry: dict | None) -> str:
    """``mean [low, high]`` of a statistic over seeds."""
    if not entry or entry["mean"] is None:
        return "–"
    low, high = entry["ci"]
    return f"{entry['mean']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


view = widgets.view_state()
widgets.present(view)
path = cache.store_path()
st.title("loralens")
st.caption(f"Store: `{path}`")

seed_of, configurations = seed_table(path)
rows = []
for run in cache.runs(path):
    m = run.metrics
    fmt = lambda k: f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}" if m.get(k) else "–"  # noqa: E731
    rows.append({"run": run.name, "model": run.model, "method": run.method + (", A frozen" if run.freeze_a else ""),
                 "rank": str(run.rank) if run.method == "lora" else "",
                 "targets": ",".join(run.targets) if run.method == "lora" else "", "window": run.window,
                 "seed": "" if seed_of.get(run.name) is None else str(seed_of[run.name]),
                 "UAR": fmt("uar"), "WAR": fmt("war"), "macro-F1": fmt("macro_f1"),
                 "folds": f"{m.get('n_done', 0)}/{m.get('n_folds', 0)}",
                 "checkpoints": ", ".join(run.checkpoints), "origin": run.origin})
st.subheader("Runs")
st.caption("UAR (unweighted average recall), WAR (accuracy) and macro-F1 (mean per-class F1; – for runs trained before "
           "loralens scored it): mean ± std over the folds, each fold's model scored on speakers it never heard "
           "(speaker-independent cross-validation). 'A frozen': LoRA trained with every A at its random start.")
# Small static tables (st.table): they draw with the page, without the interactive grid's scripts.
st.table(pd.DataFrame(rows), hide_index=True, border="horizontal")
if len(configurations):
    st.subheader("Seeds")
    st.caption("Runs that differ only in seed (their training config but for the seed), together: the mean over "
               "seeds of each seed's UAR and WAR (its mean over folds) with a 95 % Student's t interval; the spread "
               "over folds (standard deviation over a seed's folds, averaged over seeds); and LoRA minus its frozen "
               "partner of the same seed, fold by fold, with the paired t-test over every (seed, fold) pair (folds "
               "share their test speakers across seeds: the p-value is descriptive). `loralens report` adds the "
               "paper's findings per seed.")
    st.table(configurations, hide_index=True, border="horizontal")

run = widgets.pick_run(view)
if not run.held_out:
    st.warning(f"{run.name}'s predictions are **not held out**: it was imported as one model that may have trained on "
               "any of these utterances (loralens import --not-held-out). Its UAR, WAR and every figure describe data "
               "the model may have seen.")
folds = run.metrics.get("folds", [])
left, right = st.columns(2)
with left:
    st.markdown("**Per fold**")
    st.table(pd.DataFrame([{"fold": f["fold"], "test speakers": ",".join(f["test_speakers"]), "UAR": f"{f['uar']:.3f}",
                            "WAR": f"{f['war']:.3f}", "macro-F1": f"{f['macro_f1']:.3f}" if "macro_f1" in f else "–",
                            "epoch": f.get("epoch")} for f in folds]),
             hide_index=True, border="horizontal")
with right:
    if folds:
        confusion = np.sum([np.array(f["confusion"]) for f in folds], axis=0)
        frame = pd.DataFrame([{"true": t, "predicted": p, "count": int(confusion[i, j])}
                              for i, t in enumerate(run.emotions) for j, p in enumerate(run.emotions)])
        st.markdown("**Confusion, all folds** (rows: true emotion; columns: predicted; shade: share of the row)")
        widgets.shaded_table(pd.DataFrame(confusion, index=pd.Index(run.emotions, name="true"), columns=run.emotions),
                             charts.heatmap(frame, "predicted", "true", "count", "Confusion (all folds)",
                                            scheme="oranges"), frame, f"{run.name}-confusion", "confusion")

st.subheader("Utterances")
table = cache.table(path, run.name)
widgets.synthetic_note(table)
c1, c2, c3 = st.columns(3)
emotion_options, speaker_options = sorted(table["emotion"].unique()), sorted(table["speaker"].unique())
emotions = c1.multiselect("Emotion", emotion_options, [e for e in view.emotion if e in emotion_options],
                          key="ov-emotion")
speakers = c2.multiselect("Speaker", speaker_options, [s for s in view.speaker if s in speaker_options],
                          key="ov-speaker")
outcome = c3.selectbox("Outcome", state.OUTCOMES, index=widgets.index(state.OUTCOMES, view.outcome), key="ov-outcome")
view.emotion, view.speaker, view.outcome = tuple(emotions), tuple(speakers), outcome
shown = table[table["traced"]]
if emotions:
    shown = shown[shown["emotion"].isin(emotions)]
if speakers:
    shown = shown[shown["speaker"].isin(speakers)]
if outcome != "all":
    shown = shown[shown["correct"] == (outcome == "correct")]
st.dataframe(shown[["id", "speaker", "emotion", "prediction", "correct", "fold", "duration", "dataset"]],
             hide_index=True, width="stretch")
st.caption(f"{len(shown)} of {int(table['traced'].sum())} traced utterances; the store holds "
           f"{len(table)} utterances and {len(cache.runs(path))} runs.")
widgets.remember(view)
