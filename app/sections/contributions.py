"""Contributions: how much attention and MLP write into the residual per layer, LoRA against frozen."""

import streamlit as st

from loralens.analysis import views
from loralens.app import cache, charts, widgets

view = widgets.view_state()
widgets.present(view)
path = cache.store_path()
run = widgets.pick_run(view)
partner = views.frozen_partner(cache.runs(path), run) if run.method == "lora" else None
reader = cache.reader(path)
rows = tuple(views.common_rows(reader, run.name, partner.name) if partner else views.common_rows(reader, run.name))
mine = cache.contributions(path, run.name, rows)
frame = views.contribution_frame(mine, "LoRA" if run.method == "lora" else run.name,
                                 cache.contributions(path, partner.name, rows) if partner else None)
options = sorted(frame["series"].unique())
show = st.multiselect("Series", options, key="co-series",
                      default=options if view.series is None else [s for s in options if s in view.series])
view.series = None if show == options else tuple(show)
frame = frame[frame["series"].isin(show)]
widgets.chart(charts.contributions(frame), frame, f"{run.name}-contributions", "co")
st.caption(f"Means over {len(rows)} utterances and their frames. Relative contribution: ||output|| / ||layer "
           "input||; block is the layer's whole update a + m. Cosine: with the layer input (negative: the "
           "sublayer writes against the residual).")
widgets.remember(view)
