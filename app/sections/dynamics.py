"""LoRA dynamics: SVD spectra trained vs random, effective rank, CKA of A vs B, intruder dimensions, residual CKA."""

import dataclasses

import streamlit as st

from loralens.analysis import intruders, views
from loralens.app import cache, charts, state, widgets

view = widgets.view_state()
widgets.present(view)
path = cache.store_path()
if full := [r.name for r in cache.runs(path) if r.method == "full"]:
    st.caption(f"Fully fine-tuned runs ({', '.join(full)}) have no LoRA: these views do not apply to them.")
run = widgets.pick_run(view, method="lora")
sizes = cache.fold_sizes(path, run.name)
left, right = st.columns([1, 2])
folds = [None, *sizes]
fold = left.selectbox(
    "Fold model", folds, index=widgets.index(folds, view.fold), key="dyn-fold",
    format_func=lambda f: f"every fold, averaged ({len(sizes)})" if f is None else f"fold {f} ({sizes[f]} utterances)",
    help="Each utterance was traced by the fold model that held it out; spectra, CKA and the residual heatmaps are "
         "computed within one model (stacking several models' low-rank maps would inflate ranks, and several models' "
         "residuals would measure how the models differ) and averaged over folds.")
threshold = right.slider("Energy threshold of the effective rank", *state.THRESHOLD_RANGE, view.threshold, 0.01,
                         key="dyn-threshold")
view.fold, view.threshold = fold, round(threshold, 2)


@st.cache_data(show_spinner=False, max_entries=32)
def figures(path: str, run_name: str, fold: int | None) -> dict:
    """The page's charts of a run and fold model, built once: a threshold move only moves the spectra's rule."""
    spec = cache.spectra(path, run_name, fold)
    curves = views.spectra_frame(spec)
    ab = views.cka_ab_frame(cache.cka_ab(path, run_name, fold))
    out = {"spectra": (widgets.figure(charts.spectra(curves, state.THRESHOLD_RANGE[0])), curves),
           "ab": (widgets.figure(charts.per_layer(ab, "cka", "Linear CKA between LoRA A and B outputs", [0, 1])), ab)}
    if by := cache.intruders(path, run_name):
        counts, vectors = intruders.counts_at(by, fold=fold), intruders.intruder_frame(by, fold)
        out["intruders"] = (next(iter(by.values())).k, (widgets.figure(charts.intruder_counts(counts)), counts),
                            (widgets.figure(charts.intruder_vectors(vectors, intruders.EPSILONS)), vectors))
    partner = views.frozen_partner(cache.runs(path), next(r for r in cache.runs(path) if r.name == run_name))
    for other, title in [(run_name, "within LoRA"), *([(partner.name, "LoRA vs frozen")] if partner else [])]:
        scope = cache.residual_cka_scope(path, run_name, other, fold)
        try:
            frame = views.heatmap_frame(cache.residual_cka(path, run_name, other, fold))
        except ValueError as e:  # a fold model of fewer utterances than the unbiased estimator takes
            out[title] = str(e)
            continue
        out[title] = (widgets.figure(charts.heatmap(frame, "other", "LoRA", "cka", f"CKA {title} · {scope}", [0, 1])),
                      frame)
    return out


with st.spinner("SVD of every LoRA module ..."):
    spec = {q: {c: s.at(threshold) for c, s in by.items()} for q, by in cache.spectra(path, run.name, fold).items()}
    drawn = figures(path, run.name, fold)
curves, frame = drawn["spectra"]
curves = dataclasses.replace(curves, spec=charts.at_threshold(curves.spec, threshold),
                             wire=charts.at_threshold(curves.wire, threshold))
widgets.chart(curves, frame, f"{run.name}-svd", "dyn-svd")
# A static table (four rows) draws with the page, without the interactive grid's scripts.
st.table(views.rank_table(spec).style.format(precision=2, na_rep="–"), hide_index=True, border="horizontal")
st.caption("Effective rank: the fewest singular directions holding the threshold's share of energy, averaged over "
           "layers. The paper reports 5.5x concentration for A activations, 1.7x for A gradients, 10.4x for B "
           "activations, and more dispersed B gradients.")

st.subheader("A versus B")
widgets.chart(*drawn["ab"], f"{run.name}-cka-ab", "dyn-ab")

st.subheader("Intruder dimensions")
if "intruders" in drawn:
    k, counted, vectors = drawn["intruders"]
    st.caption(f"Of each fold model's adapted matrix W0 + (α/r) B A, the top {k} left singular vectors, from the "
               "weights alone; one is an intruder when its largest |cosine| with any singular vector of the base W0 is "
               "below ε (Shuttleworth et al., LoRA vs full fine-tuning: an illusion of equivalence, 2024). The random "
               "twin's A and B are drawn at random: the intruders an untrained update of its size makes.")
    widgets.chart(*counted, f"{run.name}-intruders", "dyn-intruders")
    widgets.chart(*vectors, f"{run.name}-intruder-vectors", "dyn-intruder-vectors")
else:
    run_dir = cache.reader(path).attrs(run.name).get("run_dir", "RUN_DIR")
    st.info(f"No intruder dimensions are recorded for {run.name}. Compute them from the run's weights with "
            f"`loralens intruders {run_dir} --store {path} --name {run.name}` and reload the page.")

st.subheader("Residual stream, layer x layer")
st.caption("Minibatch linear CKA of the pooled residuals (the unbiased HSIC estimator averaged over minibatches of "
           "256 utterances; Nguyen, Raghu and Kornblith, ICLR 2021): equal to the full-data unbiased CKA below 512 "
           "utterances, and computed in memory that does not grow with the store above. Within each fold model's "
           "utterances and averaged over the models, as the spectra (the frozen encoder is one model in every fold), "
           "or within the fold model picked above.")
titles = [t for t in ("within LoRA", "LoRA vs frozen") if t in drawn]  # the second where the run has a partner
for col, title in zip(st.columns(len(titles)), titles, strict=True):
    with col:
        if isinstance(drawn[title], str):
            st.info(f"CKA {title}: {drawn[title]}. Pick every fold, averaged, or a larger fold model.")
        else:
            widgets.chart(*drawn[title], f"{run.name}-cka-{title}", f"dyn-heat-{title}")
widgets.remember(view)
