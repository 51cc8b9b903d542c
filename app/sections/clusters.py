"""Clusters: t-SNE or UMAP of pooled residuals or LoRA A activations at a layer; click a point to hear it."""

import pandas as pd
import streamlit as st

from loralens.analysis import projections, views
from loralens.app import cache, charts, state, widgets

view = widgets.view_state()
widgets.present(view)
path = cache.store_path()
run = widgets.pick_run(view)
table = cache.table(path, run.name)
c1, c2, c3, c4 = st.columns([2, 3, 4, 3])
view.projection = c1.radio("Map", state.PROJECTIONS, index=state.PROJECTIONS.index(view.projection),
                           format_func=projections.NAMES.get, horizontal=True, key="cl-projection")
sources = state.SOURCES if run.method == "lora" else ("residual",)
view.source = c2.radio("Vectors", sources, index=sources.index(view.source) if view.source in sources else 0,
                       format_func={"residual": "pooled residual", "lora_a": "LoRA A activation"}.get,
                       horizontal=True, key="cl-source")
view.colour = c3.radio("Colour by", state.COLOURINGS, index=state.COLOURINGS.index(view.colour), horizontal=True,
                       key="cl-colour")
fold = None
if run.method != "frozen":  # a frozen encoder is the same model in every fold; LoRA and fine-tuned ones are not
    sizes = {f: n for f, n in cache.fold_sizes(path, run.name).items() if n >= projections.MIN_POINTS}
    folds = [None, *sizes]
    fold = c4.selectbox("Fold model", folds, index=widgets.index(folds, view.fold), key="cl-fold",
                        format_func=lambda f: "every fold, one map" if f is None else f"fold {f} ({sizes[f]})",
                        help="Each utterance is traced by the fold model that held it out. One fold: a map of only "
                             "the utterances its model traced, in that model's space (fitted now).")
    view.fold = fold
n_positions = run.n_layers + 1 if view.source == "residual" else run.n_layers * len(run.targets)
label = "Layer boundary" if view.source == "residual" else "LoRA module"
layer = st.slider(label, 0, n_positions - 1, min(view.layer if view.layer is not None else n_positions - 1,
                                                 n_positions - 1), key="cl-layer")
view.layer = layer
with st.spinner("Fitting the map (the store has no current summary: loralens summarise computes every map once) ..."
                if fold is None else f"Fitting the map of fold {fold}'s utterances ..."):
    coordinates, rows, sil = cache.map_of(path, run.name, view.source, layer, view.projection, fold)
frame = table.iloc[rows][["id", "speaker", "emotion", "prediction", "correct", "fold"]].reset_index(drop=True)
frame["x"], frame["y"] = coordinates[:, 0], coordinates[:, 1]
frame["correct"] = frame["correct"].map({True: "correct", False: "wrong"})
pool = int(table["traced"].sum()) if fold is None else sizes[fold]
of = "" if fold is None else f" of fold {fold}'s model"
shown = f"{len(frame)} utterances{of}" if len(frame) == pool else (
    f"a fixed sample of {len(frame):,} of the {pool:,} utterances{of} (t-SNE's cost grows with their number; UMAP "
    "maps all)")
st.caption(f"{shown} · emotion silhouette {cache.silhouette(path, run.name, view.source, layer, fold):.3f} "
           f"in the vectors' own space, {sil:.3f} on this map")
if run.method != "frozen" and (n_folds := frame["fold"].nunique()) > 1:
    # Each fold's adapter is trained from its own initialisation: its A space is its own, so one map of every fold's
    # utterances can cluster by model rather than by speech.
    apart = ("LoRA A activations of different folds are in different spaces (each fold's adapter started from its "
             "own random A)" if view.source == "lora_a" else
             "the residuals of different folds passed through different adapters")
    folds_apart = cache.fold_silhouette(path, run.name, view.source, layer, view.projection)
    sample = cache.FOLD_SILHOUETTE_SAMPLE
    estimated = (f" (estimated on {sample:,} of them)" if len(frame) > sample
                 else "")
    st.caption(f"Each utterance is traced by the fold model that held it out ({n_folds} here): {apart}. Fold "
               f"silhouette on this map {folds_apart:.2f}{estimated}: near 0, the folds mix; colour by fold to see "
               "them, or map one fold model alone.")
figure = charts.scatter(frame, view.colour, f"{projections.NAMES[view.projection]} · {label} {layer}", view.utt)
event = widgets.chart(figure.add_params(charts.click()), frame, f"{run.name}-{view.source}-{view.projection}-{layer}",
                      "cl-map", select=True)
picked = charts.picked_id(event)
if picked:
    view.utt = picked
if view.utt in set(frame["id"]):
    row = int(table.loc[table["id"] == view.utt, "row"].iloc[0])
    st.markdown(f"**{view.utt}** · {table.iloc[row]['emotion']} · predicted {table.iloc[row]['prediction']}")
    st.audio(cache.audio_wav(path, row), format="audio/wav")

series = views.rank_series(cache.runs(path), run) if view.source == "lora_a" else []  # lora_a: LoRA runs only
if len(series) > 1:
    st.subheader("Across ranks")
    st.caption(f"The same LoRA module in the runs that differ only in rank ({run.model}, {run.window}, "
               f"{','.join(run.targets)}); each map is fitted on its own run, coloured by emotion as above"
               + ("." if fold is None else f"; of the model of fold {fold} in each run whose fold {fold} held out the "
                                           "same speakers, else of every fold's."))
    held_out = run.test_speakers.get(fold) if fold is not None else None
    for col, other in zip(st.columns(len(series)), series, strict=True):
        # fold k of another run is the same model's counterpart only where it held out the same speakers
        own = fold if (held_out and other.test_speakers.get(fold) == held_out
                       and cache.fold_sizes(path, other.name).get(fold, 0) >= projections.MIN_POINTS) else None
        c, rr, on_map = cache.map_of(path, other.name, "lora_a", layer, view.projection, own)
        f = pd.DataFrame({"x": c[:, 0], "y": c[:, 1],
                          "emotion": table.iloc[rr]["emotion"].to_numpy(), "id": table.iloc[rr]["id"].to_numpy()})
        title = (f"r = {other.rank}{' (this run)' if other.name == run.name else ''}"
                 f"{'' if own == fold else ' (every fold)'} · silhouette "
                 f"{cache.silhouette(path, other.name, 'lora_a', layer, own):.3f} (map {on_map:.3f})")
        with col:
            widgets.chart(charts.scatter(f, "emotion", title, legend=False), f,
                          f"{other.name}-lora_a-{view.projection}-{layer}", f"cl-rank-{other.rank}")
widgets.remember(view)
