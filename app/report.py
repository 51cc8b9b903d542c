"""``loralens report``: every figure of the paper from a store, and the paper's findings checked with numbers."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePath

import altair as alt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from loralens.analysis import causal, intruders, projections, seeds, spectra, views
from loralens.analysis import contributions as contrib_analysis
from loralens.analysis import lens as lens_analysis
from loralens.analysis.counterfactuals import AUDIO_KINDS, CHANGES
from loralens.app import charts
from loralens.store.reader import StoreReader
from loralens.store.schema import UserError

log = logging.getLogger(__name__)

PAPER = {"lora_a_activation": 5.5, "lora_a_gradient": 1.7, "lora_b_activation": 10.4}
"""Concentration ratios (random / trained effective rank at 90 %) reported by the paper on IEMOCAP."""
CHECKPOINT_LABELS = {"trained": "trained", "random_twin": "random twin"}
"""Checkpoint names as the report's tables write them."""


def _last_third(n: int) -> slice:
    return slice(n - max(1, n // 3), n)


@dataclass
class RunAnalysis:
    """Everything the report says about one LoRA run, computed over one set of utterances."""

    lora: views.RunInfo
    frozen: views.RunInfo | None
    rows: list[int]
    """The utterances every number is computed over: those both the LoRA and the frozen run traced (or the LoRA
    run alone, without a frozen partner). Lens, contributions, spectra, CKA and silhouettes all use these."""
    lens: lens_analysis.LensSummary
    frozen_lens: lens_analysis.LensSummary | None
    contributions: contrib_analysis.Contributions
    frozen_contributions: contrib_analysis.Contributions | None
    spectra: dict[str, dict[str, spectra.Spectrum]]
    """Quantity -> checkpoint -> spectrum, within each fold model."""
    cka_ab: dict[str, np.ndarray]
    """``activation``, ``gradient`` -> CKA(A, B) per module."""

    @property
    def diff(self) -> contrib_analysis.Contributions | None:
        """LoRA minus frozen contributions (None without a frozen partner)."""
        return self.contributions.minus(self.frozen_contributions) if self.frozen_contributions else None

    @property
    def ratios(self) -> dict[str, float]:
        """Quantity -> concentration ratio (random / trained effective rank)."""
        return views.concentration(self.spectra)


def analyse(reader: StoreReader, lora: views.RunInfo, frozen: views.RunInfo | None,
            threshold: float = 0.9, fold: int | None = None) -> RunAnalysis:
    """The report's numbers for one LoRA run and its frozen partner, over the utterances both traced.

    ``fold``: only the utterances that fold model of the LoRA run traced (and held out), each number within it.

    Raises:
        ValueError: ``fold`` traced none of the utterances.
    """
    scope = views.common_rows(reader, lora.name, *([frozen.name] if frozen else []))
    rows = scope if fold is None else views.fold_groups(reader, lora.name, scope, fold=fold)[fold]
    return RunAnalysis(
        lora, frozen, rows,
        views.lens_of(reader, lora.name, rows), views.lens_of(reader, frozen.name, rows) if frozen else None,
        views.contributions_of(reader, lora.name, rows),
        views.contributions_of(reader, frozen.name, rows) if frozen else None,
        views.spectra_of(reader, lora.name, threshold, fold=fold, rows=scope),
        views.cka_a_vs_b(reader, lora.name, fold=fold, rows=scope))


def findings(a: RunAnalysis) -> list[dict]:
    """The paper's four findings, each with whether ``a`` shows it, the numbers, and the criterion applied.

    Each: ``finding``, ``holds``, ``evidence`` (the numbers in words), ``criterion``, and ``statistics`` (name ->
    the number the criterion reads, NaN where it could not be computed): the values ``analysis.seeds`` aggregates
    over runs that differ only in seed.
    """
    out = []
    n_layers = a.lora.n_layers
    lens_, frozen_lens, contrib, diff, ratios, cka_ab = (a.lens, a.frozen_lens, a.contributions, a.diff, a.ratios,
                                                         a.cka_ab)
    depth = float(lens_.resolution_depth.mean())
    mid = n_layers // 2
    overlap = float(lens_.overlap[mid])
    holds = depth >= n_layers / 2 and overlap < 0.75
    text = (f"mean resolution depth {depth:.2f} of {n_layers} layers; top-1 overlap with the final prediction "
            f"{overlap:.2f} at boundary {mid}, {lens_.kl_label} there {lens_.kl[mid]:.3f}")
    if frozen_lens is not None:
        frozen_depth = float(frozen_lens.resolution_depth.mean())
        text += f" (frozen: depth {frozen_depth:.2f}, overlap {frozen_lens.overlap[mid]:.2f})"
    out.append({"finding": "delayed specialization", "holds": bool(holds), "evidence": text,
                "criterion": "the LoRA model's top-1 class settles in the second half of the layers "
                             "(mean resolution depth >= L/2) and agrees with the final one for fewer "
                             "than 75% of utterances at the middle boundary",
                "statistics": {"mean resolution depth": depth, "top-1 overlap at the middle boundary": overlap}})
    late = _last_third(n_layers)
    if diff is not None:
        growth = float(diff.block[late].mean())
        cosine = float(contrib.block_cosine[late].mean())
        out.append({
            "finding": "late-layer contribution growth with negative cosine",
            "holds": bool(growth > 0 and cosine < 0),
            "evidence": f"last-third layers: LoRA minus frozen relative contribution {growth:+.3f} "
                        f"(attention {float(diff.attention[late].mean()):+.3f}, "
                        f"MLP {float(diff.mlp[late].mean()):+.3f}); "
                        f"LoRA cosine of the layer update with the residual {cosine:+.3f} "
                        f"(difference to frozen {float(diff.block_cosine[late].mean()):+.3f})",
            "criterion": "in the last third of layers LoRA writes more into the residual than the frozen "
                         "encoder (||a+m||/||h|| larger) and its update points against the residual (cosine < 0)",
            "statistics": {"LoRA minus frozen contribution, last third": growth,
                           "cosine with the residual, last third": cosine}})
    if ratios:
        nan = float("nan")
        ra, rb = ratios.get("lora_a_activation", nan), ratios.get("lora_b_activation", nan)
        out.append({
            "finding": "A compression and B reconstruction",
            "holds": bool(ra >= 2 and rb >= 2),
            "evidence": f"concentration (random / trained effective rank at 90%): A activations {ra:.2f}x "
                        f"(paper 5.5x), B activations {rb:.2f}x (paper 10.4x); A gradients "
                        f"{ratios.get('lora_a_gradient', nan):.2f}x (paper 1.7x), B gradients "
                        f"{ratios.get('lora_b_gradient', nan):.2f}x (paper: more dispersed)",
            "criterion": "trained A and B outputs need at most half the directions of the random twin's "
                         "(concentration ratio >= 2 for both)",
            "statistics": {"A activation concentration": float(ra), "B activation concentration": float(rb)}})
    if cka_ab:
        act = float(np.mean(cka_ab.get("activation", [np.nan])))
        grad = float(np.mean(cka_ab.get("gradient", [np.nan])))
        out.append({
            "finding": "forward alignment and backward differentiation",
            "holds": bool(act > grad),
            "evidence": f"mean linear CKA(A, B) over layers: activations {act:.3f}, gradients {grad:.3f}",
            "criterion": "A and B outputs are more similar in the forward pass than their gradients are",
            "statistics": {"CKA(A, B) of activations minus gradients": act - grad,
                           "CKA(A, B) of activations": act, "CKA(A, B) of gradients": grad}})
    return out


def build(store: str | list[str], out: Path, threshold: float = 0.9, storage_options: dict | None = None) -> dict:
    """Write every figure (PNG and SVG), ``summary.json`` and ``summary.md`` for the LoRA runs of one or more stores.

    One store: its figures and summary in ``out``. Several: each store's in ``out/<label>`` (its directory's name),
    and ``out/summary.{json,md}`` list them. Either way the summary's ``seeds`` section takes each configuration
    with runs that differ only in seed (in one store or several; ``analysis.seeds``): every finding per seed, its
    statistics' mean with a 95 % t interval over seeds and their spread over fold models, "holds in k of n seeds",
    and UAR/WAR of LoRA and frozen with the paired per-fold difference, and each seed's mean intruder count per
    module. Each A-frozen configuration (``--freeze-a``) is set against the ordinary one that differs from it in that
    alone, where there is one (``a_frozen``: ``seeds.a_frozen_against_a_trained``). Each LoRA run's section
    tabulates its intruder dimensions per layer, trained vs random twin, at the LoRA dynamics page's thresholds
    (``analysis.intruders.EPSILONS``), or names the ``loralens intruders`` command that records them.

    Raises:
        UserError: no store, a store given twice, or a store without a LoRA run.
    """
    stores = [store] if isinstance(store, str) else list(store)
    if not stores or len(set(stores)) < len(stores):
        raise UserError(f"stores {stores}: expected one or more distinct stores (loralens report --store A "
                        "[--store B ...])")
    readers = [StoreReader(s, storage_options) for s in stores]
    found = [seeds.members(r) for r in readers]
    lora = [g for g in seeds.configurations([m for f in found for m in f]) if g[0].info.method == "lora"]
    groups = [g for g in lora if len(g) > 1]
    repeated = {(m.store, m.info.name) for g in groups for m in g}
    out.mkdir(parents=True, exist_ok=True)
    if len(stores) == 1:
        summary = _store_report(readers[0], found[0], out, threshold, repeated)
        per_store = {readers[0].path: summary}
    else:
        summary, per_store = {"stores": {}, "threshold": threshold}, {}
        for reader, mine, label in zip(readers, found, _labels(stores), strict=True):
            sub = _store_report(reader, mine, out / label, threshold, repeated)
            (out / label / "summary.json").write_text(json.dumps(sub, indent=2) + "\n")
            (out / label / "summary.md").write_text(_markdown(sub))
            per_store[reader.path] = sub
            summary["stores"][label] = {"store": reader.path, "report": f"{label}/summary.md",
                                        "runs": list(sub["runs"])}
    summary["seeds"] = [_over_seeds(g, per_store) for g in groups]
    summary["a_frozen"] = [_a_frozen(*pair, per_store) for pair in seeds.a_frozen_partners(lora)]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(_markdown(summary) if len(stores) == 1 else _stores_markdown(summary))
    return summary


def _labels(stores: list[str]) -> list[str]:
    """A directory name per store: its own name without ``.zarr``, numbered where two share one."""
    names = [PurePath(s.rstrip("/")).name.removesuffix(".zarr") or "store" for s in stores]
    return [f"{n}-{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _over_seeds(group: list[seeds.Member], per_store: dict[str, dict]) -> dict:
    """The summary's entry for one configuration's seeds (see ``build``)."""
    runs = [per_store[m.store]["runs"][m.info.name] for m in group]
    known = [m.seed for m in group if m.seed is not None]
    if len(set(known)) < len(known):
        log.warning("%s: several runs of one seed (%s): they are replicates, not different seeds",
                    seeds.describe(group[0]), ", ".join(f"{m.store}:{m.info.name} seed {m.seed}" for m in group))
    paper = seeds.findings(group, [r["findings"] for r in runs],
                           [{int(k): v for k, v in r["fold_findings"].items()} if r.get("fold_findings") else None
                            for r in runs])
    causal_ = seeds.findings(group, [r["causal"]["findings"] if r.get("causal") else [] for r in runs],
                             [None] * len(group), kind="causal")
    return {"configuration": seeds.describe(group[0]), "settings": json.loads(group[0].configuration),
            "members": [{"store": m.store, "run": m.info.name, "seed": m.seed,
                         "frozen": m.frozen.name if m.frozen else None} for m in group],
            "findings": paper + causal_, "metrics": seeds.metrics(group), "paired_test": seeds.PAIRED_TEST,
            "intruders": _intruders_over_seeds([r.get("intruders") for r in runs])}


def _a_frozen(a_frozen: list[seeds.Member], a_trained: list[seeds.Member], per_store: dict[str, dict]) -> dict:
    """The summary's entry for an A-frozen configuration set against its ordinary partner (see ``build``)."""
    found = [seeds.findings(g, [per_store[m.store]["runs"][m.info.name]["findings"] for m in g], [None] * len(g))
             for g in (a_frozen, a_trained)]
    runs = lambda g: [{"store": m.store, "run": m.info.name, "seed": m.seed} for m in g]  # noqa: E731
    return {"a_frozen": seeds.describe(a_frozen[0]), "a_trained": seeds.describe(a_trained[0]),
            "a_frozen_runs": runs(a_frozen), "a_trained_runs": runs(a_trained),
            **seeds.a_frozen_against_a_trained(a_frozen, a_trained, *found)}


def _intruders_over_seeds(tables: list[dict | None]) -> dict | None:
    """Each checkpoint's mean intruder count per module at each threshold, over seeds (None where no seed has them).

    ``tables``: per member, its run's ``intruders`` entry; a member without one counts as a missing value.
    """
    known = [t for t in tables if t]
    if not known:
        return None
    epsilons, checkpoints = known[0]["epsilons"], known[0]["checkpoints"]
    return {"epsilons": epsilons, "n_seeds": len(known),
            "mean_count": {c: [seeds.over_seeds([t["mean_count"][c][i] if t else np.nan for t in tables])
                               for i in range(len(epsilons))] for c in checkpoints}}


def _store_report(reader: StoreReader, members: list[seeds.Member], out: Path, threshold: float,
                  repeated: set[tuple[str, str]]) -> dict:
    """One store's figures in ``out`` and its summary; runs in ``repeated`` get their findings per fold model too."""
    store = reader.path
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"store": store, "threshold": threshold, "runs": {}}
    pairs = [(m.info, m.frozen) for m in members if m.info.method == "lora"]
    seed_of = {m.info.name: m for m in members}
    summary["not_lora"] = [r.name for r in views.run_info(reader) if r.method == "full"]
    if not pairs:
        raise UserError(f"{store}: no LoRA run to report on; trace one with loralens trace")
    for lora_run, frozen_run in tqdm(pairs, desc="report", unit="run"):
        a = analyse(reader, lora_run, frozen_run, threshold)
        name, rows, n_layers = lora_run.name, a.rows, lora_run.n_layers
        lenses = {"LoRA": a.lens} | ({"frozen": a.frozen_lens} if a.frozen_lens else {})
        charts.save(charts.lens_curves(views.lens_frame(lenses), f"Logit lens: {name}"), out, f"{name}-lens")
        charts.save(charts.contributions(views.contribution_frame(a.contributions, "LoRA", a.frozen_contributions),
                                         f"Layer contributions: {name}"), out, f"{name}-contributions")
        charts.save(charts.spectra(views.spectra_frame(a.spectra), threshold, f"SVD spectra: {name}"), out,
                    f"{name}-svd")
        charts.save(charts.per_layer(views.cka_ab_frame(a.cka_ab), "cka", f"CKA(A, B) per layer: {name}", [0, 1]),
                    out, f"{name}-cka-ab")
        others = {"within": name} | ({"vs_frozen": frozen_run.name} if frozen_run else {})
        residual_cka: dict[str, dict] = {}
        for key, other in others.items():
            scope = views.residual_cka_scope(views.residual_cka_groups(reader, name, other, rows))
            try:
                matrix = views.residual_cka(reader, name, other, rows)
            except ValueError as e:  # no fold model traced enough of the utterances: refused, not stacked
                log.warning("%s: residual CKA (%s) not drawn: %s", name, key, e)
                residual_cka[key] = {"scope": scope, "figure": None, "refused": str(e)}
                continue
            residual_cka[key] = {"scope": scope, "figure": f"{name}-cka-{key}"}
            charts.save(charts.heatmap(views.heatmap_frame(matrix), "other", "LoRA", "cka",
                                       f"Residual CKA ({key}, {scope}): {name}", [0, 1]), out, f"{name}-cka-{key}")

        sil = {"LoRA": views.silhouettes(reader, name, rows)}
        if frozen_run:
            sil["frozen"] = views.silhouettes(reader, frozen_run.name, rows)
        sil_rows = [{"layer": i, "silhouette": float(v), "series": k} for k, vals in sil.items()
                    for i, v in enumerate(vals)]
        charts.save(charts.per_layer(pd.DataFrame(sil_rows), "silhouette", f"Emotion silhouette: {name}"), out,
                    f"{name}-silhouette")
        table = reader.utterances()
        mapped = 0
        for method in ("tsne", "umap"):
            coordinates, map_rows, _ = views.map_of(reader, name, "residual", n_layers, method)
            mapped = max(mapped, len(map_rows))
            df = pd.DataFrame({"x": coordinates[:, 0], "y": coordinates[:, 1],
                               "emotion": table["emotion"][map_rows], "id": table["id"][map_rows]})
            charts.save(charts.scatter(df, title=f"{projections.NAMES[method]} of the last layer: {name}"), out,
                        f"{name}-{method}")

        diff = a.diff
        by = intruders.intruders_of(reader, name)
        summary["runs"][name] = {
            "frozen": frozen_run.name if frozen_run else None, "n_utterances": len(rows), "n_layers": n_layers,
            "utterance_sets": {"paired": len(rows), "maps": mapped,
                               "per_frame": int(reader.sampled(name, "trained")[rows].sum()) if rows else 0},
            "origin": {r.name: r.origin for r in (lora_run, frozen_run) if r is not None},
            "held_out": all(r.held_out for r in (lora_run, frozen_run) if r is not None),
            "metrics": {k: lora_run.metrics.get(k) for k in ("uar", "war")},
            "frozen_metrics": {k: frozen_run.metrics.get(k) for k in ("uar", "war")} if frozen_run else None,
            "lens": {"kl_direction": a.lens.direction, "kl_label": a.lens.kl_label,
                     "kl": a.lens.kl.tolist(), "overlap": a.lens.overlap.tolist(),
                     "resolution_depth_mean": float(a.lens.resolution_depth.mean()),
                     "frozen_kl": a.frozen_lens.kl.tolist() if a.frozen_lens else None,
                     "frozen_overlap": a.frozen_lens.overlap.tolist() if a.frozen_lens else None},
            "contributions": {f: getattr(a.contributions, f).tolist() for f in a.contributions.__dataclass_fields__},
            "contributions_minus_frozen": ({f: getattr(diff, f).tolist() for f in diff.__dataclass_fields__}
                                           if diff else None),
            "fold_models": {str(f): len(r) for f, r in views.fold_groups(reader, name, rows).items()},
            "effective_rank": {q: {c: {"per_layer": s.ranks.tolist(), "mean": s.mean_rank}
                                   for c, s in by.items()} for q, by in a.spectra.items()},
            "concentration_ratio": a.ratios,
            "cka_a_vs_b": {k: v.tolist() for k, v in a.cka_ab.items()},
            "residual_cka": residual_cka,
            "silhouette": {k: v.tolist() for k, v in sil.items()},
            "seed": seed_of[name].seed, "configuration": json.loads(seed_of[name].configuration),
            "fold_metrics": {key: {str(f): v for f, v in seeds.fold_values(lora_run.metrics, key).items()}
                             for key in ("uar", "war")},
            "findings": findings(a),
            "fold_findings": ({str(f): findings(analyse(reader, lora_run, frozen_run, threshold, fold=f))
                               for f in views.fold_groups(reader, name, rows)}
                              if (store, name) in repeated and rows else None),
            "causal": _causal(reader, lora_run, frozen_run, out),
            "intruders": intruders.by_threshold(by, intruders.EPSILONS) if by else None,
            "intruders_command": f"loralens intruders {reader.attrs(name).get('run_dir', 'RUN')} --store {store} "
                                 f"--name {name}",
        }
    summary["rank_comparisons"] = _rank_comparisons(reader, out)
    return summary


def _causal(reader: StoreReader, lora: views.RunInfo, frozen: views.RunInfo | None, out: Path) -> dict | None:
    """The causal lens's section: its findings and figures, where ``loralens intervene`` ran on the LoRA run."""
    mine = views.causal_of(reader, lora.name)
    if mine is None:
        return None
    theirs = views.causal_of(reader, frozen.name) if frozen else None
    if theirs is not None and theirs.partner != lora.name:  # the frozen run's patches came from another LoRA run
        theirs.metrics = theirs.metrics[theirs.metrics["kind"] != "patch"]
    runs = {lora.name: mine.metrics} | ({frozen.name: theirs.metrics} if theirs is not None else {})
    figures = []
    grids = [charts.interventions(m[m["layer"] >= 0].assign(kind=m["kind"].map(causal.KIND_LABELS)), "uar_drop",
                                  f"UAR drop: {name}", order=list(causal.KIND_LABELS.values()), clickable=False)
             for name, m in runs.items() if (m["layer"] >= 0).any()]
    if grids:
        charts.save(alt.hconcat(*grids).resolve_scale(color="shared"), out, f"{lora.name}-causal")
        figures.append(f"{lora.name}-causal")
    audio = pd.concat([m[m["kind"].isin(AUDIO_KINDS)].assign(run=name) for name, m in runs.items()],
                      ignore_index=True)
    if len(audio):
        audio["label"] = [f"{CHANGES[k].label} ({CHANGES[k].unit})" for k in audio["kind"]]
        charts.save(charts.audio_changes(audio, "uar_drop", f"UAR drop per audio change: {lora.name}"), out,
                    f"{lora.name}-audio")
        figures.append(f"{lora.name}-audio")
    return {"n_utterances": len(mine.predictions), "partner": mine.partner, "figures": figures,
            "findings": causal.findings(mine.metrics, theirs.metrics if theirs is not None else None, lora.n_layers),
            "conditions": {name: m.drop(columns=["strength"]).to_dict(orient="records") for name, m in runs.items()}}


def _rank_comparisons(reader: StoreReader, out: Path) -> list[dict]:
    """The paper's t-SNE of LoRA A activations across ranks, for each set of runs that differ only in rank.

    Each rank's map is fitted on its own run, over the utterances all of them traced, at the last LoRA module.
    """
    runs = views.run_info(reader)
    seen, comparisons = set(), []
    for run in runs:
        series = views.rank_series(runs, run) if run.method == "lora" else []
        names = tuple(r.name for r in series)
        if len(series) < 2 or names in seen:
            continue
        seen.add(names)
        rows = views.common_rows(reader, *names)
        utterances = reader.utterances()
        emotions, ids = utterances["emotion"][rows], utterances["id"][rows]
        module = run.n_layers * len(run.targets) - 1
        maps, silhouettes, on_map = [], {}, {}
        for r in series:
            x, _ = views.vectors(reader, r.name, "lora_a", module, rows=rows)
            coordinates = projections.project(x, "tsne").coordinates
            # in the A activation space itself: the 2-D map's value moves with t-SNE's seed and perplexity
            silhouettes[r.rank] = projections.silhouette(x, emotions)
            on_map[r.rank] = projections.silhouette(coordinates, emotions)
            df = pd.DataFrame({"x": coordinates[:, 0], "y": coordinates[:, 1], "emotion": emotions, "id": ids})
            maps.append(charts.scatter(df, title=f"r = {r.rank} · silhouette {silhouettes[r.rank]:.3f} "
                                                 f"(on the map {on_map[r.rank]:.3f})"))
        figure = "ranks-" + "-".join(names)
        charts.save(alt.hconcat(*maps, title=f"t-SNE of LoRA A activations, module {module}, by rank: "
                                             f"{run.model}, {run.window}, {','.join(run.targets)}"), out, figure)
        comparisons.append({"runs": list(names), "model": run.model, "window": run.window, "targets": run.targets,
                            "module": module, "n_utterances": len(rows), "figure": figure,
                            "silhouette": {str(k): v for k, v in silhouettes.items()},
                            "silhouette_on_map": {str(k): v for k, v in on_map.items()}})
    return comparisons


def _markdown(summary: dict) -> str:
    lines = [f"# loralens report: {summary['store']}", ""]
    if summary.get("not_lora"):
        lines += [f"Fully fine-tuned runs ({', '.join(summary['not_lora'])}) have no LoRA: the paper's findings below "
                  "do not apply to them.", ""]
    for name, run in summary["runs"].items():
        sets = run["utterance_sets"]
        both = "traced by both the LoRA and the frozen run" if run["frozen"] else "the run traced"
        lines += [f"## {name}", "", f"{run['n_layers']} layers; compared with {run['frozen'] or 'no frozen run'}. "
                  f"Logit lens, contributions, residual CKA and silhouettes: the {sets['paired']} utterances "
                  f"{both}. SVD spectra and CKA(A, B): the {sets['per_frame']} of them whose per-frame arrays were "
                  f"kept. t-SNE and UMAP maps: the {sets['maps']} utterances the LoRA run traced (its summary's "
                  "maps). Logit-lens KL: "
                  f"{run['lens']['kl_label']}, the final prediction's distribution against each layer's.", ""]
        if not run["held_out"]:
            lines += ["**Not held out**: " + ", ".join(n for n, o in run["origin"].items() if "not held out" in o)
                      + " was imported as one model that may have trained on any of these utterances "
                      "(loralens import --not-held-out); its scores and findings describe data it may have seen.", ""]
        m, f = run["metrics"], run["frozen_metrics"]
        if m.get("uar"):
            lines.append(f"Cross-validated UAR: LoRA {m['uar']['mean']:.3f} ± {m['uar']['std']:.3f}"
                         + (f", frozen {f['uar']['mean']:.3f} ± {f['uar']['std']:.3f}" if f and f.get("uar") else ""))
            lines.append("")
        lines += [f"SVD spectra, CKA(A, B) and residual CKA are computed within each fold model "
                  f"({len(run['fold_models'])} traced these utterances) and averaged over them (residual CKA leaves "
                  "out fold models too small for its unbiased estimator; each heatmap's title says what it "
                  "averages).", ""]
        for key, heat in run["residual_cka"].items():
            if heat["figure"] is None:
                lines += [f"Residual CKA ({key}) is not drawn: {heat['refused']}.", ""]
        lines += ["| finding of the paper | holds here | evidence |", "| --- | --- | --- |"]
        for item in run["findings"]:
            lines.append(f"| {item['finding']} | {'yes' if item['holds'] else 'no'} | {item['evidence']} |")
        lines += ["", "Criteria: " + "; ".join(f"*{i['finding']}*: {i['criterion']}" for i in run["findings"]),
                  "", f"Figures: `{name}-lens`, `{name}-contributions`, `{name}-svd`, `{name}-cka-ab`, "
                  + "".join(f"`{h['figure']}`, " for h in run["residual_cka"].values() if h["figure"])
                  + f"`{name}-silhouette`, `{name}-tsne`, `{name}-umap` (PNG and SVG).", ""]
        lines += _intruders_markdown(name, run)
        if c := run.get("causal"):
            lines += ["### Causal lens", "", f"Interventions (`loralens intervene`) on the {c['n_utterances']} "
                      "utterances the LoRA run traced, each through the fold model that held it out"
                      + (f"; patched from {c['partner']}" if c["partner"] else "") + ". UAR drop is UAR as trained "
                      "minus UAR under the condition.", "",
                      "| causal finding | holds here | evidence |", "| --- | --- | --- |"]
            lines += [f"| {i['finding']} | {'yes' if i['holds'] else 'no'} | {i['evidence']} |" for i in c["findings"]]
            lines += ["", "Criteria: " + "; ".join(f"*{i['finding']}*: {i['criterion']}" for i in c["findings"]),
                      "", "Figures: " + ", ".join(f"`{f}`" for f in c["figures"]) + " (PNG and SVG).", ""]
    for c in summary.get("rank_comparisons", []):
        lines += [f"## Ranks: {', '.join(c['runs'])}", "",
                  f"t-SNE of the LoRA A activations at module {c['module']} ({c['model']}, {c['window']}, "
                  f"{','.join(c['targets'])}; {c['n_utterances']} utterances), each rank's map fitted on its own run. "
                  "Emotion silhouette in each rank's LoRA A activation space (on its 2-D map in brackets): "
                  + ", ".join(f"r = {k}: {v:.3f} ({c['silhouette_on_map'][k]:.3f})" for k, v in c["silhouette"].items())
                  + f". Figure: `{c['figure']}` (PNG and SVG).", ""]
    return "\n".join(lines + _seeds_markdown(summary.get("seeds", []))
                     + _a_frozen_markdown(summary.get("a_frozen", [])))


def _intruders_markdown(name: str, run: dict) -> list[str]:
    """The run's intruder dimensions per layer, trained vs random twin, at each threshold (or how to record them)."""
    table = run.get("intruders")
    if table is None:
        return [f"No intruder dimensions are recorded for {name}; record them from the run's weights with "
                f"`{run['intruders_command']}`.", ""]
    columns = [(c, i) for i in range(len(table["epsilons"])) for c in table["checkpoints"]]
    lines = ["### Intruder dimensions", "",
             f"An intruder dimension is one of the top {table['k']} left singular vectors of an adapted matrix "
             "W0 + (α/r) B A whose largest |cosine| with every singular vector of the base W0 is below ε (Shuttleworth "
             "et al., arXiv 2410.21228); they are computed from the weights alone, no utterance involved. Each cell: "
             f"intruders per module, the mean over the {len(table['folds'])} fold models, with the largest intruder "
             "singular value σ over them in brackets; the random twin's A and B are drawn at random.", "",
             "| layer | target | " + " | ".join(f"{CHECKPOINT_LABELS.get(c, c)} ε {table['epsilons'][i]:g}"
                                               for c, i in columns) + " |",
             "| --- | --- |" + " --- |" * len(columns)]
    for m in table["modules"]:
        cells = [f"{m['count'][c][i]:.3g}" + (f" (σ {s:.3g})" if (s := m["max_singular"][c][i]) is not None else "")
                 for c, i in columns]
        lines.append(f"| {m['layer']} | {m['target']} | " + " | ".join(cells) + " |")
    means = [f"{table['mean_count'][c][i]:.3g}" for c, i in columns]
    return lines + ["| mean over modules | | " + " | ".join(means) + " |", ""]


def _stores_markdown(summary: dict) -> str:
    lines = [f"# loralens report over {len(summary['stores'])} stores", ""]
    lines += [f"- `{s['store']}`: runs {', '.join(s['runs'])}; its report: [{s['report']}]({s['report']})"
              for s in summary["stores"].values()]
    if not summary["seeds"]:
        lines += ["", "No configuration has runs that differ only in seed across these stores."]
    return "\n".join(lines + [""] + _seeds_markdown(summary["seeds"]) + _a_frozen_markdown(summary["a_frozen"]))


def _interval(entry: dict | None) -> str:
    """``mean [low, high]`` of an ``over_seeds`` entry (``–`` without values)."""
    if not entry or entry["mean"] is None:
        return "–"
    if entry["ci"][0] is None:
        return f"{entry['mean']:.3f}"
    return f"{entry['mean']:.3f} [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"


def _tests(p: dict) -> str:
    """The t-test and Wilcoxon p of a ``seeds.paired`` entry in words."""
    return (f"t = {p['t']:.2f}, p = {p['p']:.3g}" if p["t"] is not None else "no t-test (no spread)") + (
        f"; Wilcoxon p = {p['wilcoxon_p']:.3g}" if p["wilcoxon_p"] is not None else "")


def _values(values: list) -> str:
    return ", ".join("–" if v is None else f"{v:.3f}" for v in values)


def _seeds_markdown(entries: list[dict]) -> list[str]:
    lines = []
    for c in entries:
        members = ", ".join(f"{m['run']}" + (f" (seed {m['seed']})" if m["seed"] is not None else "")
                            + (f" with {m['frozen']}" if m["frozen"] else "") + f" in `{m['store']}`"
                            for m in c["members"])
        lines += [f"## Seeds: {c['configuration']}", "", f"{len(c['members'])} runs that differ only in seed: "
                  f"{members}. Each statistic: its value per seed, its mean over seeds with a 95 % Student's t "
                  "interval, and its spread over fold models (the standard deviation over a seed's fold models, "
                  "averaged over seeds; causal findings are not computed per fold model).", "",
                  "| finding | holds in | statistic | per seed | mean [95 % CI] | spread over folds |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for f in c["findings"]:
            for i, (stat, v) in enumerate(f["statistics"].items()):
                spread = v.get("fold_std_mean")
                lines.append(f"| {f['finding'] if i == 0 else ''} | {f['holds_in'] if i == 0 else ''} | {stat} | "
                             f"{_values(v['per_seed'])} | {_interval(v)} | "
                             f"{'–' if spread is None else f'{spread:.3f}'} |")
        lines.append("")
        for key, m in c["metrics"].items():
            text = f"{key.upper()}: LoRA {_interval(m['lora'])} (per seed {_values(m['lora']['per_seed'])})"
            if m["frozen"]:
                text += f", frozen {_interval(m['frozen'])} (per seed {_values(m['frozen']['per_seed'])})"
            if (p := m["paired"]) and p["n_pairs"]:
                text += (f"; LoRA minus frozen per fold {_interval(p['difference'])} over {p['n_pairs']} (seed, fold) "
                         f"pairs, {_tests(p)}")
            lines += [text + ".", ""]
        intruded = c.get("intruders") or {"mean_count": {}}
        for checkpoint, by_epsilon in intruded["mean_count"].items():
            values = [f"ε {e:g}: {_interval(v)} (per seed {_values(v['per_seed'])})"
                      for e, v in zip(intruded["epsilons"], by_epsilon, strict=True)]
            lines += [f"Intruder dimensions per module, {CHECKPOINT_LABELS.get(checkpoint, checkpoint)} (mean over "
                      f"modules and fold models; {intruded['n_seeds']} seeds recorded them): {'; '.join(values)}.", ""]
        lines += [f"Paired test: {c['paired_test']}.", ""]
    return lines


def _a_frozen_markdown(entries: list[dict]) -> list[str]:
    lines = []
    for c in entries:
        runs = lambda side: ", ".join(r["run"] + (f" (seed {r['seed']})" if r["seed"] is not None else "")  # noqa: E731
                                      for r in c[side])
        lines += [f"## A frozen against A trained: {c['a_trained']}", "",
                  f"A frozen: {runs('a_frozen_runs')}; A trained: {runs('a_trained_runs')}. This tests {c['test']}. "
                  "Each cell: the mean over seeds with its 95 % t interval; the difference is A frozen minus A "
                  "trained, per (seed, fold) of the same seed for UAR and WAR, of the means over seeds for the rest.",
                  "",
                  "| statistic | A frozen | A trained | A frozen minus A trained |", "| --- | --- | --- | --- |"]
        for key, m in c["metrics"].items():
            p = m["paired"]
            lines.append(f"| {key.upper()} | {_interval(m['a_frozen'])} | {_interval(m['a_trained'])} | "
                         f"{_interval(p['difference'])} over {p['n_pairs']} pairs; {_tests(p)} |")
        for s in c["statistics"]:
            difference = "–" if s["difference"] is None else f"{s['difference']:.3f}"
            lines.append(f"| {s['statistic']} | {_interval(s['a_frozen'])} | {_interval(s['a_trained'])} | "
                         f"{difference} |")
        lines += ["", f"Paired test: {c['metrics']['uar']['paired']['test']}.", ""]
    return lines
