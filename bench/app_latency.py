"""Explorer latency on a store: layer-slider redraw (AppTest, server side), first render, and an upload.

    python bench/app_latency.py STORE [--repeats 20] [--upload-run RUN_DIR] [--starts 5]
                                      [--only slider|first-render|upload|placing]

- slider: the Utterance page's layer slider moved to each boundary in turn, timed per rerun (p50, p95);
- first render: `loralens app` started fresh and a page opened in headless Chromium (Debian's chromium, through
  Playwright) until it is drawn: the first page (Overview), and the Utterance page; beside them a bare
  Streamlit page (a title, a table, a data grid, a chart), the framework's own floor on this machine;
- upload: a 5 s clip (real speech, EmoDB clips joined) through Predictor.predict with the run's checkpoint, and
  through Predictor.intervene under the Upload page's default interventions;
- placing: what else the first upload of a fresh app waits for, the UMAP map it is placed on (the Upload page's,
  at the last boundary of the store's first run) fitted and one point placed, in a new process each time (UMAP's
  compilation is per process, or loaded from numba's cache).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pages import app_command, first_render, widget_times


def slider(store: str, repeats: int) -> list[float]:
    times = widget_times(store, "utterance", "utt-layer", repeats, budget=float("inf"))
    if isinstance(times, str):
        raise RuntimeError(times)
    return times


REFERENCE_PAGE = """
import numpy as np
import pandas as pd
import streamlit as st

st.title("A bare Streamlit page")
st.table(pd.DataFrame({"run": ["a", "b"], "UAR": [0.9, 0.8]}), hide_index=True)
st.dataframe(pd.DataFrame({"id": [f"u{i}" for i in range(339)], "value": np.arange(339)}), hide_index=True)
grid = [{"x": i, "y": j, "n": i * j} for i in range(4) for j in range(4)]
st.vega_lite_chart({"data": {"values": grid}, "mark": "rect", "encoding": {
    "x": {"field": "x", "type": "ordinal"}, "y": {"field": "y", "type": "ordinal"},
    "color": {"field": "n", "type": "quantitative"}}}, width="stretch")
"""
"""The framework's own floor: a page with a title, a table, a data grid and one chart and nothing to import or
read, started with ``streamlit run`` (the same server flags); timed the same way, beside loralens."""


def first_renders(store: str, starts: int) -> None:
    """The first page and the Utterance page from ``loralens app``, beside the bare Streamlit page, interleaved."""
    app = app_command(store)
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference.py"
        reference.write_text(REFERENCE_PAGE)
        bare = [sys.executable, "-m", "streamlit", "run", str(reference), "--server.headless", "true",
                "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false", "--server.port"]
        cases = {"Overview (the first page)": (app, "", 0), "Utterance": (app, "utterance", 6),
                 "bare Streamlit page (reference)": (bare, "", 1)}
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in cases}
        for _ in range(starts):
            for label, (command, page_name, charts) in cases.items():
                runs[label].append(first_render(command, page_name, charts))
    medians = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
    for label, median in medians.items():
        print(f"first render of {label} in Chromium, seconds from the command's start (median of {starts}): "
              + ", ".join(f"{k} {v:.2f}" for k, v in median.items()))
    first = medians["Overview (the first page)"]["whole page"]
    floor = medians["bare Streamlit page (reference)"]["whole page"]
    print(f"the first page is drawn {first:.2f} s after `loralens app` starts (goal <= 3 s); "
          f"{first / floor:.2f}x the bare Streamlit page's {floor:.2f} s")


UPLOAD_CONDITIONS = ("lora_off_from@3", "erase@5", "pitch@4", "noise@10")
"""The Upload page's default interventions on whisper-base (6 layers)."""


def upload(run_dir: Path, emodb: Path) -> tuple[float, float]:
    """Seconds from a 5 s clip to its per-layer predictions, and to its lens under the page's default conditions."""
    from loralens.precompute.audio import load_audio
    from loralens.precompute.predict import Predictor

    clips = sorted((emodb / "wav").glob("*.wav"))[:3]
    audio = np.concatenate([load_audio(c) for c in clips])[: 5 * 16000]
    predictor = Predictor(run_dir)
    predictor.predict(audio[:16000])  # warm-up (the app keeps the model loaded)
    predictor.intervene(audio[:16000], ["pitch@2"])
    started = time.perf_counter()
    predictor.predict(audio, "five-seconds")
    predicted = time.perf_counter() - started
    started = time.perf_counter()
    predictor.intervene(audio, list(UPLOAD_CONDITIONS), "five-seconds")
    return predicted, time.perf_counter() - started


PLACING = """
import sys, time
from loralens.analysis import views
from loralens.store.reader import StoreReader
reader = StoreReader(sys.argv[1])
run = next(iter(reader.runs()))
layer = int(reader.attrs(run)["n_layers"])
started = time.perf_counter()
projection, rows = views.placing_map(reader, run, "residual", layer)
x, _ = views.vectors(reader, run, "residual", layer, rows=rows[:1])
projection.place(x)
print(time.perf_counter() - started, len(rows), run)
"""


def placing(store: str, starts: int) -> list[float]:
    """Seconds to fit the Upload page's map and place a point on it, each in a new process."""
    import subprocess

    times = []
    for _ in range(starts):
        out = subprocess.run([sys.executable, "-c", PLACING, store], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1]).stdout.split()
        times.append(float(out[0]))
    print(f"the first upload's map in a fresh app ({out[1]} utterances of {out[2]}, fitted and a point placed, "
          f"a new process each): {', '.join(f'{t:.1f}' for t in times)} s")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--starts", type=int, default=5, help="server starts timed per page")
    parser.add_argument("--upload-run", type=Path, default=None, help="a LoRA run directory (whisper-base)")
    parser.add_argument("--emodb", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/emodb")
    parser.add_argument("--only", choices=["slider", "first-render", "upload", "placing"], default=None)
    args = parser.parse_args()

    if args.only in (None, "slider"):
        times = sorted(slider(args.store, args.repeats))
        p95 = times[int(0.95 * (len(times) - 1))]
        print(f"layer slider redraw (Utterance page, AppTest): median {statistics.median(times):.0f} ms, "
              f"p95 {p95:.0f} ms over {len(times)} moves (goal p95 <= 150 ms)")
    if args.only in (None, "first-render"):
        first_renders(args.store, args.starts)
    if args.only in (None, "placing"):
        placing(args.store, min(args.starts, 3))
    if args.upload_run and args.only in (None, "upload"):
        seconds, intervened = upload(args.upload_run, args.emodb)
        print(f"5 s upload to per-layer predictions: {seconds:.2f} s (goal <= 1.5 s)")
        print(f"the same clip under the Upload page's {len(UPLOAD_CONDITIONS)} default interventions "
              f"({', '.join(UPLOAD_CONDITIONS)}) and as trained: {intervened:.2f} s (goal <= 1.5 s)")


if __name__ == "__main__":
    main()
