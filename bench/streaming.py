"""Streaming analyses against in-memory ones on a store: SVD spectra, CKA(A, B), minibatch residual CKA.

    python bench/streaming.py STORE [--batch 32]

For each LoRA run with a current summary: the largest relative difference between the summary's singular values
(by how small a share of the largest they are: see ``BANDS``), cumulative-energy curves, effective ranks and CKA(A, B)
(streamed from d x d sums over chunks of frames) and the same computed from all frames in memory;
and the largest absolute difference between the minibatch residual CKA (``--batch`` utterances per minibatch,
small enough here to make several) and the full-data unbiased CKA, layer x layer, within the run and against its
frozen partner. Also the time each took.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from loralens.analysis import cka, views
from loralens.store.reader import StoreReader

BANDS = (1e-2, 1e-4, 1e-5, 1e-6)
"""Singular values compared down to these fractions of the largest. Both sides solve a float64 Gram matrix (summed
over chunks, or in one product), whose rounding moves a singular value s by about eps (s_max / s)^2 relatively: 1e-8
at s = 1e-4 s_max, 1e-4 at 1e-6 s_max, where a direction holds 1e-12 of the energy."""


def _worst_relative(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(np.abs(b), 1e-12 * max(float(np.abs(b).max()), 1e-300))
    return float(np.max(np.abs(a - b) / scale)) if a.size else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    reader = StoreReader(args.store)
    for lora, frozen in views.pairs(reader):
        s = reader.summary(lora.name)
        if s is None:
            print(f"{lora.name}: no current summary; run loralens summarise {args.store}")
            continue
        rows = s["rows"].tolist()
        started = time.perf_counter()
        streamed = views.spectra_of(reader, lora.name)
        t_stream = time.perf_counter() - started
        groups = views.fold_groups(reader, lora.name, rows)
        started = time.perf_counter()
        worst = dict.fromkeys(BANDS, 0.0)
        curves = ranks = 0.0
        from loralens.analysis import spectra

        for quantity, by in streamed.items():
            for checkpoint, spectrum in by.items():
                kept = views.sampled_groups(reader, lora.name, checkpoint, groups)
                memory = spectra.spectrum(views.lora_matrices(reader, lora.name, checkpoint, quantity, kept))
                for got, want in zip(spectrum.singular, memory.singular, strict=True):
                    for x, y in zip(got, want, strict=True):
                        for band in BANDS:
                            keep = y > band * y.max()
                            worst[band] = max(worst[band], _worst_relative(x[keep], y[keep]))
                curves = max(curves, float(np.abs(spectrum.curves - memory.curves).max()))
                ranks = max(ranks, max(float(np.abs(spectrum.at(t).ranks - memory.at(t).ranks).max())
                                       for t in (0.5, 0.8, 0.9, 0.95, 0.99)))
        t_memory = time.perf_counter() - started
        print(f"{lora.name}: singular values, summary vs in memory: max relative difference "
              + ", ".join(f"{worst[b]:.1e} (s > {b:g} s_max)" for b in BANDS)
              + f"; cumulative-energy curves max |difference| {curves:.1e}; effective ranks at 0.5-0.99 max "
              f"|difference| {ranks:g} (read from the summary {t_stream:.2f} s; in memory {t_memory:.1f} s)")
        ab = views.cka_a_vs_b(reader, lora.name)
        started = time.perf_counter()
        memory_ab = {}
        for kind in ab:
            kept = views.sampled_groups(reader, lora.name, "trained", groups)
            a = views.lora_matrices(reader, lora.name, "trained", f"lora_a_{kind}", kept)
            b = views.lora_matrices(reader, lora.name, "trained", f"lora_b_{kind}", kept)
            memory_ab[kind] = np.array([np.mean([cka.linear_cka(x, y) for x, y in zip(xs, ys, strict=True)])
                                        for xs, ys in zip(a, b, strict=True)])
        print(f"{lora.name}: CKA(A, B), summary vs in memory: max relative difference "
              f"{max(_worst_relative(ab[k], memory_ab[k]) for k in ab):.2e} ({time.perf_counter() - started:.1f} s)")
        for other in [lora.name] + ([frozen.name] if frozen else []):
            both = views.common_rows(reader, lora.name, other)
            batches = cka.minibatches(len(both), args.batch)
            n_a = reader.array(lora.name, "trained", "residual_pooled").shape[1]
            n_b = reader.array(other, "trained", "residual_pooled").shape[1]
            xa = [reader.read(lora.name, "trained", "residual_pooled", both, boundary=j) for j in range(n_a)]
            xb = [reader.read(other, "trained", "residual_pooled", both, boundary=j) for j in range(n_b)]
            mini = cka.minibatch_heatmap([cka.minibatch_grams(x, batches) for x in xa],
                                         [cka.minibatch_grams(x, batches) for x in xb])
            full = np.array([[cka.linear_cka(x, y, debiased=True) for y in xb] for x in xa])
            stored = views.residual_cka(reader, lora.name, other)
            print(f"{lora.name} x {other}: minibatch CKA ({len(batches)} batches of ~{args.batch}) vs full-data "
                  f"unbiased CKA over {len(both)} utterances: max |difference| {np.max(np.abs(mini - full)):.4f}, "
                  f"mean {np.mean(np.abs(mini - full)):.4f}; the summary's (batches of {cka.MINIBATCH}) vs full "
                  f"{np.max(np.abs(stored - full)):.2e}")


if __name__ == "__main__":
    main()
