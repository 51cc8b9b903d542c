"""loralens report on the fixture store: every figure, and each finding checked with numbers."""

from __future__ import annotations

import json
import warnings

from loralens.analysis import views
from loralens.cli import main
from tests.conftest import without_intruders


def test_report_writes_figures_and_findings(tiny_store, tmp_path, monkeypatch):
    built = []  # the report draws the pages' own tidy frames (its copies had drifted from theirs)
    for name in ("lens_frame", "contribution_frame", "spectra_frame", "cka_ab_frame", "heatmap_frame"):
        real = getattr(views, name)
        monkeypatch.setattr(views, name, lambda *a, _real=real, _name=name, **k: built.append(_name) or _real(*a, **k))
    out = tmp_path / "report"
    assert main(["report", "--store", tiny_store, "--out", str(out)]) == 0
    assert set(built) == {"lens_frame", "contribution_frame", "spectra_frame", "cka_ab_frame", "heatmap_frame"}
    summary = json.loads((out / "summary.json").read_text())
    (run,) = summary["runs"].values()
    assert run["frozen"] == "tiny-frozen" and run["n_utterances"] == 32
    assert [f["finding"] for f in run["findings"]] == [
        "delayed specialization", "late-layer contribution growth with negative cosine",
        "A compression and B reconstruction", "forward alignment and backward differentiation"]
    assert run["lens"]["kl"][-1] < 1e-6 and run["lens"]["overlap"][-1] == 1.0
    assert run["lens"]["kl_label"] == "KL(final ‖ layer)"
    assert set(run["concentration_ratio"]) == {"lora_a_activation", "lora_a_gradient", "lora_b_activation",
                                               "lora_b_gradient"}
    for name in ("lens", "contributions", "svd", "cka-ab", "cka-within", "cka-vs_frozen", "silhouette", "tsne",
                 "umap"):
        for ext in ("png", "svg"):
            assert (out / f"tiny-lora-{name}.{ext}").stat().st_size > 1000, name
    assert "| delayed specialization |" in (out / "summary.md").read_text()


def test_report_compares_the_runs_that_differ_only_in_rank(rank_store, tmp_path):
    out = tmp_path / "report"
    assert main(["report", "--store", rank_store, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"tiny-lora", "tiny-lora-r2", "tiny-lora-r8-q"}
    # one comparison: ranks 4 and 2 on v_proj; the rank-8 run on q_proj has nothing to compare with
    (comparison,) = summary["rank_comparisons"]
    assert sorted(comparison["runs"]) == ["tiny-lora", "tiny-lora-r2"] and comparison["module"] == 1
    assert set(comparison["silhouette"]) == set(comparison["silhouette_on_map"]) == {"2", "4"}
    assert comparison["n_utterances"] == 32
    for ext in ("png", "svg"):
        assert (out / f"{comparison['figure']}.{ext}").stat().st_size > 1000
    assert "## Ranks: " in (out / "summary.md").read_text()


def test_report_has_the_causal_lens_where_interventions_ran(causal_store, tmp_path):
    out = tmp_path / "report"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["report", "--store", causal_store, "--out", str(out)]) == 0
    # The runs' grids side by side once each declared the app's click selection: altair 6.3 merged them with a warning
    assert not [w for w in caught if "altair" in w.filename or "deduplicated" in str(w.message)]
    causal = json.loads((out / "summary.json").read_text())["runs"]["tiny-lora"]["causal"]
    assert causal["partner"] == "tiny-frozen" and causal["n_utterances"] == 32
    assert [f["finding"] for f in causal["findings"]] == [
        "delayed specialization, causally: LoRA matters most in late layers",
        "frozen residuals patched into LoRA destroy its decision late, not early",
        "predictions robust to mild audio changes"]
    assert set(causal["conditions"]) == {"tiny-lora", "tiny-frozen"}
    assert [c["condition"] for c in causal["conditions"]["tiny-frozen"]] == [
        "none", "erase@0", "erase@1", "patch@0", "patch@1", "noise@20", "noise@0"]
    for name in causal["figures"]:
        assert (out / f"{name}.png").stat().st_size > 1000
    assert causal["figures"] == ["tiny-lora-causal", "tiny-lora-audio"]
    markdown = (out / "summary.md").read_text()
    assert "### Causal lens" in markdown and "| predictions robust to mild audio changes |" in markdown


def test_the_report_says_which_utterances_each_section_uses(tiny_runs, tmp_path):
    """The LoRA run traced 32 utterances, its frozen partner 8, half of them with their per-frame arrays: the
    lens and contributions use the 8 both traced, the spectra those of them that kept their frames, the maps all
    32. The report said 'every number is computed over the same 8', which the maps belied."""
    store = str(tmp_path / "s.zarr")
    assert main(["trace", "--run", str(tiny_runs["lora"]), "--store", store, "--all", "--per-frame-sample", "0.5",
                 "--no-summary"]) == 0
    assert main(["trace", "--run", str(tiny_runs["frozen"]), "--store", store, "--per-class", "2"]) == 0
    out = tmp_path / "report"
    assert main(["report", "--store", store, "--out", str(out)]) == 0
    (run,) = json.loads((out / "summary.json").read_text())["runs"].values()
    assert run["n_utterances"] == 8 and run["utterance_sets"]["maps"] == 32
    assert 0 < run["utterance_sets"]["per_frame"] < 8
    markdown = (out / "summary.md").read_text()
    assert "Every number below is computed over the same" not in markdown
    assert "t-SNE and UMAP maps: the 32 utterances" in markdown
    assert f"SVD spectra and CKA(A, B): the {run['utterance_sets']['per_frame']} of them" in markdown
    # Residual CKA is within each fold model: none of the four traced the 4 utterances its estimator needs, so
    # the heatmaps are refused, saying why (they stacked the fold models' utterances before).
    assert {k: h["figure"] for k, h in run["residual_cka"].items()} == {"within": None, "vs_frozen": None}
    assert "Residual CKA (within) is not drawn: residual CKA of tiny-lora with tiny-lora needs a fold model" \
        in markdown
    assert not (out / "tiny-lora-cka-within.png").exists() and "tiny-lora-cka-within" not in markdown


def test_the_report_counts_intruder_dimensions_per_layer(tiny_store, tmp_path, monkeypatch):
    """Each LoRA run's intruders per layer, trained vs random twin, at the LoRA dynamics page's thresholds; a store
    traced before they were recorded names the command that adds them."""

    from loralens.analysis.intruders import EPSILONS, count_frame, intruders_of
    from loralens.app import charts
    from loralens.store.reader import StoreReader

    monkeypatch.setattr(charts, "save", lambda *a, **k: None)  # the numbers only: the first test draws the figures
    out = tmp_path / "report"
    assert main(["report", "--store", tiny_store, "--out", str(out)]) == 0
    table = json.loads((out / "summary.json").read_text())["runs"]["tiny-lora"]["intruders"]
    assert table["epsilons"] == list(EPSILONS) and table["checkpoints"] == ["trained", "random_twin"]
    assert [m["module"] for m in table["modules"]] == ["layer_0.v_proj", "layer_1.v_proj"]
    stored = intruders_of(StoreReader(tiny_store), "tiny-lora")
    for i, epsilon in enumerate(EPSILONS):
        want = count_frame({c: r.at(epsilon) for c, r in stored.items()}).set_index(["checkpoint", "module"])
        for m in table["modules"]:
            for checkpoint in ("trained", "random_twin"):
                assert m["count"][checkpoint][i] == want.at[(checkpoint, m["module"]), "count"]
    markdown = (out / "summary.md").read_text()
    assert "### Intruder dimensions" in markdown and "from the weights alone" in markdown
    header = ("| layer | target | " + " | ".join(f"{c} ε {e:g}" for e in EPSILONS for c in ("trained", "random twin"))
              + " |")
    assert header in markdown
    rows = [line for line in markdown.splitlines() if line.startswith(("| 0 | v_proj |", "| 1 | v_proj |"))]
    assert len(rows) == 2 and all(row.count("|") == 2 + 2 * len(EPSILONS) + 1 for row in rows)

    # A store traced before intruders were recorded: one line with the command that records them.
    copy = without_intruders(tiny_store, str(tmp_path / "old.zarr"), "tiny-lora")
    run_dir = StoreReader(copy).attrs("tiny-lora")["run_dir"]
    assert main(["report", "--store", copy, "--out", str(tmp_path / "old")]) == 0
    markdown = (tmp_path / "old" / "summary.md").read_text()
    assert "| layer | target |" not in markdown
    assert f"`loralens intruders {run_dir} --store {copy} --name tiny-lora`" in markdown
