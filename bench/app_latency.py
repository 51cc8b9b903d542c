"""Explorer latency on a store: layer-slider redraw (AppTest, server side), first render, and an upload.

    python bench/app_latency.py STORE [--repeats 20] [--upload-run RUN_DIR]

- slider: the Utterance page's layer slider moved to each boundary in turn, timed per rerun (p50, p95);
- first render: a fresh server (loralens app) until the first page's HTML and health endpoint answer, then
  the Utterance page's script run through AppTest from cold caches;
- upload: a 5 s clip (real speech, EmoDB clips joined) through Predictor.predict with the run's checkpoint.
"""

from __future__ import annotations

import argparse
import os
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


def first_render(store: str) -> tuple[float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "precompute.cli", "app", "--store", store, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.05)
        server = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()
    os.environ["LORALENS_STORE"] = store
    started = time.perf_counter()
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    at.switch_page("sections/utterance.py").run()
    assert not at.exception, at.exception
    return server, time.perf_counter() - started


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
    server, page = first_render(args.store)
    print(f"server start to health: {server:.2f} s; Utterance page first run, cold caches: {page:.2f} s "
          f"(goal: first page within 3 s of start: {server + page:.2f} s)")
    if args.upload_run:
        seconds = upload(args.upload_run, args.emodb)
        print(f"5 s upload to per-layer predictions: {seconds:.2f} s (goal <= 1.5 s)")


if __name__ == "__main__":
    main()
