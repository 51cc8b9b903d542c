"""Summaries: streaming spectra and CKA equal the in-memory ones, staleness, repair, and pages that read them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from loralens.analysis import cka, spectra, summary, views
from loralens.analysis.moments import Moments
from loralens.store import schema
from loralens.store.reader import StoreReader
from loralens.store.validate import repair, validate
from loralens.store.writer import StoreWriter


def test_moments_equal_in_memory_spectra_and_cka():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5000, 8)) @ rng.standard_normal((8, 32)) + 0.1 * rng.standard_normal((5000, 32))
    b = a @ rng.standard_normal((32, 96)) + rng.standard_normal((5000, 96))
    m = Moments.empty(32, 96)
    for start in range(0, 5000, 333):  # uneven chunks
        m.add(a[start: start + 333].astype(np.float32), b[start: start + 333].astype(np.float32))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_allclose(m.singular_values(), spectra.singular_values(a32), rtol=1e-6)
    np.testing.assert_allclose(Moments(m.n, m.sum_y, m.yy).singular_values(), spectra.singular_values(b32), rtol=1e-6)
    assert m.linear_cka() == pytest.approx(cka.linear_cka(a32, b32), rel=1e-6)


def test_moments_of_few_samples_have_as_many_singular_values():
    x = np.random.default_rng(1).standard_normal((5, 12))
    m = Moments.empty(12).add(x[:2]).add(x[2:])
    assert len(m.singular_values()) == 5
    np.testing.assert_allclose(m.singular_values(), spectra.singular_values(x), rtol=1e-6)


@pytest.fixture()
def summarised(tiny_store, tmp_path) -> str:
    """A copy of the tiny store whose runs' summaries are removed, so the test computes everything both ways."""
    path = str(tmp_path / "store.zarr")
    shutil.copytree(tiny_store, path)
    writer = StoreWriter(path)
    for run in writer.runs():
        writer.remove_summary(run)
    return path


def _live(reader: StoreReader, lora: str, frozen: str) -> dict:
    return {"spectra": views.spectra_of(reader, lora), "cka_ab": views.cka_a_vs_b(reader, lora),
            "fold": views.spectra_of(reader, lora, fold=views.common_rows(reader, lora) and
                                     int(reader.read(lora, "trained", "fold", 0))),
            "contributions": views.contributions_of(reader, frozen),
            "within": views.residual_cka(reader, lora, lora), "vs": views.residual_cka(reader, lora, frozen),
            "silhouettes": views.silhouettes(reader, lora)}


def test_summary_equals_what_the_views_compute_from_the_arrays(summarised):
    reader = StoreReader(summarised)
    lora, frozen = (r.name for r in sorted(views.run_info(reader), key=lambda r: r.method != "lora"))
    assert reader.summary(lora) is None
    live = _live(reader, lora, frozen)
    done = summary.summarise(summarised, methods=("tsne",))
    assert set(done) == {lora, frozen} and all(v is not None for v in done.values())
    reader = StoreReader(summarised)
    assert reader.summary(lora) is not None and reader.summary(frozen) is not None
    stored = _live(reader, lora, frozen)
    for key in ("spectra", "fold"):
        for q, by in live[key].items():
            for c, s in by.items():
                got = stored[key][q][c]
                assert len(got.singular) == len(s.singular)
                for mine, theirs in zip(got.singular, s.singular, strict=True):
                    for x, y in zip(mine, theirs, strict=True):
                        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9 * max(y.max(), 1e-30))
                np.testing.assert_array_equal(got.ranks, s.ranks)
    for kind, values in live["cka_ab"].items():
        np.testing.assert_allclose(stored["cka_ab"][kind], values, rtol=1e-6)
    for field in live["contributions"].__dataclass_fields__:
        np.testing.assert_allclose(getattr(stored["contributions"], field), getattr(live["contributions"], field),
                                   rtol=1e-6)
    for key in ("within", "vs", "silhouettes"):
        np.testing.assert_allclose(stored[key], live[key], rtol=1e-6)
    # Maps for every position of the asked methods only.
    s = reader.summary(lora)
    assert s["maps/residual/tsne"].shape[:2] == (int(reader.attrs(lora)["n_layers"]) + 1, len(s["rows"]))
    assert "maps/residual/umap" not in s and "maps/lora_a/tsne" in s


def test_lora_modules_summarised_in_worker_processes_equal_those_summarised_here(tiny_store):
    """From PARALLEL_ROWS utterances each worker reads its own modules' frames (a store of IEMOCAP's size): the
    tiny store, below that, takes the same path with jobs=2."""
    reader = StoreReader(tiny_store)
    lora = next(r.name for r in views.run_info(reader) if r.method == "lora")
    groups = views.fold_groups(reader, lora, views.common_rows(reader, lora))
    here = summary.lora_summary(reader, lora, "trained", "gradient", groups, jobs=1)
    there = summary.lora_summary(reader, lora, "trained", "gradient", groups, jobs=2)
    assert len(there) == len(here) == int(reader.attrs(lora)["n_layers"]) and len(there[0]) == len(groups)
    for mine, theirs in zip(there, here, strict=True):
        for (a, b, cka_ab), (a2, b2, cka_ab2) in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, a2)
            np.testing.assert_array_equal(b, b2)
            assert cka_ab == cka_ab2 and 0 < cka_ab <= 1


def test_a_summary_goes_stale_when_its_run_grows_and_validate_says_so(summarised, tiny_runs):
    from loralens.precompute.config import read_config
    from loralens.precompute.trace import Selection, Tracer

    summary.summarise(summarised, methods=())
    assert validate(summarised).ok
    reader = StoreReader(summarised)
    lora = next(r.name for r in views.run_info(reader) if r.method == "lora")
    assert reader.summary(lora) is not None
    writer = StoreWriter(summarised)
    writer.unmark(lora, "trained", [0])  # as validate --repair does for a damaged row
    writer.commit(lora, views.common_rows(writer, lora) + [0])  # not complete any more
    assert StoreReader(summarised).summary(lora) is None
    assert any("stale" in p for p in validate(summarised).problems)
    # The same trace command captures the row again and commits: the summary is renewed.
    run = tiny_runs["lora"]
    tracer = Tracer(run, read_config(run).data, summarised, selection=Selection(all=True))
    rows = tracer.rows()
    tracer.capture(rows)
    tracer.commit(rows, maps=())
    assert StoreReader(summarised).summary(lora) is not None
    assert validate(summarised).ok


def test_a_damaged_summary_is_named_and_repair_removes_it(summarised):
    summary.summarise(summarised, methods=())
    reader = StoreReader(summarised)
    lora = next(r.name for r in views.run_info(reader) if r.method == "lora")
    chunk = next(p for p in (Path(summarised) / "runs" / lora / schema.SUMMARY_GROUP / "contribution_sums" / "c"
                              ).rglob("*") if p.is_file())
    chunk.write_bytes(b"\x00garbage" * 4)
    report = validate(summarised)
    assert any("contribution_sums" in p for p in report.problems)
    done = repair(report)
    assert any("loralens summarise" in d for d in done)
    assert StoreReader(summarised).summary(lora) is None
    # The views compute from the arrays meanwhile.
    assert views.contributions_of(StoreReader(summarised), lora).block.shape == (
        int(reader.attrs(lora)["n_layers"]),)


def test_pages_draw_from_the_summary_without_whole_store_computations(tiny_store, monkeypatch):
    """With current summaries (a trace commits them), no page fits a map or reads every frame of a run."""
    from streamlit.testing.v1 import AppTest

    from loralens.analysis import contributions, projections

    reader = StoreReader(tiny_store)
    assert not summary.stale(reader)

    def refuse(*args, **kwargs):
        raise AssertionError("a page computed from the raw arrays although the summary holds the result")

    for target, name in ((projections, "project"), (views.queries, "lora_matrices"),
                         (views.queries, "frame_moments"), (cka, "minibatch_grams"), (contributions, "contributions")):
        monkeypatch.setattr(target, name, refuse)
    monkeypatch.setenv("LORALENS_STORE", tiny_store)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=300).run()
    for page in ("sections/clusters.py", "sections/dynamics.py", "sections/contributions.py"):
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
    at.switch_page("sections/clusters.py").run()
    at.slider(key="cl-layer").set_value(0).run()
    at.radio(key="cl-projection").set_value("tsne").run()
    assert not at.exception, [e.value for e in at.exception]


def test_the_upload_map_of_a_large_run_holds_a_sample_that_places_without_pynndescent(tiny_store, monkeypatch):
    """Placing an upload on a UMAP of EXACT_NEIGHBOURS utterances or more compiles pynndescent (over a minute, in the
    app's process): the Upload page's map holds a fixed sample of one fewer, and places on it."""
    from loralens.analysis import projections

    reader = StoreReader(tiny_store)
    run = next(r for r in views.run_info(reader) if r.method == "lora").name
    everyone = views.common_rows(reader, run)
    monkeypatch.setattr(projections, "EXACT_NEIGHBOURS", len(everyone) - 4)
    proj, rows = views.placing_map(reader, run, "residual", 1)
    assert len(rows) == len(everyone) - 5 and set(rows) < set(everyone) and rows == sorted(rows)
    assert proj.coordinates.shape == (len(rows), 2)
    again = views.placing_map(reader, run, "residual", 1)[1]
    assert again == rows  # a fixed sample: the map does not move between reruns
    x, _ = views.vectors(reader, run, "residual", 1, rows=[everyone[0]])
    assert proj.place(x).shape == (1, 2)


def test_a_tsne_map_of_many_utterances_shows_a_fixed_sample_in_the_summary_and_live_alike(summarised, monkeypatch):
    """t-SNE took 20 s a map at IEMOCAP's size (98 in a large-v2 run pair's summary): from TSNE_ROWS utterances it
    maps a fixed sample, the same in the summary as fitted live, every layer the same utterances; UMAP maps all."""
    from loralens.analysis import projections

    reader = StoreReader(summarised)
    lora = next(r.name for r in views.run_info(reader) if r.method == "lora")
    everyone = views.common_rows(reader, lora)
    monkeypatch.setattr(projections, "TSNE_ROWS", len(everyone) - 7)
    live = [views.map_of(reader, lora, "residual", b, "tsne") for b in (0, 2)]
    assert live[0][1] == live[1][1] and len(live[0][1]) == len(everyone) - 7
    assert live[0][0].shape == (len(everyone) - 7, 2)
    assert len(views.map_of(reader, lora, "residual", 0, "umap")[1]) == len(everyone)
    summary.summarise(summarised, [lora], methods=("tsne",))
    reader = StoreReader(summarised)
    assert reader.summary(lora) is not None
    for b, (coordinates, rows, on_map) in zip((0, 2), live, strict=True):
        got, got_rows, got_on_map = views.map_of(reader, lora, "residual", b, "tsne")
        assert got_rows == rows
        np.testing.assert_allclose(got, coordinates, rtol=1e-4, atol=1e-4)
        assert got_on_map == pytest.approx(on_map, abs=1e-4)


def test_a_summarise_computes_each_pair_of_runs_residual_cka_once(summarised, monkeypatch):
    """A LoRA run and its frozen partner each keep their CKA with the other (one the transpose of the other): the
    second summary of one summarise takes it from the first (75 s a pair at 5,500 large-v2 utterances)."""
    computed = []
    live = views.residual_cka

    def counted(reader, run_a, run_b, *args, **kwargs):
        computed.append(frozenset((run_a, run_b)))
        return live(reader, run_a, run_b, *args, **kwargs)

    monkeypatch.setattr(views, "residual_cka", counted)
    summary.summarise(summarised, methods=())
    reader = StoreReader(summarised)
    lora, frozen = (r.name for r in sorted(views.run_info(reader), key=lambda r: r.method != "lora"))
    assert sorted(map(sorted, computed)) == sorted([[lora], [frozen], sorted([lora, frozen])])
    np.testing.assert_array_equal(reader.summary(lora)[f"residual_cka/{frozen}"],
                                  reader.summary(frozen)[f"residual_cka/{lora}"].T)


def test_an_in_memory_store_is_summarised_in_this_process(tiny_store):
    """Worker processes reopen a store by its path: a memory:// store lives in this process only, so from
    PARALLEL_ROWS utterances its summary failed. Its modules are summarised here, with the same results."""
    import uuid

    import fsspec

    name = f"memory://{uuid.uuid4().hex}.zarr"
    fsspec.filesystem("memory").put(tiny_store, name.removeprefix("memory://"), recursive=True)
    reader = StoreReader(name)
    lora = next(r.name for r in views.run_info(reader) if r.method == "lora")
    groups = views.fold_groups(reader, lora, views.common_rows(reader, lora))
    there = summary.lora_summary(reader, lora, "trained", "activation", groups, jobs=2)
    here = summary.lora_summary(StoreReader(tiny_store), lora, "trained", "activation", groups, jobs=1)
    for mine, theirs in zip(there, here, strict=True):
        for (a, b, cka_ab), (a2, b2, cka_ab2) in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, a2)
            assert cka_ab == cka_ab2
