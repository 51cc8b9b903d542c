"""Training-step throughput, trim vs full window, measured side by side in one run.

A step is forward + backward + AdamW on a batch of EmoDB clips, LoRA r=32 on v_proj, bundled base by default.
Trim and full steps alternate, so both see the same machine load.

    python bench/window_throughput.py [--model bundled:base] [--emodb ../shared/data/emodb] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from loralens.precompute import windowing
from loralens.precompute.audio import load_audio
from loralens.precompute.checkpoints import attach_lora
from loralens.precompute.config import TrainConfig
from loralens.precompute.data import load_corpus
from loralens.precompute.models import feature_extractor, load_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:base")
    parser.add_argument("--emodb", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/emodb")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    corpus = load_corpus(f"emodb:{args.emodb}")
    clips = [load_audio(u.path) for u in corpus.utterances[: args.batch_size]]
    config = TrainConfig(model=args.model, data=f"emodb:{args.emodb}")
    model = attach_lora(load_classifier(args.model, list(corpus.emotions)), config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    extractor = feature_extractor(windowing.whisper_of(model).config)
    labels = torch.arange(args.batch_size) % len(corpus.emotions)

    def step(window: windowing.Window) -> float:
        started = time.perf_counter()
        features = windowing.extract(extractor, clips, window)
        loss = torch.nn.functional.cross_entropy(windowing.classify(model, features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    step("trim"), step("full")  # warm-up
    times: dict[str, list[float]] = {"trim": [], "full": []}
    for _ in range(args.repeats):
        for window in ("trim", "full"):
            times[window].append(step(window))
    trim, full = (statistics.median(times[w]) for w in ("trim", "full"))
    print(f"model {args.model}, batch {args.batch_size} EmoDB clips ({len(clips[0]) / 16000:.1f} s), "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"trim: {trim:.3f} s/step ({args.batch_size / trim:.1f} clips/s)")
    print(f"full: {full:.3f} s/step ({args.batch_size / full:.1f} clips/s)")
    print(f"trim is {full / trim:.1f}x faster than full")


if __name__ == "__main__":
    main()
