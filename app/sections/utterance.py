"""Utterance: listen, see its spectrogram, scrub layers, and follow the logit lens; LoRA beside frozen."""

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, data, widgets
from app.analysis import lens

view = widgets.view_state()
widgets.present(view)
path = data.store_path()
run = widgets.pick_run(view)
partner = widgets.frozen_partner(run) if run.method == "lora" else None
table = data.table(path, run.name)
traced = table[table["traced"]]

with st.sidebar:
    st.markdown("**Find an utterance**")
    query = st.text_input("Search id", key="utt-search")
    emotion = st.selectbox("Emotion", ["all", *sorted(traced["emotion"].unique())], key="utt-emotion")
    speaker = st.selectbox("Speaker", ["all", *sorted(traced["speaker"].unique())], key="utt-speaker")
    outcome = st.selectbox("Outcome", ["all", "correct", "wrong"], key="utt-outcome")
choices = traced
if query:
    choices = choices[choices["id"].str.contains(query, case=False, regex=False)]
if emotion != "all":
    choices = choices[choices["emotion"] == emotion]
if speaker != "all":
    choices = choices[choices["speaker"] == speaker]
if outcome != "all":
    choices = choices[choices["correct"] == (outcome == "correct")]
if choices.empty:
    st.warning("No traced utterance matches these filters.")
    st.stop()
ids = choices["id"].tolist()
utt = st.selectbox("Utterance", ids, index=ids.index(view.utt) if view.utt in ids else 0, key="utt-id",
                   format_func=lambda i: f"{i} · {choices.loc[choices['id'] == i, 'emotion'].iloc[0]}")
view.utt = utt
row = int(choices.loc[choices["id"] == utt, "row"].iloc[0])
info = table.iloc[row]
n_boundaries = run.n_layers + 1
layer = st.slider("Layer boundary (0 = embeddings)", 0, n_boundaries - 1,
                  min(view.layer, n_boundaries - 1) if view.layer is not None else n_boundaries - 1,
                  key="utt-layer")
view.layer = layer

st.markdown(f"**{utt}** · speaker {info['speaker']} · true **{info['emotion']}** · "
            f"predicted **{info['prediction']}** · {info['duration']:.2f} s · fold {info['fold']}")
widgets.synthetic_note(table.iloc[[row]])
st.audio(data.reader(path).audio(row), sample_rate=16000)


def column(run_name: str, title: str, key: str) -> None:
    """One run's view of the utterance: lens metrics, trajectory, layers x time, spectrogram."""
    pooled, frames, mel = data.lens_rows(path, run_name, row)
    emotions = next(r.emotions for r in data.runs(path) if r.name == run_name)
    probs = lens.trajectory(pooled)
    kl = lens.kl_to_final(pooled[None])[0]
    top = probs.argmax(-1)
    depth = int(lens.resolution_depth(pooled[None])[0])
    st.markdown(f"#### {title}")
    m1, m2, m3 = st.columns(3)
    m1.metric("KL to final", f"{kl[layer]:.3f}")
    m2.metric("Top-1 here", emotions[top[layer]], "= final" if top[layer] == top[-1] else "≠ final")
    m3.metric("Resolution depth", depth)
    frame = pd.DataFrame([{"boundary": b, "emotion": e, "probability": float(probs[b, i])}
                          for b in range(len(probs)) for i, e in enumerate(emotions)])
    widgets.chart(charts.trajectory(frame, layer, "Class probabilities across layers"), frame,
                  f"{run_name}-{utt}-trajectory", f"{key}-traj")
    target = st.selectbox("Class for the layers x time view", emotions, index=int(top[-1]), key=f"{key}-class")
    n = int(info["n_frames"])
    heat = lens.frame_probabilities(frames, n, emotions.index(target))
    hframe = pd.DataFrame({"time (s)": np.repeat(np.round(np.arange(n) * 0.02, 2)[None], len(heat), 0).ravel(),
                           "boundary": np.repeat(np.arange(len(heat)), n), "probability": heat.ravel()})
    widgets.chart(charts.time_heatmap(hframe, "boundary", f"P({target}) per layer and frame", [0, 1]), hframe,
                  f"{run_name}-{utt}-frames", f"{key}-frames")
    # Two mel frames per encoder frame: average them so the spectrogram shares the heatmap's time axis.
    mel = mel[:, : 2 * n].reshape(mel.shape[0], n, 2).mean(-1)[::2]
    mframe = pd.DataFrame({"time (s)": np.repeat(np.round(np.arange(n) * 0.02, 2)[None], mel.shape[0], 0).ravel(),
                           "mel": np.repeat(np.arange(0, 2 * mel.shape[0], 2), n), "log-mel": mel.ravel()})
    widgets.chart(charts.time_heatmap(mframe, "mel", "Log-mel spectrogram (the model's input)", scheme="magma",
                                      value="log-mel"), mframe, f"{utt}-logmel", f"{key}-mel")


if partner is not None:
    left, right = st.columns(2)
    with left:
        column(run.name, f"LoRA · {run.name}", "lora")
    with right:
        column(partner.name, f"Frozen · {partner.name}", "frozen")
else:
    column(run.name, run.name, "only")
widgets.remember(view)
