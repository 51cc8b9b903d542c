"""Explorer latency on a store: layer-slider redraw (AppTest, server side), first render, and an upload.

    python bench/app_latency.py STORE [--repeats 20] [--upload-run RUN_DIR]

- slider: the Utterance page's layer slider moved to each boundary in turn, timed per rerun (p50, p95);
- first render: `loralens app` started fresh and the Utterance page opened in headless Chromium (Debian's
  chromium, through Playwright) until its charts are drawn;
- upload: a 5 s clip (real speech, EmoDB clips joined) through Predictor.predict with the run's checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def slider(store: str, repeats: int) -> list[float]:
    os.environ["LORALENS_STORE"] = store
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    at.switch_page("sections/utterance.py").run()
    n = at.slider(key="utt-layer").max + 1
    at.slider(key="utt-layer").set_value(0).run()  # warm the caches of this utterance
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        at.slider(key="utt-layer").set_value((i + 1) % n).run()
        times.append((time.perf_counter() - started) * 1000)
        assert not at.exception, at.exception
    return times


def first_render(store: str, page_name: str) -> tuple[float, float, float]:
    """Start ``loralens app`` and open a page in headless Chromium: seconds to health, to the page's first chart
    drawn, and to every chart of the page drawn (all counted from the command's start)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1800})
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "precompute.cli", "app", "--store", store, "--port",
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.02)
            health = time.perf_counter() - started
            tab.goto(f"{url}/{page_name}")
            tab.wait_for_selector(".vega-embed svg, .vega-embed canvas", timeout=120_000)
            first = time.perf_counter() - started
            tab.wait_for_function("() => document.querySelectorAll('.vega-embed').length >= 6 && "
                                  "[...document.querySelectorAll('.vega-embed')].every("
                                  "e => e.querySelector('svg, canvas'))", timeout=120_000)
            every = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait()
            browser.close()
    return health, first, every


def upload(run_dir: Path, emodb: Path) -> float:
    from precompute.audio import load_audio
    from precompute.predict import Predictor

    clips = sorted((emodb / "wav").glob("*.wav"))[:3]
    audio = np.concatenate([load_audio(c) for c in clips])[: 5 * 16000]
    predictor = Predictor(run_dir)
    predictor.predict(audio[:16000])  # warm-up (the app keeps the model loaded)
    started = time.perf_counter()
    predictor.predict(audio, "five-seconds")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--upload-run", type=Path, default=None, help="a LoRA run directory (whisper-base)")
    parser.add_argument("--emodb", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/emodb")
    args = parser.parse_args()

    times = sorted(slider(args.store, args.repeats))
    p95 = times[int(0.95 * (len(times) - 1))]
    print(f"layer slider redraw (Utterance page, AppTest): median {statistics.median(times):.0f} ms, "
          f"p95 {p95:.0f} ms over {len(times)} moves (goal p95 <= 150 ms)")
    health, first, every = first_render(args.store, "utterance")
    print(f"first render in Chromium, from `loralens app` to: health {health:.2f} s, the Utterance page's first "
          f"chart {first:.2f} s, all six charts {every:.2f} s (goal: first page within 3 s of start)")
    if args.upload_run:
        seconds = upload(args.upload_run, args.emodb)
        print(f"5 s upload to per-layer predictions: {seconds:.2f} s (goal <= 1.5 s)")


if __name__ == "__main__":
    main()
