"""Large Whisper geometries through the whole pipeline: whisper-large-v3's (128 mel bins, width 1280, 20 heads)
with random weights and 2 layers is trained, traced, validated, predicted with and explored."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from loralens.cli import main
from loralens.precompute import windowing
from loralens.precompute.models import (
    GEOMETRIES,
    ModelSpecError,
    feature_extractor,
    load_classifier,
    parse_model_spec,
    random_config,
)
from loralens.store.reader import StoreReader
from tests.conftest import EMOTIONS, LARGE_V3, tone

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGES = ["sections/utterance.py", "sections/clusters.py", "sections/dynamics.py", "sections/contributions.py",
         "sections/upload.py"]
# whisper-large-v3 as in openai/whisper-large-v3's config.json, cut to LARGE_V3's 2 layers
N_MELS, D_MODEL, N_HEADS, D_FFN, N_LAYERS = 128, 1280, 20, 5120, 2


def test_random_geometries_are_the_released_ones():
    # (d_model, encoder_layers, encoder_attention_heads, encoder_ffn_dim, num_mel_bins) of openai/whisper-NAME
    released = {"tiny": (384, 4, 6, 1536, 80), "base": (512, 6, 8, 2048, 80), "small": (768, 12, 12, 3072, 80),
                "medium": (1024, 24, 16, 4096, 80), "large-v2": (1280, 32, 20, 5120, 80),
                "large-v3": (1280, 32, 20, 5120, 128)}
    assert set(GEOMETRIES) == set(released)
    for name, numbers in released.items():
        config, seed = random_config(name)
        assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.encoder_ffn_dim,
                config.num_mel_bins, config.max_source_positions, seed) == (*numbers, 1500, 0), name
    config, seed = random_config("large-v3?layers=2&seed=7")
    assert (config.encoder_layers, config.num_mel_bins, seed) == (2, 128, 7)
    assert parse_model_spec(LARGE_V3).spec == LARGE_V3


@pytest.mark.parametrize("spec, says", [
    ("random:large", "accepted: random:tiny, random:base"),
    ("random:large-v3?layers=33", "from 1 to 32 (large-v3 has 32 layers)"),
    ("random:large-v3?layers=0", "from 1 to 32"),
    ("random:large-v3?layers=two", "layers='two'"),
    ("random:large-v3?depth=2", "unknown option(s) ['depth']; accepted: layers, seed"),
    ("random:large-v3?seed=-1", "seed='-1'"),
    ("random:large-v3?layers", "cannot read the options"),
])
def test_a_bad_random_spec_says_what_is_accepted(spec, says, tmp_path):
    with pytest.raises(ModelSpecError, match=None) as e:
        parse_model_spec(spec)
    assert says in str(e.value), str(e.value)
    # the CLI refuses it before touching any data
    assert main(["train", "--model", spec, "--data", f"csv:{tmp_path}/none.csv", "--out", str(tmp_path / "r")]) == 2


def test_random_weights_come_from_the_spec_alone():
    """Every fold of a run rebuilds the same encoder (the head's seed differs per fold); ``seed=`` changes it."""
    a = load_classifier(LARGE_V3, EMOTIONS, seed=0)
    b = load_classifier(LARGE_V3, EMOTIONS, seed=3)
    c = load_classifier(LARGE_V3 + "&seed=1", EMOTIONS, seed=0)
    encoder = a.encoder.state_dict()
    assert all(torch.equal(v, b.encoder.state_dict()[k]) for k, v in encoder.items())
    assert not torch.equal(encoder["layers.0.fc1.weight"], c.encoder.state_dict()["layers.0.fc1.weight"])
    assert not torch.equal(a.projector.weight, b.projector.weight)
    assert tuple(encoder["conv1.weight"].shape) == (D_MODEL, N_MELS, 3)
    assert tuple(encoder["layers.1.fc1.weight"].shape) == (D_FFN, D_MODEL)
    assert len(a.encoder.layers) == N_LAYERS and a.encoder.layers[0].self_attn.num_heads == N_HEADS
    assert abs(encoder["layers.0.fc1.weight"].std().item() - 0.02) < 1e-3


def test_both_windows_read_128_mel_bins():
    model = load_classifier(LARGE_V3, EMOTIONS)
    extractor = feature_extractor(model.config)
    clip = tone(0.7, 16000, 300.0)
    for window, frames in (("trim", windowing.encoder_frames(len(clip))), ("full", 1500)):
        features = windowing.extract(extractor, [clip], window)
        assert tuple(features.input_features.shape) == (1, N_MELS, 2 * frames), window
        with torch.no_grad():
            assert windowing.classify(model, features).shape == (1, len(EMOTIONS))


def test_large_v3_trains_lora_and_frozen(large_runs):
    for method, run in large_runs.items():
        config = json.loads((run / "config.json").read_text())
        assert config["model"] == LARGE_V3 and config["method"] == method
        metrics = json.loads((run / "metrics.json").read_text())
        assert len(metrics["folds"]) == 2, metrics
        head = run / "fold_00" / "head.safetensors"
        from safetensors.torch import load_file
        assert tuple(load_file(head)["projector.weight"].shape)[1] == D_MODEL
    adapter = json.loads((large_runs["lora"] / "fold_01" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4


def test_large_v3_store_validates_and_keeps_its_geometry(large_store):
    assert main(["validate", large_store]) == 0
    reader = StoreReader(large_store)
    assert sorted(reader.runs()) == ["large-v3-frozen", "large-v3-lora"]
    n = reader.n_utterances
    assert reader.log_mel(0).shape[0] == N_MELS  # the model's own input, not an 80-bin one
    for run in reader.runs():
        attrs = reader.attrs(run)
        assert (attrs["n_layers"], attrs["d_model"], attrs["model"]) == (N_LAYERS, D_MODEL, LARGE_V3)
        assert reader.read(run, "trained", "lens_logits_frames", 0).shape[0] == N_LAYERS + 1
        assert reader.read(run, "trained", "residual_pooled").shape == (n, N_LAYERS + 1, D_MODEL)
        assert attrs["prediction_agreement"]["rate"] == 1.0, attrs["prediction_agreement"]
    lora = reader.attrs("large-v3-lora")
    assert lora["modules"] == ["layer_0.v_proj", "layer_1.v_proj"]
    assert reader.read("large-v3-lora", "trained", "lora_b_pooled").shape == (n, N_LAYERS, D_MODEL)


def test_large_v3_predicts_a_clip(large_runs, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(1.3, 22050, 350.0), 22050)
    capsys.readouterr()
    assert main(["predict", "--run", str(large_runs["lora"]), "--fold", "1", "--json", str(clip)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = json.loads(line)
    assert result["prediction"] in EMOTIONS and len(result["probabilities"]) == N_LAYERS + 1
    assert np.allclose(np.array(result["probabilities"]).sum(-1), 1, atol=1e-4)


def test_explorer_pages_render_on_a_large_v3_store(large_store, monkeypatch):
    monkeypatch.setenv("LORALENS_STORE", large_store)
    at = AppTest.from_file(MAIN, default_timeout=300).run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception and not at.error, (page, [e.value for e in [*at.exception, *at.error]])
        if page.endswith("utterance.py"):
            assert at.slider(key="utt-layer").max == N_LAYERS
            # the log-mel drawn is the model's: an image of all 128 bins, one row each
            (mel, *_) = [c for c in at.get("vega_lite_chart") if "Log-mel" in json.loads(c.proto.spec)["title"]]
            tables = [pa.ipc.open_stream(d.data.data).read_all() for d in mel.proto.datasets]
            (image,) = [t.to_pylist()[0] for t in tables if "url" in t.column_names]
            png = Image.open(io.BytesIO(base64.b64decode(image["url"].split(",", 1)[1])))
            assert image["top"] == N_MELS and png.size[1] == N_MELS
        if page.endswith("upload.py"):
            buffer = io.BytesIO()
            sf.write(buffer, tone(1.2, 16000, 300.0), 16000, format="WAV")
            at.file_uploader(key="up-file").upload("clip.wav", buffer.getvalue(), "audio/wav").run()
            assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
            assert any("predicted" in m.value for m in at.markdown)
