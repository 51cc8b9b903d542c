"""The CTranslate2 importer: exact against ctranslate2's own encoder, clear on broken files."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from loralens.precompute import ct2, models
from loralens.precompute.audio import load_audio


def test_truncated_model_bin_is_named(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00\x0c\x00WhisperSp")
    with pytest.raises(ct2.CT2FormatError, match="truncated"):
        ct2.read_model_bin(tmp_path / "model.bin")


def test_unknown_version_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x63\x00\x00\x00")
    with pytest.raises(ct2.CT2FormatError, match="binary version 99"):
        ct2.read_model_bin(tmp_path / "model.bin")


def test_missing_ct2_dir_says_what_to_do(tmp_path):
    with pytest.raises(models.ModelSpecError, match="model.bin"):
        models.load_classifier(f"ct2:{tmp_path}", ["a", "b"])


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A spoken sentence, synthesised with espeak-ng (no data set needed), as a 22.05 kHz WAV read back."""
    import soundfile as sf

    from loralens.precompute.synth import Espeak

    espeak = Espeak()
    samples = espeak.speak("The quick brown fox jumps over the lazy dog.", "en-us", 175, 50, 50, 100, seed=1)
    path = tmp_path_factory.mktemp("speech") / "fox.wav"
    sf.write(path, samples, espeak.rate)
    return load_audio(path)


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_bundled_encoder_matches_ctranslate2(name, speech):
    """Acceptance: max |HF - CT2| / max |CT2| <= 1e-4 on speech, for both bundled models."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    import torch

    source = models.parse_model_spec(f"bundled:{name}")
    model = models.load_classifier(source.spec, ["anger", "neutral"])
    audio = speech
    features = models.feature_extractor(model.config)(audio, sampling_rate=16000, return_tensors="np").input_features
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    oracle = ctranslate2.models.Whisper(str(models.ct2_directory(source)), device="cpu", compute_type="float32")
    theirs = np.array(oracle.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), to_cpu=True))
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() <= 1e-4


def _quantised_copy(source: Path, out: Path, quantization: str) -> Path:
    """``source`` (a CTranslate2 Whisper directory) written again by ctranslate2's own quantiser."""
    import re

    from ctranslate2.specs.whisper_spec import WhisperSpec

    _, arrays = ct2.read_model_bin(source / "model.bin", prefix="")
    layers = {side: len({k.split("/")[1] for k in arrays if re.match(rf"{side}/layer_\d+/", k)})
              for side in ("encoder", "decoder")}
    spec = WhisperSpec(layers["encoder"], int(arrays["encoder/num_heads"]), layers["decoder"],
                       int(arrays["decoder/num_heads"]))
    for name, value in arrays.items():
        if value.ndim:  # scalars (head counts) are the spec's own
            scope = spec
            for part in name.split("/")[:-1]:
                index = re.fullmatch(r"(\w+)_(\d+)", part)
                scope = getattr(scope, part) if hasattr(scope, part) else getattr(scope, index[1])[int(index[2])]
            setattr(scope, name.split("/")[-1], value)
    spec.decoder.projection.weight = arrays["decoder/embeddings/weight"]  # stored as an alias of the embeddings
    spec.register_vocabulary((source / "vocabulary.txt").read_text().splitlines())
    spec.validate()
    spec.optimize(quantization=quantization)
    out.mkdir()
    spec.save(str(out))
    shutil.copy(source / "config.json", out / "config.json")
    return out


@pytest.mark.parametrize("quantization", ["int8", "int16"])
def test_quantised_encoder_matches_ctranslate2(quantization, speech, tmp_path, monkeypatch):
    """faster-whisper models are often int8 (``--quantization int8``): their weights are scaled back, not read raw."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    import torch

    monkeypatch.setenv("LORALENS_CACHE", str(tmp_path / "cache"))
    directory = _quantised_copy(models.ct2_directory(models.parse_model_spec("bundled:tiny.en")),
                                tmp_path / quantization, quantization)
    model = models.load_classifier(f"ct2:{directory}", ["anger", "neutral"])
    features = models.feature_extractor(model.config)(speech, sampling_rate=16000, return_tensors="np").input_features
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    oracle = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    theirs = np.array(oracle.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), to_cpu=True))
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() <= 1e-4


def test_encoder_cache_is_readable_as_the_umask_allows(tmp_path, monkeypatch):
    monkeypatch.setenv("LORALENS_CACHE", str(tmp_path))
    models.encoder_weights(models.parse_model_spec("bundled:tiny.en"))
    (cached,) = (tmp_path / "encoders").iterdir()
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in [cached, *cached.iterdir()]}
    directory = stat.S_IMODE((tmp_path / "encoders").stat().st_mode)  # made by mkdir
    assert modes == {cached.name: directory, "encoder.safetensors": directory & 0o666, "config.json": directory & 0o666}


def test_export_loads_with_from_pretrained(tmp_path, tiny_model_dir):
    from transformers import WhisperForAudioClassification

    out = models.export(str(tiny_model_dir), tmp_path / "export", ["anger", "sadness"])
    loaded = WhisperForAudioClassification.from_pretrained(out)
    assert loaded.config.id2label == {0: "anger", 1: "sadness"}
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes


def test_unknown_scheme_lists_accepted():
    with pytest.raises(models.ModelSpecError, match="bundled:base"):
        models.parse_model_spec("s3x:thing")
    with pytest.raises(models.ModelSpecError, match="accepted"):
        models.parse_model_spec("bundled:large")
