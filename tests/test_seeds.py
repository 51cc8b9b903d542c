"""Runs that differ only in seed: the interval over seeds, the grouping and pairing, and ``loralens report`` over
several stores (zero spread between identical runs, "1 of 2" where a finding holds in one seed only)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from loralens.analysis import seeds, views
from loralens.analysis.summary import summarise
from loralens.cli import main
from loralens.store.reader import StoreReader
from loralens.store.writer import StoreWriter, UtteranceRow
from tests.conftest import checkpoint_attrs
from tests.test_findings import EMOTIONS, FRAMES, N_LAYERS, PER_CLASS, RANK, SIZES, D, _row

FINDINGS = ["delayed specialization", "late-layer contribution growth with negative cosine",
            "A compression and B reconstruction", "forward alignment and backward differentiation"]


def _metrics(seed: int, method: str) -> dict:
    """Per-fold scores of a run: two folds, LoRA above frozen by 0.1 and 0.2, moved by the seed; LoRA with A frozen
    (``a_frozen``) below LoRA by 0.05 and 0.15."""
    base = {"lora": [0.6, 0.7], "frozen": [0.5, 0.5], "a_frozen": [0.55, 0.55]}[method]
    folds = [{"fold": f, "uar": base[f] + 0.01 * seed, "war": base[f] + 0.02 * seed, "test_speakers": [f"spk{f}"],
              "confusion": np.eye(4, dtype=int).tolist()}
             for f in (0, 1)]
    return {"folds": folds, "n_folds": 2, "n_done": 2}


def _store(path: str, holds: dict[int, bool], a_frozen: bool = False) -> StoreReader:
    """A hand-written store of a LoRA and a frozen run per seed (``holds``: seed -> whether every finding holds in
    its LoRA run); two fold models, rows alternating between them; the runs' training config names their seed.
    ``a_frozen``: a LoRA run with A frozen per seed too (``lora-a-frozen-seedS``, freeze_a true), where no finding
    holds."""
    rng = np.random.default_rng(0)
    writer = StoreWriter(path)
    labels = [e for e in range(4) for _ in range(PER_CLASS)]
    rows = writer.add_utterances([
        UtteranceRow(f"s/{i}", "s", f"/x/{i}.wav", f"spk{i % 2}", EMOTIONS[e], np.zeros(FRAMES * 320, np.float32),
                     FRAMES, np.zeros((80, 2 * FRAMES), np.float16)) for i, e in enumerate(labels)])
    for seed, hold in holds.items():
        runs = [("lora", f"lora-seed{seed}", hold), ("frozen", f"frozen-seed{seed}", hold)]
        runs += [("a_frozen", f"lora-a-frozen-seed{seed}", False)] if a_frozen else []
        for kind, run, shows in runs:
            method = "frozen" if kind == "frozen" else "lora"
            checkpoints = ("trained",) if method == "frozen" else ("trained", "random_twin")
            attrs = checkpoint_attrs(method, N_LAYERS, D, RANK, EMOTIONS)
            attrs["train_config"] = {"model": "m", "data": "csv:/somewhere/d.csv", "method": method, "rank": RANK,
                                     "targets": ["v_proj"], "window": "trim", "lr": 5e-4, "seed": seed, "device": "cpu",
                                     **({"freeze_a": True} if kind == "a_frozen" else {})}
            attrs["metrics"] = _metrics(seed, kind)
            for checkpoint in checkpoints:
                writer.create_checkpoint(run, checkpoint, attrs, SIZES, lora=method == "lora", per_frame_b=True)
                for row, label in zip(rows, labels, strict=True):
                    values = _row(rng, method, checkpoint, label, shows)
                    values["fold"] = np.int16(row % 2)
                    writer.write(run, checkpoint, row, values)
            writer.commit(run, rows)
    return StoreReader(path)


@pytest.fixture()
def no_figures(monkeypatch):
    """The report's numbers without its figures and 2-D maps (tests/test_report.py draws those): a third of the time."""
    from loralens.app import charts

    monkeypatch.setattr(charts, "save", lambda *a, **k: None)
    monkeypatch.setattr(views, "map_of", lambda reader, run, *a, **k: (
        np.zeros((len(rows := views.common_rows(reader, run)), 2)), rows, 0.0))


def test_t_interval_is_scipys_t_interval():
    """Student's t with n - 1 degrees of freedom and the sample standard deviation (ddof 1), as scipy has it."""
    for values in ([0.61, 0.58, 0.66], [1.0, 2.0, 4.0, 8.0, 16.0], [3.2, 3.3]):
        x = np.asarray(values)
        expected = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        got = seeds.t_interval(values)
        np.testing.assert_allclose([got.low, got.high], expected, rtol=1e-12)
        assert got.mean == pytest.approx(x.mean()) and got.n == len(x)
    # 90 % too; NaN left out (a seed where the statistic could not be computed); one value has no interval
    expected = stats.t.interval(0.9, 2, loc=2.0, scale=stats.sem([1.0, 2.0, 3.0]))
    got = seeds.t_interval([1.0, np.nan, 2.0, 3.0], 0.9)
    np.testing.assert_allclose([got.low, got.high], expected, rtol=1e-12)
    one = seeds.t_interval([0.5])
    assert one.mean == 0.5 and np.isnan(one.low) and one.to_json()["ci"] == [None, None]
    with pytest.raises(ValueError, match="confidence=95"):
        seeds.t_interval([1.0, 2.0], 95)


def test_an_interval_of_uar_over_seeds_stays_within_0_and_1():
    """Three widely spread seeds (the tiny.en grid's UARs): the t interval passes 1; a UAR's is cut there."""
    per_seed = [0.716, 0.856, 0.878]
    assert seeds.t_interval(per_seed).high > 1
    cut = seeds.t_interval(per_seed, bounds=seeds.SCORE_BOUNDS)
    assert cut.high == 1.0 and cut.low == pytest.approx(seeds.t_interval(per_seed).low)
    info = views.RunInfo("lora", "lora", "m", "trim", 32, ["v_proj"], ["trained"], ["anger"], 4, {})
    group = [seeds.Member("s", replace(info, name=f"lora-{k}", metrics={"folds": [{"fold": 0, "uar": u, "war": u}]}),
                          k, "{}") for k, u in enumerate(per_seed)]
    got = seeds.metrics(group)
    assert got["uar"]["lora"]["ci"][1] == 1.0 and got["war"]["lora"]["ci"][1] == 1.0


def test_the_paired_test_pairs_each_seed_s_fold_with_the_same_fold():
    """LoRA and frozen scores meet fold by fold of the same seed, whatever order each run listed its folds in."""
    lora = [{0: 0.60, 1: 0.70, 2: 0.65}, {2: 0.66, 0: 0.62, 1: 0.71}]
    frozen = [{1: 0.52, 0: 0.55, 2: 0.50}, {0: 0.51, 1: 0.58}]  # seed 1's frozen run lacks fold 2: left out
    a = np.array([0.60, 0.70, 0.65, 0.62, 0.71])
    b = np.array([0.55, 0.52, 0.50, 0.51, 0.58])
    got = seeds.paired(lora, frozen)
    assert got["n_pairs"] == 5
    reference = stats.ttest_rel(a, b)
    assert got["t"] == pytest.approx(reference.statistic) and got["p"] == pytest.approx(reference.pvalue)
    assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert got["difference"]["mean"] == pytest.approx((a - b).mean())


def test_runs_differ_only_in_seed_by_their_training_config(tmp_path):
    """One configuration: the training config but for its seed and device, the data set by its corpus; each LoRA
    run compared with the frozen run of its own seed, by the report and the pages alike."""
    reader = _store(str(tmp_path / "s.zarr"), {0: True, 1: True})
    found = seeds.members(reader)
    groups = seeds.configurations(found)
    assert sorted([(m.info.name, m.seed) for m in g] for g in groups) == [
        [("frozen-seed0", 0), ("frozen-seed1", 1)], [("lora-seed0", 0), ("lora-seed1", 1)]]
    (lora,) = [g for g in groups if g[0].info.method == "lora"]
    assert {m.info.name: m.frozen.name for m in lora} == {"lora-seed0": "frozen-seed0",
                                                               "lora-seed1": "frozen-seed1"}
    assert [f.name for _, f in views.pairs(reader)] == ["frozen-seed0", "frozen-seed1"]
    info = lora[0].info
    base = {"model": "m", "data": "csv:d.csv", "method": "lora", "lr": 5e-4, "seed": 0}
    assert seeds.configuration(info, base) == seeds.configuration(info, base | {"seed": 3, "device": "cuda",
                                                                                "data": "csv:../x/d.csv"})
    assert seeds.configuration(info, base) != seeds.configuration(info, base | {"lr": 1e-3})
    # a run traced before --freeze-a existed has no freeze_a: one configuration with freeze_a false, not true
    assert seeds.configuration(info, base) == seeds.configuration(info, base | {"freeze_a": False})
    assert seeds.configuration(info, base) != seeds.configuration(info, base | {"freeze_a": True})


def test_a_finding_that_holds_in_one_seed_only_holds_in_1_of_2(tmp_path, no_figures):
    reader = _store(str(tmp_path / "s.zarr"), {0: True, 1: False})
    out = tmp_path / "report"
    assert main(["report", "--store", reader.path, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"lora-seed0", "lora-seed1"}  # the one-store report, as before
    assert summary["runs"]["lora-seed1"]["frozen"] == "frozen-seed1"
    (entry,) = summary["seeds"]
    assert [(m["run"], m["seed"]) for m in entry["members"]] == [("lora-seed0", 0), ("lora-seed1", 1)]
    found = {f["finding"]: f for f in entry["findings"]}
    assert list(found) == FINDINGS
    for name, f in found.items():
        assert (f["holds"], f["holds_in"], f["seeds"]) == ([True, False], "1 of 2 seeds", ["seed 0", "seed 1"]), name
    depth = found["delayed specialization"]["statistics"]["mean resolution depth"]
    assert depth["per_seed"] == [5.0, 0.0] and depth["mean"] == 2.5
    assert depth["fold_std"] == [0.0, 0.0]  # each fold model's utterances settle where the other's do
    uar = entry["metrics"]["uar"]
    assert uar["lora"]["per_seed"] == pytest.approx([0.65, 0.66]) and uar["frozen"]["per_seed"] == pytest.approx(
        [0.5, 0.51])
    assert uar["paired"]["n_pairs"] == 4 and uar["paired"]["difference"]["mean"] == pytest.approx(0.15)
    markdown = (out / "summary.md").read_text()
    assert "## Seeds: m, LoRA r=4 on v_proj, trim, csv:d.csv" in markdown
    assert "| delayed specialization | 1 of 2 seeds | mean resolution depth | 5.000, 0.000 |" in markdown
    assert "paired t-test (scipy.stats.ttest_rel)" in markdown
    assert summary["a_frozen"] == [] and "A frozen against A trained" not in markdown  # no A-frozen configuration


def test_a_report_over_two_stores_of_identical_runs_has_zero_spread(tmp_path, no_figures):
    """The same runs in two stores of one name (one summarised, one read from its raw arrays): each store's report in
    its own directory, and no spread over the two in any statistic."""
    paths = [str(tmp_path / side / "s.zarr") for side in ("here", "there")]
    for path in paths:
        _store(path, {0: True})
    summarise(paths[0], methods=())
    out = tmp_path / "report"
    assert main(["report", "--store", paths[0], "--store", paths[1], "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {k: v["store"] for k, v in summary["stores"].items()} == {"s-1": paths[0], "s-2": paths[1]}
    for label in ("s-1", "s-2"):
        (run,) = json.loads((out / label / "summary.json").read_text())["runs"].values()
        assert [f["holds"] for f in run["findings"]] == [True] * 4
    (entry,) = summary["seeds"]
    assert [m["store"] for m in entry["members"]] == paths
    assert [f["finding"] for f in entry["findings"]] == FINDINGS
    for f in entry["findings"]:
        assert f["holds_in"] == "2 of 2 seeds"
        for name, s in f["statistics"].items():
            assert s["n"] == 2 and s["std"] == pytest.approx(0, abs=1e-6), (f["finding"], name)
            assert s["ci"] == pytest.approx([s["mean"], s["mean"]], abs=1e-5), (f["finding"], name)
            assert s["fold_std"][0] == pytest.approx(s["fold_std"][1], abs=1e-6), (f["finding"], name)
    for key in ("uar", "war"):
        metrics = entry["metrics"][key]
        assert metrics["lora"]["std"] == 0 and metrics["frozen"]["std"] == 0
        assert metrics["paired"]["n_pairs"] == 4
    assert "# loralens report over 2 stores" in (out / "summary.md").read_text()


def test_a_frozen_is_set_against_a_trained_of_the_same_configuration(tmp_path, no_figures):
    """Issue #37's "does A matter?": the A-frozen runs' UAR, WAR, spectra and CKA beside the ordinary runs', UAR and
    WAR paired fold by fold of the same seed (A frozen below A trained by 0.05 and 0.15 in every seed)."""
    reader = _store(str(tmp_path / "s.zarr"), {0: True, 1: True}, a_frozen=True)
    out = tmp_path / "report"
    assert main(["report", "--store", reader.path, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (c,) = summary["a_frozen"]
    assert (c["a_frozen"], c["a_trained"]) == ("m, LoRA r=4 on v_proj, A frozen, trim, csv:d.csv",
                                               "m, LoRA r=4 on v_proj, trim, csv:d.csv")
    assert [r["run"] for r in c["a_frozen_runs"]] == ["lora-a-frozen-seed0", "lora-a-frozen-seed1"]
    assert [r["run"] for r in c["a_trained_runs"]] == ["lora-seed0", "lora-seed1"]
    uar = c["metrics"]["uar"]
    assert uar["a_frozen"]["per_seed"] == pytest.approx([0.55, 0.56])
    assert uar["a_trained"]["per_seed"] == pytest.approx([0.65, 0.66])
    assert uar["paired"]["n_pairs"] == 4 and uar["paired"]["difference"]["mean"] == pytest.approx(-0.1)
    low, high = stats.t.interval(0.95, 3, loc=-0.1, scale=stats.sem([-0.05, -0.15, -0.05, -0.15]))
    assert uar["paired"]["difference"]["ci"] == pytest.approx([low, high])
    assert c["metrics"]["war"]["paired"]["difference"]["mean"] == pytest.approx(-0.1)
    # the spectra and CKA statistics are those of each configuration's seeds section, and their difference
    by_configuration = {e["configuration"]: {(f["finding"], k): v for f in e["findings"]
                                             for k, v in f["statistics"].items()} for e in summary["seeds"]}
    assert [(s["finding"], s["statistic"]) for s in c["statistics"]] == [
        ("A compression and B reconstruction", "A activation concentration"),
        ("A compression and B reconstruction", "B activation concentration"),
        ("forward alignment and backward differentiation", "CKA(A, B) of activations minus gradients"),
        ("forward alignment and backward differentiation", "CKA(A, B) of activations"),
        ("forward alignment and backward differentiation", "CKA(A, B) of gradients")]
    for s in c["statistics"]:
        mine, theirs = (by_configuration[c[side]][s["finding"], s["statistic"]] for side in ("a_frozen", "a_trained"))
        for side, expected in (("a_frozen", mine), ("a_trained", theirs)):
            assert s[side]["per_seed"] == expected["per_seed"] and s[side]["ci"] == expected["ci"], s
        assert s["difference"] == pytest.approx(mine["mean"] - theirs["mean"])
    concentration = c["statistics"][0]
    assert concentration["a_trained"]["mean"] > 2 > concentration["a_frozen"]["mean"]  # A never compressed
    markdown = (out / "summary.md").read_text()
    assert "## A frozen against A trained: m, LoRA r=4 on v_proj, trim, csv:d.csv" in markdown
    assert "| UAR | 0.555 [" in markdown and "| -0.100 [" in markdown


def test_the_seeds_section_has_each_seed_s_mean_intruder_count(tmp_path, no_figures):
    """Seed s's trained adapter has s + 1 intruders in every module at every threshold, its random twin none."""
    from loralens.analysis.intruders import ATTR, EPSILONS, Intruders

    reader = _store(str(tmp_path / "s.zarr"), {0: True, 1: True})
    writer = StoreWriter(reader.path)
    modules = tuple(f"layer_{i}.v_proj" for i in range(N_LAYERS))
    singular = np.tile([3.0, 2.0, 1.0], (2, N_LAYERS, 1))  # (fold, module, k)
    for seed in (0, 1):
        similarity = np.ones_like(singular)
        similarity[:, :, :seed + 1] = 0.1
        for checkpoint, sim in (("trained", similarity), ("random_twin", np.ones_like(singular))):
            result = Intruders(modules, (0, 1), singular, sim)
            writer.group(f"lora-seed{seed}", checkpoint).attrs.update({ATTR: result.to_json()})
    out = tmp_path / "report"
    assert main(["report", "--store", reader.path, "--out", str(out)]) == 0
    (entry,) = json.loads((out / "summary.json").read_text())["seeds"]
    counts = entry["intruders"]["mean_count"]
    assert entry["intruders"]["epsilons"] == list(EPSILONS) and entry["intruders"]["n_seeds"] == 2
    for i in range(len(EPSILONS)):
        assert counts["trained"][i]["per_seed"] == [1, 2] and counts["trained"][i]["mean"] == 1.5
        assert counts["random_twin"][i]["per_seed"] == [0, 0]
    markdown = (out / "summary.md").read_text()
    assert ("Intruder dimensions per module, trained (mean over modules and fold models; 2 seeds recorded them): "
            "ε 0.5: 1.500 [") in markdown
    assert "| 5 | v_proj | 2 (σ 3) | 0 |" in markdown  # seed 1's own table: intruders at σ 3 and 2


def test_summaries_paired_by_an_older_rule_are_stale_and_renewed(tmp_path, monkeypatch):
    """Summaries computed when every LoRA seed took the first frozen run hold residual CKA with the wrong partner:
    ``loralens summarise`` finds them stale (their rows unchanged) and computes them again."""
    from loralens.analysis import summary

    reader = _store(str(tmp_path / "s.zarr"), {0: True, 1: True})
    first = views.frozen_partner
    monkeypatch.setattr(views, "frozen_partner", lambda runs, run: first([r for r in runs if r.seed in (0, None)],
                                                                          run))  # the first frozen run, seed 0
    summarise(reader.path, methods=())
    assert summary.partners(StoreReader(reader.path), "lora-seed1") == ["lora-seed1", "frozen-seed0"]
    monkeypatch.undo()
    reader = StoreReader(reader.path)
    assert sorted(summary.stale(reader)) == ["frozen-seed0", "frozen-seed1", "lora-seed1"]
    assert sorted(run for run, seconds in summarise(reader.path, methods=()).items() if seconds is not None) == [
        "frozen-seed0", "frozen-seed1", "lora-seed1"]
    reader = StoreReader(reader.path)
    assert summary.stale(reader) == []
    assert "residual_cka/frozen-seed1" in reader.summary("lora-seed1")


def test_the_overview_shows_the_seeds_of_one_configuration_together(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.test_app import MAIN, _ok

    reader = _store(str(tmp_path / "s.zarr"), {0: True, 1: False})
    monkeypatch.setenv("LORALENS_STORE", reader.path)
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    _ok(at)
    assert [h.value for h in at.subheader][:2] == ["Runs", "Seeds"]
    runs = at.table[0].value
    assert dict(zip(runs["run"], runs["seed"], strict=True)) == {"frozen-seed0": "0", "frozen-seed1": "1",
                                                                  "lora-seed0": "0", "lora-seed1": "1"}
    table = at.table[1].value.set_index("configuration")
    lora = table.loc["m, LoRA r=4 on v_proj, trim, csv:d.csv"]
    assert lora["seeds"] == "seed 0, seed 1" and lora["runs"] == "lora-seed0, lora-seed1"
    x = np.array([0.65, 0.66])  # each seed's mean UAR over its two folds
    low, high = stats.t.interval(0.95, 1, loc=x.mean(), scale=stats.sem(x))
    assert lora["UAR"] == f"{x.mean():.3f} [{low:.3f}, {high:.3f}]"
    assert lora["minus frozen, per fold"].startswith("0.150 [")
    assert table.loc["m, frozen encoder, trim, csv:d.csv", "minus frozen, per fold"] == "–"
