"""Capture overhead: nnsight capture of a batch against a bare batched forward+backward, side by side.

The bare step computes the same loss (cross-entropy on the true labels, summed) and backpropagates it
through the same LoRA model; the capture additionally saves every residual, sublayer output and LoRA A/B
output and gradient and reduces them to the stored arrays. Runs alternate, so both see the same load.

    python bench/capture_overhead.py [--model bundled:base] [--run RUN_DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from loralens.precompute import windowing
from loralens.precompute.audio import load_audio
from loralens.precompute.capture import CaptureOptions, Capturer
from loralens.precompute.checkpoints import attach_lora, load_fold_model
from loralens.precompute.config import TrainConfig
from loralens.precompute.data import load_corpus
from loralens.precompute.models import feature_extractor, load_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:base")
    parser.add_argument("--run", type=Path, default=None, help="use this LoRA run's fold 0 instead of a fresh adapter")
    parser.add_argument("--emodb", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/emodb")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    corpus = load_corpus(f"emodb:{args.emodb}")
    chosen = corpus.utterances[:: max(1, len(corpus.utterances) // args.batch_size)][: args.batch_size]
    if args.run:
        model = load_fold_model(args.run, 0)
    else:
        model = attach_lora(load_classifier(args.model, list(corpus.emotions)), TrainConfig(args.model, "x"))
        with torch.no_grad():  # a trained-looking adapter
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    model.eval()
    extractor = feature_extractor(windowing.whisper_of(model).config)
    features = windowing.extract(extractor, [load_audio(u.path) for u in chosen], "trim")
    labels = torch.tensor([corpus.emotions.index(u.emotion) for u in chosen])
    capturer = Capturer(model, "trim", CaptureOptions())
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    def bare() -> float:
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(windowing.classify(model, features), labels, reduction="sum")
        torch.autograd.grad(loss, lora)
        return time.perf_counter() - started

    def capture() -> float:
        started = time.perf_counter()
        capturer.run(features, labels)
        return time.perf_counter() - started

    bare(), capture()  # warm-up
    times = {"bare": [], "capture": []}
    for _ in range(args.repeats):
        times["bare"].append(bare())
        times["capture"].append(capture())
    b, c = statistics.median(times["bare"]), statistics.median(times["capture"])
    print(f"{args.run or args.model}: batch {args.batch_size} EmoDB clips, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"bare forward+backward: {b * 1000:.0f} ms; capture: {c * 1000:.0f} ms; ratio {c / b:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
