"""Integration: bundled tiny.en (real converted weights) trained on real EmoDB speech, end to end via the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch
from transformers import WhisperForAudioClassification

from loralens.cli import main
from loralens.precompute import windowing
from loralens.precompute.audio import load_audio
from loralens.precompute.checkpoints import load_fold_model
from loralens.precompute.models import feature_extractor


def _few_clips(emodb, tmp_path, per_cell: int = 2):
    """A CSV over real EmoDB files (read in place): 3 speakers x 4 emotions x per_cell clips."""
    rows = list(csv.DictReader(open(emodb / "labels.csv")))
    keep, count = [], {}
    for r in rows:
        key = (r["speaker"], r["emotion"])
        if r["speaker"] in ("03", "08", "09") and r["emotion"] in ("anger", "happiness", "neutral", "sadness"):
            if count.get(key, 0) < per_cell:
                count[key] = count.get(key, 0) + 1
                keep.append(f"{emodb / r['path']},{r['emotion']},{r['speaker']}")
    manifest = tmp_path / "few.csv"
    manifest.write_text("path,emotion,speaker\n" + "\n".join(keep) + "\n")
    return manifest


def test_train_tiny_en_on_real_emodb(emodb, tmp_path):
    manifest = _few_clips(emodb, tmp_path)
    run = tmp_path / "run"
    code = main(["train", "--model", "bundled:tiny.en", "--data", f"csv:{manifest}", "--method", "lora",
                 "--epochs", "1", "--rank", "8", "--alpha", "16", "--out", str(run), "--only-folds", "0"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "bundled:tiny.en" and config["window"] == "trim" and config["targets"] == ["v_proj"]
    assert "torch" in config["versions"]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["n_folds"] == 3 and summary["n_done"] == 1
    metrics = json.loads((run / "fold_00" / "metrics.json").read_text())
    assert metrics["n_test"] == 8 and np.array(metrics["confusion"]).sum() == 8
    assert np.isfinite(metrics["loss_curve"][0])
    # The trained adapter changed the encoder: trained and random twin predict differently from zero-LoRA.
    model = load_fold_model(run, 0)
    adapter = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(adapter) == 4 and all(p.abs().sum() > 0 for p in adapter)
    clip = load_audio(next(iter(open(manifest).readlines()[1:])).split(",")[0])
    features = windowing.extract(feature_extractor(windowing.whisper_of(model).config), [clip], "trim")
    with torch.no_grad():
        trained = windowing.classify(model, features)
        with model.disable_adapter():
            without = windowing.classify(model, features)
    assert not torch.allclose(trained, without)


def test_model_export_cli(tmp_path):
    out = tmp_path / "export"
    assert main(["model", "export", "bundled:tiny.en", "--out", str(out)]) == 0
    model = WhisperForAudioClassification.from_pretrained(out)
    assert model.config.d_model == 384 and model.config.encoder_layers == 4
    assert model.config.id2label[0] == "anger"
