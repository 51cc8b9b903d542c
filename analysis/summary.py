"""Summaries: what every page draws first, computed once from a run's committed rows and kept in the store.

``loralens trace`` computes them when it commits a run, ``loralens summarise STORE`` for an existing store. The
views (``analysis.views``) read a run's summary where it is current and covers the rows asked for, and compute from
the raw arrays otherwise; the raw arrays remain for drill-down. Everything here streams: memory grows with the
width of a layer, not with the number of utterances or frames.

A summary holds, per run (``schema.SUMMARY_GROUP``):

- ``rows``: the utterances it covers (every row of the run's trained checkpoint); ``folds``: its fold models;
- ``contribution_sums``: per utterance, the sums over its real frames of ``contributions.ARRAYS``, ``(n, 6,
  n_layers)``, so the contributions of any subset of rows are one division away;
- ``spectra/<checkpoint>/<quantity>``: singular values per LoRA module and fold model over the sampled rows'
  real frames, ``(n_modules, n_folds, dim)`` (zero-padded), and ``frames/<checkpoint>/<signal>`` the frames per fold;
- ``cka_ab/<checkpoint>/<signal>``: linear CKA of LoRA A with B per module and fold model, ``(n_modules, n_folds)``;
- ``residual_cka/<other run>``: minibatch CKA of the pooled residuals, layer x layer, within the run and with
  each LoRA/frozen partner, within each fold model and averaged over them (``views.residual_cka``; absent where
  no fold model traced enough of the utterances both runs traced);
- ``maps/<source>/<method>``: 2-D maps of every boundary (``residual``) and LoRA module (``lora_a``), ``(n_positions,
  n_mapped, 2)``, over the rows ``map_rows/<method>`` picks of ``rows`` (``projections.map_rows``: all, or t-SNE's
  sample); ``map_silhouette/<source>/<method>`` the emotion silhouette on each map, and ``silhouette/<source>``
  the emotion silhouette in the vectors' own space, ``(n_positions,)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from loralens.analysis import contributions, projections, views
from loralens.analysis.moments import Moments
from loralens.store.reader import StoreReader
from loralens.store.writer import StoreWriter

log = logging.getLogger(__name__)

SIGNALS = ("activation", "gradient")


def partners(reader: StoreReader, run: str) -> list[str]:
    """The runs a run's residual CKA is summarised with.

    The run itself, and its frozen partner (a LoRA run) or the LoRA runs it partners (a frozen run).
    """
    runs = views.run_info(reader)
    info = next(r for r in runs if r.name == run)
    if info.method == "lora":
        partner = views.frozen_partner(runs, info)
        return [run] + ([partner.name] if partner else [])
    return [run] + [r.name for r in runs if r.method == "lora" and (p := views.frozen_partner(runs, r))
                    and p.name == run]


def contribution_sums(reader: StoreReader, run: str, rows: list[int]) -> np.ndarray:
    """Per utterance, each contribution array summed over its real frames, ``(n_rows, 6, n_layers)``."""
    n_frames = reader.utterances()["n_frames"][rows]
    n_layers = int(reader.attrs(run)["n_layers"])
    out = np.zeros((len(rows), len(contributions.ARRAYS), n_layers))
    for i, name in enumerate(contributions.ARRAYS):
        for layer in range(n_layers):
            values = reader.read(run, "trained", name, rows, layer=layer)  # (n, frame)
            out[:, i, layer] = contributions.frame_sums(values[:, None], n_frames)[:, 0]
    return out


def fold_moments(reader: StoreReader, run: str, checkpoint: str, signal: str, module: int, rows: list[int]
                 ) -> Moments:
    """Moments of one LoRA module's A outputs (and B's, where kept) over the real frames of ``rows``.

    ``signal``: ``activation`` or ``gradient``; ``rows``: one fold model's rows that kept their per-frame arrays.
    Streamed as the views stream it (``views.frame_moments``).
    """
    with_b = f"lora_b_{signal}" in reader.group(run, checkpoint)
    return views.frame_moments(reader, run, checkpoint, f"lora_a_{signal}", module, rows,
                               f"lora_b_{signal}" if with_b else None)


def reduce_moments(m: Moments) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Singular values of A, of B (where kept), and CKA(A, B): what a summary keeps of a module's moments."""
    if m.xy is None:
        return m.singular_values(), None, None
    return m.singular_values(), Moments(m.n, m.sum_y, m.yy).singular_values(), m.linear_cka()


def module_summary(reader: StoreReader, run: str, checkpoint: str, signal: str, module: int,
                   groups: dict[int, list[int]]) -> list[tuple]:
    """One LoRA module's ``reduce_moments`` per fold model of ``groups`` (fold -> rows that kept their frames)."""
    return [reduce_moments(fold_moments(reader, run, checkpoint, signal, module, rows)) for rows in groups.values()]


def _module_summary_in_worker(path: str, storage_options: dict | None, *args) -> list[tuple]:
    return module_summary(StoreReader(path, storage_options), *args)


def lora_summary(reader: StoreReader, run: str, checkpoint: str, signal: str, groups: dict[int, list[int]],
                 jobs: int, bar: tqdm | None = None) -> list[list[tuple]]:
    """Per LoRA module, per fold model of ``groups``: ``reduce_moments`` of its moments.

    ``groups``: fold -> its rows that kept their per-frame arrays. Modules are summarised in ``jobs`` processes
    (in this one for an in-memory store), each reading its module's frames itself: the reading, the d x d sums and
    the eigensolves all run at once (with the reading in this process and only the solves in workers, each waited
    on the other).
    """
    n_modules = int(reader.group(run, checkpoint)[f"lora_a_{signal}"].shape[1])
    if jobs == 1 or reader.path.startswith("memory://"):  # a worker cannot reopen a store that lives in this process
        results = (module_summary(reader, run, checkpoint, signal, m, groups) for m in range(n_modules))
    else:
        results = Parallel(n_jobs=jobs, return_as="generator")(
            delayed(_module_summary_in_worker)(reader.path, reader.storage_options, run, checkpoint, signal, m, groups)
            for m in range(n_modules))
    out = []
    for module in results:
        out.append(module)
        if bar is not None:
            bar.update(sum(len(rows) for rows in groups.values()))
    return out


def _padded(values: list[list[np.ndarray]]) -> np.ndarray:
    width = max((len(v) for module in values for v in module), default=0)
    out = np.zeros((len(values), len(values[0]) if values else 0, width))
    for i, module in enumerate(values):
        for j, v in enumerate(module):
            out[i, j, : len(v)] = v
    return out


def _position(x: np.ndarray, emotions: np.ndarray, mapped: dict[str, np.ndarray]
              ) -> tuple[float, dict[str, np.ndarray]]:
    """One position's vectors: their emotion silhouette, and a 2-D map per method of the rows it maps."""
    return projections.silhouette(x, emotions), {
        method: projections.project(x[keep], method).coordinates.astype(np.float32) for method, keep in mapped.items()}


PARALLEL_ROWS = 1000
"""From this many utterances maps are fitted, and LoRA modules summarised, in worker processes (each pays UMAP's
compilation once, see ``projections._umap``)."""


def compute(reader: StoreReader, run: str, methods: Iterable[str] = ("umap", "tsne"), jobs: int | None = None,
            reuse: dict[str, dict[str, np.ndarray]] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """A run's summary: its arrays (see the module docstring) and its attributes (``schema.SUMMARY_ATTRS``).

    Args:
        reader: the store (every checkpoint of ``run`` committed).
        run: the run.
        methods: the 2-D maps to fit for every position (``projections.Method``).
        jobs: processes fitting maps and summarising LoRA modules at once (joblib's ``n_jobs``; default: every
            core from ``PARALLEL_ROWS`` utterances, else one).
        reuse: run -> the summary arrays computed for it from the same committed state (by the same ``summarise``):
            its residual CKA with this run is taken, transposed, instead of computed again.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    info = next(r for r in views.run_info(reader) if r.name == run)
    rows = views.common_rows(reader, run)
    jobs = jobs if jobs is not None else (-1 if len(rows) >= PARALLEL_ROWS else 1)
    groups = views.fold_groups(reader, run, rows)
    out: dict[str, np.ndarray] = {"rows": np.asarray(rows, dtype=np.int64),
                                  "folds": np.asarray(list(groups), dtype=np.int64)}
    out["contribution_sums"] = contribution_sums(reader, run, rows)
    seconds["contributions"] = time.perf_counter() - started

    if info.method == "lora":
        t = time.perf_counter()
        n_frames = reader.utterances()["n_frames"]
        for checkpoint in info.checkpoints:
            sampled = reader.sampled(run, checkpoint)
            sampled_groups = {f: [r for r in g if sampled[r]] for f, g in groups.items()}
            for signal in SIGNALS:
                if f"lora_a_{signal}" not in reader.group(run, checkpoint):
                    continue
                total = sum(len(g) for g in sampled_groups.values()) * len(info.targets) * info.n_layers
                with tqdm(total=total, desc=f"{run}/{checkpoint} LoRA {signal}s", unit="utt·module",
                          leave=False) as bar:
                    reduced = lora_summary(reader, run, checkpoint, signal, sampled_groups, jobs, bar)
                frames = [int(n_frames[g].sum()) for g in sampled_groups.values()]
                out[f"frames/{checkpoint}/{signal}"] = np.array(frames)
                out[f"spectra/{checkpoint}/lora_a_{signal}"] = _padded([[r[0] for r in module] for module in reduced])
                if reduced and reduced[0][0][1] is not None:
                    out[f"spectra/{checkpoint}/lora_b_{signal}"] = _padded([[r[1] for r in module]
                                                                          for module in reduced])
                    out[f"cka_ab/{checkpoint}/{signal}"] = np.array([[r[2] for r in module] for module in reduced])
        seconds["spectra and CKA(A, B)"] = time.perf_counter() - t

    t = time.perf_counter()
    basis = {f"{run}/{c}": int(reader.attrs(run, c)["n_written"]) for c in info.checkpoints}
    grams: dict = {}  # this run's Gram matrices serve its CKA with itself and with its partner
    for other in partners(reader, run):
        basis[f"{other}/trained"] = int(reader.attrs(other)["n_written"])
        given = (reuse or {}).get(other, {}).get(f"residual_cka/{run}")
        try:
            out[f"residual_cka/{other}"] = (given.T if given is not None else
                                            views.residual_cka(reader, run, other, live=True, grams_cache=grams))
        except ValueError as e:  # no fold model traced enough of the rows both runs traced: no matrix to keep
            log.warning("%s: no residual CKA of %s with %s in its summary: %s", reader.path, run, other, e)
    del grams
    seconds["residual CKA"] = time.perf_counter() - t

    t = time.perf_counter()
    emotions = reader.utterances()["emotion"][rows]
    positions = [("residual", b) for b in range(info.n_layers + 1)]
    if info.method == "lora":
        positions += [("lora_a", m) for m in range(info.n_layers * len(info.targets))]
    mapped = {method: projections.map_rows(len(rows), method) for method in methods} if len(rows) >= 5 else {}
    # One task a position, read as the workers take them (a large-v2 run's 65 positions of 5,500 x 1280 floats
    # would be 1.8 GB at once): the silhouette and the maps of its vectors.
    tasks = (delayed(_position)(views.vectors(reader, run, source, position, rows=rows)[0], emotions, mapped)
             for source, position in positions)
    results = Parallel(n_jobs=jobs, return_as="generator")(tasks)
    for (source, _), (own, coords) in zip(positions, tqdm(results, total=len(positions), desc=f"{run} maps",
                                                          unit="position", leave=False), strict=True):
        out.setdefault(f"silhouette/{source}", []).append(own)  # type: ignore[union-attr]
        for method, c in coords.items():
            out.setdefault(f"maps/{source}/{method}", []).append(c)  # type: ignore[union-attr]
            out.setdefault(f"map_silhouette/{source}/{method}", []).append(  # type: ignore[union-attr]
                projections.silhouette(c, emotions[mapped[method]]))
    for method, keep in mapped.items():
        out[f"map_rows/{method}"] = keep.astype(np.int64)
    for key in [k for k in out if k.startswith(("silhouette/", "maps/", "map_silhouette/"))]:
        out[key] = np.array(out[key])
    seconds["maps and silhouettes"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    return out, {"basis": basis, "rows": len(rows), "seconds": {k: round(v, 2) for k, v in seconds.items()}}


def summarise(path: str, runs: list[str] | None = None, methods: Iterable[str] = ("umap", "tsne"),
              force: bool = False, storage_options: dict | None = None) -> dict[str, float | None]:
    """Compute and store the summaries of committed runs that lack a current one.

    ``runs``: only these (default all); ``force``: recompute current summaries too.

    Returns:
        Run -> seconds it took (None: current already, or not committed).
    """
    writer = StoreWriter(path, storage_options)
    done: dict[str, float | None] = {}
    fresh: dict[str, dict[str, np.ndarray]] = {}  # runs summarised by this call: their residual CKA serves partners
    for run, checkpoints in writer.runs().items():
        if runs is not None and run not in runs:
            continue
        if not all(writer.attrs(run, c).get("complete") for c in checkpoints):
            log.warning("%s: run %s is not committed complete; summarise it after its trace finishes", path, run)
            done[run] = None
            continue
        if not force and current(writer, run):
            done[run] = None
            continue
        arrays, attrs = compute(writer, run, methods, reuse=fresh)
        writer.write_summary(run, arrays, attrs)
        fresh[run] = {k: v for k, v in arrays.items() if k.startswith("residual_cka/")}
        done[run] = attrs["seconds"]["total"]
        log.info("%s: summarised run %s over %d utterances in %.1f s (%s)", path, run, attrs["rows"],
                 attrs["seconds"]["total"], ", ".join(f"{k} {v:.1f} s" for k, v in attrs["seconds"].items()
                                                      if k != "total"))
    return done


def current(reader: StoreReader, run: str) -> bool:
    """Whether ``run``'s summary is current: by the store's rule and computed with today's ``partners``.

    The store's rule (``StoreReader.summary``) checks the rows it was computed from; a newer pairing rule may name
    other partner runs, whose residual CKA the summary then lacks.
    """
    summary = reader.summary(run)
    if summary is None:
        return False
    compared = {name.partition("/")[0] for name in summary.attrs["basis"]}
    return compared == set(partners(reader, run))


def stale(reader: StoreReader) -> list[str]:
    """Committed runs without a current summary (see ``current``)."""
    return [run for run, checkpoints in reader.runs().items()
            if all(reader.attrs(run, c).get("complete") for c in checkpoints) and not current(reader, run)]

