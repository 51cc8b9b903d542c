"""Upload: run your own clip through a checkpoint and see its per-layer predictions and where it lands."""

import html
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from scipy.special import softmax

from loralens.analysis import causal, counterfactuals, occlusion, projections, views
from loralens.app import cache, charts, inference, widgets
from loralens.app.inference import MAX_SECONDS, AudioError, load_audio, prepare_speech, windows
from loralens.store.schema import SAMPLE_RATE

MAX_WINDOWS = 20
"""The most 30 s windows of one upload this page analyses (10 minutes)."""
MAX_CONDITIONS = 8
"""The most interventions computed on one upload at once: each is a forward pass of the clip."""

view = widgets.view_state()
widgets.present(view)
path = cache.store_path()
run = widgets.pick_run(view, key="up-run", human_speech=True)
if run.trained_on == "synthetic":
    st.warning(f"{run.name} learned from synthetic speech (the offline espeak-ng corpus): on a human voice it answers "
               "at about chance. Pick a run trained on human speech, such as the demo's real-speech model.")
else:
    st.caption(f"{run.name} learned from {run.trained_on} speech"
               + (f" (what to expect of it on other voices: its model card, "
                  f"`{Path(run.source['checkpoints'][0]) / 'README.md'}`)" if run.source and run.source.get("card")
                  else "") + ".")
attrs = cache.reader(path).attrs(run.name)
run_dir = attrs.get("run_dir")
if not run_dir or not (Path(run_dir) / "config.json").is_file():
    st.warning(f"The checkpoints of {run.name} are not on this machine (run directory {run_dir or 'unknown'}); "
               "uploads need them. Re-trace the run here, or open the store where it was traced.")
    widgets.stop(view)
folds = {f["fold"]: f for f in run.metrics.get("folds", [])}


def fold_label(k: int) -> str:
    """A fold checkpoint as the user picks it: the speakers it never saw in training, and its UAR on them."""
    f = folds[k]
    return f"fold {k} · test speakers {', '.join(f['test_speakers'])} · UAR {f['uar']:.3f}"


fold = next(iter(folds), None)
if len(folds) > 1:  # one model (an imported checkpoint): nothing to pick
    fold = st.selectbox("Checkpoint (fold)", list(folds), index=widgets.index(list(folds), view.fold), key="up-fold",
                        format_func=fold_label)
    # The first fold is this page's default: left out of the link, which LoRA dynamics reads as every fold.
    view.fold = None if fold == next(iter(folds)) else fold

inference.warm_up(run_dir, fold)  # the model loads while a clip is chosen or recorded
left, right = st.columns(2)
uploaded = left.file_uploader("An audio file", type=["wav", "flac", "ogg", "mp3"], key="up-file")
recorded = right.audio_input("Or record", key="up-mic")
clip = uploaded or recorded
if clip is None:
    st.info("Upload a clip (WAV, FLAC, OGG or MP3) or record one to see what each layer makes of it.")
    widgets.stop(view)
# The name is shown, never used as a path: the clip is read from memory.
name = getattr(clip, "name", None) or "recording.wav"
limit_mb = st.get_option("server.maxUploadSize")
size = len(clip.getvalue())
if size > limit_mb * 2**20:
    st.error(f"{name}: {size / 2**20:.1f} MB is over this app's upload limit of {limit_mb} MB "
             "(server.maxUploadSize in .streamlit/config.toml); cut the clip or export it compressed.")
    widgets.stop(view)
try:
    # A recording has silence around it and any level: trimmed and brought to speech level, as the model expects.
    speech = prepare_speech(load_audio(clip.getvalue(), name=name, long="keep"), name)
except AudioError as e:
    st.error(f"{e}")
    widgets.stop(view)
audio = speech.samples
if speech.trimmed >= 0.05 or abs(speech.gain_db) >= 1:
    st.caption(f"Prepared as the model hears it: {speech.trimmed:.1f} s of silence trimmed (the speech starts at "
               f"{speech.start:.1f} s), level {'raised' if speech.gain_db > 0 else 'lowered'} by "
               f"{abs(speech.gain_db):.0f} dB.")
parts = windows(audio)
if len(parts) > MAX_WINDOWS:
    st.error(f"{name}: {len(audio) / SAMPLE_RATE / 60:.1f} min is more than this page analyses ({MAX_WINDOWS} windows "
             f"of {MAX_SECONDS:.0f} s); cut the part you want to see, or run loralens predict on the whole file.")
    widgets.stop(view)
if len(parts) > 1:
    total = len(audio) / SAMPLE_RATE
    st.info(f"{name} is {total:.1f} s long, more than Whisper's {MAX_SECONDS:.0f} s window: it is "
            f"analysed in {len(parts)} consecutive windows of {MAX_SECONDS:.0f} s. Pick one below.")
    start = st.selectbox("Window", [s for s, _ in parts], key="up-window",
                         format_func=lambda s: f"{s:.0f}-{min(s + MAX_SECONDS, total):.0f} s")
    audio = dict(parts)[start]
    name = f"{name} [{start:.0f} s-]"
st.audio(audio, sample_rate=SAMPLE_RATE)
with st.spinner("Running the clip through every layer ..."):
    result = inference.predictor(run_dir, fold).predict(audio, name)
probs = np.array(result.probabilities)
if view.present:  # read from the back of a room
    st.markdown(f"<div style='font-size:5rem;font-weight:700;line-height:1.1'>{html.escape(result.prediction)}</div>"
                f"<div style='font-size:1.8rem'>{probs[-1].max():.0%} sure · settled at layer "
                f"{result.resolution_depth} of {len(probs) - 1}</div>", unsafe_allow_html=True)
st.markdown(f"**{name}**: predicted **{result.prediction}**, settling at boundary **{result.resolution_depth}** "
            f"of {len(probs) - 1} ({result.duration:.1f} s analysed)")
last = len(probs) - 1
layer = st.slider("Layer boundary", 0, last, last if view.layer is None else min(view.layer, last), key="up-layer")
view.layer = layer
frame = pd.DataFrame([{"boundary": b, "emotion": e, "probability": float(probs[b, i])}
                      for b in range(len(probs)) for i, e in enumerate(result.emotions)])
trajectory = charts.trajectory(frame, "Class probabilities across layers").to_dict(validate=False)
widgets.chart(charts.mark_boundary(trajectory, layer), frame, f"{name}-layers", "up")

st.subheader("Where in the clip")
target = result.emotions.index(result.prediction)
heat, step = views.time_blocks(np.array(result.frame_probabilities)[:, :, target])
columns = heat.shape[1]
heat_frame = pd.DataFrame({"time (s)": np.repeat(np.round(np.arange(columns) * step * 0.02, 2)[None], len(heat), 0)
                           .ravel(), "boundary": np.repeat(np.arange(len(heat)), columns), "probability": heat.ravel()})
widgets.chart(charts.time_image(heat, step * 0.02, "boundary", f"P({result.prediction}) per layer and 20 ms frame",
                                "probability", charts.PROBABILITY_COLOURS, (0.0, 1.0)), heat_frame,
              f"{name}-frames", "up-frames")
with st.spinner(f"Silencing each {occlusion.WIDTH:g} s of the clip in turn ..."):
    occluded = inference.occlusion(run_dir, fold, audio)
widgets.where_in_clip(audio, occluded, name, "up-occlusion")

# The causal lens on the clip: a handful of conditions, computed when asked.
st.subheader("Interventions on this clip")
n_layers = len(probs) - 1
model_kinds = [k for k in causal.KIND_LABELS if k != "patch" and (run.method == "lora" or not k.startswith("lora_"))]
offered = [f"{k}@{i}" for k in model_kinds for i in range(n_layers)]
offered += [counterfactuals.name(k, v) for k, c in counterfactuals.CHANGES.items() for v in c.strengths]
default = [c for c in (f"lora_off_from@{n_layers // 2}", f"erase@{n_layers - 1}", "pitch@4", "noise@10")
           if c in offered]
chosen = st.multiselect(f"Conditions (at most {MAX_CONDITIONS})", offered, default=default, key="up-conditions",
                        max_selections=MAX_CONDITIONS)
if chosen and st.toggle("Compute them", key="up-intervene"):
    with st.spinner(f"Running the clip under {len(chosen)} condition(s) ..."):
        under = inference.upload_interventions(run_dir, fold, audio, name, tuple(chosen))
    outcomes = pd.DataFrame([{"condition": "as trained" if c == "none" else c,
                              "prediction": result.emotions[int(p[-1].argmax())],
                              f"P({result.prediction})": float(p[-1][result.emotions.index(result.prediction)])}
                             for c, p in under.items()])
    st.table(outcomes, hide_index=True, border="horizontal")
    shown = st.selectbox("Trajectory under", chosen, key="up-condition")
    frame = views.trajectories({"none": under["none"], shown: under[shown]}, result.emotions)
    widgets.chart(charts.trajectories(frame, f"{name}: lens as trained and under {shown}"), frame,
                  f"{name}-{shown}", "up-intervene")
    kind, _, at = causal.parse(shown)
    if kind in counterfactuals.CHANGES:
        st.audio(cache.altered_clip_wav(audio, name, kind, at), format="audio/wav")
        st.caption(f"The clip under {shown} ({counterfactuals.CHANGES[kind].unit}).")

reader = cache.reader(path)
summary = cache.lens_summary(path, run.name)
final = softmax(reader.read(run.name, "trained", "lens_logits", boundary=-1), axis=-1).max(-1)
c1, c2 = st.columns(2)
depth_percentile = projections.percentile_of(result.resolution_depth, summary.resolution_depth)
c1.metric("Resolution depth percentile", f"{depth_percentile:.0f}")
c2.metric("Confidence percentile", f"{projections.percentile_of(probs[-1].max(), final):.0f}")
st.caption("Percentiles among the store's utterances of this run: how late the clip's prediction settles, and "
           "how confident the final prediction is.")

proj, rows = cache.placing_map(path, run.name, "residual", layer)
point = proj.place(np.array(result.residual_pooled[layer]))[0]
table = cache.table(path, run.name)
mapped = table.iloc[rows][["id", "emotion", "speaker"]].reset_index(drop=True)
mapped["x"], mapped["y"] = proj.coordinates[:, 0], proj.coordinates[:, 1]
mapped = pd.concat([mapped, pd.DataFrame([{"id": f"upload: {name}", "emotion": f"upload ({result.prediction})",
                                           "speaker": "you", "x": point[0], "y": point[1]}])], ignore_index=True)
widgets.chart(charts.scatter(mapped, "emotion", f"UMAP at boundary {layer}", f"upload: {name}"), mapped,
              f"{name}-map", "up-map")
if (traced := len(views.common_rows(reader, run.name))) > len(rows):
    st.caption(f"The map holds a fixed sample of {len(rows):,} of the run's {traced:,} utterances: placing a clip on "
               "a map of more would first compile an approximate neighbour search (over a minute).")
widgets.remember(view)
