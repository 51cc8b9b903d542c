"""Causal: what switching LoRA off or on per layer, or erasing a layer, does to the run's decisions."""

import streamlit as st

from app import charts, data, state, widgets

LABELS = {"uar_drop": "UAR drop", "kl": "KL(none || condition)", "flipped": "share flipped"}

view = widgets.view_state()
widgets.present(view)
path = data.store_path()
run = widgets.pick_run(view)
causal = data.causal(path, run.name)
if causal is None:
    st.info(f"No interventions for {run.name} in this store yet. Compute them (a minute or two for 100 "
            "utterances of whisper-base on a CPU):")
    st.code(f"loralens intervene --run RUN_DIR --store {path}", language="bash")
else:
    metrics, predictions = causal
    column = st.radio("Measure", state.MEASURES, index=widgets.index(state.MEASURES, view.measure), horizontal=True,
                      format_func=LABELS.get, key="ca-measure")
    view.measure = column
    grid = metrics[metrics["kind"] != "none"]
    widgets.chart(charts.heatmap(grid, "layer", "kind", column, f"{run.name}: {LABELS[column]} per intervention",
                                 scheme="oranges"), grid, f"{run.name}-causal-{column}", "ca")
    none = metrics.iloc[0]
    st.caption(f"As trained: UAR {none['uar']:.3f}, WAR {none['war']:.3f} over {len(predictions)} utterances, each "
               "through the fold model that held it out. lora_off@k: layer k's adapter off; lora_only@k: every "
               "adapter off but layer k's; lora_off_from@k: off from layer k up; erase@k: layer k's block skipped "
               "(its output is its input).")
    options = list(grid["condition"])
    condition = st.selectbox("Utterances whose prediction the condition changes", options,
                             index=options.index(view.condition) if view.condition in options else 0,
                             key="ca-condition")
    view.condition = condition
    flipped = predictions[predictions[condition] != predictions["none"]][["row", "id", "emotion", "none", condition]]
    st.markdown(f"**{len(flipped)} of {len(predictions)}** utterances change their prediction under {condition}")
    st.table(flipped.rename(columns={"none": "as trained", condition: "under " + condition}), hide_index=True,
             border="horizontal")
widgets.remember(view)
