"""Time each analysis on a store, for one layer and for all layers (reads included, cold reader each time).

    python bench/analysis_speed.py STORE [--run NAME]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from app import views
from app.analysis import cka, contributions, lens, projections, spectra
from store.reader import StoreReader


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--run", default=None)
    args = parser.parse_args()
    probe = StoreReader(args.store)
    lora, frozen = next(iter(views.pairs(probe)))
    run = args.run or lora.name
    rows = views.common_rows(probe, run)
    n_frames = probe.utterances()["n_frames"][rows]
    n_layers = lora.n_layers
    layer = n_layers - 1
    fresh = lambda: StoreReader(args.store)  # noqa: E731

    def lens_one():
        r = fresh()
        logits = r.read(run, "trained", "lens_logits", rows, boundary=layer)
        final = r.read(run, "trained", "logits", rows)
        lens.kl_to_final(np.stack([logits, final], 1))

    def lens_all():
        lens.summarise(fresh().read(run, "trained", "lens_logits", rows))

    def contributions_one():
        r = fresh()
        read = lambda name, **ix: r.read(run, "trained", name, rows, **ix)  # noqa: E731
        contributions.contributions(read("attention_norm_ratio", layer=slice(layer, layer + 1)),
                                    read("attention_cosine", layer=slice(layer, layer + 1)),
                                    read("mlp_norm_ratio", layer=slice(layer, layer + 1)),
                                    read("mlp_cosine", layer=slice(layer, layer + 1)),
                                    read("residual", boundary=slice(layer, layer + 2)), n_frames)

    def contributions_all():
        views.contributions_of(fresh(), run, rows)

    def svd(modules):
        r = fresh()
        for quantity in views.LORA_QUANTITIES:
            for checkpoint in ("trained", "random_twin"):
                values = r.read(run, checkpoint, quantity, rows, module=modules)
                values = values[:, None] if values.ndim == 3 else values
                spectra.spectrum([spectra.real_frames(values[:, m], n_frames) for m in range(values.shape[1])])

    def cka_one():
        r = fresh()
        for kind in ("activation", "gradient"):
            a = spectra.real_frames(r.read(run, "trained", f"lora_a_{kind}", rows, module=layer), n_frames)
            b = spectra.real_frames(r.read(run, "trained", f"lora_b_{kind}", rows, module=layer), n_frames)
            cka.linear_cka(a, b)

    def cka_all():
        views.cka_a_vs_b(fresh(), run)

    print(f"{args.store}: run {run}, {len(rows)} utterances, {n_layers} layers; times include reading the store")
    for name, one, everything in (
            ("logit lens", lens_one, lens_all),
            ("contributions", contributions_one, contributions_all),
            ("SVD (4 quantities x trained/random)", lambda: svd(layer), lambda: svd(slice(None))),
            ("CKA A vs B (activations, gradients)", cka_one, cka_all)):
        one_ms, all_ms = timed(one), timed(everything)
        print(f"{name:38s} one layer {one_ms:7.0f} ms | all layers {all_ms:7.0f} ms "
              f"({all_ms / n_layers:5.0f} ms per layer; goal < 200)")
    x, _ = views.vectors(probe, run, "residual", n_layers, rows=rows)
    for method in ("tsne", "umap"):
        first = timed(lambda m=method: projections.project(x, m))
        print(f"{method:38s} first fit {first:7.0f} ms (the app caches it after first use)")


if __name__ == "__main__":
    main()
