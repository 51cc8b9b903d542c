"""Never crash, never lose work: bad uploads, damaged stores, killed commands, concurrent readers, fuzzed input."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from loralens.app import state
from loralens.cli import main
from loralens.precompute.audio import SAMPLE_RATE, AudioError, load_audio, windows
from loralens.store.reader import StoreError, StoreReader
from loralens.store.validate import validate
from tests.conftest import tone, write_tone_csv

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")


def _wav(audio: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _speechlike(seconds: float, rate: int) -> np.ndarray:
    return tone(seconds, rate, 220.0)


# -- uploads: the app ---------------------------------------------------------------------------------------
UPLOADS = {
    "empty file": (b"", "error", "the file is empty (0 bytes)"),
    "WAV with no samples": (_wav(np.zeros((0, 1), np.float32), 16000), "error", "holds no samples"),
    "not audio": (b"PK\x03\x04 a zip, not audio", "error", "not readable as audio"),
    "truncated WAV": (_wav(_speechlike(1.0, 16000), 16000)[:30], "error", "not readable as audio"),
    "pure silence": (_wav(np.zeros(16000, np.float32), 16000), "error", "silent"),
    "NaN samples": (_wav(np.full(16000, np.nan, np.float32), 16000, "FLOAT"), "error", "NaN or infinite"),
    "stereo 44.1 kHz": (_wav(np.stack([_speechlike(1.0, 44100)] * 2, 1), 44100), "ok", "predicted"),
    "8 kHz": (_wav(_speechlike(1.0, 8000), 8000), "ok", "predicted"),
    "96 kHz": (_wav(_speechlike(1.0, 96000), 96000), "ok", "predicted"),
}


@pytest.fixture()
def upload_page(tiny_store, monkeypatch):
    monkeypatch.setenv("LORALENS_STORE", tiny_store)
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    at.switch_page("sections/upload.py").run()
    return at


@pytest.mark.parametrize("case", list(UPLOADS))
def test_upload_cases(upload_page, case):
    payload, outcome, message = UPLOADS[case]
    at = upload_page.file_uploader(key="up-file").upload("clip.wav", payload, "audio/wav").run()
    assert not at.exception, [e.value for e in at.exception]
    if outcome == "error":
        assert at.error and message in at.error[0].value, [e.value for e in at.error]
    else:
        assert not at.error and any(message in m.value for m in at.markdown)


def test_upload_longer_than_30_s_is_analysed_in_windows(upload_page):
    clip = _wav(_speechlike(65.0, 16000), 16000)
    at = upload_page.file_uploader(key="up-file").upload("long.wav", clip, "audio/wav").run()
    assert not at.exception and not at.error
    assert "3 consecutive windows" in at.info[0].value
    at.selectbox(key="up-window").set_value(30.0).run()
    assert not at.exception and any("predicted" in m.value and "[30 s-]" in m.value for m in at.markdown)


def test_upload_over_the_configured_limit_is_refused(upload_page):
    before = st_config.get_option("server.maxUploadSize")
    st_config.set_option("server.maxUploadSize", 1)
    try:
        clip = _wav(_speechlike(40.0, 16000), 16000)  # 1.2 MB
        at = upload_page.file_uploader(key="up-file").upload("big.wav", clip, "audio/wav").run()
    finally:
        st_config.set_option("server.maxUploadSize", before)
    assert not at.exception
    assert "over this app's upload limit of 1 MB" in at.error[0].value


def test_upload_with_an_odd_name_is_never_a_path(upload_page, tmp_path):
    name = "../../etc/passwd ünï 🎵 (1);rm -rf.wav"
    at = upload_page.file_uploader(key="up-file").upload(name, _wav(_speechlike(1.0, 16000), 16000),
                                                        "audio/wav").run()
    assert not at.exception and not at.error
    assert any("predicted" in m.value and "passwd" in m.value for m in at.markdown)


def test_upload_limit_is_set_in_the_config():
    text = (ROOT / ".streamlit" / "config.toml").read_text()
    assert re.search(r"^maxUploadSize = \d+$", text, re.M)


# -- uploads: loralens predict ------------------------------------------------------------------------------
def test_predict_cli_names_bad_files_and_windows_long_ones(tiny_runs, tmp_path, capsys, caplog):
    files = {}
    for case in ("empty file", "not audio", "NaN samples", "pure silence", "8 kHz"):
        files[case] = tmp_path / f"{case.replace(' ', '_')}.wav"
        files[case].write_bytes(UPLOADS[case][0])
    long = tmp_path / "long.wav"
    long.write_bytes(_wav(_speechlike(61.5, 16000), 16000))
    code = main(["predict", "--run", str(tiny_runs["lora"]), "--json", *map(str, files.values()), str(long)])
    assert code == 1  # some files failed: named, the others still predicted
    for case in ("empty file", "not audio", "NaN samples", "pure silence"):
        assert files[case].name in caplog.text
    assert "is silent" in caplog.text
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["start"] for line in lines] == [0.0, 0.0, 30.0, 60.0]  # 8 kHz clip, then three windows
    assert "[1:00.0-1:01.5]" in lines[-1]["name"]


def test_windows_cover_the_clip():
    audio = np.arange(int(61.5 * SAMPLE_RATE), dtype=np.float32)
    parts = windows(audio)
    assert [s for s, _ in parts] == [0.0, 30.0, 60.0]
    assert np.array_equal(np.concatenate([p for _, p in parts]), audio)
    assert [s for s, _ in windows(audio[: int(60.4 * SAMPLE_RATE)])] == [0.0, 30.0]  # a 0.4 s tail is dropped
    assert len(windows(audio[:100])) == 1


# -- property tests -----------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=4096))
def test_audio_loader_on_random_bytes(payload):
    try:
        audio = load_audio(payload, name="fuzz.bin")
    except AudioError as e:
        assert str(e).startswith("fuzz.bin: ")
        return
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    assert np.abs(audio).max(initial=0) <= 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from([8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000]),
       channels=st.integers(1, 4), seconds=st.floats(0.01, 1.0), subtype=st.sampled_from(["PCM_16", "FLOAT"]),
       seed=st.integers(0, 2**16))
def test_audio_loader_on_random_shapes_and_rates(rate, channels, seconds, subtype, seed):
    n = max(1, int(seconds * rate))
    data = np.random.default_rng(seed).uniform(-1, 1, (n, channels)).astype(np.float32)
    audio = load_audio(_wav(data, rate, subtype), name="random.wav")
    assert audio.ndim == 1 and np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert abs(len(audio) - n * SAMPLE_RATE / rate) <= 1


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["page", "run", "utt", "layer", "colour", "present", "store", "path"]),
                       st.text(max_size=40)))
@example({"layer": "²"})  # a digit to str.isdigit, not to int(): found by this test in CI
@example({"layer": "99999999999999999999", "run": "lora"})
def test_url_state_parsing_never_fails_and_only_accepts_known_values(params):
    view = state.parse(params, ["lora", "frozen"], {"emodb/03a01Fa", "csv/x"}, {"lora": 7, "frozen": 7})
    assert view.run in (None, "lora", "frozen")
    assert view.utt in (None, "emodb/03a01Fa", "csv/x")
    assert view.layer is None or 0 <= view.layer < 7
    assert set(view.to_params()) <= {"page", "run", "utt", "layer", "colour", "present"}


# -- stores -------------------------------------------------------------------------------------------------
def _chunk(store: str, array: str, row: int) -> Path:
    files = sorted((Path(store) / "runs" / "tiny-lora" / "trained" / array / "c" / str(row)).rglob("*"))
    return next(f for f in files if f.is_file())


def test_truncated_chunk_is_reported_repaired_and_recaptured(tiny_runs, tmp_path, capsys, monkeypatch):
    store = str(tmp_path / "s.zarr")
    command = ["trace", "--run", str(tiny_runs["lora"]), "--store", store, "--per-class", "2"]
    assert main(command) == 0
    before = StoreReader(store).read("tiny-lora", "trained", "lens_logits_frames", 2)
    damaged = _chunk(store, "lens_logits_frames", 2)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    with pytest.raises(StoreError, match="truncated or corrupt chunk.*validate --repair"):
        StoreReader(store).read("tiny-lora", "trained", "lens_logits_frames", 2)
    report = validate(store)
    assert any("row 2" in p and "unreadable" in p for p in report.problems)

    # The app keeps serving: the damaged utterance's view says what is wrong, the rest still works.
    monkeypatch.setenv("LORALENS_STORE", store)
    at = AppTest.from_file(MAIN, default_timeout=300)
    at.query_params["utt"] = StoreReader(store).utterances()["id"][2]
    at.run().switch_page("sections/utterance.py").run()
    assert not at.exception and "cannot be drawn" in at.error[0].value
    at.switch_page("sections/overview.py").run()
    assert not at.exception and not at.error

    assert main(["validate", store, "--repair"]) == 1
    assert "cleared the marks of 1 damaged row" in capsys.readouterr().out
    assert main(command) == 0  # the same command captures the row again
    assert validate(store).ok
    after = StoreReader(store).read("tiny-lora", "trained", "lens_logits_frames", 2)
    assert np.allclose(after, before, atol=1e-3)


# -- interruptions ------------------------------------------------------------------------------------------
def _loralens(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loralens.cli", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _timed_run(command: list[str]) -> float:
    """Run ``loralens COMMAND`` to the end in a subprocess; its wall time in seconds."""
    start = time.perf_counter()
    proc = _loralens(command)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return time.perf_counter() - start


def _interrupt_until_done(command: list[str], seed: int, duration: float, max_kills: int = 4) -> list[str]:
    """Run ``loralens COMMAND`` in a subprocess, killing it at random points (SIGINT, SIGKILL in turn).

    The kills land at 20-70% of ``duration``, the uninterrupted run's wall time on this machine: fixed seconds
    would land after the end on a fast machine and during interpreter start-up on a slow one.
    """
    rng = np.random.default_rng(seed)
    what = []
    for attempt in range(max_kills + 1):
        proc, sig = _loralens(command), None
        if attempt < max_kills:
            try:
                proc.wait(timeout=float(rng.uniform(0.2, 0.7)) * duration)
            except subprocess.TimeoutExpired:
                sig = signal.SIGINT if attempt % 2 == 0 else signal.SIGKILL
                proc.send_signal(sig)
                what.append(sig.name)
        _, err = proc.communicate(timeout=600)
        if sig is None:
            assert proc.returncode == 0, err[-2000:]
        elif sig == signal.SIGINT and proc.returncode != 0:
            assert "Traceback" not in err and "run the same command again to resume" in err, err[-2000:]
        if proc.returncode == 0:
            return what
    raise AssertionError(f"loralens {' '.join(command)} never finished: {err[-2000:]}")


def _fold_predictions(run: Path) -> dict[str, np.ndarray]:
    out = {}
    for fold in sorted(run.glob("fold_*")):
        with open(fold / "predictions.csv") as f:
            for r in csv.DictReader(f):
                out[r["id"]] = np.array([float(r[k]) for k in r if k.startswith("p_")])
    return out


def test_killed_train_resumes_to_the_same_run(tmp_path, tiny_model_dir):
    manifest = write_tone_csv(tmp_path)
    command = ["train", "--model", str(tiny_model_dir), "--data", f"csv:{manifest}", "--epochs", "25",
               "--batch-size", "4", "--rank", "4", "--alpha", "8", "--folds", "4"]
    duration = _timed_run([*command, "--out", str(tmp_path / "whole")])
    kills = _interrupt_until_done([*command, "--out", str(tmp_path / "killed")], seed=1, duration=duration)
    assert kills, "the run finished before any kill: make it longer"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert sorted(p.name for p in killed.iterdir() if p.is_dir()) == [f"fold_0{k}" for k in range(4)]  # no .partial
    a, b = _fold_predictions(whole), _fold_predictions(killed)
    assert a.keys() == b.keys() and len(a) == 32  # every utterance once, none lost, none twice
    assert all(np.allclose(a[k], b[k], atol=1e-4) for k in a)
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["complete"] and metrics["n_done"] == 4
    assert np.allclose(metrics["uar"]["per_fold"], json.loads((whole / "metrics.json").read_text())["uar"]["per_fold"])


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.03])
def test_ctrl_c_after_the_work_is_done_still_exits_cleanly(tiny_store, delay):
    # A Ctrl+C that lands while a finished command shuts down (CI once saw it end a finished train with -2).
    script = Path(sys.executable).with_name("loralens")  # the console script pip installs, as a user runs it
    proc = subprocess.Popen([str(script), "validate", tiny_store], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert "OK" in proc.stdout.readline()  # output reaches the pipe only once the command has finished
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, (proc.returncode, err[-2000:])


def test_killed_trace_resumes_to_the_same_store(tiny_runs, tmp_path):
    run = str(tiny_runs["lora"])
    duration = _timed_run(["trace", "--run", run, "--store", str(tmp_path / "whole.zarr"), "--all"])
    kills = _interrupt_until_done(["trace", "--run", run, "--store", str(tmp_path / "killed.zarr"), "--all"], seed=2,
                                  duration=duration)
    assert kills
    whole, killed = StoreReader(str(tmp_path / "whole.zarr")), StoreReader(str(tmp_path / "killed.zarr"))
    ids = killed.utterances()["id"]
    assert len(set(ids)) == len(ids) == whole.n_utterances == 32  # none lost, none twice
    assert validate(str(tmp_path / "killed.zarr")).ok
    order = [int(whole.row_of(i)) for i in ids]
    for name in ("lens_logits", "residual_pooled", "lora_a_pooled"):
        for checkpoint in ("trained", "random_twin"):
            assert np.allclose(killed.read("tiny-lora", checkpoint, name), whole.read("tiny-lora", checkpoint, name,
                                                                                       order), atol=1e-3), name


# -- concurrency --------------------------------------------------------------------------------------------
def test_reading_while_trace_writes_never_shows_partial_rows(tiny_runs, tmp_path):
    from loralens.precompute.config import read_config
    from loralens.precompute.trace import Selection, Tracer

    store = str(tmp_path / "s.zarr")
    tracer = Tracer(tiny_runs["lora"], read_config(tiny_runs["lora"]).data, store, selection=Selection(all=True))
    rows = tracer.prepare()
    writer = threading.Thread(target=tracer.capture, args=(rows,))
    writer.start()
    seen, checks = set(), 0
    reader = StoreReader(store)
    while True:
        alive = writer.is_alive()  # taken before the pass: once it reads False, this pass sees every mark
        for row in np.flatnonzero(reader.written("tiny-lora")).tolist():
            for name in ("lora_b_activation", "lens_logits", "lora_a_activation", "mlp_cosine", "block_norm_ratio"):
                value = reader.read("tiny-lora", "trained", name, row)
                assert np.abs(value).sum() > 0, f"row {row}: {name} is still empty although marked written"
            seen.add(row)
            checks += 1
        if not alive:
            break
        time.sleep(0.01)
    writer.join()
    assert len(seen) == len(rows) and checks > len(rows)  # rows were read while others were still being written


def test_two_app_sessions_do_not_interfere(tiny_store, monkeypatch):
    monkeypatch.setenv("LORALENS_STORE", tiny_store)
    one = AppTest.from_file(MAIN, default_timeout=300).run()
    two = AppTest.from_file(MAIN, default_timeout=300).run()
    one.switch_page("sections/utterance.py").run()
    two.switch_page("sections/utterance.py").run()
    one.slider(key="utt-layer").set_value(0).run()
    other = two.selectbox(key="utt-id").options[5].split(" · ")[0]
    two.selectbox(key="utt-id").set_value(other).run()
    two.slider(key="utt-layer").set_value(1).run()
    one.run()
    assert not one.exception and not two.exception
    assert one.slider(key="utt-layer").value == 0 and two.slider(key="utt-layer").value == 1
    assert one.selectbox(key="utt-id").value != other and two.selectbox(key="utt-id").value == other


# -- security -----------------------------------------------------------------------------------------------
def test_nothing_is_unpickled_and_the_server_binds_localhost():
    sources = [p for d in ("app", "precompute", "store") for p in (ROOT / d).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
    assert re.search(r'^address = "127\.0\.0\.1"$', (ROOT / ".streamlit" / "config.toml").read_text(), re.M)
    from loralens.cli import build_parser

    assert build_parser().parse_args(["app", "--store", "x"]).host == "127.0.0.1"
