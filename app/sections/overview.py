"""Overview: the store's runs, their cross-validated scores, and the utterance table."""

import numpy as np
import pandas as pd
import streamlit as st

from loralens.app import cache, charts, state, widgets

view = widgets.view_state()
widgets.present(view)
path = cache.store_path()
st.title("loralens")
st.caption(f"Store: `{path}`")

rows = []
for run in cache.runs(path):
    m = run.metrics
    fmt = lambda k: f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}" if m.get(k) else "–"  # noqa: E731
    rows.append({"run": run.name, "model": run.model, "method": run.method + (", A frozen" if run.freeze_a else ""),
                 "rank": str(run.rank) if run.method == "lora" else "",
                 "targets": ",".join(run.targets) if run.method == "lora" else "", "window": run.window,
                 "UAR": fmt("uar"), "WAR": fmt("war"), "macro-F1": fmt("macro_f1"),
                 "folds": f"{m.get('n_done', 0)}/{m.get('n_folds', 0)}",
                 "checkpoints": ", ".join(run.checkpoints), "origin": run.origin})
st.subheader("Runs")
st.caption("UAR (unweighted average recall), WAR (accuracy) and macro-F1 (mean per-class F1; – for runs trained before "
           "loralens scored it): mean ± std over the folds, each fold's model scored on speakers it never heard "
           "(speaker-independent cross-validation). 'A frozen': LoRA trained with every A at its random start.")
# Small static tables (st.table): they draw with the page, without the interactive grid's scripts.
st.table(pd.DataFrame(rows), hide_index=True, border="horizontal")

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
