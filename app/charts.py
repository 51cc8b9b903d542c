"""Chart builders: a tidy DataFrame in, an Altair chart out. The only module that knows Altair."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

EMOTION_COLOURS = {"anger": "#d62728", "happiness": "#ff7f0e", "neutral": "#7f7f7f", "sadness": "#1f77b4",
                   "boredom": "#8c564b", "disgust": "#2ca02c", "fear": "#9467bd"}
WIDTH = 420
HEIGHT = 260
# The pages bound what they draw themselves (``views.time_blocks``; a map draws every utterance of a store, 5,500
# for IEMOCAP): Altair's notebook guard of 5,000 rows per chart refused a 3 s clip's spectrogram (40 mel rows x
# 150 frames) and any store's map of more than 5,000 utterances.
alt.data_transformers.disable_max_rows()


def _tips(*fields: str | alt.Tooltip) -> list[alt.Tooltip]:
    """Tooltip channels: a field's name becomes its ``alt.Tooltip``.

    Altair validates a channel given as a string against its schema on every ``encode`` (most of a page's chart
    building); given as an object it does not. Every chart here passes objects.
    """
    return [alt.Tooltip(f) if isinstance(f, str) else f for f in fields]


def _emotion_scale(values) -> alt.Scale:
    domain = sorted(set(values))
    return alt.Scale(domain=domain, range=[EMOTION_COLOURS.get(v, "#17becf") for v in domain])


def lens_curves(df: pd.DataFrame, title: str = "Logit lens") -> alt.Chart:
    """Columns: ``boundary``, ``value``, ``measure`` (KL to final / top-1 overlap), ``series``."""
    base = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("boundary:O", title="layer boundary (0 = embeddings)"),
        y=alt.Y("value:Q", title=None),
        color=alt.Color("series:N", title=None),
        tooltip=_tips("series", "measure", "boundary", alt.Tooltip("value:Q", format=".3f")),
    ).properties(width=WIDTH // 2 + 40, height=HEIGHT)
    return base.facet(column=alt.Column("measure:N", title=None)).resolve_scale(y="independent").properties(
        title=title)


def trajectory(df: pd.DataFrame, title: str = "") -> alt.Chart:
    """Columns: ``boundary``, ``emotion``, ``probability`` (one utterance); ``mark_boundary`` marks a layer."""
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("boundary:O", title="layer boundary"),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("emotion:N", scale=_emotion_scale(df["emotion"])),
        tooltip=_tips("emotion", "boundary", alt.Tooltip("probability:Q", format=".3f")),
    ).properties(width=WIDTH, height=HEIGHT, title=title)


_OUTER_KEYS = ("$schema", "config", "datasets", "title", "width", "height")


def mark_boundary(spec: dict, layer: int) -> dict:
    """A ``trajectory(df)`` spec (as a dict) with ``layer`` marked: lets a page cache the chart and move the mark."""
    rule = {"mark": {"type": "rule", "strokeDash": [4, 4], "color": "black"},
            "data": {"values": [{"boundary": layer}]}, "encoding": {"x": {"field": "boundary", "type": "ordinal"}}}
    lines = {k: v for k, v in spec.items() if k not in _OUTER_KEYS}
    outer = {k: v for k, v in spec.items() if k in _OUTER_KEYS}
    return outer | {"layer": [lines, rule]}


def heatmap(df: pd.DataFrame, x: str, y: str, value: str, title: str = "", domain=None,
            scheme: str = "viridis") -> alt.Chart:
    """Columns ``x``, ``y``, ``value``: a rect heatmap."""
    scale = alt.Scale(scheme=scheme, domain=domain) if domain else alt.Scale(scheme=scheme)
    return alt.Chart(df).mark_rect().encode(
        x=alt.X(f"{x}:O"), y=alt.Y(f"{y}:O", sort="descending"),
        color=alt.Color(f"{value}:Q", scale=scale),
        tooltip=_tips(x, y, alt.Tooltip(f"{value}:Q", format=".3f")),
    ).properties(width=WIDTH, height=HEIGHT, title=title)


def contributions(df: pd.DataFrame, title: str = "Layer contributions") -> alt.Chart:
    """Columns: ``layer``, ``sublayer``, ``measure``, ``value``, ``series``.

    Lines and points are separate layers: on a line mark with points, Vega-Lite draws the series legend as
    points, which hides the dash that tells the series apart.
    """
    base = alt.Chart().encode(x=alt.X("layer:O"), y=alt.Y("value:Q", title=None), color=alt.Color("sublayer:N"))
    lines = base.mark_line().encode(strokeDash=alt.StrokeDash(
        "series:N", legend=alt.Legend(symbolType="stroke", symbolSize=400, symbolStrokeWidth=2,
                                      symbolStrokeColor="gray")))
    points = base.mark_point(filled=True, opacity=1).encode(
        detail=alt.Detail("series:N"),
        tooltip=_tips("series", "sublayer", "measure", "layer", alt.Tooltip("value:Q", format=".3f")))
    return alt.layer(lines, points, data=df).properties(width=WIDTH // 2 + 40, height=HEIGHT).facet(
        column=alt.Column("measure:N", title=None)).resolve_scale(y="independent").properties(title=title)


def spectra(df: pd.DataFrame, threshold: float, title: str = "SVD cumulative energy") -> alt.Chart:
    """Columns: ``k``, ``energy``, ``quantity``, ``checkpoint``; a rule at ``threshold`` (``at_threshold`` moves it).

    The rule reads the chart's ``threshold`` parameter: a page caches the chart and moves the rule alone.
    """
    lines = alt.Chart().mark_line().encode(
        x=alt.X("k:Q", title="singular directions", scale=alt.Scale(type="log")),
        y=alt.Y("energy:Q", title="cumulative energy (uncentred SVD, as the paper)", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("checkpoint:N"),
        tooltip=_tips("quantity", "checkpoint", "k", alt.Tooltip("energy:Q", format=".3f")),
    )
    rule = alt.Chart().mark_rule(strokeDash=[4, 4], color="black").encode(
        y=alt.YDatum(alt.expr(THRESHOLD), type="quantitative"))
    return alt.layer(lines, rule, data=df).properties(width=WIDTH // 2, height=int(HEIGHT / 1.3)).facet(
        facet=alt.Facet("quantity:N", title=None), columns=2).properties(title=title).add_params(
        alt.param(name=THRESHOLD, value=threshold))


THRESHOLD = "threshold"
"""The parameter of a ``spectra`` chart that places its threshold rule."""


def at_threshold(spec: dict, threshold: float) -> dict:
    """A ``spectra`` chart's dict with its rule at ``threshold`` (a shallow copy; the data is shared)."""
    params = [p | {"value": threshold} if p.get("name") == THRESHOLD else p for p in spec.get("params", [])]
    return spec | {"params": params}


AXIS_TITLES = {"cka": "linear CKA (centred)"}
"""Axis titles that say how a value is computed (the paper's code centres CKA's Gram matrices)."""


def per_layer(df: pd.DataFrame, y: str, title: str, domain=None) -> alt.Chart:
    """Columns: ``layer``, ``y``, ``series``: one line per series."""
    scale = alt.Scale(domain=domain) if domain else alt.Scale()
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("layer:O"), y=alt.Y(f"{y}:Q", scale=scale, title=AXIS_TITLES.get(y, y)),
        color=alt.Color("series:N", title=None),
        tooltip=_tips("series", "layer", alt.Tooltip(f"{y}:Q", format=".3f")),
    ).properties(width=WIDTH, height=HEIGHT, title=title)


def intruder_counts(df: pd.DataFrame, title: str = "Intruder dimensions per layer") -> alt.Chart:
    """Columns: ``layer``, ``count``, ``series``, ``epsilon``: one line per series, a panel per threshold."""
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("layer:O"), y=alt.Y("count:Q", title="intruders among the top k (mean over fold models)"),
        color=alt.Color("series:N", title=None),
        tooltip=_tips("series", "module", alt.Tooltip("epsilon:Q", title="ε"), alt.Tooltip("count:Q", format=".2f"),
                      alt.Tooltip("max_singular:Q", title="largest intruder σ", format=".3f")),
    ).properties(width=WIDTH // 2, height=int(HEIGHT / 1.3)).facet(
        column=alt.Column("epsilon:O", title="ε: an intruder's largest |cosine| with W0's singular vectors is below")
    ).properties(title=title)


def intruder_vectors(df: pd.DataFrame, epsilons: tuple[float, ...],
                     title: str = "Top singular vectors: singular value vs similarity to W0") -> alt.Chart:
    """Columns: ``similarity``, ``singular``, ``checkpoint``, ``module``, ``fold``, ``position``; rules at ``epsilons``.

    A point left of a rule is an intruder at that threshold.
    """
    points = alt.Chart().mark_point(filled=True, opacity=0.6).encode(
        x=alt.X("similarity:Q", title="largest |cosine| with a singular vector of W0", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("singular:Q", title="singular value of W0 + (α/r) B A"),
        color=alt.Color("checkpoint:N", title=None),
        tooltip=_tips("checkpoint", "module", "fold", "position", alt.Tooltip("singular:Q", format=".3f"),
                      alt.Tooltip("similarity:Q", format=".3f")),
    )
    rules = [alt.Chart().mark_rule(strokeDash=[4, 4], color="black").encode(x=alt.XDatum(e, type="quantitative"))
             for e in epsilons]
    return alt.layer(points, *rules, data=df).properties(width=WIDTH, height=HEIGHT, title=title)


def scatter(df: pd.DataFrame, colour: str = "emotion", title: str = "", highlight: str | None = None,
            legend: bool = True) -> alt.Chart:
    """Columns: ``x``, ``y``, ``id``, ``colour``; the ``highlight`` id drawn large.

    ``legend=False`` for small multiples beside a chart that shows the legend.
    """
    scale = _emotion_scale(df[colour]) if colour == "emotion" else alt.Scale(scheme="tableau10")
    color = alt.Color(f"{colour}:N", scale=scale, **({} if legend else {"legend": None}))
    # A map's coordinates mean nothing absolute: the axes fit the points (Vega-Lite would include zero).
    fitted = alt.Scale(zero=False)
    points = alt.Chart(df).mark_circle(size=60, opacity=0.8).encode(
        x=alt.X("x:Q", axis=None, scale=fitted), y=alt.Y("y:Q", axis=None, scale=fitted), color=color,
        tooltip=_tips(*(c for c in ("id", "emotion", "speaker", "prediction") if c in df.columns)),
    )
    chart = points
    if highlight is not None and (df["id"] == highlight).any():
        ring = alt.Chart(df[df["id"] == highlight]).mark_point(size=300, shape="circle", color="black",
                                                               strokeWidth=2).encode(
            x=alt.X("x:Q", scale=fitted), y=alt.Y("y:Q", scale=fitted))
        chart = points + ring
    return chart.properties(width=WIDTH, height=WIDTH, title=title)


def save(chart: alt.Chart, out: Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.svg`` (through vl-convert, offline)."""
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for path in paths:
        chart.save(str(path), scale_factor=2) if path.suffix == ".png" else chart.save(str(path))
    return paths


SPECTROGRAM_COLOURS = ("#000004", "#0a0822", "#1d1046", "#35106a", "#51137c", "#6a1c80", "#822582", "#9c2f80",
                       "#b6377a", "#cf4170", "#e65164", "#f5695c", "#fb8762", "#fea571", "#fec387", "#fde0a2",
                       "#fcfdbf")
"""Vega's ``magma`` scheme at 17 even steps: ``time_image``'s colours, interpolated in RGB in its image and its
legend alike."""


PROBABILITY_COLOURS = ("#440154", "#48196b", "#472d7b", "#424086", "#3b528b", "#34638d", "#2c728e", "#27828e",
                       "#21918d", "#1f9f88", "#28ae80", "#3ebc74", "#5dc963", "#82d34c", "#abdc32", "#d5e21b",
                       "#fde725")
"""Vega's ``viridis`` scheme at 17 even steps: the layers x time view's colours (``time_image``)."""


def time_image(values: np.ndarray, seconds_per_column: float, y: str, title: str = "", value: str = "value",
               colours: tuple[str, ...] = SPECTROGRAM_COLOURS, domain: tuple[float, float] | None = None
               ) -> alt.Chart:
    """``values`` ``(rows, time)`` (row 0 at the bottom) as one image over time, from 0 to the columns' end.

    A rect per cell makes the browser draw thousands of them (a 32-layer model's 4.5 s clip is 7,400 cells a
    view). An image is one mark at any resolution. Its legend comes from a
    transparent layer on the same colour scale (``colours`` over ``domain``, default the values' range); it has no
    per-cell tooltip (the trajectory beside it has one per layer).
    """
    lo, hi = domain if domain is not None else (float(np.min(values)), float(np.max(values)))
    scaled = np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo), 0, 1) if hi > lo else \
        np.zeros(np.shape(values))
    anchors = np.array([[int(c[i: i + 2], 16) for i in (1, 3, 5)] for c in colours], dtype=np.float64)
    steps = np.linspace(0, 1, len(anchors))
    rgb = np.stack([np.interp(scaled, steps, anchors[:, k]) for k in range(3)], axis=-1)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(rgb[::-1]).astype(np.uint8), "RGB").save(buffer, format="PNG")  # top row: the highest
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    end = values.shape[1] * seconds_per_column
    image = alt.Chart(pd.DataFrame({"start": [0.0], "end": [end], "top": [float(values.shape[0])],
                                    "bottom": [0.0], "url": [url]})).mark_image(aspect=False).encode(
        x=alt.X("start:Q", title="time (s)", scale=alt.Scale(domain=[0, end], nice=False)), x2=alt.X2("end"),
        y=alt.Y("top:Q", title=y, scale=alt.Scale(domain=[0, values.shape[0]], nice=False)), y2=alt.Y2("bottom"),
        url=alt.Url("url:N"))
    legend = alt.Chart(pd.DataFrame({value: [lo, hi]})).mark_rect(opacity=0).encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(domain=[lo, hi], range=list(colours), interpolate="rgb")))
    # The height is the whole chart's, title and axes included (the app fits each chart to it): at two thirds of
    # HEIGHT a whisper-base log-mel's 80 bins had 60 pixels.
    return alt.layer(image, legend).properties(width=WIDTH, height=HEIGHT, title=title)


def occlusion(df: pd.DataFrame, target: str, end: float, title: str = "") -> alt.Chart:
    """The drop of P(``target``) with each stretch of a clip silenced, as bars on its time axis.

    Columns ``start``, ``end``, ``drop`` (``views.occlusion_frame``); the axis runs from 0 to ``end`` s, as
    ``time_image``'s; a click picks a bar's ``start``.
    """
    pick = click("start")
    effect = np.where(df["drop"] > 0, f"for {target}", "against")
    return alt.Chart(df.assign(effect=effect, zero=0.0)).mark_rect().encode(
        x=alt.X("start:Q", title="time (s)", scale=alt.Scale(domain=[0, end], nice=False)), x2=alt.X2("end"),
        y=alt.Y("drop:Q", title=f"drop of log-odds({target})",
                scale=alt.Scale(domain=[min(-0.5, float(df["drop"].min())), max(0.5, float(df["drop"].max()))])),
        y2=alt.Y2("zero"),
        color=alt.Color("effect:N", title="the sound spoke", scale=alt.Scale(
            domain=[f"for {target}", "against"], range=["#d95f02", "#7570b3"])),
        tooltip=_tips(alt.Tooltip("start:Q", title="from (s)"), alt.Tooltip("end:Q", title="to (s)"),
                      alt.Tooltip("drop:Q", format=".3f")),
    ).add_params(pick).properties(width=WIDTH, height=HEIGHT, title=title)


def click(field: str = "id") -> alt.Parameter:
    """A point selection on ``field`` (clicking a point selects that utterance, a heatmap's cell that condition)."""
    return alt.selection_point(name="pick", fields=[field], on="click")


def picked_id(event, field: str = "id") -> str | None:
    """The ``field`` value (an utterance id, a condition) a click on a ``click(field)`` chart selected, if any."""
    try:
        points = event["selection"]["pick"]
    except (KeyError, TypeError):
        return None
    if isinstance(points, list) and points and field in points[0]:
        return str(points[0][field])
    return None


def interventions(df: pd.DataFrame, value: str, title: str = "", domain=None, order: list[str] | None = None,
                  clickable: bool = True) -> alt.Chart:
    """Columns ``layer``, ``kind``, ``condition``, ``value``: a layer x intervention heatmap.

    A click picks a cell's condition (``click("condition")``) unless not ``clickable`` (a figure saved as an image,
    where several side by side would declare the same selection); ``order`` lists the kinds top to bottom.
    """
    scale = alt.Scale(scheme="oranges", domain=domain) if domain else alt.Scale(scheme="oranges")
    chart = alt.Chart(df).mark_rect(stroke="white").encode(
        x=alt.X("layer:O"), y=alt.Y("kind:N", title=None, sort=order),
        color=alt.Color(f"{value}:Q", scale=scale, title=None),
        tooltip=_tips("condition", alt.Tooltip(f"{value}:Q", format=".3f")),
    ).properties(width=WIDTH - 60, height=alt.Step(28), title=title)
    return chart.add_params(click("condition")) if clickable else chart


def audio_changes(df: pd.DataFrame, value: str, title: str = "") -> alt.Chart:
    """Columns ``label`` (the audio change), ``strength``, ``run``, ``value``: one panel per change, strength on x.

    Each change's strength has its own unit, so the panels share the y axis but not the x axis.
    """
    base = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("strength:Q", title=None, scale=alt.Scale(zero=False)),
        y=alt.Y(f"{value}:Q", title=None), color=alt.Color("run:N", title=None),
        tooltip=_tips("run", "condition", alt.Tooltip(f"{value}:Q", format=".3f")),
    ).properties(width=150, height=HEIGHT * 2 // 3)
    return base.facet(column=alt.Column("label:N", title=None)).resolve_scale(x="independent").properties(
        title=title)


def trajectories(df: pd.DataFrame, title: str = "") -> alt.Chart:
    """Columns ``boundary``, ``emotion``, ``probability``, ``series``: one utterance's lens, two series.

    As trained solid, under a condition dashed.
    """
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("boundary:O", title="layer boundary"),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("emotion:N", scale=_emotion_scale(df["emotion"])),
        strokeDash=alt.StrokeDash("series:N", title=None, scale=alt.Scale(domain=list(dict.fromkeys(df["series"])))),
        tooltip=_tips("series", "emotion", "boundary", alt.Tooltip("probability:Q", format=".3f")),
    ).properties(width=WIDTH, height=HEIGHT, title=title)
