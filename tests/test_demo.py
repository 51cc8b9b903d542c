"""The offline corpus and the demo build (on the tiny model, so that it fits a unit test)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from transformers import WhisperConfig

from loralens.precompute import synth
from loralens.precompute.audio import load_audio
from loralens.precompute.data import load_corpus
from loralens.precompute.demo import DemoPlan, build
from loralens.store.reader import StoreReader
from loralens.store.schema import SCHEMA_VERSION
from tests.conftest import wait_until_serving


def _digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted((root / "wav").glob("*.wav")))).hexdigest()


def test_synthetic_corpus_is_deterministic_and_prosodic(tmp_path):
    a = synth.synthesise(tmp_path / "a", seed=3, sentences=2)
    b = synth.synthesise(tmp_path / "b", seed=3, sentences=2)
    assert a.read_text() == b.read_text() and _digest(a.parent) == _digest(b.parent)
    rows = list(csv.DictReader(open(a)))
    assert len(rows) == 8 * 4 * 2 and len({r["speaker"] for r in rows}) == 8
    assert {r["voice"].split("+")[0] for r in rows} == {"en-us", "en", "de"}
    by = {e: [r for r in rows if r["emotion"] == e] for e in synth.PROSODY}
    mean = lambda e, k: np.mean([float(r[k]) for r in by[e]])  # noqa: E731
    assert mean("anger", "rate") > mean("neutral", "rate") > mean("sadness", "rate")
    assert mean("happiness", "pitch") > mean("neutral", "pitch") > mean("sadness", "pitch")
    assert mean("sadness", "volume") < mean("neutral", "volume") < mean("anger", "volume")
    audio, rate = sf.read(a.parent / rows[0]["path"])
    assert rate == 22050 and 0.5 < len(audio) / rate < 6 and np.abs(audio).max() > 0.05
    corpus = load_corpus(f"synthetic:{a.parent}")
    assert corpus.synthetic and len(corpus.utterances) == 64


def _transcribe(clips: list[Path]) -> list[str]:
    """Whisper tiny.en's greedy transcripts of ``clips``, through CTranslate2 (the bundled model's own runtime)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    tokenizers = pytest.importorskip("tokenizers")
    from loralens.precompute import models

    directory = models.ct2_directory(models.parse_model_spec("bundled:tiny.en"))
    whisper = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    extractor = models.feature_extractor(WhisperConfig(num_mel_bins=80))
    features = extractor([load_audio(c) for c in clips], sampling_rate=16000, return_tensors="np").input_features
    results = whisper.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                               [["<|startoftranscript|>", "<|notimestamps|>"]] * len(clips), beam_size=1)
    return [tokenizer.decode(r.sequences_ids[0]) for r in results]


def test_synthetic_english_is_speech_whisper_understands(tmp_path, capsys):
    """tiny.en transcribes the English clips of every emotion: the corpus is speech, voice qualities included."""
    jiwer = pytest.importorskip("jiwer")
    manifest = synth.synthesise(tmp_path / "c", seed=0, sentences=2)
    rows = [r for r in csv.DictReader(open(manifest)) if r["speaker"].startswith("en_")]
    normal = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                            jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    heard = _transcribe([manifest.parent / r["path"] for r in rows])
    by_emotion = {}
    for r, text in zip(rows, heard):
        by_emotion.setdefault(r["emotion"], ([], []))
        by_emotion[r["emotion"]][0].append(r["text"])
        by_emotion[r["emotion"]][1].append(text)
    rates = {e: jiwer.wer(refs, hyps, reference_transform=normal, hypothesis_transform=normal)
             for e, (refs, hyps) in by_emotion.items()}
    with capsys.disabled():
        print("\nword error rate of tiny.en on the synthetic English clips: "
              + ", ".join(f"{e} {w:.2f}" for e, w in sorted(rates.items())))
    assert set(rates) == set(synth.PROSODY) and max(rates.values()) <= 0.5, rates


def test_demo_build_then_reuse(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("LORALENS_CACHE", str(tmp_path / "cache"))
    plan = DemoPlan(model=str(tiny_model_dir), ranks=(4,), folds="2", epochs=1, per_class=3)
    store = build(plan)
    reader = StoreReader(store)
    assert set(reader.runs()) == {"lora-r4", "frozen", "real-speech"}
    assert reader.n_utterances == 12 and set(reader.utterances()["dataset"]) == {"synthetic"}
    # The shipped real-speech model, imported over the same corpus, traced on the same utterances as the others.
    assert reader.written("real-speech").tolist() == reader.written("lora-r4").tolist()
    assert reader.attrs("real-speech")["train_config"]["source"]["card"]["datasets"] == ["EmoDB"]
    # The causal lens: each run under every condition, LoRA and frozen patched from each other.
    lora, frozen = reader.interventions("lora-r4"), reader.interventions("frozen")
    assert lora.done.all() and frozen.done.all() and (lora.partner, frozen.partner) == ("frozen", "lora-r4")
    assert {"lora_off@0", "patch@1", "pitch@4", "bandlimit@3400"} <= set(lora.conditions)
    assert {"erase@0", "patch@1", "noise@0"} <= set(frozen.conditions) and "lora_off@0" not in frozen.conditions
    assert build(plan) == store  # the second time it is already there


def test_the_app_labels_a_synthetic_store(tmp_path, monkeypatch, tiny_model_dir, emodb):
    """Every page says the store is synthetic speech; Upload answers a human voice with the real-speech model."""
    from streamlit.testing.v1 import AppTest

    from tests.test_app import MAIN, PAGES

    monkeypatch.setenv("LORALENS_CACHE", str(tmp_path / "cache"))
    store = build(DemoPlan(model=str(tiny_model_dir), ranks=(4,), folds="2", epochs=1, per_class=2))
    monkeypatch.setenv("LORALENS_STORE", store)
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception
        assert any("Synthetic speech" in c.value for c in at.caption), page
    at.switch_page("sections/upload.py").run()
    # lora-r4 comes first on every other page; here the run that learned from human voices does
    assert at.selectbox(key="up-run").value == "real-speech"
    assert any("learned from EmoDB speech" in c.value for c in at.caption)
    at.file_uploader(key="up-file").upload("angry.wav", (emodb / "wav" / "03a01Wa.wav").read_bytes(),
                                           "audio/wav").run()
    assert not at.exception
    assert "predicted **anger**" in next(m.value for m in at.markdown if "predicted" in m.value)
    titles = [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]
    assert any("Where in the clip" in str(t) for t in titles), titles
    at.selectbox(key="up-run").set_value("lora-r4").run()
    assert any("learned from synthetic speech" in w.value for w in at.warning)


def test_a_ready_build_drops_the_stores_of_older_schema_versions(tmp_path, monkeypatch):
    from loralens.precompute.demo import demo_dir, intervened, real_speech_traced
    monkeypatch.setenv("LORALENS_CACHE", str(tmp_path / "cache"))
    plan = DemoPlan()
    root = demo_dir(plan)
    (root / "store.zarr").mkdir(parents=True)  # a store and mark of schema version 1
    (root / "READY").write_text("{}")
    (root / f"store-v{SCHEMA_VERSION}.zarr").mkdir()  # as if this version's build had just finished
    (root / f"READY-v{SCHEMA_VERSION}").write_text("{}")
    (root / "INTERVENED-v0-store.zarr").write_text("{}")
    (root / "REAL-SPEECH-store.zarr").write_text("{}")
    current = intervened(root, root / f"store-v{SCHEMA_VERSION}.zarr")
    current.write_text("{}")
    traced = real_speech_traced(root, root / f"store-v{SCHEMA_VERSION}.zarr")
    traced.write_text("{}")
    assert build(plan) == str(root / f"store-v{SCHEMA_VERSION}.zarr")
    assert sorted(p.name for p in root.iterdir()) == [current.name, f"READY-v{SCHEMA_VERSION}", traced.name,
                                                      f"store-v{SCHEMA_VERSION}.zarr"]


def test_loralens_demo_serves_its_store(tmp_path, tiny_store):
    """`loralens demo` on a ready demo: the server answers (the build's process must not host it)."""
    from loralens.precompute.demo import intervened, real_speech_traced

    cache = tmp_path / "cache"
    env = {**os.environ, "LORALENS_CACHE": str(cache)}
    root = Path(subprocess.run([sys.executable, "-c", "from loralens.precompute.demo import DemoPlan, demo_dir; "
                                "print(demo_dir(DemoPlan()))"], env=env, capture_output=True, text=True,
                               check=True).stdout.strip())
    shutil.copytree(tiny_store, root / f"store-v{SCHEMA_VERSION}.zarr")
    (root / f"READY-v{SCHEMA_VERSION}").write_text("{}")
    intervened(root, root / f"store-v{SCHEMA_VERSION}.zarr").write_text("{}")
    real_speech_traced(root, root / f"store-v{SCHEMA_VERSION}.zarr").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "loralens.cli", "demo", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}", seconds=120)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demo_ranks_flag(capsys):
    from loralens.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo", "--ranks", "8,32,64"]).ranks == (8, 32, 64)
    assert parser.parse_args(["demo"]).ranks is None  # the plan's default
    for bad in ("8,x", "0", "8,8", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(["demo", "--ranks", bad])
        assert "expected distinct positive integers" in capsys.readouterr().err
