"""Drive the explorer for benchmarks: start ``loralens app``, draw its pages in headless Chromium, move widgets with
AppTest, and watch a process tree's memory. Shared by bench/app_latency.py and bench/scale.py.

A page counts as drawn when its script run has finished (the server's ``script_finished`` message, read off the
page's websocket) and every chart it sent is drawn (an SVG or canvas inside each ``.vega-embed``), every data grid
has its canvas, and no "running" widget shows (``COMPLETE``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGES = {"Overview": "overview", "Utterance": "utterance", "Clusters": "clusters", "LoRA dynamics": "dynamics",
         "Contributions": "contributions", "Causal": "causal", "Upload": "upload"}
"""Page titles and their URL paths (``app/main.py``); each page's script is ``sections/<path>.py``."""

COMPLETE = """() => {
    const charts = [...document.querySelectorAll('.vega-embed')];
    const tables = [...document.querySelectorAll('[data-testid=stDataFrame]')];
    return charts.length >= %d && charts.every(e => e.querySelector('svg, canvas'))
        && tables.every(t => t.querySelector('canvas'))
        && !document.querySelector('[data-testid=stStatusWidget]');
}"""
"""Whether at least N charts and every chart and data grid on the page are drawn, and no script is running."""


def app_command(store: str) -> list[str]:
    """``loralens app`` on ``store``, to be completed with a port number."""
    return [sys.executable, "-m", "loralens.cli", "app", "--store", store, "--port"]


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """Start a Streamlit server (``command`` + a free port); yield its URL, its process and when it was started,
    once it answers its health check. Stopped on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()  # not a pipe: a chatty server would fill it and block
    started = time.perf_counter()
    proc = subprocess.Popen(command + [str(port)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}: "
                                   f"{log.read().decode(errors='replace')[-2000:]}")
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{url} did not answer its health check within {timeout:.0f} s")
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.02)
        yield url, proc, started
    finally:
        proc.terminate()
        proc.wait()
        log.close()


class Memory:
    """The peak resident memory of a process and its descendants, sampled every ``interval`` seconds while open."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        total += p.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
"""The Chromium flags of the browser tests and the screenshots: headless, and nothing fetched in the background."""


@contextlib.contextmanager
def browser(flags: Sequence[str] = ("--headless", "--no-sandbox", "--disable-gpu")) -> Iterator:
    """Headless Chromium (Debian's ``chromium``) through Playwright, started with ``flags``."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=list(flags))
        try:
            yield b
        finally:
            b.close()


@dataclass
class Draw:
    """One page's draw, in seconds from navigating to it (``from_start``: from its server's start)."""

    first_element: float = float("nan")
    whole: float = float("nan")
    charts: int = 0
    from_start: float | None = None
    error: str | None = None


def draw(tab, url: str, timeout: float = 600) -> Draw:
    """Open ``url`` in ``tab`` and wait until it is drawn (see the module's docstring)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    run = {"charts": 0, "finished": False, "exception": None}

    def on_frame(payload) -> None:
        if isinstance(payload, str):
            return
        msg = ForwardMsg.FromString(payload)
        kind = msg.WhichOneof("type")
        if kind == "new_session":  # a script run starts: count its charts afresh
            run.update(charts=0, finished=False)
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element.WhichOneof("type")
            if element == "vega_lite_chart":
                run["charts"] += 1
            elif element == "exception":
                run["exception"] = msg.delta.new_element.exception.message
        elif kind == "script_finished" and msg.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
            run["finished"] = True

    tab.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    out = Draw()
    started = time.perf_counter()
    try:
        tab.goto(url)
        tab.wait_for_selector("[data-testid=stMain] [data-testid=stElementContainer]", timeout=timeout * 1000)
        out.first_element = time.perf_counter() - started
        while not run["finished"]:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"the page's script did not finish within {timeout:.0f} s")
            tab.wait_for_timeout(20)
        left = max(1.0, timeout - (time.perf_counter() - started))
        tab.wait_for_function(COMPLETE % run["charts"], timeout=left * 1000, polling=20)
        out.whole, out.charts = time.perf_counter() - started, run["charts"]
    except Exception as e:  # a page that fails or hangs is a result too
        out.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if run["exception"] and not out.error:
        out.error = f"the page raised: {run['exception']}"
    return out


def first_render(command: list[str], page_name: str, charts: int) -> dict[str, float]:
    """Start a server (``command`` + a port) and open a page in headless Chromium; seconds from the command's start
    to: the server's health check, the page's first element, its first chart drawn, and the whole page drawn
    (``charts`` charts and every table drawn, the script finished)."""
    times = {}
    with browser() as b:
        tab = b.new_page(viewport={"width": 1400, "height": 1800})
        with server(command) as (url, _, started):
            times["health"] = time.perf_counter() - started
            tab.goto(f"{url}/{page_name}")
            tab.wait_for_selector("[data-testid=stMain] [data-testid=stElementContainer]", timeout=120_000)
            times["first element"] = time.perf_counter() - started
            if charts:
                tab.wait_for_selector(".vega-embed svg, .vega-embed canvas", timeout=120_000)
                times["first chart"] = time.perf_counter() - started
            tab.wait_for_function(COMPLETE % charts, timeout=120_000, polling=20)
            times["whole page"] = time.perf_counter() - started
    return times


def warm_draws(store: str, timeout: float = 600, each: Callable[[str, Draw], None] | None = None
               ) -> tuple[dict[str, Draw], int]:
    """Every page's first draw on one running ``loralens app``, in turn, each in a new tab (a new session); and the
    app's peak memory (bytes, its process tree's RSS) meanwhile. ``each`` is called with every page's draw."""
    out = {}
    with browser() as b, server(app_command(store)) as (url, proc, _), Memory(proc.pid) as memory:
        for title, path in PAGES.items():
            tab = b.new_page(viewport={"width": 1400, "height": 1800})
            out[title] = draw(tab, f"{url}/{path}", timeout)
            tab.close()
            if each:
                each(title, out[title])
    return out, memory.peak


def fresh_draws(store: str, timeout: float = 600, each: Callable[[str, Draw], None] | None = None
                ) -> tuple[dict[str, Draw], int]:
    """Every page's first draw on a freshly started ``loralens app`` of its own (``from_start`` counts from the
    command's start); and the highest of the apps' peak memories. ``each`` is called with every page's draw."""
    out, peak = {}, 0
    with browser() as b:
        for title, path in PAGES.items():
            tab = b.new_page(viewport={"width": 1400, "height": 1800})
            with server(app_command(store)) as (url, proc, started), Memory(proc.pid) as memory:
                navigating = time.perf_counter()
                out[title] = draw(tab, f"{url}/{path}", timeout)
                out[title].from_start = out[title].whole + navigating - started
            peak = max(peak, memory.peak)
            tab.close()
            if each:
                each(title, out[title])
    return out, peak


WIDGETS = (("Utterance page's layer slider", "utterance", "utt-layer"),
           ("Clusters page's layer slider", "clusters", "cl-layer"),
           ("LoRA dynamics' effective-rank threshold", "dynamics", "dyn-threshold"))
"""The widgets ``widget_times`` moves: what, the page's URL path, the widget's key."""


def widget_times(store: str, page: str, key: str, repeats: int, budget: float = 300) -> list[float] | str:
    """Move a slider of a page through ``repeats`` other values with AppTest (the server side of a rerun), after one
    move to warm this session's caches; milliseconds per rerun, or what went wrong. Stops once ``budget`` seconds
    have gone into the moves."""
    from streamlit.testing.v1 import AppTest

    os.environ["LORALENS_STORE"] = store
    at = AppTest.from_file(MAIN, default_timeout=900).run()  # a rerun may fit a map: minutes at scale
    at.switch_page(f"sections/{page}.py").run()
    if at.exception:
        return f"{page} raised: {at.exception[0].message}"
    found = [s for s in at.slider if s.key == key]
    if not found:
        return f"{page} has no slider {key!r}"
    slider = found[0]
    lo, hi, step = slider.min, slider.max, slider.step or 1
    n = int(round((hi - lo) / step)) + 1
    start = int(round((slider.value - lo) / step))
    value = lambda i: type(lo)(round(lo + step * ((start + i) % n), 6))  # noqa: E731
    at.slider(key=key).set_value(value(1)).run()
    times, spent = [], 0.0
    for i in range(2, repeats + 2):
        began = time.perf_counter()
        at.slider(key=key).set_value(value(i)).run()
        times.append((time.perf_counter() - began) * 1000)
        if at.exception:
            return f"{page} raised after moving {key} to {value(i)}: {at.exception[0].message}"
        spent += times[-1] / 1000
        if spent > budget:
            break
    return times


@dataclass
class Timed:
    """A command's run."""

    rc: int | None
    """Its exit status; None where it was stopped at its time limit."""
    seconds: float
    peak_gib: float
    """The peak resident memory of its process tree."""
    tail: str
    """The end of its output."""
    missing: bool
    """The CLI refused the command as unknown (an ``invalid choice`` from argparse)."""


def timed(command: list[str], timeout: float | None = None) -> Timed:
    """Run ``command``, timing it and watching its memory; stop it (and its children) after ``timeout`` seconds,
    with ``rc`` None."""
    import psutil

    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with Memory(proc.pid, interval=0.2) as memory:
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                children = psutil.Process(proc.pid).children(recursive=True)
                for p in [proc, *children]:
                    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                        p.terminate()
                psutil.wait_procs(children, timeout=10)
                proc.wait()
                rc = None
        seconds = time.perf_counter() - started
        log.seek(0)
        text = log.read().decode(errors="replace")
    return Timed(rc, seconds, memory.peak / 2**30, text[-3000:], rc == 2 and "invalid choice" in text)
