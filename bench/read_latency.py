"""Store read latency for the explorer's two access patterns, against the same arrays held in memory.

    python bench/read_latency.py STORE [--run NAME] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from loralens.store.reader import StoreReader


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--run", default=None, help="run name (default: the first LoRA run)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    reader = StoreReader(args.store)
    runs = reader.runs()
    run = args.run or next((r for r in runs if reader.attrs(r)["method"] == "lora"), next(iter(runs)))
    rows = np.flatnonzero(reader.written(run, "trained"))
    n_boundaries = reader.attrs(run)["n_layers"] + 1
    rng = np.random.default_rng(0)
    pick_rows = rng.choice(rows, args.repeats)
    pick_layers = rng.integers(0, n_boundaries, args.repeats)
    # What the explorer reads of one utterance (its lens trajectory, per frame, and its contributions) and of one
    # layer (maps, silhouettes, lens statistics)
    per_utterance = ["lens_logits", "lens_logits_frames", "attention_norm_ratio", "mlp_norm_ratio"]
    per_layer = ["residual_pooled", "lens_logits"]

    def utterance_from_store(i):
        return [reader.read(run, "trained", name, int(pick_rows[i])) for name in per_utterance]

    def layer_from_store(i):
        return [reader.read(run, "trained", name, boundary=int(pick_layers[i])) for name in per_layer]

    # The same values in memory, row by row as the store's readers return them
    picked = sorted({int(r) for r in pick_rows})
    memory = {name: dict(zip(picked, reader.read(run, "trained", name, picked), strict=True)) for name in per_utterance}
    memory |= {name: reader.read(run, "trained", name) for name in per_layer}  # every written row, in order

    def utterance_from_memory(i):
        return [memory[name][int(pick_rows[i])] for name in per_utterance]

    def layer_from_memory(i):
        return [np.ascontiguousarray(memory[name][:, int(pick_layers[i])]) for name in per_layer]

    print(f"{args.store}: run {run}, {len(rows)} utterances, {n_boundaries} boundaries, {args.repeats} reads each")
    for label, store_fn, memory_fn in (("one utterance x all layers", utterance_from_store, utterance_from_memory),
                                       ("one layer x all utterances", layer_from_store, layer_from_memory)):
        s_med, s_p95 = timed(store_fn, args.repeats)
        m_med, m_p95 = timed(memory_fn, args.repeats)
        print(f"{label:28s} store median {s_med:6.1f} ms, p95 {s_p95:6.1f} ms | memory median {m_med:6.3f} ms "
              f"| ratio {s_med / max(m_med, 1e-6):.0f}x (goal: store under 50 ms)")


if __name__ == "__main__":
    main()
