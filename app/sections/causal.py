"""Causal: what switching LoRA off or on per layer, erasing or patching a layer, or changing the audio does."""

import pandas as pd
import streamlit as st

from loralens.analysis import views
from loralens.analysis.causal import KIND_LABELS, parse
from loralens.analysis.counterfactuals import AUDIO_KINDS, CHANGES
from loralens.app import cache, charts, state, widgets

LABELS = {"uar_drop": "UAR drop", "kl": "KL(none || condition)", "flipped": "share flipped"}

view = widgets.view_state()
widgets.present(view)
path = cache.store_path()
run = widgets.pick_run(view)
causal = cache.causal(path, run.name)
if causal is None:
    st.info(f"No interventions for {run.name} in this store yet. Compute them (a few minutes for 100 utterances of "
            "whisper-base on a CPU; --partner names the run to patch from):")
    st.code(f"loralens intervene --run RUN_DIR --store {path} --partner OTHER_RUN_DIR", language="bash")
    widgets.stop(view)

column = st.radio("Measure", state.MEASURES, index=widgets.index(state.MEASURES, view.measure), horizontal=True,
                  format_func=LABELS.get, key="ca-measure")
view.measure = column
if len(causal.metrics) == 1:
    st.info(f"Only the model as trained is done for {run.name} so far; the interventions appear here as "
            "loralens intervene finishes them (this page refreshes what it reads every 30 s).")
    widgets.stop(view)
none = causal.metrics.iloc[0]
partner = cache.causal(path, causal.partner) if causal.partner else None
if partner is not None and partner.partner != run.name:  # its patches came from another run: not shown beside
    partner.metrics = partner.metrics[partner.metrics["kind"] != "patch"]
runs = {run.name: causal} | ({causal.partner: partner} if partner is not None else {})
st.caption(f"As trained: UAR {none['uar']:.3f}, WAR {none['war']:.3f} over {len(causal.predictions)} utterances, "
           "each through the fold model that held it out. Click a cell to list the utterances it flips.")

# Inside the model: a layer x intervention heatmap per run, the partner beside it.
picked = None
model_kinds = {name: c.metrics[c.metrics["layer"] >= 0] for name, c in runs.items()}
if any(len(m) for m in model_kinds.values()):
    st.subheader("Inside the model")
    cells = pd.concat([m.assign(run=name) for name, m in model_kinds.items()], ignore_index=True)
    domain = [float(cells[column].min()), float(cells[column].max())] if len(cells) else None
    for col, (name, grid) in zip(st.columns(len(runs)), model_kinds.items(), strict=True):
        with col:
            if len(grid):
                event = widgets.chart(charts.interventions(grid.assign(kind=grid["kind"].map(KIND_LABELS)), column,
                                                           f"{name}: {LABELS[column]}", domain,
                                                           list(KIND_LABELS.values())),
                                      grid, f"{name}-causal-{column}", "ca" if name == run.name else "ca-partner",
                                      select=name == run.name)
                picked = charts.picked_id(event, "condition") if name == run.name else picked
    patched = f" patch: layer k's output replaced by {causal.partner}'s." if causal.partner else ""
    st.caption("LoRA off at k: layer k's adapter off; LoRA only at k: every adapter off but layer k's; LoRA off from "
               "k up; block k erased: its output is its input (its update zero)." + patched)

# The audio itself: each change at each strength, both runs on one axis.
audio = pd.concat([c.metrics[c.metrics["kind"].isin(AUDIO_KINDS)].assign(run=name) for name, c in runs.items()],
                  ignore_index=True)
if len(audio):
    st.subheader("The audio itself")
    audio["label"] = [f"{CHANGES[k].label} ({CHANGES[k].unit})" for k in audio["kind"]]
    widgets.chart(charts.audio_changes(audio, column, f"{LABELS[column]} per audio change"), audio,
                  f"{run.name}-audio-{column}", "ca-audio")

options = list(causal.metrics["condition"].iloc[1:])
if picked != st.session_state.get("ca-picked"):  # a new click (the chart keeps its last selection across reruns)
    st.session_state["ca-picked"] = picked
    if picked in options:
        st.session_state["ca-condition"] = picked
if st.session_state.get("ca-condition") not in options:  # first draw (from the link) or a run without it
    st.session_state["ca-condition"] = options[widgets.index(options, view.condition)]
condition = st.selectbox("Condition", options, key="ca-condition")
view.condition = condition
predictions = causal.predictions
flipped = predictions[predictions[condition] != predictions["none"]][["row", "id", "emotion", "none", condition]]
st.markdown(f"**{len(flipped)} of {len(predictions)}** utterances change their prediction under {condition}")
widgets.table(flipped.rename(columns={"none": "as trained", condition: "under " + condition}))

# One utterance: its trajectory under the condition over the original; an audio change played beside the original.
st.subheader("One utterance")
ids = list(dict.fromkeys([*flipped["id"], *predictions["id"]]))  # the flipped ones first
ids = views.listed(pd.DataFrame({"id": ids}), st.session_state.get("ca-utt", view.utt))["id"].tolist()
if len(ids) < len(predictions):
    st.caption(f"Listing {len(ids):,} of the {len(predictions):,} utterances, those the condition flips first.")
if st.session_state.get("ca-utt") not in ids:
    st.session_state["ca-utt"] = ids[widgets.index(ids, view.utt)]
uid = st.selectbox("Utterance", ids, key="ca-utt")
view.utt = uid
row = int(predictions.loc[predictions["id"] == uid, "row"].iloc[0])
kind, _, at = parse(condition)
if kind in AUDIO_KINDS:
    strengths = sorted(float(s) for s in causal.metrics.loc[causal.metrics["kind"] == kind, "strength"])
    st.session_state["ca-strength"] = at  # the condition rules; the slider moves it

    def _to_strength(kind: str = kind) -> None:
        st.session_state["ca-condition"] = f"{kind}@{st.session_state['ca-strength']:g}"

    st.select_slider(f"{CHANGES[kind].label} ({CHANGES[kind].unit})", strengths, format_func=lambda s: f"{s:g}",
                     key="ca-strength", on_change=_to_strength)
    left, right = st.columns(2)
    left.caption("Original")
    left.audio(cache.audio_wav(path, row), format="audio/wav")
    right.caption(condition + (" (plays clipped where louder than full scale)" if kind == "loudness" and at > 0
                               else ""))
    right.audio(cache.altered_wav(path, row, kind, at), format="audio/wav")
trajectory = causal.trajectory(row, condition)
widgets.chart(charts.trajectories(trajectory, f"{uid}: lens as trained and under {condition}"), trajectory,
              f"{run.name}-{uid}-{condition}", "ca-trajectory")
widgets.remember(view)
