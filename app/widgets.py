"""Shared page furniture: the state in the URL, run and utterance pickers, exports, presentation mode."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import altair as alt
import pandas as pd
import pyarrow as pa
import streamlit as st

from loralens.analysis import occlusion, views
from loralens.analysis.views import RunInfo
from loralens.app import cache, charts, state
from loralens.store.schema import SAMPLE_RATE

PRESENTATION_CSS = """
<style>
html, body, [class*="css"] { font-size: 20px !important; }
[data-testid="stSidebar"], [data-testid="stToolbar"], footer { display: none !important; }
.block-container { padding-top: 1rem; max-width: 100% !important; }
</style>
"""


def view_state() -> state.ViewState:
    """The URL's state, checked against the store."""
    path = cache.store_path()
    runs = cache.runs(path)
    ids = set(cache.reader(path).utterances()["id"].tolist())
    params = {k: st.query_params.get_all(k) for k in st.query_params}
    return state.parse(params, [r.name for r in runs], ids, {r.name: r.n_layers + 1 for r in runs})


def remember(view: state.ViewState) -> None:
    """Write the state into the URL, so a copied link reopens this view."""
    params = view.to_params()
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    if current != {k: [v] if isinstance(v, str) else v for k, v in params.items()}:
        st.query_params.from_dict(params)


def stop(view: state.ViewState) -> NoReturn:
    """Stop the page here, its state remembered first: a page that stops early still keeps its link."""
    remember(view)
    st.stop()


def index(options: Sequence[Any], value: Any, default: int = 0) -> int:
    """Where the URL's ``value`` is among a widget's ``options``; ``default`` where it is not one of them."""
    return options.index(value) if value in options else default


def present(view: state.ViewState) -> None:
    """Presentation mode (``?present=1`` or the sidebar toggle): larger type, no sidebar or toolbar.

    Every page calls it first; it also labels a store of synthesised speech as such, on every page.
    """
    datasets = set(cache.reader(cache.store_path()).utterances()["dataset"].tolist())
    if "synthetic" in datasets:
        st.caption(":material/record_voice_over: Synthetic speech: this store holds the offline espeak-ng corpus"
                   + (" (beside real recordings)" if len(datasets) > 1 else "") + ", not human recordings.")
    if not view.present:
        view.present = st.sidebar.toggle("Presentation mode", value=False, key="present-on",
                                         help="Larger type, no sidebar: for talks. The link keeps it.")
    if view.present:
        st.markdown(PRESENTATION_CSS, unsafe_allow_html=True)
        if st.button("Exit presentation mode", key="present-off", type="tertiary"):
            view.present = False
            st.session_state["present-on"] = False
            remember(view)
            st.rerun()


def pick_run(view: state.ViewState, method: str | None = None, key: str = "run",
             human_speech: bool = False) -> RunInfo:
    """A run selector (LoRA runs only with ``method='lora'``).

    ``human_speech``: runs that learned from human speech first, and the first of them picked unless the link's run
    did too (Upload: a model trained on synthetic speech answers a human voice at chance).
    """
    runs = [r for r in cache.runs(cache.store_path()) if method is None or r.method == method]
    learned_voices = lambda r: r.trained_on not in ("synthetic", "unknown")  # noqa: E731
    # LoRA runs first: they are what the tool is about
    runs.sort(key=lambda r: (human_speech and not learned_voices(r), r.method != "lora", r.name))
    if not runs:
        st.info("This store holds no " + (f"{method} " if method else "") + "run. Trace one with loralens trace.")
        st.stop()
    names = [r.name for r in runs]
    linked = view.run in names and (not human_speech or learned_voices(runs[names.index(view.run)]))
    index = names.index(view.run) if linked else 0
    name = st.selectbox("Run", names, index=index, key=key, format_func=lambda n: runs[names.index(n)].label)
    view.run = name
    return runs[names.index(name)]


REGION_CONTEXT = 0.25
"""Seconds of sound played either side of a clicked stretch of a clip, so that it is heard in its context."""


def where_in_clip(audio, result: occlusion.Occlusion, name: str, key: str) -> None:
    """A clip's occlusion map, drawn on its time axis; a click on a bar plays that stretch of ``audio`` (16 kHz)."""
    frame = views.occlusion_frame(result)
    end = len(audio) / SAMPLE_RATE
    title = f"Where in the clip: log-odds of {result.target} lost with each {occlusion.WIDTH:g} s silenced"
    event = chart(charts.occlusion(frame, result.target, end, title), frame, f"{name}-occlusion", key, select=True)
    picked = charts.picked_id(event, "start")
    if picked is None:
        st.caption(f"Orange: silencing this stretch lowers the model's log-odds of {result.target} (log P/(1-P)), "
                   "so its sound drove the prediction; purple: raises them (it spoke for another emotion). Click a "
                   "bar to hear it.")
        return
    start = max(0.0, float(picked) - REGION_CONTEXT)
    stop_at = min(end, float(picked) + occlusion.HOP + REGION_CONTEXT)
    st.audio(audio, sample_rate=SAMPLE_RATE, start_time=start, end_time=stop_at, autoplay=True)
    st.caption(f"Playing {start:.2f}-{stop_at:.2f} s: the stretch clicked and {REGION_CONTEXT:g} s either side.")


def synthetic_note(table: pd.DataFrame) -> None:
    """Label synthesised speech wherever it is shown."""
    if (table["dataset"] == "synthetic").any():
        st.caption("Synthetic speech: utterances of the offline espeak-ng corpus, not human recordings.")


@dataclass(frozen=True)
class Figure:
    """A chart ready to draw, for a page to cache.

    Building an Altair chart and converting its data to Arrow cost tens of milliseconds each: more than the
    slider's redraw budget allows for six charts.
    """

    spec: dict
    """The Vega-Lite dict, data inline (what the SVG/PNG exports render; see ``export_spec``)."""
    wire: dict
    """The same with every dataset as Arrow IPC bytes, as ``st.vega_lite_chart`` sends it to the browser."""
    frames: tuple[tuple[str, pd.DataFrame], ...] = ()
    """Datasets held as frames (``spec`` has one row of each): inlined only when an export is asked for."""

    def export_spec(self) -> dict:
        """``spec`` with every dataset inline."""
        if not self.frames:
            return self.spec
        inline = {name: json.loads(frame.to_json(orient="records")) for name, frame in self.frames}
        return self.spec | {"datasets": self.spec.get("datasets", {}) | inline}


def figure(chart_: alt.Chart | dict) -> Figure:
    """Prepare a chart (or its Vega-Lite dict) for drawing."""
    # The specs are built by charts.py and known to be valid: skipping Altair's schema validation saves
    # tens of milliseconds per chart.
    frames: list[pd.DataFrame] = []
    if not isinstance(chart_, dict):
        chart_ = _lift_frames(chart_, frames)
    spec = chart_ if isinstance(chart_, dict) else chart_.to_dict(validate=False)
    lifted = {name: frames[values[0][_FRAME]] for name, values in spec.get("datasets", {}).items()
              if len(values) == 1 and _FRAME in values[0]}
    datasets = {name: _ipc(pa.Table.from_pandas(lifted[name], preserve_index=False) if name in lifted
                           else pa.Table.from_pylist(values))
                for name, values in spec.get("datasets", {}).items()}
    return Figure(spec, spec | {"datasets": datasets} if datasets else spec, tuple(lifted.items()))


_FRAME = "__loralens_frame"
"""The field that tells a lifted frame's one row (``_lift_frames``) in a spec's datasets."""


def _lift_frames(chart_: alt.TopLevelMixin, frames: list[pd.DataFrame]) -> alt.TopLevelMixin:
    """The chart (and its layers) with each DataFrame cut to one marked row; the frames appended to ``frames``.

    Altair turns every row into a dict and hashes them all to name the dataset, on every slider move. From one row
    it still infers the field types; Arrow takes the whole frame.
    """
    if isinstance(chart_, alt.LayerChart):
        out = chart_.copy(deep=False)
        out.layer = [_lift_frames(layer, frames) for layer in chart_.layer]
        return out
    if isinstance(chart_, alt.Chart) and isinstance(chart_.data, pd.DataFrame) and len(chart_.data) > 1:
        frames.append(chart_.data)
        return chart_.properties(data=chart_.data.head(1).assign(**{_FRAME: len(frames) - 1}))
    return chart_


def _ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes, as Streamlit sends a chart's dataset."""
    sink = pa.BufferOutputStream()
    with pa.RecordBatchStreamWriter(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def chart(figure_: alt.Chart | dict | Figure, data_: pd.DataFrame, name: str, key: str,
          select: bool = False) -> Any:
    """Draw a chart with CSV, SVG and PNG exports of it: every chart of the app is drawn here.

    Args:
        figure_: an Altair chart, its Vega-Lite dict, or a (cached) ``Figure``.
        data_: the chart's data (its CSV export, written when asked for).
        name: the export's file name, without extension.
        key: a widget key prefix unique on the page; the exports are keyed ``KEY-csv``, ``KEY-svg``, ``KEY-png``.
        select: rerun on a click on the chart's selection parameters (``charts.click()``), the chart keyed ``KEY``.

    Returns:
        With ``select``, the selection event (``charts.picked_id`` reads it); else None.
    """
    prepared = figure_ if isinstance(figure_, Figure) else figure(figure_)
    wire = dict(prepared.wire)  # a shallow copy: Streamlit pops its datasets
    event = (st.vega_lite_chart(wire, width="stretch", on_select="rerun", key=key) if select
             else st.vega_lite_chart(wire, width="stretch"))
    exports(prepared, data_, name, key)
    return event if select else None


STATIC_ROWS = 30
"""The most rows a table draws as a static table; longer ones scroll in the grid (``table``)."""


def table(frame: pd.DataFrame) -> None:
    """A table of rows: static up to ``STATIC_ROWS`` rows, else the scrolling grid.

    A static table draws with the page, without the grid's scripts; the grid draws only the rows in sight, where a
    static table of thousands of rows puts thousands of rows in the page.
    """
    if len(frame) <= STATIC_ROWS:
        st.table(frame, hide_index=True, border="horizontal")
    else:
        st.dataframe(frame, hide_index=True, width="stretch", height=420)


def shaded_table(matrix: pd.DataFrame, figure_: alt.Chart, data_: pd.DataFrame, name: str, key: str) -> None:
    """A confusion matrix as a table of counts, each shaded by its share of its row, with the exports of its chart.

    A table reads better than a heatmap at this size (every count legible) and draws with the page, without the
    chart library's scripts: the first page is ready sooner. Shading by row share (recall on the diagonal) keeps a
    small class's confusions as visible as a large one's. The SVG and PNG exports draw ``figure_``.
    """
    colour = str(st.get_option("theme.primaryColor") or "")  # the theme's (.streamlit/config.toml), if hex
    rgb = colour[1:] if re.fullmatch(r"#[0-9a-fA-F]{6}", colour) else "c2410c"
    red, green, blue = (int(rgb[i:i + 2], 16) for i in (0, 2, 4))

    def shade(row: pd.Series) -> list[str]:
        total = max(float(row.sum()), 1e-12)
        return [f"background-color: rgba({red}, {green}, {blue}, {0.85 * v / total:.2f})"
                + ("; color: white" if v / total > 0.5 else "") for v in row]

    st.table(matrix.style.apply(shade, axis=1))
    exports(figure(figure_), data_, name, key)


def exports(prepared: Figure, data_: pd.DataFrame, name: str, key: str) -> None:
    """CSV, SVG and PNG download buttons for a chart, made only when clicked.

    In a popover, not an expander: the browser mounts a popover's buttons when it opens, an expander's with the
    page (every chart's exports drawn with the page, whether opened or not).
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    with st.popover("Export"):
        # Deferred: each file is made when its button is clicked, not on every rerun (and not re-sent to the
        # browser with every redraw of the page).
        cols = st.columns(3)
        cols[0].download_button("CSV", lambda: data_.to_csv(index=False),
                                f"{safe}.csv", "text/csv", key=f"{key}-csv", on_click="ignore")
        cols[1].download_button("SVG", lambda: _render(prepared.export_spec(), "svg"), f"{safe}.svg",
                                "image/svg+xml", key=f"{key}-svg", on_click="ignore")
        cols[2].download_button("PNG", lambda: _render(prepared.export_spec(), "png"), f"{safe}.png", "image/png",
                                key=f"{key}-png", on_click="ignore")


def _render(spec: dict, kind: str) -> bytes | str:
    import vl_convert as vlc  # only when an image is asked for

    text = json.dumps(spec)
    return vlc.vegalite_to_svg(text) if kind == "svg" else vlc.vegalite_to_png(text, scale=2)
