"""Train Whisper LoRA emotion adapters on EmoDB the way the paper's own script does: plain transformers + peft.

No loralens code trains here: ``WhisperForAudioClassification.from_pretrained``, ``LoraConfig(r=32, lora_alpha=64,
target_modules=["v_proj"], lora_dropout=0.1, modules_to_save=["projector", "classifier"])``, ``get_peft_model``,
the stock feature extractor (30 s padding), AdamW, and ``save_pretrained`` into Trainer's layout
(``OUT/fold{k}/checkpoint-N/`` with a ``trainer_state.json``): what ``loralens import`` reads. One fold per held-out
speaker given.

    python bench/peft_emodb.py --base BASE_DIR --data ../shared/data/emodb --out OUT [--speakers 03,08] [--epochs 1]

BASE_DIR is a Hugging Face directory (``loralens model export bundled:base --out BASE_DIR`` writes one offline).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from peft import LoraConfig, get_peft_model
from scipy.signal import resample_poly
from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

ID2LABEL = {0: "anger", 1: "happiness", 2: "neutral", 3: "sadness"}  # the paper's
LABEL2ID = {v: k for k, v in ID2LABEL.items()}


def emodb(root: Path) -> list[dict]:
    """EmoDB's 4-class clips: path, label, speaker."""
    with open(root / "labels.csv") as f:
        return [{"path": root / r["path"], "label": LABEL2ID[r["emotion"]], "speaker": r["speaker"]}
                for r in csv.DictReader(f) if r["emotion"] in LABEL2ID]


def audio_16k(path: Path) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    samples = samples.mean(1)
    g = gcd(rate, 16000)
    return resample_poly(samples, 16000 // g, rate // g).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--speakers", default=None, help="held-out speakers, one fold each (default: all, LOSO)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    clips = emodb(args.data)
    speakers = sorted({c["speaker"] for c in clips})
    held = args.speakers.split(",") if args.speakers else speakers
    extractor = WhisperFeatureExtractor.from_pretrained(args.base)
    features = extractor([audio_16k(c["path"]) for c in clips], sampling_rate=16000,
                         return_tensors="pt").input_features  # (n, mels, 3000): the 30 s window
    labels = torch.tensor([c["label"] for c in clips])
    for speaker in held:
        k = speakers.index(speaker)
        torch.manual_seed(args.seed)
        model = WhisperForAudioClassification.from_pretrained(args.base, num_labels=4, id2label=ID2LABEL,
                                                              label2id=LABEL2ID, ignore_mismatched_sizes=True)
        model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=["v_proj"], lora_dropout=0.1,
                                                 bias="none", modules_to_save=["projector", "classifier"]))
        train = [i for i, c in enumerate(clips) if c["speaker"] != speaker]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        generator = torch.Generator().manual_seed(args.seed)
        started, step = time.time(), 0
        model.train()
        for epoch in range(args.epochs):
            order = [train[i] for i in torch.randperm(len(train), generator=generator)]
            for start in range(0, len(order), args.batch_size):
                batch = order[start:start + args.batch_size]
                loss = model(input_features=features[batch], labels=labels[batch]).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                step += 1
            print(f"fold{k + 1} (test {speaker}) epoch {epoch + 1}: loss {loss.item():.3f}, "
                  f"{time.time() - started:.0f} s", flush=True)
        checkpoint = args.out / f"fold{k + 1}" / f"checkpoint-{step}"
        model.save_pretrained(checkpoint)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"epoch": float(args.epochs), "global_step": step}))


if __name__ == "__main__":
    main()
