"""Upload in Chromium with a real recording, through the file uploader and the microphone (issue #39).

    python bench/upload_stage.py STORE [--clip FILE] [--second FILE] [--record SECONDS] [--shots DIR]

Starts ``loralens app --store STORE`` and opens its Upload page in headless Chromium (Debian's, through Playwright)
with a fake microphone that plays ``--clip`` (a 16-bit PCM WAV copy of it, in a temporary folder). Checks that the run
picker shows the demo's real-speech model, then times, in seconds from the upload (the file set on the uploader's
input, or the recording's stop button clicked) to the prediction's line shown and to the occlusion map ("Where in
the clip: ...") drawn, and to the page's script finished:

- file, first upload of a fresh app: ``--clip``; loading the checkpoint is included;
- file, model loaded: ``--second``, another clip (the occlusion map is cached per clip, so not the same one);
- microphone: ``--record`` seconds recorded through the "Or record" widget, the file removed first (the page prefers
  an uploaded file to a recording).

Each measurement starts from an empty page (the previous clip removed) and its screenshot goes to ``--shots``.
RAVDESS is for evaluation only: the clips are read where they lie, never copied into the repository.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pages import FLAGS, app_command, browser, server

RAVDESS = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ravdess" / "wav").resolve()
TIMEOUT_MS = 600_000
"""The longest wait for one step (a first upload on a busy 2-core CPU loads torch and the checkpoint)."""

LIVE = "[data-testid=stElementContainer]:not([data-stale=true])"
"""An element of the page's current script run (Streamlit keeps the last run's elements, greyed, while rerunning)."""
FAILED = f"""() => {{
    const e = document.querySelector('{LIVE} [data-testid=stException], {LIVE} [data-testid=stAlertContentError]');
    return e ? e.innerText : null;
}}"""
"""The text of a traceback or an error shown by the current run, if any."""
PREDICTED = f"""() => {{
    const failed = ({FAILED})();
    if (failed) return {{failed}};
    for (const m of document.querySelectorAll('{LIVE} [data-testid=stMarkdown]'))
        if (/: predicted /.test(m.innerText)) return {{text: m.innerText}};
    return null;
}}"""
"""The prediction's line (``NAME: predicted EMOTION, settling at ...``) once shown, or the page's error."""
OCCLUSION = f"""() => {{
    const failed = ({FAILED})();
    if (failed) return {{failed}};
    for (const c of document.querySelectorAll('{LIVE} [data-testid=stVegaLiteChart]')) {{
        const drawn = c.querySelector('.vega-embed svg, .vega-embed canvas');
        const label = [...c.querySelectorAll('[aria-label]')].map(e => e.getAttribute('aria-label')).join(' ')
            + ' ' + [...c.querySelectorAll('svg text')].map(t => t.textContent).join(' ');
        if (drawn && label.includes('Where in the clip')) return {{text: label}};
    }}
    return null;
}}"""
"""The occlusion chart, once drawn (its title is its ARIA label, or an SVG text), or the page's error."""
FINISHED = "() => !document.querySelector('[data-testid=stStatusWidget], [data-testid=stSpinner]')"
"""No script running and no spinner."""
EMPTY = f"""() => [...document.querySelectorAll('{LIVE} [data-testid=stAlertContentInfo]')]
    .some(e => e.innerText.startsWith('Upload a clip'))"""
"""The page waits for a clip: its script ran with none."""


@dataclass
class Stage:
    """One upload, in seconds from it."""

    prediction: str
    predicted: float
    occlusion: float
    finished: float
    drops: str
    """The occlusion map's drop axis as its ARIA label gives it (``0.000000 to 0.000000``: no bar to see)."""


def wav_copy(clip: Path, folder: Path) -> Path:
    """``clip`` as 16 kHz mono 16-bit PCM WAV in ``folder``: what Chromium's fake microphone plays."""
    import soundfile as sf

    from loralens.precompute.audio import load_audio
    from loralens.store.schema import SAMPLE_RATE

    out = folder / f"{clip.stem}.wav"
    sf.write(out, load_audio(clip), SAMPLE_RATE, subtype="PCM_16")
    return out


def wait(tab, script: str, what: str) -> str:
    """Wait for ``script`` (one of the checks above) to find its element; its text. Raises on the page's error."""
    found = tab.wait_for_function(script, timeout=TIMEOUT_MS, polling=20).json_value()
    if "failed" in found:
        raise RuntimeError(f"the page showed an error while waiting for {what}: {found['failed'][:800]}")
    return found["text"]


def stage(tab, act: Callable[[], None]) -> Stage:
    """Do ``act`` (an upload) and time the prediction, the occlusion map and the script's end from its end."""
    act()
    began = time.perf_counter()
    text = wait(tab, PREDICTED, "the prediction")
    predicted = time.perf_counter() - began
    label = wait(tab, OCCLUSION, "the occlusion map")
    drawn = time.perf_counter() - began
    tab.wait_for_function(FINISHED, timeout=TIMEOUT_MS, polling=50)
    finished = time.perf_counter() - began
    match = re.search(r": predicted (\S+?),", text)
    axis = re.search(r"drop of log-odds\(.*?\)' for a linear scale with values from (\S+ to \S+)", label)
    return Stage(match.group(1) if match else f"? ({text[:80]})", predicted, drawn, finished,
                 axis.group(1) if axis else "not labelled")


def clear_file(tab) -> None:
    """Remove the uploaded file and wait for the page to ask for a clip again."""
    tab.locator("[data-testid=stFileUploader]").get_by_role("button", name=re.compile("^Remove")).first.click()
    tab.wait_for_function(EMPTY, timeout=TIMEOUT_MS, polling=50)
    tab.wait_for_function(FINISHED, timeout=TIMEOUT_MS, polling=50)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--clip", type=Path, default=RAVDESS / "03-01-05-02-01-01-03.flac",
                        help="the first clip uploaded, and what the fake microphone plays (an angry English clip)")
    parser.add_argument("--second", type=Path, default=RAVDESS / "03-01-05-02-02-01-04.flac",
                        help="the second clip uploaded, once the model is loaded (another speaker's angry clip)")
    parser.add_argument("--record", type=float, default=4.0, help="seconds recorded through the microphone")
    parser.add_argument("--shots", type=Path, help="a folder for a screenshot of each result")
    args = parser.parse_args()
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    ok = True

    def report(path: str, what: str, s: Stage, tab, shot: str) -> None:
        print(f"{path}, {what}: predicted {s.prediction} in {s.predicted:.1f} s, occlusion drawn at "
              f"{s.occlusion:.1f} s (drops {s.drops}), page finished at {s.finished:.1f} s", flush=True)
        if args.shots:
            tab.screenshot(path=str(args.shots / f"{shot}.png"), full_page=True)

    with tempfile.TemporaryDirectory() as tmp:
        microphone = wav_copy(args.clip.resolve(), Path(tmp))
        flags = [*FLAGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={microphone}"]
        with browser(flags) as b, server(app_command(args.store)) as (url, _, _):
            context = b.new_context(viewport={"width": 1400, "height": 2600})
            context.grant_permissions(["microphone"], origin=url)
            tab = context.new_page()
            tab.goto(f"{url}/upload")
            picker = tab.get_by_role("combobox", name="Run")
            picker.wait_for(timeout=TIMEOUT_MS)
            tab.wait_for_function(EMPTY, timeout=TIMEOUT_MS, polling=50)
            run = picker.input_value()
            print(f"run picker: {run}" + ("" if "real-speech" in run else "  (expected real-speech)"), flush=True)
            ok &= "real-speech" in run
            uploader = tab.locator("[data-testid=stFileUploaderDropzoneInput]")

            first = stage(tab, lambda: uploader.set_input_files(str(args.clip)))
            report("file", "first upload of a fresh app (model loading included)", first, tab, "file-first")
            clear_file(tab)
            second = stage(tab, lambda: uploader.set_input_files(str(args.second)))
            report("file", "upload, model loaded", second, tab, "file-loaded")
            clear_file(tab)

            recorder = tab.locator("[data-testid=stAudioInput]")

            def record() -> None:
                recorder.get_by_role("button", name="Record", exact=True).click()
                tab.wait_for_timeout(args.record * 1000)
                recorder.get_by_role("button", name="Stop recording").click()

            spoken = stage(tab, record)
            report("microphone", f"{args.record:g} s recorded, model loaded", spoken, tab, "microphone")
    for what, s, limit in (("first upload", first, 5.0), ("upload, model loaded", second, 1.5),
                           ("microphone", spoken, 1.5)):
        if s.predicted > limit:
            print(f"{what}: predicted in {s.predicted:.1f} s, over the goal of {limit:g} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
