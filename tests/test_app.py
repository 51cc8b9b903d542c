"""The explorer under AppTest on the fixture store: every page, the layer slider, an utterance, an upload."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import pytest
import soundfile as sf
from streamlit.runtime.state.common import user_key_from_element_id
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Widget

from loralens.analysis import projections, views
from loralens.app import state
from loralens.store.reader import StoreReader
from tests.conftest import tone

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGES = ["sections/overview.py", "sections/utterance.py", "sections/clusters.py", "sections/dynamics.py",
         "sections/contributions.py", "sections/causal.py", "sections/upload.py"]
EXPORTS = ("csv", "svg", "png")


@pytest.fixture()
def app(tiny_store, monkeypatch):
    monkeypatch.setenv("LORALENS_STORE", tiny_store)
    return AppTest.from_file(MAIN, default_timeout=300)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_every_page_opens(app):
    at = app.run()
    _ok(at)
    assert "tiny-lora" in at.table[0].value.to_csv()
    # The confusion matrix: a shaded table of counts over every test utterance, exported as its chart too.
    confusion = next(t.value for t in at.table if t.value.index.name == "true")
    assert list(confusion.columns) == list(confusion.index) and confusion.to_numpy().sum() > 0
    keys = [b.proto.id for b in at.get("download_button")]
    assert all(any("confusion" in k and k.endswith(kind) for k in keys) for kind in ("csv", "svg", "png")), keys
    for page in PAGES[1:]:
        at.switch_page(page).run()
        _ok(at)


def test_utterance_page_slider_and_choice(app):
    at = app.run()
    at.switch_page("sections/utterance.py").run()
    _ok(at)
    assert at.slider(key="utt-layer").value == 2  # tiny model: 2 layers, boundaries 0..2
    at.slider(key="utt-layer").set_value(0).run()
    _ok(at)
    assert at.query_params["layer"] in ("0", ["0"])
    choice = at.selectbox(key="utt-id")
    other = choice.options[3]
    choice.set_value(other.split(" · ")[0] if " · " in other else other).run()
    _ok(at)
    assert str(at.query_params["utt"]).strip("[]'") in other


def test_the_utterance_picker_lists_a_bounded_number_and_keeps_the_linked_one(app, tiny_store, monkeypatch):
    # A browser builds every option of a select on each draw: 5,500 cost the page half a second.
    table = StoreReader(tiny_store).utterances()
    ids = table["id"].tolist()
    monkeypatch.setattr(views.frames, "PICK_LIMIT", 3)
    app.query_params["utt"] = ids[-1]
    at = app.run()
    at.switch_page("sections/utterance.py").run()
    _ok(at)
    picker = at.selectbox(key="utt-id")
    assert len(picker.options) == 3 and picker.value == ids[-1]
    assert any(f"Listing 3 of the {len(ids)} matching" in c.value for c in at.caption)
    at.text_input(key="utt-search").set_value(ids[0]).run()  # fewer match than the limit: all listed, no caption
    _ok(at)
    assert at.selectbox(key="utt-id").options == [f"{ids[0]} · {table['emotion'][0]}"]
    assert not any("Listing" in c.value for c in at.caption)


def test_listed_keeps_the_current_utterance_among_the_first_ones():
    import pandas as pd

    choices = pd.DataFrame({"id": [f"u{i}" for i in range(10)]})
    assert views.listed(choices, "u9", 4)["id"].tolist() == ["u9", "u0", "u1", "u2"]
    assert views.listed(choices, "u2", 4)["id"].tolist() == ["u0", "u1", "u2", "u3"]
    assert views.listed(choices, "gone", 4)["id"].tolist() == ["u0", "u1", "u2", "u3"]
    assert views.listed(choices, None, 20)["id"].tolist() == choices["id"].tolist()


def _unexported_charts(at: AppTest) -> tuple[int, list[str]]:
    """How many charts the page drew, and each chart not directly followed by its own CSV, SVG and PNG buttons.

    A chart's exports are three download buttons keyed ``KEY-csv``, ``KEY-svg`` and ``KEY-png`` after it.
    """
    nodes = [n for n in at.main if n.type in ("vega_lite_chart", "download_button")]
    n_charts, problems = 0, []
    for i, node in enumerate(nodes):
        if node.type != "vega_lite_chart":
            continue
        n_charts += 1
        buttons = list(itertools.takewhile(lambda n: n.type == "download_button", nodes[i + 1:]))
        keys = sorted(str(user_key_from_element_id(b.proto.id)) for b in buttons)
        prefix = keys[0].rsplit("-", 1)[0] if keys else ""
        if keys != sorted(f"{prefix}-{kind}" for kind in EXPORTS):
            problems.append(f"{json.loads(node.proto.spec).get('title')!r} exports {keys}")
    return n_charts, problems


def test_every_chart_exports_csv_svg_and_png(app):
    at = app.run()
    for page in PAGES:
        at.switch_page(page).run()
        _ok(at)
        if page.endswith("clusters.py"):  # both kinds of map
            n_charts, problems = _unexported_charts(at)
            assert n_charts == 1 and not problems, (page, problems)
            at.radio(key="cl-source").set_value("lora_a").run()
            _ok(at)
        if page.endswith("upload.py"):
            buffer = io.BytesIO()
            sf.write(buffer, tone(1.2, 16000, 300.0), 16000, format="WAV")
            at.file_uploader(key="up-file").upload("clip.wav", buffer.getvalue(), "audio/wav").run()
            _ok(at)
        n_charts, problems = _unexported_charts(at)
        # The fixture store has no interventions: Causal says how to compute them (test_intervene draws its chart).
        assert n_charts >= {"overview": 0, "utterance": 5, "dynamics": 4, "causal": 0}.get(Path(page).stem, 1), page
        assert not problems, (page, problems)


def test_exports_render_real_files():
    import pandas as pd

    from loralens.app import charts, widgets

    frame = pd.DataFrame({"boundary": [0, 1, 2] * 2, "emotion": ["anger"] * 3 + ["sadness"] * 3,
                          "probability": [0.2, 0.5, 0.9, 0.8, 0.5, 0.1]})
    fig = widgets.figure(charts.mark_boundary(charts.trajectory(frame).to_dict(validate=False), 1))
    assert isinstance(fig.wire["datasets"][next(iter(fig.wire["datasets"]))], bytes)  # Arrow, as Streamlit sends
    svg = widgets._render(fig.spec, "svg")
    png = widgets._render(fig.spec, "png")
    assert svg.lstrip().startswith("<svg") and "anger" in svg
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_a_large_scatter_goes_to_the_browser_as_arrow_and_exports_every_point():
    """A map of 5,500 utterances: Altair inlined and hashed every row on each slider move (100-250 ms); the browser
    gets the frame as Arrow, the spec one row, and an export inlines all of them."""
    import io

    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from loralens.app import charts, widgets

    rng = np.random.default_rng(0)
    n = 5500
    frame = pd.DataFrame({"id": [f"u{i}" for i in range(n)], "emotion": rng.choice(["anger", "sadness"], n),
                          "x": rng.standard_normal(n).astype(np.float32), "y": rng.standard_normal(n)})
    fig = widgets.figure(charts.scatter(frame, "emotion", "map", "u7").add_params(charts.click()))
    (name, lifted), = fig.frames  # the points; the ring around u7 is one row, inline as before
    assert lifted is frame and len(fig.spec["datasets"][name]) == 1 and len(fig.spec["datasets"]) == 2
    sent = pa.ipc.open_stream(io.BytesIO(fig.wire["datasets"][name])).read_all().to_pandas()
    pd.testing.assert_frame_equal(sent, frame)
    exported = fig.export_spec()
    assert len(exported["datasets"][name]) == n and exported["datasets"][name][7]["id"] == "u7"
    svg = widgets._render(exported, "svg")
    assert svg.count("<path") > 1000  # every point drawn


def test_contributions_legend_shows_each_series_dash():
    """The series differ only by dash, so the legend must draw dashed strokes, not the points of the lines."""

    import pandas as pd

    from loralens.app import charts, widgets

    series = ["LoRA", "LoRA - frozen", "frozen"]
    frame = pd.DataFrame([{"layer": layer, "sublayer": sublayer, "measure": measure, "value": 0.5, "series": s}
                          for s in series for sublayer in ("attention", "mlp")
                          for measure in ("cosine", "relative contribution") for layer in range(3)])
    svg = widgets._render(widgets.figure(charts.contributions(frame).to_dict(validate=False)).spec, "svg")
    symbols = re.findall(r'role-legend-symbol"[^>]*>(.*?)</g>', svg)
    # A stroke symbol is a horizontal segment; a point's is an arc, whose dashed outline does not show.
    strokes = [s for s in symbols if re.search(r'd="M-?[\d.]+,0L[\d.]+,0"', s)]
    assert len({re.search(r'stroke-dasharray="([^"]+)"', s).group(1) for s in strokes}) == len(series), symbols


def test_url_state_reopens_the_view(app, tiny_store):
    app.query_params["layer"] = "1"
    app.query_params["utt"] = "csv/wav/s2_sadness_1"
    at = app.run()
    at.switch_page("sections/utterance.py").run()
    _ok(at)
    assert at.slider(key="utt-layer").value == 1
    assert at.selectbox(key="utt-id").value == "csv/wav/s2_sadness_1"


# Per page, widgets set away from their defaults: (kind, key, value); for a selectbox an int picks that index.
CHANGES = {
    "overview": [("multiselect", "ov-emotion", ["anger", "sadness"]), ("multiselect", "ov-speaker", ["spk1"]),
                 ("selectbox", "ov-outcome", "wrong")],
    "utterance": [("text_input", "utt-search", "s"), ("selectbox", "utt-emotion", "sadness"),
                  ("selectbox", "utt-speaker", "spk2"), ("selectbox", "utt-id", "csv/wav/s2_sadness_1"),
                  ("slider", "utt-layer", 1), ("selectbox", "lora-class", "anger"),
                  ("selectbox", "frozen-class", "anger")],
    "clusters": [("radio", "cl-colour", "speaker"), ("slider", "cl-layer", 1)],
    "dynamics": [("selectbox", "dyn-fold", 2), ("slider", "dyn-threshold", 0.75)],
    "contributions": [("multiselect", "co-series", ["LoRA", "frozen"])],
    "upload": [("selectbox", "up-fold", 2)],
}
SKIPPED = ("button", "download_button", "file_uploader", "audio_input")
"""Widgets whose value no link can hold (a click, a file)."""


def _widget_values(at: AppTest) -> dict[str, object]:
    return {w.key: w.value for w in [*at.main, *at.sidebar]
            if isinstance(w, Widget) and w.key and w.type not in SKIPPED}


@pytest.mark.parametrize("page", CHANGES)
def test_a_copied_link_reopens_every_widget(page, app):
    at = app.run()
    at.switch_page(f"sections/{page}.py").run()
    _ok(at)
    defaults = _widget_values(at)
    for kind, key, value in CHANGES[page]:
        widget = getattr(at, kind)(key=key)
        if kind == "selectbox" and isinstance(value, int):
            widget.select_index(value)
        else:
            widget.set_value(value)
        at.run()
        _ok(at)
    shown = _widget_values(at)
    assert {k for k in shown if shown[k] != defaults.get(k)} >= {key for _, key, _ in CHANGES[page]}, shown

    reopened = AppTest.from_file(MAIN, default_timeout=300)
    reopened.query_params.update(at.query_params)
    reopened.run().switch_page(f"sections/{page}.py").run()
    _ok(reopened)
    assert _widget_values(reopened) == shown, dict(at.query_params)


def test_url_filters_and_choices_are_checked_by_the_page(app):
    # Values the store has are taken, the rest ignored; an empty series list shows no series.
    app.query_params.update({"emotion": ["sadness", "rage"], "outcome": "bogus", "fold": "3", "threshold": "0.6",
                             "series": "", "lens_class": "happiness", "frozen_lens_class": "rage"})
    at = app.run()
    _ok(at)
    assert at.multiselect(key="ov-emotion").value == ["sadness"]
    assert at.selectbox(key="ov-outcome").value == "all"
    at.switch_page("sections/dynamics.py").run()
    _ok(at)
    assert (at.selectbox(key="dyn-fold").value, at.slider(key="dyn-threshold").value) == (3, 0.6)
    at.switch_page("sections/contributions.py").run()
    _ok(at)
    assert at.multiselect(key="co-series").value == []
    assert at.query_params["series"] in ("", [""])
    at.multiselect(key="co-series").set_value(["LoRA", "LoRA - frozen", "frozen"]).run()
    assert "series" not in at.query_params  # every series is the default: the link leaves it out
    at.switch_page("sections/utterance.py").run()
    _ok(at)
    # the filter Overview kept (sadness) chooses the utterances here too
    assert at.selectbox(key="utt-emotion").value == "sadness"
    assert at.selectbox(key="lora-class").value == "happiness"
    assert at.selectbox(key="frozen-class").value in at.selectbox(key="frozen-class").options


def test_upload_a_wav(app):
    at = app.run()
    at.switch_page("sections/upload.py").run()
    # each fold checkpoint says which speakers it never saw and how it did on them
    assert [o.split(" · UAR ")[0] for o in at.selectbox(key="up-fold").options] == [
        f"fold {k} · test speakers spk{k}" for k in range(4)]
    buffer = io.BytesIO()
    sf.write(buffer, tone(1.2, 44100, 400.0), 44100, format="WAV")
    at.file_uploader(key="up-file").upload("my clip (1).wav", buffer.getvalue(), "audio/wav").run()
    _ok(at)
    assert any("predicted" in m.value for m in at.markdown)
    at.slider(key="up-layer").set_value(0).run()
    _ok(at)
    assert at.query_params["layer"] in ("0", ["0"])
    # The causal lens on the clip: the chosen conditions, computed when asked, the first row the model as trained.
    predicted = next(m.value for m in at.markdown if "predicted" in m.value).split("predicted **")[1].split("**")[0]
    at.multiselect(key="up-conditions").set_value(["erase@0", "pitch@4", "noise@0"]).run()
    assert not at.table or all("condition" not in t.value.columns for t in at.table)  # nothing until asked
    at.toggle(key="up-intervene").set_value(True).run()
    _ok(at)
    outcomes = next(t.value for t in at.table if "condition" in t.value.columns)
    assert outcomes["condition"].tolist() == ["as trained", "erase@0", "pitch@4", "noise@0"]
    assert outcomes["prediction"].iloc[0] == predicted
    at.selectbox(key="up-condition").set_value("pitch@4").run()
    _ok(at)
    assert len(at.get("audio")) == 2  # the clip, and the clip four semitones up


def test_upload_not_audio_shows_a_message(app):
    at = app.run()
    at.switch_page("sections/upload.py").run()
    at.file_uploader(key="up-file").upload("notes.wav", b"not audio at all", "audio/wav").run()
    assert not at.exception
    assert "not readable as audio" in at.error[0].value


def test_missing_store_is_one_page(monkeypatch, tmp_path):
    monkeypatch.setenv("LORALENS_STORE", str(tmp_path / "nowhere"))
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not at.exception
    assert "no store there" in at.error[0].value


def test_url_state_parsing_is_checked():
    view = state.parse({"run": "../../etc/passwd", "utt": "/etc/hosts", "layer": "99", "colour": "x"},
                       ["a", "b"], {"u1"}, {"a": 3, "b": 3})
    assert (view.run, view.utt, view.layer, view.colour) == (None, None, None, "emotion")
    view = state.parse({"run": "b", "utt": "u1", "layer": "2", "present": "1", "fold": "1", "threshold": "0.75",
                        "series": ["LoRA", "frozen"], "emotion": ["anger", "sadness"], "outcome": "wrong",
                        "search": "03a", "lens_class": "anger"}, ["a", "b"], {"u1"}, {"b": 3})
    assert (view.fold, view.threshold, view.series, view.emotion) == (1, 0.75, ("LoRA", "frozen"), ("anger", "sadness"))
    assert state.parse(view.to_params(), ["a", "b"], {"u1"}, {"b": 3}) == view
    for threshold in ("nan", "inf", "2", "0.1", "x", ""):
        assert state.parse({"threshold": threshold}, [], set(), {}).threshold == 0.9
    assert state.parse({"fold": "-1"}, [], set(), {}).fold is None
    assert state.parse({"series": [""]}, [], set(), {}).series == ()  # none shown, not the default (all)
    assert state.parse(state.ViewState(series=()).to_params(), [], set(), {}).series == ()


def test_presentation_mode_round_trip(app):
    at = app.run()
    at.toggle(key="present-on").set_value(True).run()
    assert at.query_params["present"] in ("1", ["1"])
    at.button(key="present-off").click().run()
    assert not at.exception and "present" not in at.query_params


def test_dynamics_page_within_one_fold_model(app):
    at = app.run()
    at.switch_page("sections/dynamics.py").run()
    _ok(at)
    folds = at.selectbox(key="dyn-fold").options
    assert len(folds) == 5 and "averaged" in folds[0]  # every fold averaged, then the tiny runs' four folds
    at.selectbox(key="dyn-fold").select_index(2).run()
    _ok(at)
    at.slider(key="dyn-threshold").set_value(0.5).run()
    _ok(at)


def test_the_residual_heatmaps_follow_the_fold_model_picker(app, tiny_store):
    """The picker changed the spectra beside the residual CKA heatmaps but not the heatmaps, which stacked every fold
    model's utterances: each is the mean of the fold models' CKA, or the picked one's alone, and says which."""
    import numpy as np
    import pyarrow as pa

    reader = StoreReader(tiny_store)
    at = app.run()
    at.switch_page("sections/dynamics.py").run()
    _ok(at)

    def heatmaps() -> dict[str, np.ndarray]:
        out = {}
        for chart in at.get("vega_lite_chart"):
            title = json.loads(chart.proto.spec).get("title", "")
            if title.startswith("CKA within LoRA") or title.startswith("CKA LoRA vs frozen"):
                (data,) = chart.proto.datasets
                frame = pa.ipc.open_stream(io.BytesIO(data.data.data)).read_all().to_pandas()
                out[title] = frame.pivot(index="LoRA", columns="other", values="cka").to_numpy()
        return out

    for index, fold, scope in ((0, None, "mean of 4 fold models"), (2, 1, "fold 1's model")):
        at.selectbox(key="dyn-fold").select_index(index).run()
        _ok(at)
        assert at.selectbox(key="dyn-fold").value == fold
        drawn = heatmaps()
        assert set(drawn) == {f"CKA within LoRA · {scope}", f"CKA LoRA vs frozen · {scope}"}, drawn.keys()
        for other, title in (("tiny-lora", "within LoRA"), ("tiny-frozen", "LoRA vs frozen")):
            np.testing.assert_allclose(drawn[f"CKA {title} · {scope}"],
                                       views.residual_cka(reader, "tiny-lora", other, fold=fold), rtol=1e-6)


def test_a_threshold_move_moves_the_spectra_rule_and_rebuilds_no_chart(app, monkeypatch):
    """At large-v2's size rebuilding the page's five charts took the threshold slider to 246 ms (p95): the charts of
    a run and fold are built once, and a move changes the spectra chart's threshold parameter alone."""
    from loralens.app import charts

    at = app.run()
    at.switch_page("sections/dynamics.py").run()
    built = []
    monkeypatch.setattr(charts, "heatmap", lambda *a, **k: built.append("heatmap") or pytest.fail("rebuilt"))
    monkeypatch.setattr(charts, "spectra", lambda *a, **k: built.append("spectra") or pytest.fail("rebuilt"))
    for threshold in (0.5, 0.75):
        at.slider(key="dyn-threshold").set_value(threshold).run()
        _ok(at)
        spec = json.loads(next(c for c in at.get("vega_lite_chart")
                               if json.loads(c.proto.spec).get("title") == "SVD cumulative energy").proto.spec)
        assert [p["value"] for p in spec["params"] if p["name"] == charts.THRESHOLD] == [threshold]
    assert not built


def test_clusters_say_each_utterance_is_traced_by_its_fold_model_and_colour_by_fold(app, tiny_store):
    """One map of a LoRA run holds every fold model's utterances: the page says so, with the folds' silhouette."""
    app.query_params["run"] = "tiny-lora"
    at = app.run()
    at.switch_page("sections/clusters.py").run()
    _ok(at)
    at.radio(key="cl-source").set_value("lora_a").run()
    at.radio(key="cl-colour").set_value("fold").run()
    _ok(at)
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["color"]["field"] == "fold" if "encoding" in spec else any(
        layer["encoding"]["color"]["field"] == "fold" for layer in spec["layer"] if "color" in layer["encoding"])
    reader = StoreReader(tiny_store)
    layer = at.slider(key="cl-layer").value
    coordinates, rows, _ = views.map_of(reader, "tiny-lora", "lora_a", layer, "umap")
    folds = views.utterance_table(reader, "tiny-lora")["fold"].to_numpy()[rows]
    expected = projections.silhouette(coordinates, folds)
    said = [c.value for c in at.caption if "fold model that held it out" in c.value]
    assert len(said) == 1 and f"({len(set(folds))} here)" in said[0] and "own random A" in said[0], said
    assert f"Fold silhouette on this map {expected:.2f}: " in said[0], (said, expected)  # every utterance: exact
    # One fold model alone: a map of only its utterances, and the silhouettes of those.
    fold = sorted(set(folds))[1]
    at.selectbox(key="cl-fold").set_value(fold).run()
    _ok(at)
    mine = views.fold_groups(reader, "tiny-lora", fold=fold)[fold]
    assert f"{len(mine)} utterances of fold {fold}'s model · " in at.caption[0].value
    x, _ = views.vectors(reader, "tiny-lora", "lora_a", layer, rows=mine)
    emotion = projections.silhouette(x, reader.utterances()["emotion"][mine])
    assert f"emotion silhouette {emotion:.3f} in the vectors' own space" in at.caption[0].value
    assert not [c.value for c in at.caption if "fold model that held it out" in c.value]
    frozen = AppTest.from_file(MAIN, default_timeout=300)
    frozen.query_params["run"] = "tiny-frozen"  # a frozen encoder is the same in every fold: nothing to say
    at = frozen.run()
    at.switch_page("sections/clusters.py").run()
    _ok(at)
    assert at.radio(key="cl-colour").options == ["emotion", "speaker", "correct", "fold"]
    assert not [c.value for c in at.caption if "fold model" in c.value]


def test_clusters_compare_the_runs_that_differ_only_in_rank(rank_store, monkeypatch):
    monkeypatch.setenv("LORALENS_STORE", rank_store)
    app = AppTest.from_file(MAIN, default_timeout=300)
    app.query_params["run"] = "tiny-lora-r2"
    at = app.run()
    at.switch_page("sections/clusters.py").run()
    _ok(at)
    assert at.radio(key="cl-projection").options == ["UMAP", "t-SNE"]
    at.radio(key="cl-source").set_value("lora_a").run()
    _ok(at)
    assert [h.value for h in at.subheader] == ["Across ranks"]
    # the page's map, then one map per rank: r = 2 (this run) and r = 4; the q_proj run is not comparable
    titles = [json.loads(c.proto.spec)["title"] for c in at.get("vega_lite_chart")]
    assert len(titles) == 3 and titles[0].startswith("UMAP · LoRA module "), titles
    assert re.fullmatch(r"r = 2 \(this run\) · silhouette -?[01]\.\d{3} \(map -?[01]\.\d{3}\)", titles[1]), titles
    assert re.fullmatch(r"r = 4 · silhouette -?[01]\.\d{3} \(map -?[01]\.\d{3}\)", titles[2]), titles
    # the silhouette is measured in the LoRA A activation space, not on the 2-D map (which moves with its seed)
    reader = StoreReader(rank_store)
    layer = at.slider(key="cl-layer").value
    x, rows = views.vectors(reader, "tiny-lora", "lora_a", layer)
    expected = projections.silhouette(x, reader.utterances()["emotion"][rows])
    assert titles[2].startswith(f"r = 4 · silhouette {expected:.3f} "), (titles[2], expected)
    assert not _unexported_charts(at)[1]  # each rank's map exports CSV, SVG and PNG like any chart
    # One fold model: each rank's map is of its own fold 1 (the same held-out speakers), with that fold's silhouette.
    at.selectbox(key="cl-fold").set_value(1).run()
    _ok(at)
    titles = [json.loads(c.proto.spec)["title"] for c in at.get("vega_lite_chart")]
    mine = views.fold_groups(reader, "tiny-lora", fold=1)[1]
    x, _ = views.vectors(reader, "tiny-lora", "lora_a", layer, rows=mine)
    expected = projections.silhouette(x, reader.utterances()["emotion"][mine])
    assert titles[2].startswith(f"r = 4 · silhouette {expected:.3f} "), (titles[2], expected)
    assert titles[1].startswith("r = 2 (this run) · silhouette "), titles


HEAVY = ("sklearn", "umap", "numba", "pynndescent", "torch", "transformers", "peft", "nnsight", "ray")
"""Libraries no page may import when it loads: scikit-learn alone (through the causal lens's module) held every page of
a freshly started explorer back by a second of imports. The analyses import them where they are used."""


def test_the_pages_load_without_the_heavy_libraries():
    import ast
    import subprocess
    import sys

    root = Path(MAIN).parents[1]
    lines = set()
    for script in [Path(MAIN), *(root / "app" / "sections").glob("*.py")]:
        for node in ast.parse(script.read_text()).body:
            if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "module", None) != "__future__":
                lines.add(ast.unparse(node))
    code = "\n".join([*sorted(lines), "import sys",
                      f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"])
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _keep_main(monkeypatch) -> None:
    """Put ``__main__`` back after the test: an ``AppTest.from_function`` script stays ``__main__`` after it ran, and a
    process pool started later (tests/test_cluster.py) runs it in each child, where its arguments are missing."""
    import sys

    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


def test_a_long_table_scrolls_in_the_grid_and_a_short_one_is_static(monkeypatch):
    """A condition that flips most of 5,500 utterances listed them all in a static table: 5,500 rows in the page."""
    _keep_main(monkeypatch)

    def page(rows: int) -> None:
        import pandas as pd

        from loralens.app import widgets

        widgets.table(pd.DataFrame({"id": [f"u{i}" for i in range(rows)]}))

    for rows, static in ((3, True), (31, False), (5500, False)):
        at = AppTest.from_function(page, args=(rows,)).run()
        _ok(at)
        assert (len(at.table), len(at.dataframe)) == ((1, 0) if static else (0, 1)), rows
        assert len((at.table if static else at.dataframe)[0].value) == rows


def test_the_causal_utterance_picker_lists_a_bounded_number_flipped_first(causal_store, monkeypatch):
    monkeypatch.setenv("LORALENS_STORE", causal_store)
    monkeypatch.setattr(views.frames, "PICK_LIMIT", 4)
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    at.switch_page("sections/causal.py").run()
    _ok(at)
    options = at.selectbox(key="ca-utt").options
    flipped = next(t.value for t in [*at.table, *at.dataframe] if "as trained" in t.value.columns)
    first = min(4, len(flipped))
    assert len(options) == 4 and options[:first] == flipped["id"].tolist()[:first]  # the flipped ones first
    assert any("Listing 4 of the" in c.value for c in at.caption)


def test_the_spectra_are_shared_not_copied(tiny_store, monkeypatch):
    """At large-v2's size a run's spectra are 24 MB: a data cache pickled them on the first draw and unpickled them
    on every threshold move (50 ms each way). They are read only, and shared."""
    _keep_main(monkeypatch)

    def page(path: str) -> None:
        import streamlit as st

        from loralens.app import cache

        run = next(r.name for r in cache.runs(path) if r.method == "lora")
        st.text(str(cache.spectra(path, run, None) is cache.spectra(path, run, None)))

    at = AppTest.from_function(page, args=(tiny_store,)).run()
    _ok(at)
    assert at.text[0].value == "True"


def test_a_page_that_fails_says_so_in_one_line_and_the_others_still_serve(app, monkeypatch, caplog):
    """A bug under a page (here, the Utterance page's pairing with the frozen run) shows no traceback in the browser:
    one line that says what failed and where the details are (the server's log), and every other page still draws."""
    from loralens.analysis import views

    def broken(*args, **kwargs):
        raise RuntimeError("a bug under the utterance page")

    at = app.run()
    monkeypatch.setattr(views, "frozen_partner", broken)
    at.switch_page("sections/utterance.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "RuntimeError: a bug under the utterance page" in at.error[0].value and "log" in at.error[0].value
    assert "a bug under the utterance page" in caplog.text  # the traceback went to the server's log
    at.switch_page("sections/overview.py").run()
    _ok(at)


def test_dynamics_shows_intruder_dimensions_or_the_command_that_computes_them(app, tiny_store, tmp_path, monkeypatch):
    import shutil

    from loralens.store.writer import StoreWriter

    at = app.run()
    at.switch_page("sections/dynamics.py").run()
    _ok(at)
    keys = {str(user_key_from_element_id(b.proto.id)) for b in at.get("download_button")}
    assert {"dyn-intruders-csv", "dyn-intruder-vectors-csv"} <= keys, keys
    assert any("intruder" in c.value for c in at.caption)

    copy = str(tmp_path / "old.zarr")  # traced before intruder dimensions were recorded
    shutil.copytree(tiny_store, copy)
    writer = StoreWriter(copy)
    for checkpoint in writer.runs()["tiny-lora"]:
        group = writer.group("tiny-lora", checkpoint)
        group.attrs.put({k: v for k, v in group.attrs.items() if k != "intruders"})
    monkeypatch.setenv("LORALENS_STORE", copy)
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    at.switch_page("sections/dynamics.py").run()
    _ok(at)
    assert any("loralens intruders" in i.value and copy in i.value for i in at.info), [i.value for i in at.info]
