"""Time each analysis on a store, for one layer and for all layers (reads included, cold reader each time).

    python bench/analysis_speed.py STORE [--run NAME]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from loralens.analysis import contributions, lens, projections, views
from loralens.store.reader import StoreReader


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
        lens.lens_statistics(fresh().read(run, "trained", "lens_logits", rows))

    def contributions_one():
        r = fresh()
        one = slice(layer, layer + 1)
        contributions.contributions(*(r.read(run, "trained", name, rows, layer=one) for name in contributions.ARRAYS),
                                    n_frames)

    def contributions_all():
        views.contributions_of(fresh(), run, rows)

    sizes = {f: len(g) for f, g in views.fold_groups(probe, run).items()}
    biggest = max(sizes, key=sizes.get)
    print(f"{args.store}: run {run}, {len(rows)} utterances traced by {len(sizes)} fold models, {n_layers} layers; "
          f"times include reading the store (a fresh reader each time)")
    print("SVD and CKA work within each fold model: 'one fold' is the biggest fold's model "
          f"({sizes[biggest]} utterances), 'all folds' averages every fold model")
    last = slice(layer, layer + 1)
    for name, one, everything in (
            ("logit lens", lens_one, lens_all),
            ("contributions", contributions_one, contributions_all),
            ("SVD, one fold (4 quantities x trained/random)",
             lambda: views.spectra_of(fresh(), run, fold=biggest, modules=last),
             lambda: views.spectra_of(fresh(), run, fold=biggest)),
            ("SVD, all folds", lambda: views.spectra_of(fresh(), run, modules=last),
             lambda: views.spectra_of(fresh(), run)),
            ("CKA A vs B, one fold (activations, gradients)",
             lambda: views.cka_a_vs_b(fresh(), run, fold=biggest, modules=last),
             lambda: views.cka_a_vs_b(fresh(), run, fold=biggest)),
            ("CKA A vs B, all folds", lambda: views.cka_a_vs_b(fresh(), run, modules=last),
             lambda: views.cka_a_vs_b(fresh(), run))):
        one_ms, all_ms = timed(one), timed(everything)
        print(f"{name:46s} one layer {one_ms:7.0f} ms | all layers {all_ms:7.0f} ms "
              f"({all_ms / n_layers:5.0f} ms per layer; goal < 200)")
    x, _ = views.vectors(probe, run, "residual", n_layers, rows=rows)
    for method in ("tsne", "umap"):
        first = timed(lambda m=method: projections.project(x, m))
        print(f"{method:38s} first fit {first:7.0f} ms (the app caches it after first use)")


if __name__ == "__main__":
    main()
