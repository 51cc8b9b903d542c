"""Utterance: listen, see its log-mel, scrub layers, and follow the logit lens; LoRA beside frozen."""

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from loralens.analysis import lens, views
from loralens.app import cache, charts, state, widgets

view = widgets.view_state()
widgets.present(view)
path = cache.store_path()
run = widgets.pick_run(view)
partner = views.frozen_partner(cache.runs(path), run) if run.method == "lora" else None
table = cache.table(path, run.name)
traced = table[table["traced"]]

with st.sidebar:
    st.markdown("**Find an utterance**")
    query = st.text_input("Search id", view.search, max_chars=state.MAX_TEXT, key="utt-search")
    emotions, speakers = ["all", *sorted(traced["emotion"].unique())], ["all", *sorted(traced["speaker"].unique())]
    # The URL's filters are lists (Overview picks several); this page picks one.
    emotion = st.selectbox("Emotion", emotions, index=widgets.index(emotions, next(iter(view.emotion), "all")),
                           key="utt-emotion")
    speaker = st.selectbox("Speaker", speakers, index=widgets.index(speakers, next(iter(view.speaker), "all")),
                           key="utt-speaker")
    outcome = st.selectbox("Outcome", state.OUTCOMES, index=widgets.index(state.OUTCOMES, view.outcome),
                           key="utt-outcome")
view.search, view.outcome = query, outcome
view.emotion = () if emotion == "all" else (emotion,)
view.speaker = () if speaker == "all" else (speaker,)
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
    widgets.stop(view)
total = len(choices)
choices = views.listed(choices, view.utt)
if len(choices) < total:
    st.caption(f"Listing {len(choices):,} of the {total:,} matching utterances: search by id or filter by emotion, "
               "speaker or outcome (in the sidebar) to reach the others.")
ids = choices["id"].tolist()
labels = dict(zip(choices["id"], choices["id"] + " · " + choices["emotion"], strict=True))
utt = st.selectbox("Utterance", ids, index=ids.index(view.utt) if view.utt in ids else 0, key="utt-id",
                   format_func=labels.get)
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
st.audio(cache.audio_wav(path, row), format="audio/wav")


@st.cache_data(show_spinner=False, max_entries=128)
def mel_view(path: str, row: int, n: int) -> tuple[widgets.Figure, pd.DataFrame]:
    """The utterance's log-mel (every run's input alike), drawn once above the runs' columns.

    Two mel frames per encoder frame are averaged, so it shares the layers x time views' time axis.
    """
    mel = cache.log_mel(path, row)
    mel = mel[:, : 2 * n].reshape(mel.shape[0], n, 2).mean(-1)  # an image: every mel bin, every frame
    mframe = pd.DataFrame({"time (s)": np.repeat(np.round(np.arange(n) * 0.02, 2)[None], len(mel), 0).ravel(),
                           "mel": np.repeat(np.arange(len(mel)), n), "log-mel": mel.ravel()})
    chart = charts.time_image(mel, 0.02, "mel", "Log-mel spectrogram (the model's input)", value="log-mel")
    return widgets.figure(chart), mframe  # its CSV is written when the export is asked for


widgets.chart(*mel_view(path, row, int(info["n_frames"])), f"{utt}-logmel", "utt-mel")

run_dir = cache.reader(path).attrs(run.name).get("run_dir")
if st.toggle(f"Where in the clip did {run.name} hear its prediction? (runs its model: a few seconds)",
             key="utt-where"):
    if not run_dir or not (Path(run_dir) / "config.json").is_file():
        st.info(f"The checkpoints of {run.name} are not on this machine (run directory {run_dir or 'unknown'}); "
                "the occlusion map runs the model. Open the store where it was traced.")
    else:
        from loralens.app import inference  # torch: loaded only when asked

        clip = cache.reader(path).audio(row)
        with st.spinner("Silencing each stretch of the clip in turn ..."):
            occluded = inference.occlusion(run_dir, int(info["fold"]), clip)
        widgets.where_in_clip(clip, occluded, utt, "utt-occlusion")


@st.cache_data(show_spinner=False, max_entries=128)
def lens_view(path: str, run_name: str, row: int, n: int, target: str | None) -> dict:
    """Everything of one run's view of an utterance that does not depend on the layer slider.

    Built once per utterance, run and class and cached, so moving the slider only moves the mark.
    """
    pooled, frames = cache.lens_rows(path, run_name, row)
    emotions = next(r.emotions for r in cache.runs(path) if r.name == run_name)
    probs = lens.trajectory(pooled)
    top = probs.argmax(-1)
    target = target if target in emotions else emotions[int(top[-1])]
    frame = pd.DataFrame([{"boundary": b, "emotion": e, "probability": float(probs[b, i])}
                          for b in range(len(probs)) for i, e in enumerate(emotions)])
    # The heatmap of a long clip is drawn in blocks of frames (a 30 s clip of a 32-layer model is 50,000 cells).
    heat, step = views.time_blocks(lens.frame_probabilities(frames, n, emotions.index(target)))
    columns = heat.shape[1]
    times = np.round(np.arange(columns) * step * 0.02, 2)
    hframe = pd.DataFrame({"time (s)": np.repeat(times[None], len(heat), 0).ravel(),
                           "boundary": np.repeat(np.arange(len(heat)), columns), "probability": heat.ravel()})
    heat_title = f"P({target}) per layer and frame"
    heat_chart = charts.time_image(heat, step * 0.02, "boundary", heat_title, "probability",
                                   charts.PROBABILITY_COLOURS, (0.0, 1.0))
    return {
        "emotions": emotions, "target": target, "top": top, "kl": lens.kl_to_final(pooled[None])[0],
        "depth": int(lens.resolution_depth(pooled[None])[0]),
        "trajectory": (charts.trajectory(frame, "Class probabilities across layers").to_dict(validate=False),
                       frame),
        "frames": (widgets.figure(heat_chart), hframe),  # the CSVs are written when an export is asked for
    }


def column(run_name: str, title: str, key: str, lens_class: str | None) -> str | None:
    """One run's view of the utterance: lens metrics, trajectory, layers x time.

    ``lens_class`` (the URL's) is the layers x time view's emotion until one is picked here; returns the one
    shown, or None where it is the default (the final prediction).
    """
    n = int(info["n_frames"])
    chosen = st.session_state.get(f"{key}-class", lens_class)
    v = lens_view(path, run_name, row, n, chosen)
    emotions, top, kl = v["emotions"], v["top"], v["kl"]
    st.markdown(f"#### {title}")
    m1, m2, m3 = st.columns(3)
    m1.metric(lens.KL_LABELS["final||layer"], f"{kl[layer]:.3f}",
              help="KL(p_L ‖ p_l): the final prediction's distribution against this layer's, as in the paper")
    m2.metric("Top-1 here", emotions[top[layer]], "= final" if top[layer] == top[-1] else "≠ final")
    m3.metric("Resolution depth", v["depth"])
    spec, frame = v["trajectory"]
    widgets.chart(charts.mark_boundary(spec, layer), frame, f"{run_name}-{utt}-trajectory", f"{key}-traj")
    shown = st.selectbox("Class for the layers x time view", emotions, index=emotions.index(v["target"]),
                         key=f"{key}-class")
    widgets.chart(*v["frames"], f"{run_name}-{utt}-frames", f"{key}-frames")
    return None if shown == emotions[int(top[-1])] else shown


if partner is not None:
    left, right = st.columns(2)
    with left:
        view.lens_class = column(run.name, f"LoRA · {run.name}", "lora", view.lens_class)
    with right:
        view.frozen_lens_class = column(partner.name, f"Frozen · {partner.name}", "frozen", view.frozen_lens_class)
else:
    view.lens_class = column(run.name, run.name, "only", view.lens_class)
widgets.remember(view)
