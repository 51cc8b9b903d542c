"""Shared fixtures: tiny random Whisper models, small audio trees, and the real EmoDB copy where present."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperConfig, WhisperForAudioClassification

pytest_plugins = ["pytester", "tests.ci_skips"]

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"
EMOTIONS = ["anger", "happiness", "neutral", "sadness"]
LARGE_V3 = "random:large-v3?layers=2"
"""whisper-large-v3's geometry (128 mel bins, width 1280, 20 heads, FFN 5120) with random weights, cut to 2 layers."""


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` threads inside: a reference for workers that run on as many. Products split over threads sum in
    another order: on an AMD EPYC's MKL even the tiny model's projector (6 x 32 by 32 x 256) differs in its last bit
    between 1 and 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_config(**overrides) -> WhisperConfig:
    """A random Whisper small enough for unit tests (2 layers, d=32), with the real 1500-frame window."""
    kwargs = dict(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                  decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=1500,
                  classifier_proj_size=16, num_labels=4)
    return WhisperConfig(**(kwargs | overrides))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random ``WhisperForAudioClassification`` saved as a local HF directory (a valid --model SPEC)."""
    out = tmp_path_factory.mktemp("tiny-whisper")
    torch.manual_seed(0)
    WhisperForAudioClassification(tiny_config()).save_pretrained(out)
    return out


def tone(seconds: float, rate: int, freq: float, seed: int = 0) -> np.ndarray:
    """A noisy tone: distinct per class so that a tiny model can learn something."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def write_tone_csv(tmp_path: Path, takes: int = 2) -> Path:
    """Write a CSV data set of 4 speakers x 4 emotions x ``takes`` tones at 22.05 kHz; return the CSV."""
    rows = ["path,emotion,speaker"]
    for s in range(4):
        for e, emotion in enumerate(EMOTIONS):
            for take in range(takes):
                rel = f"wav/s{s}_{emotion}_{take}.wav"
                (tmp_path / "wav").mkdir(exist_ok=True)
                sf.write(tmp_path / rel, tone(0.6 + 0.1 * take, 22050, 200 * (e + 1), seed=s * 10 + take), 22050)
                rows.append(f"{rel},{emotion},spk{s}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


@pytest.fixture()
def tone_csv(tmp_path) -> Path:
    """A CSV data set of tones (see ``write_tone_csv``)."""
    return write_tone_csv(tmp_path)


def require_emodb() -> Path:
    """The real EmoDB copy beside the project: skips where it is absent, fails in CI (``CI=true``), which has it."""
    if not (EMODB / "labels.csv").is_file():
        message = f"EmoDB not found at {EMODB}: integration tests need ../shared/data/emodb"
        from tests.ci_skips import under_ci  # the plugin's (pytest_plugins), imported once pytest has it

        if under_ci():
            pytest.fail(f"{message}; CI always has it, so a missing copy is a broken checkout, not a skip")
        pytest.skip(message)
    return EMODB


@pytest.fixture(scope="session")
def emodb() -> Path:
    """The real EmoDB copy (see ``require_emodb``)."""
    return require_emodb()


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """A LoRA run and a frozen run of the tiny random Whisper on the tone data set, one epoch, all folds."""
    from loralens.precompute.config import TrainConfig
    from loralens.precompute.train import train

    root = tmp_path_factory.mktemp("runs")
    manifest = write_tone_csv(root)
    runs = {}
    for method in ("lora", "frozen"):
        runs[method] = root / f"tiny-{method}"
        train(TrainConfig(model=str(tiny_model_dir), data=f"csv:{manifest}", method=method, epochs=1,
                          batch_size=4, rank=4, alpha=8), runs[method])
    return runs


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_runs) -> str:
    """A store holding both tiny runs over every utterance (the fixture store of the app tests)."""
    from loralens.precompute.config import read_config
    from loralens.precompute.trace import Selection, Tracer

    path = str(tmp_path_factory.mktemp("store") / "tiny.zarr")
    for run in tiny_runs.values():
        tracer = Tracer(run, read_config(run).data, path, selection=Selection(all=True))
        rows = tracer.prepare()
        tracer.capture(rows)
        tracer.commit(rows)
    return path


@pytest.fixture(scope="session")
def causal_store(tmp_path_factory, tiny_store, tiny_runs) -> str:
    """The fixture store with the causal lens: both tiny runs under some conditions of every kind, patched from
    each other (``loralens intervene``)."""
    import shutil

    from loralens.precompute import intervene

    path = str(tmp_path_factory.mktemp("causal") / "causal.zarr")
    shutil.copytree(tiny_store, path)
    strengths = {"pitch": (-2.0, 2.0), "noise": (20.0, 0.0)}
    intervene.run(tiny_runs["lora"], path, kinds=("lora_off", "lora_off_from", "erase", "patch", "pitch", "noise"),
                  strengths=strengths, partner=tiny_runs["frozen"])
    intervene.run(tiny_runs["frozen"], path, kinds=("erase", "patch", "noise"), strengths=strengths,
                  partner=tiny_runs["lora"])
    return path


@pytest.fixture(scope="session")
def rank_store(tmp_path_factory, tiny_model_dir, tiny_runs) -> str:
    """The tiny LoRA run (rank 4 on v_proj) beside a rank-2 run like it and a rank-8 run on other targets."""
    from loralens.precompute.config import TrainConfig, read_config
    from loralens.precompute.trace import Selection, Tracer
    from loralens.precompute.train import train

    root = tmp_path_factory.mktemp("ranks")
    data = read_config(tiny_runs["lora"]).data
    runs = [tiny_runs["lora"], root / "tiny-lora-r2", root / "tiny-lora-r8-q"]
    for out, rank, targets in ((runs[1], 2, ["v_proj"]), (runs[2], 8, ["q_proj"])):
        train(TrainConfig(model=str(tiny_model_dir), data=data, method="lora", epochs=1, batch_size=4, rank=rank,
                          alpha=2 * rank, targets=targets), out)
    path = str(root / "ranks.zarr")
    for run in runs:
        tracer = Tracer(run, data, path, selection=Selection(all=True))
        rows = tracer.prepare()
        tracer.capture(rows)
        tracer.commit(rows)
    return path


@pytest.fixture(scope="session")
def large_runs(tmp_path_factory) -> dict[str, Path]:
    """A LoRA run and a frozen run of ``LARGE_V3`` on 16 tones (``loralens train``: one epoch, 2 folds)."""
    from loralens.cli import main

    root = tmp_path_factory.mktemp("large-runs")
    manifest = write_tone_csv(root, takes=1)
    runs = {}
    for method in ("lora", "frozen"):
        runs[method] = root / f"large-v3-{method}"
        assert main(["train", "--model", LARGE_V3, "--data", f"csv:{manifest}", "--method", method, "--folds", "2",
                     "--epochs", "1", "--batch-size", "4", "--rank", "4", "--alpha", "8",
                     "--out", str(runs[method])]) == 0
    return runs


@pytest.fixture(scope="session")
def large_store(tmp_path_factory, large_runs) -> str:
    """A store holding both ``LARGE_V3`` runs over every utterance (``loralens trace --all``)."""
    from loralens.cli import main

    path = str(tmp_path_factory.mktemp("large-store") / "large-v3.zarr")
    for run in large_runs.values():
        assert main(["trace", "--run", str(run), "--store", path, "--all"]) == 0
    return path


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3():
    """An S3 server on a free port of 127.0.0.1 with a bucket ``loralens``; yields its endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # moto accepts any; the shard processes inherit them
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3fs.S3FileSystem(endpoint_url=url).mkdir("loralens")
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray of 2 CPUs and no GPU, started once per session (a few seconds) and shut down after it.

    Its workers are fresh processes: ``precompute`` reaches them installed (``pip install -e``), and what they need
    from the environment travels in the jobs (paths are absolute, storage options explicit).
    """
    ray = pytest.importorskip("ray", reason="Ray comes with the test and cluster extras")
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def wait_until_serving(proc, url: str, seconds: float = 60) -> None:
    """Wait for a started ``loralens app``/``demo`` to answer its health check; fail with its output if not."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"the app did not answer on {url}: {proc.stdout.read().decode()[-3000:]}")


def assert_same_run(remote, here, run: str) -> None:
    """Every checkpoint array of ``run`` in two stores (``StoreReader``s) equal bit for bit, every row written."""
    import numpy as np

    for checkpoint in ("trained", "random_twin"):
        assert remote.written(run, checkpoint).all()
        for name in sorted(here.group(run, checkpoint).array_keys()):
            a = remote.root[f"runs/{run}/{checkpoint}/{name}"][...]
            b = here.root[f"runs/{run}/{checkpoint}/{name}"][...]
            assert np.array_equal(a, b), f"{checkpoint}/{name}"


def without_intruders(store: str, copy: str, run: str) -> str:
    """``copy``: a copy of ``store`` with ``run`` as traced before intruder dimensions were recorded."""
    import shutil

    from loralens.analysis.intruders import ATTR
    from loralens.store.writer import StoreWriter

    shutil.copytree(store, copy)
    writer = StoreWriter(copy)
    for checkpoint in writer.runs()[run]:
        group = writer.group(run, checkpoint)
        group.attrs.put({k: v for k, v in group.attrs.items() if k != ATTR})
    return copy


def checkpoint_sizes(n_layers: int, d_model: int, rank: int) -> dict[str, int]:
    """The dimension sizes of a small hand-written store's checkpoint (four classes, LoRA on every layer's v_proj)."""
    return {"boundary": n_layers + 1, "layer": n_layers, "d_model": d_model, "class": 4, "module": n_layers,
            "rank": rank, "d_out": d_model}


def checkpoint_attrs(method: str, n_layers: int, d_model: int, rank: int, emotions: list[str]) -> dict:
    """The attributes ``StoreWriter.create_checkpoint`` needs, for a small hand-written store."""
    return {"method": method, "model": "m", "data": "d", "window": "trim", "emotions": emotions, "rank": rank,
            "alpha": 2 * rank, "targets": ["v_proj"],
            "modules": [f"layer_{i}.v_proj" for i in range(n_layers)] if method == "lora" else [],
            "n_layers": n_layers, "d_model": d_model, "train_config": {}, "metrics": {},
            "capture": {"per_frame_b": True}}


def random_row(rng, lora: bool, sizes: dict[str, int], frames: int) -> dict[str, np.ndarray]:
    """Every array of one row of a hand-written checkpoint (``written`` apart), floats random, integers zero."""
    from loralens.store import schema

    out = {}
    for name, spec in schema.checkpoint_arrays(lora, True).items():
        shape = tuple(frames if d == "frame" else sizes[d] for d in spec.dims[1:])
        out[name] = rng.standard_normal(shape).astype(spec.dtype) if spec.dtype.startswith("float") else \
            np.zeros(shape, spec.dtype)
    out.pop("written")
    return out
