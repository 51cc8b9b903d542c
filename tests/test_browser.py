"""The real app in a real browser: headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_until_serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(store: str, *flags: str):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loralens.cli", "app", "--store", store, "--port",
                             str(port), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, url)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture()
def page():
    """A tab of headless Chromium (Debian's, driven by Playwright), 1400 x 1800."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1800})
        browser.close()


@pytest.fixture()
def shots(tmp_path) -> Path:
    """Where the tests' screenshots go: ``LORALENS_SCREENSHOTS`` if set (to keep them), else a temporary folder."""
    out = Path(os.environ.get("LORALENS_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture()
def server(tiny_store):
    yield from _serve(tiny_store)


@pytest.fixture()
def large_server(large_store):
    yield from _serve(large_store)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_layer_slider_redraws_in_chromium(server, page, shots):
    page.goto(f"{server}/utterance", wait_until="networkidle")
    slider = page.get_by_role("slider").first
    slider.wait_for(timeout=60_000)
    page.wait_for_selector(".vega-embed", timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(shots / "utterance.png"), full_page=True)
    charts_before = [c.inner_html() for c in page.locator(".vega-embed").all()]
    slider.focus()
    page.keyboard.press("Home")
    page.wait_for_function("() => new URL(location.href).searchParams.get('layer') === '0'", timeout=30_000)
    page.wait_for_timeout(1500)
    # The trajectories' layer markers moved: those charts (one per run) redrew with the new layer; the log-mel (the
    # first chart) and the layers x time views did not change.
    charts_after = [c.inner_html() for c in page.locator(".vega-embed").all()]
    assert len(charts_after) == len(charts_before)
    assert [i for i, (a, b) in enumerate(zip(charts_before, charts_after, strict=True)) if a != b] == [1, 3]
    assert page.locator(".vega-embed").count() >= 3
    assert page.get_by_test_id("stException").count() == 0
    page.screenshot(path=str(shots / "utterance-layer0.png"), full_page=True)
    for name, path in (("overview", ""), ("clusters", "clusters"), ("dynamics", "dynamics"),
                       ("contributions", "contributions"), ("causal-none", "causal"), ("upload", "upload")):
        page.goto(f"{server}/{path}", wait_until="networkidle")
        page.wait_for_timeout(2500)
        assert page.get_by_test_id("stException").count() == 0, name
        assert page.get_by_text("Page not found").count() == 0, name
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_a_link_reopens_the_view_in_chromium(server, page):
    """A copied link with non-default widget values (LoRA dynamics' fold model and threshold) reopens them."""
    page.goto(f"{server}/dynamics?fold=1&threshold=0.75", wait_until="networkidle")
    page.get_by_role("slider").first.wait_for(timeout=60_000)
    page.wait_for_selector(".vega-embed", timeout=60_000)
    assert page.get_by_test_id("stSliderThumbValue").first.inner_text() == "0.75"
    assert re.fullmatch(r"fold 1 \(\d+ utterances\)", page.get_by_role("combobox", name="Fold model").input_value())
    assert page.get_by_test_id("stException").count() == 0
    # the page wrote its view back without losing them: the address bar still reopens it
    params = page.evaluate("() => Object.fromEntries(new URL(location.href).searchParams)")
    assert params["fold"] == "1" and params["threshold"] == "0.75", params


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_overview_opens_by_its_own_name_in_chromium(server, page):
    """/overview, the Overview page's name in the sidebar's links, opens it: no 'Page not found' dialog over it."""
    page.goto(f"{server}/overview", wait_until="networkidle")
    page.get_by_text("Runs", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)  # the dialog, where there is one, comes with the page's first messages
    assert page.get_by_text("Page not found").count() == 0
    assert page.get_by_test_id("stException").count() == 0


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_a_large_v3_store_opens_in_chromium(large_server, page, shots):
    """whisper-large-v3's geometry (128 mel bins, width 1280; 2 random layers): every page draws, none fails."""
    for name, path in (("utterance", "utterance"), ("overview", ""), ("clusters", "clusters"),
                       ("dynamics", "dynamics"), ("contributions", "contributions"), ("upload", "upload")):
        page.goto(f"{large_server}/{path}", wait_until="networkidle")
        page.get_by_role("slider" if name in ("utterance", "dynamics") else "main").first.wait_for(
            timeout=60_000)
        if name not in ("overview", "upload"):  # tables only; the upload page draws once given a clip
            # a first UMAP fit compiles numba's code: minutes on a busy CPU
            page.wait_for_selector(".vega-embed", timeout=180_000 if name == "clusters" else 60_000)
        page.wait_for_timeout(1500)
        assert page.get_by_test_id("stException").count() == 0, name
        assert page.get_by_test_id("stAlertContentError").count() == 0, name
        page.screenshot(path=str(shots / f"large-v3-{name}.png"), full_page=True)
        if name == "utterance":  # the log-mel, the trajectory and the heatmaps: at least three charts
            assert page.locator(".vega-embed").count() >= 3


@pytest.fixture()
def causal_server(causal_store):
    yield from _serve(causal_store)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_causal_page_in_chromium(causal_server, page, shots):
    """Causal: both runs' heatmaps, the audio changes and a trajectory draw; a click on a cell picks its condition,
    which the address bar then holds."""
    page.goto(f"{causal_server}/causal", wait_until="networkidle")
    page.wait_for_function("() => [...document.querySelectorAll('.vega-embed')].filter("
                           "e => e.querySelector('svg, canvas')).length >= 4", timeout=120_000)
    assert page.get_by_test_id("stException").count() == 0
    page.screenshot(path=str(shots / "causal.png"), full_page=True)
    before = page.get_by_role("combobox", name="Condition").input_value()
    heatmap = page.locator(".vega-embed").first.bounding_box()
    # The LoRA run's heatmap: layers 0 and 1 across, its kinds down; its right half is layer 1.
    page.mouse.click(heatmap["x"] + heatmap["width"] * 0.75, heatmap["y"] + heatmap["height"] * 0.55)
    page.wait_for_function("b => { const c = new URL(location.href).searchParams.get('condition');"
                           " return c && c !== b && c.endsWith('@1'); }", arg=before, timeout=30_000)
    picked = page.evaluate("() => new URL(location.href).searchParams.get('condition')")
    page.wait_for_function("c => [...document.querySelectorAll('input')].some(i => i.value === c)", arg=picked,
                           timeout=30_000)
    assert page.get_by_test_id("stException").count() == 0


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_a_store_on_s3_in_chromium(ray_local, s3, tiny_runs, page):
    """The explorer on an s3:// store (a real S3 server, moto's) that two Ray workers traced (``loralens trace --ray
    --shards 2``, both tiny runs), its endpoint given as a flag: pages draw."""
    from loralens.cli import main

    for run in tiny_runs.values():
        assert main(["trace", "--run", str(run), "--store", "s3://loralens/browser.zarr", "--per-class", "2",
                     "--batch-size", "2", "--endpoint-url", s3, "--storage-option", "key=testing",
                     "--storage-option", "secret=testing", "--ray", "--shards", "2"]) == 0
    served = _serve("s3://loralens/browser.zarr", "--endpoint-url", s3)
    url = next(served)
    try:
        for path in ("", "utterance"):
            page.goto(f"{url}/{path}", wait_until="networkidle")
            page.wait_for_selector(".vega-embed svg, .vega-embed canvas, [data-testid=stTable]", timeout=120_000)
            page.wait_for_timeout(1000)
            assert page.get_by_test_id("stException").count() == 0, path
            assert page.get_by_test_id("stAlertContentError").count() == 0, path
        assert page.locator(".vega-embed").count() >= 3  # the Utterance page: log-mel, trajectory, heatmaps
    finally:
        next(served, None)
