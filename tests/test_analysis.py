"""The analyses against known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ortho_group
from sklearn.metrics import silhouette_score

from loralens.analysis import cka, contributions, lens, projections, spectra, views


def _data(n=300, d=20, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_cka_invariances_and_independence():
    x = _data()
    q = ortho_group.rvs(20, random_state=1)
    for fn in (cka.linear_cka, cka.rbf_cka):
        assert fn(x, x @ q) == pytest.approx(1.0, abs=1e-6)
    assert cka.linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-6)  # float32 products
    assert cka.rbf_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-6)
    y = _data(seed=2)
    assert cka.linear_cka(x, y) < 0.1
    assert abs(cka.linear_cka(x, y, debiased=True)) < 0.02
    assert abs(cka.rbf_cka(x, y, debiased=True)) < 0.02
    assert cka.linear_cka(x, x @ q, debiased=True) == pytest.approx(1.0, abs=1e-6)


def test_linear_cka_equals_gram_implementation():
    x, y = _data(100, 7, 3), _data(100, 11, 4)
    y[:, :7] += x
    n = len(x)
    h = np.eye(n) - 1 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h  # noqa: E741
    direct = np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))
    assert cka.linear_cka(x, y) == pytest.approx(direct, rel=1e-5)  # float32 products


def test_effective_rank_of_rank_k_data():
    rng = np.random.default_rng(0)
    for k in (1, 3, 8):
        x = rng.standard_normal((500, k)) @ rng.standard_normal((k, 32))
        s = spectra.singular_values(x)
        assert spectra.effective_rank(s, 0.999999) == k
        assert spectra.cumulative_energy(s)[k - 1] == pytest.approx(1.0)
    iso = rng.standard_normal((5000, 10))
    assert spectra.effective_rank(spectra.singular_values(iso), 0.9) == 9
    trained = spectra.spectrum([rng.standard_normal((200, 2)) @ rng.standard_normal((2, 16))] * 2)
    random = spectra.spectrum([rng.standard_normal((200, 16))] * 2)
    assert spectra.concentration_ratio(random, trained) > 5


def test_spectrum_stays_within_each_fold_model():
    """Two fold models, each a different rank-2 map: rank 2 within each; stacking them would show 4."""
    rng = np.random.default_rng(0)
    folds = [rng.standard_normal((300, 2)) @ rng.standard_normal((2, 16)) for _ in range(2)]
    within = spectra.spectrum([folds], threshold=0.999999)
    assert within.ranks.tolist() == [2.0] and within.curves.shape == (1, 16)
    assert spectra.spectrum([np.concatenate(folds)], threshold=0.999999).ranks.tolist() == [4.0]
    uneven = spectra.spectrum([[folds[0], folds[1][:, :1] @ np.ones((1, 16))]], threshold=0.999999)
    assert uneven.ranks.tolist() == [1.5]  # averaged over models: fractional
    assert uneven.at(0.5).threshold == 0.5 and uneven.at(0.5).ranks.tolist() == [1.0]


def test_a_threshold_move_recomputes_no_curve_and_draws_a_bounded_curve():
    """The LoRA dynamics slider: ``at`` keeps the cumulative-energy curves (ranks read them); the chart's frame draws
    a width-1280 curve at log-spaced k (its own values there, both ends kept), not at all 1280."""
    from loralens.analysis import views

    rng = np.random.default_rng(0)
    wide = spectra.spectrum([[rng.standard_normal((1500, 1280)) * np.geomspace(1, 1e-3, 1280)] for _ in range(2)])
    moved = wide.at(0.8)
    assert moved.energy is wide.energy
    assert moved.ranks.tolist() == [spectra.effective_rank(s, 0.8) for (s,) in wide.singular]
    frame = views.spectra_frame({"lora_b_activation": {"trained": wide, "random_twin": moved}})
    curve = frame[frame.checkpoint == "trained"]
    assert len(curve) <= views.CURVE_POINTS and curve.k.min() == 1 and curve.k.max() == 1280
    assert np.allclose(curve.energy, wide.mean_curve[curve.k.to_numpy() - 1])
    assert curve.k.is_monotonic_increasing and curve.k.is_unique


def test_lens_kl_zero_and_overlap_one_at_last_layer():
    logits = np.random.default_rng(0).standard_normal((20, 7, 4))
    summary = lens.lens_statistics(logits, np.array(["a", "b"] * 10))
    assert summary.kl[-1] == pytest.approx(0.0, abs=1e-12) and summary.overlap[-1] == 1.0
    assert (summary.kl >= -1e-12).all() and set(summary.by_emotion) == {"a", "b"}


def test_lens_kl_runs_from_the_final_prediction_to_each_layer():
    """KL(p_L || p_l), as the paper's code (F.kl_div(log p_l, p_L)), against scipy.stats.entropy."""
    from scipy.special import softmax
    from scipy.stats import entropy

    logits = np.random.default_rng(1).standard_normal((6, 5, 4)) * 2
    p = softmax(logits, axis=-1)
    kl = lens.kl_to_final(logits)
    reverse = lens.kl_to_final(logits, "layer||final")
    for u in range(6):
        for b in range(5):
            assert kl[u, b] == pytest.approx(entropy(p[u, -1], p[u, b]), rel=1e-9, abs=1e-12)
            assert reverse[u, b] == pytest.approx(entropy(p[u, b], p[u, -1]), rel=1e-9, abs=1e-12)
    assert not np.allclose(kl[:, :-1], reverse[:, :-1])  # the direction matters on these
    with pytest.raises(ValueError, match="direction"):
        lens.kl_to_final(logits, "sideways")


def test_lens_summary_on_hand_made_distributions():
    """Two utterances, three boundaries, two classes, with known probabilities at every boundary."""
    probs = np.array([[[0.5, 0.5], [0.2, 0.8], [0.1, 0.9]],     # settles on class 1 at boundary 1
                      [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]])    # flips at the last boundary
    summary = lens.lens_statistics(np.log(probs), np.array(["x", "y"]))
    final_1, final_2 = probs[0, 2], probs[1, 2]
    by_hand = lambda p, q: float(np.sum(p * np.log(p / q)))  # noqa: E731
    assert summary.kl_per_utterance[0].tolist() == pytest.approx([by_hand(final_1, probs[0, 0]),
                                                                  by_hand(final_1, probs[0, 1]), 0.0])
    assert summary.kl_per_utterance[1, 1] == pytest.approx(by_hand(final_2, probs[1, 1]))
    assert summary.kl[1] == pytest.approx((by_hand(final_1, probs[0, 1]) + by_hand(final_2, probs[1, 1])) / 2)
    # top-1: utterance 1 is 0 (a tie: argmax takes the first), 1, 1; utterance 2 is 0, 1, 0
    assert summary.overlap.tolist() == [0.5, 0.5, 1.0]
    assert summary.resolution_depth.tolist() == [1, 2]
    assert summary.by_emotion["y"]["overlap"].tolist() == [1.0, 0.0, 1.0]
    assert summary.kl_label == "KL(final ‖ layer)" and summary.direction == "final||layer"


def test_resolution_depth():
    top = np.array([[0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0], [2, 2, 0, 2]])
    logits = np.eye(3)[top] * 5
    assert lens.resolution_depth(logits).tolist() == [1, 0, 3, 3]


def _silhouette_by_hand(x, labels):
    """Rousseeuw 1987: the mean over points of (b - a) / max(a, b), with a the point's mean distance to the rest of
    its own cluster and b its mean distance to the nearest other cluster."""
    distance = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    scores = []
    for i, label in enumerate(labels):
        own = labels == label
        a = distance[i, own].sum() / (own.sum() - 1)
        b = min(distance[i, labels == other].mean() for other in set(labels.tolist()) - {label})
        scores.append((b - a) / max(a, b))
    return np.mean(scores)


def test_silhouette_is_rousseeuws_in_the_standardised_space():
    """The contract: the silhouette of the labels once each feature is scaled to zero mean and unit variance."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 20)
    # The clusters differ on a narrow feature; a wide one is noise. Unstandardised, the noise would hide them.
    x = np.column_stack([0.01 * np.repeat([0, 1, 2], 20) + 0.002 * rng.standard_normal(60),
                         1000 * rng.standard_normal(60)])
    standardised = (x - x.mean(0)) / x.std(0)
    assert projections.silhouette(x, labels) == pytest.approx(_silhouette_by_hand(standardised, labels), abs=1e-12)
    assert projections.silhouette(x, labels) > 0.2 > abs(silhouette_score(x, labels))
    # Above ``sample`` vectors, an estimate on that many, the same each time, near the exact value.
    many = np.repeat([0, 1], 600)
    x = rng.standard_normal((1200, 4)) + 1.5 * many[:, None]
    exact = _silhouette_by_hand((x - x.mean(0)) / x.std(0), many)
    estimate = projections.silhouette(x, many, sample=300)
    assert estimate == projections.silhouette(x, many, sample=300)
    assert 1e-6 < abs(estimate - exact) < 0.05
    assert projections.silhouette(x, many) == pytest.approx(exact, abs=1e-12)  # 1200 are fewer than the default


def test_silhouette_of_separate_clusters_is_near_one_and_of_shuffled_labels_near_zero():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 50)
    x = 0.05 * rng.standard_normal((150, 3)) + 10 * np.eye(3)[labels]  # no feature of noise alone: it is standardised
    assert projections.silhouette(x, labels) > 0.95
    assert abs(projections.silhouette(x, rng.permutation(labels))) < 0.1
    assert np.isnan(projections.silhouette(x, np.zeros(150)))  # one label: no silhouette
    assert np.isnan(projections.silhouette(x[:3], labels[[0, 50, 100]]))  # a vector per label: none either


def test_umap_places_new_points_near_their_cluster():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 6
    x = np.concatenate([c + rng.standard_normal((30, 8)) for c in centres])
    proj = projections.project(x, "umap", placeable=True)
    new = proj.place(centres[1] + 0.1 * rng.standard_normal((1, 8)))
    cluster_mean = proj.coordinates[30:60].mean(0)
    others = [proj.coordinates[:30].mean(0), proj.coordinates[60:].mean(0)]
    assert np.linalg.norm(new - cluster_mean) < min(np.linalg.norm(new - o) for o in others)
    assert projections.project(x, "tsne").coordinates.shape == (90, 2)
    with pytest.raises(ValueError, match="placeable=True"):
        projections.project(x, "umap").place(centres[1])  # a map fitted for its coordinates only


def test_a_umap_in_a_new_process_loads_what_an_earlier_one_compiled():
    """UMAP's numba functions are cached on disk: each summary worker and app process compiled them (11 s)."""
    import subprocess
    import sys

    code = ("import numpy as np, umap.umap_; from loralens.analysis import projections; "
            "projections.project(np.random.default_rng(0).standard_normal((40, 8)), 'umap'); "
            "stats = umap.umap_.smooth_knn_dist.stats; print(sum(stats.cache_hits.values()))")
    hits = [int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(2)]
    assert hits[1] > 0  # the second process (at the latest) loaded it rather than compiling it


def test_a_large_map_finds_exact_neighbours_without_pynndescent(monkeypatch):
    """From EXACT_NEIGHBOURS vectors UMAP's own neighbours come from pynndescent, whose compilation cost a
    summary over a minute in each worker; a map that places nothing takes exact ones and never starts it."""
    import pynndescent
    import umap.umap_

    class Refused(pynndescent.NNDescent):
        def __init__(self, *args, **kwargs):
            raise AssertionError("pynndescent was asked for neighbours")

    monkeypatch.setattr(umap.umap_, "NNDescent", Refused)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, projections.EXACT_NEIGHBOURS + 10)
    x = rng.standard_normal((len(labels), 8)) + 4 * np.eye(8)[labels]
    proj = projections.project(x, "umap")
    assert proj.coordinates.shape == (len(x), 2) and proj.model is None
    assert projections.silhouette(proj.coordinates, labels) > 0.5  # the three clusters stay apart


def test_contributions_average_real_frames_only():
    ratio = np.zeros((2, 2, 5))
    ratio[0, :, :5] = 1.0
    ratio[1, :, :3] = 0.25
    ratio[1, :, 3:] = 99.0  # padding: must not count
    zeros = np.zeros_like(ratio)
    c = contributions.contributions(ratio, zeros, zeros + 0.1, zeros, ratio * 2, zeros - 1, np.array([5, 3]))
    assert np.allclose(c.attention, (5 * 1.0 + 3 * 0.25) / 8) and np.allclose(c.mlp, 0.1)
    assert np.allclose(c.block, 2 * (5 * 1.0 + 3 * 0.25) / 8) and np.allclose(c.block_cosine, -1)
    assert np.allclose(c.minus(c).block, 0)



def test_time_blocks_average_long_clips_and_keep_short_ones():
    from loralens.analysis.views import time_blocks

    short = np.arange(12.0).reshape(2, 6)
    same, step = time_blocks(short, columns=6)
    assert step == 1 and same is short
    long = np.arange(1500.0)[None].repeat(3, 0)  # a 30 s clip: 1,500 encoder frames
    pooled, step = time_blocks(long, columns=250)
    assert step == 6 and pooled.shape == (3, 250)
    np.testing.assert_allclose(pooled[0, :2], [2.5, 8.5])
    odd, step = time_blocks(np.arange(7.0)[None], columns=3)  # blocks 0-2, 3-5, then 6 alone
    assert step == 3
    np.testing.assert_allclose(odd, [[1.0, 4.0, 6.0]])


def test_charts_of_long_clips_and_large_stores_are_drawn():
    """Altair refuses more than 5,000 rows by default: a 3 s clip's log-mel view, or a map of IEMOCAP's 5,500."""
    import pandas as pd

    from loralens.app import charts, widgets

    rng = np.random.default_rng(0)
    scatter = pd.DataFrame({"x": rng.standard_normal(5500), "y": rng.standard_normal(5500),
                            "emotion": rng.choice(["anger", "sadness"], 5500), "id": [f"u{i}" for i in range(5500)]})
    assert len(widgets.figure(charts.scatter(scatter)).spec["datasets"]) == 1
    widgets.figure(charts.time_image(rng.standard_normal((128, 1500)), 0.02, "mel", "log-mel"))  # 30 s, large-v3


def test_a_spectrogram_is_one_image_coloured_as_its_legend():
    """The log-mel is one image mark (a rect per cell cost the Utterance page about a second of drawing), its top row
    the highest mel bin, its colours those of its legend's scale at the same values."""
    import base64
    import io

    from PIL import Image

    from loralens.app import charts

    values = np.zeros((80, 150))
    values[-1, :] = 4.0  # the highest bin at the maximum
    values[0, 0] = -2.0  # one cell of the lowest bin at the minimum
    spec = charts.time_image(values, 0.02, "mel", "log-mel", value="log-mel").to_dict(validate=False)
    image, legend = spec["layer"]
    data = spec["datasets"][image["data"]["name"]][0]
    assert image["mark"]["type"] == "image" and (data["end"], data["top"]) == (pytest.approx(3.0), 80.0)
    png = Image.open(io.BytesIO(base64.b64decode(data["url"].split(",", 1)[1])))
    pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape == (80, 150, 3)
    scale = legend["encoding"]["color"]["scale"]
    assert scale["domain"] == [-2.0, 4.0] and scale["interpolate"] == "rgb"
    hex_of = "#{:02x}{:02x}{:02x}".format
    assert hex_of(*pixels[0, 5]) == scale["range"][-1]  # top row: the highest bin, at the maximum
    assert hex_of(*pixels[-1, 0]) == scale["range"][0]  # bottom-left: the minimum
    middle = pixels[-1, 1]  # zero, a third of the way: between the scale's 6th and 7th colours of 17
    assert hex_of(*middle) not in scale["range"] and 0 < middle.sum() < 3 * 255


def test_a_large_layers_by_time_view_is_an_image_on_a_fixed_probability_scale():
    """The layers x time view is an image (a 32-layer model's clip: 7,400 cells); its colours stay on probability's
    fixed 0..1 scale whatever the values' own range."""
    import base64
    import io

    from PIL import Image

    from loralens.app import charts

    heat = np.full((33, 225), 0.5)
    heat[0, 0], heat[-1, -1] = 0.0, 1.0
    spec = charts.time_image(heat, 0.02, "boundary", "P", "probability", charts.PROBABILITY_COLOURS,
                             (0.0, 1.0)).to_dict(validate=False)
    image, legend = spec["layer"]
    url = spec["datasets"][image["data"]["name"]][0]["url"]
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    hex_of = "#{:02x}{:02x}{:02x}".format
    assert hex_of(*pixels[-1, 0]) == charts.PROBABILITY_COLOURS[0]  # boundary 0, first frame: 0
    assert hex_of(*pixels[0, -1]) == charts.PROBABILITY_COLOURS[-1]  # the last boundary, last frame: 1
    assert hex_of(*pixels[5, 5]) == charts.PROBABILITY_COLOURS[8]  # 0.5: the middle of the scale
    assert legend["encoding"]["color"]["scale"]["domain"] == [0.0, 1.0]


def test_every_chart_is_built_from_channel_objects(monkeypatch):
    """A channel given to Altair as a string ("x:Q", a tooltip's field name) is validated against the schema on every
    ``encode``: 6-13 ms a chart, most of the Utterance page's building. No chart may take that path."""
    import altair as alt
    import pandas as pd

    from loralens.app import charts

    rng = np.random.default_rng(0)
    emotions = ["anger", "happiness", "neutral", "sadness"]
    trajectory = pd.DataFrame({"boundary": np.repeat(np.arange(7), 4), "emotion": emotions * 7,
                               "probability": rng.random(28)})
    cases = {
        "trajectory": (trajectory,), "trajectories": (trajectory.assign(series="as trained"),),
        "heatmap": (pd.DataFrame({"a": [0, 1], "b": [1, 0], "cka": [0.5, 0.7]}), "a", "b", "cka"),
        "contributions": (pd.DataFrame({"layer": [0, 1], "sublayer": "attn", "measure": "cosine", "value": [0.1, 0.2],
                                        "series": "LoRA"}),),
        "spectra": (pd.DataFrame({"k": [1, 2], "energy": [0.5, 1.0], "quantity": "A", "checkpoint": "trained"}), 0.9),
        "per_layer": (pd.DataFrame({"layer": [0, 1], "cka": [0.3, 0.4], "series": "activation"}), "cka", "CKA"),
        "scatter": (pd.DataFrame({"x": [0.0, 1.0], "y": [1.0, 0.0], "id": ["u0", "u1"], "emotion": "anger"}),
                    "emotion", "", "u1"),
        "interventions": (pd.DataFrame({"layer": [0], "kind": ["erase"], "condition": ["erase@0"], "kl": [0.1]}), "kl"),
        "audio_changes": (pd.DataFrame({"label": "pitch", "strength": [1.0], "run": "r", "condition": ["pitch@1"],
                                        "kl": [0.1]}), "kl"),
        "lens_curves": (pd.DataFrame({"boundary": [0, 1], "value": [0.1, 0.0], "measure": "kl", "series": "LoRA"}),),
        "time_image": (rng.random((8, 20)), 0.02, "mel"),
        "occlusion": (pd.DataFrame({"start": [0.0, 0.1], "end": [0.1, 0.2], "drop": [0.3, -0.1]}), "anger", 0.2),
        "intruder_counts": (pd.DataFrame({"layer": [0, 1], "count": [0.0, 1.5], "series": "trained",
                                          "module": ["layer_0.v_proj", "layer_1.v_proj"], "epsilon": 0.5,
                                          "max_singular": [0.0, 2.0]}),),
        "intruder_vectors": (pd.DataFrame({"similarity": [0.3, 0.9], "singular": [2.0, 1.0], "checkpoint": "trained",
                                           "module": "layer_0.v_proj", "fold": 0, "position": [0, 1]}), (0.5, 0.9)),
    }
    assert set(cases) | {"mark_boundary", "at_threshold", "click", "picked_id", "save"} >= {
        n for n, f in vars(charts).items() if callable(f) and getattr(f, "__module__", "") == charts.__name__
        and not n.startswith("_")}, "a new chart: add it here"
    slow = []
    monkeypatch.setattr(alt.utils.schemapi.SchemaBase, "from_dict",
                        classmethod(lambda cls, *a, **k: slow.append(cls.__name__) or pytest.fail(cls.__name__)))
    for name, args in cases.items():
        getattr(charts, name)(*args)
    assert not slow


def test_the_rank_table_shows_no_random_rank_without_a_random_twin():
    """A run traced without its twin has no random rank: none is shown, never the trained one in its place."""
    trained = spectra.Spectrum(((np.array([3.0, 2.0, 1.0, 0.5]),),))
    table = views.rank_table({"lora_a_activation": {"trained": trained}})
    assert table["trained rank"].iloc[0] == trained.mean_rank
    assert table["random rank"].isna().all() and table["concentration (random / trained)"].isna().all()


def test_a_map_far_from_zero_fills_its_chart():
    """Vega-Lite puts zero in a quantitative axis by default: a map whose points lie far from 0 crowded one corner."""
    from loralens.app import charts

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": 100 + rng.random(20), "y": -50 + rng.random(20), "id": [f"u{i}" for i in range(20)],
                          "emotion": ["anger", "sadness"] * 10})
    for chart in (charts.scatter(frame), charts.scatter(frame, highlight="u3")):
        spec = chart.to_dict()
        layers = spec.get("layer", [spec])
        for layer in layers:
            for axis in ("x", "y"):
                assert layer["encoding"][axis].get("scale", {}).get("zero") is False, (axis, layer["mark"])


def test_a_lora_run_pairs_with_the_frozen_run_of_its_own_data_set():
    """EmoDB and RAVDESS runs of one model in one store: pairing across corpora leaves no shared utterance."""
    def run(name, method, data):
        return views.RunInfo(name, method, "bundled:base", "trim", 32, ["v_proj"], ["trained"], ["anger"], 6, {},
                             data=data)

    runs = [run("ravdess-frozen", "frozen", "ravdess:R"), run("emodb-frozen", "frozen", "emodb:E"),
            run("emodb-lora", "lora", "emodb:E"), run("ravdess-lora", "lora", "ravdess:R")]
    assert views.frozen_partner(runs, runs[2]).name == "emodb-frozen"
    assert views.frozen_partner(runs, runs[3]).name == "ravdess-frozen"
    assert [r.name for r in views.rank_series(runs, runs[2])] == ["emodb-lora"]
    # One corpus named by a relative and an absolute path is one data set.
    runs[1].data = "emodb:/data/corpora/emodb/"
    runs[2].data = "emodb:../corpora/emodb"
    assert views.frozen_partner(runs, runs[2]).name == "emodb-frozen"


def test_a_lora_run_pairs_with_the_frozen_run_of_its_own_seed():
    """A grid traced into one store: LoRA seed 1 against frozen seed 1 on every page, not the first frozen run."""
    def run(name, method, seed):
        return views.RunInfo(name, method, "bundled:base", "trim", 32, ["v_proj"], ["trained"], ["anger"], 6, {},
                             data="emodb:E", seed=seed)

    runs = [run("frozen-0", "frozen", 0), run("frozen-1", "frozen", 1), run("lora-1", "lora", 1),
            run("lora-2", "lora", 2)]
    assert views.frozen_partner(runs, runs[2]).name == "frozen-1"
    assert views.frozen_partner(runs, runs[3]).name == "frozen-0"  # no frozen run of its seed: the first


def test_a_freeze_a_run_says_so_pairs_with_frozen_and_keeps_out_of_the_rank_series():
    """A --freeze-a run (every A at its random start) is LoRA with a frozen partner, labelled as such; the rank
    series of an ordinary LoRA run does not take it for another rank, nor the other way round."""
    def run(name, method, rank, freeze_a=False):
        return views.RunInfo(name, method, "bundled:base", "trim", rank, ["v_proj"], ["trained"], ["anger"], 6, {},
                             data="emodb:E", freeze_a=freeze_a)

    runs = [run("frozen", "frozen", 32), run("lora-r8", "lora", 8), run("lora-r32", "lora", 32),
            run("fa-r8", "lora", 8, True), run("fa-r32", "lora", 32, True)]
    assert runs[4].kind == "LoRA r=32 on v_proj, A frozen" and runs[2].kind == "LoRA r=32 on v_proj"
    assert "A frozen" in runs[4].label and "A frozen" not in runs[2].label
    assert views.frozen_partner(runs, runs[4]).name == "frozen"
    assert [r.name for r in views.rank_series(runs, runs[2])] == ["lora-r8", "lora-r32"]
    assert [r.name for r in views.rank_series(runs, runs[4])] == ["fa-r8", "fa-r32"]


def test_the_spectra_and_cka_charts_say_what_they_centre():
    """As the paper's code: SVD spectra of the stacked outputs uncentred, linear CKA centred; the axes say so."""
    from loralens.app import charts

    curves = pd.DataFrame({"k": [1, 2], "energy": [0.6, 1.0], "quantity": ["A activation"] * 2,
                           "checkpoint": ["trained"] * 2})
    spec = charts.spectra(curves, 0.9).to_dict()
    assert "uncentred" in spec["spec"]["layer"][0]["encoding"]["y"]["title"]
    cka = charts.per_layer(pd.DataFrame({"layer": [0], "cka": [0.5], "series": ["activation"]}), "cka", "CKA")
    assert "centred" in cka.to_dict()["encoding"]["y"]["title"]


def test_occlusion_windows_cover_the_clip_and_the_timeline_averages_what_covers_each_frame():
    from loralens.analysis import occlusion

    bounds = occlusion.windows(int(1.05 * 16000))
    assert bounds[0, 0] == 0 and bounds[-1, 1] == int(1.05 * 16000)  # the last window ends at the clip's end
    assert np.all(np.diff(bounds[:, 0]) > 0) and np.all(bounds[:, 1] - bounds[:, 0] == 3200)
    assert occlusion.windows(1000).tolist() == [[0, 1000]]  # shorter than a window: one, the whole clip
    clip = np.ones(16000, np.float32)
    masked = occlusion.masked(clip, bounds[:2])
    assert masked[1][1600:4800].sum() == 0 and masked[1][:1600].all() and masked[1][4800:].all()
    # Silencing the first window turns class b's log-odds from +2 to -2; the others change nothing.
    logits = np.array([0.0, 2.0])
    under = np.tile(logits, (len(bounds), 1))
    under[0] = [2.0, 0.0]
    result = occlusion.occlusion(logits, under, bounds, ["a", "b"])
    assert result.target == "b" and result.predictions[0] == "a"
    times, drops = occlusion.timeline(result)
    assert drops[times < 0.1] == pytest.approx(4.0)  # only the first window covers its first 100 ms
    assert drops[(times >= 0.1) & (times < 0.2)] == pytest.approx(2.0)  # half the windows covering it: the mean
    assert np.all(drops[times >= 0.2] == 0)
    # Log-odds from logits stay exact where the probability rounds to 1 (float64 keeps 1 - 1e-20 as 1).
    confident = np.array([[0.0, 46.0, 1.0], [0.0, 40.0, 1.0]])
    assert occlusion.log_odds(confident, 1) == pytest.approx(
        [46.0 - np.log(1 + np.e), 40.0 - np.log(1 + np.e)])
