"""Scale benchmark by simulation: a whisper-large-v2 (or base, ``--geometry``) x IEMOCAP store written through the
store's own writer, then
the explorer, ``loralens summarise`` and ``loralens report`` timed on it (issue #23, point 5).

    python bench/scale.py write STORE [--utterances 5500] [--per-frame-sample 0.02] [--folds 10] [--seed 0]
                                      [--workers 1] [--baseline REF]
    python bench/scale.py measure STORE [--fresh] [--repeats 20] [--only summarise,pages,widgets,report]

``write`` draws every array (see ``bench/simulate.py`` for how they are structured) and writes them as ``loralens
trace`` would: ``StoreWriter.add_utterances``, ``create_checkpoint``, ``write_rows`` per batch of 8 rows (the
sampled per-frame arrays only for the rows ``CaptureOptions(per_frame_sample=...).keeps_frames`` keeps),
``commit``. It estimates the size first and refuses when the disk lacks room; it resumes an interrupted store
(written rows are skipped). With
``--workers 2`` rows are written by two processes, on disjoint rows (the schema lets them). Its rows line times the
store's writes alone (``write_rows``); drawing the arrays is timed beside it. ``--baseline REF`` (a git commit) first
writes the same store with REF's ``store`` package (``STORE.REF``; the rest of loralens is this checkout's), then
this checkout's, and prints each phase's ratio.

``measure`` works on any store: it runs ``loralens summarise STORE --force`` (timed: every run's summary computed
again; skipped with a note where the command does not exist), starts ``loralens app`` once and opens every page in
headless Chromium, timing its first full draw (``--fresh``: a new app process per page, each timed from the page's
opening and from the command's start), samples the app's memory meanwhile, times the layer and threshold sliders
with AppTest, and times ``loralens report``; then
prints every figure beside its target.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the machine's cores are shared: one BLAS thread per process

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/scale.py` from a checkout
if "--geometry" in sys.argv[:-1]:  # read by simulate as it is imported (and by writer processes, which import it)
    os.environ["LORALENS_BENCH_GEOMETRY"] = sys.argv[sys.argv.index("--geometry") + 1]

import simulate as sim  # noqa: E402

STORE_CODE = "LORALENS_BENCH_STORE_CODE"
"""Set by ``--baseline``: the folder of another commit's ``store`` package, imported instead of this checkout's (in
writer processes too: they import this module again)."""


def use_store_code(directory: Path) -> None:
    """Import ``loralens.store`` from ``directory`` (another commit's ``store`` folder) instead of this checkout's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("loralens.store", directory / "__init__.py",
                                                  submodule_search_locations=[str(directory)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["loralens.store"] = module
    spec.loader.exec_module(module)


if os.environ.get(STORE_CODE):
    use_store_code(Path(os.environ[STORE_CODE]))

RUNS = {f"iemocap-{sim.GEOMETRY}-lora": "lora", f"iemocap-{sim.GEOMETRY}-frozen": "frozen"}
CHECKPOINTS = {"lora": ("trained", "random_twin"), "frozen": ("trained",)}
PRECISION = "bf16"
"""What a GPU trace of large-v2 would record in the capture options."""
BATCH = 8
"""Rows per write: ``loralens trace``'s default batch (``Tracer.batch_size``), each a ``write_rows`` call."""


# -- write ------------------------------------------------------------------------------------------------------
def estimate(utterances: list[sim.Utterance], keeps: list[bool]) -> dict[str, int]:
    """Bytes the store will hold, if its floats do not compress and zero padding costs nothing."""
    d, layers, boundaries, classes = sim.D_MODEL, sim.N_LAYERS, sim.N_LAYERS + 1, len(sim.EMOTIONS)
    frames = np.array([u.n_frames for u in utterances], dtype=np.int64)
    kept = frames[np.array(keeps, dtype=bool)]
    pooled = {"frozen": boundaries * d * 4 + boundaries * classes * 4 + classes * 4 + 3 * layers * d * 4 + 16}
    pooled["lora"] = pooled["frozen"] + layers * sim.RANK * 4 + layers * d * 4
    per_frame = boundaries * classes * 2 + 6 * layers * 2  # bytes per frame: lens per frame, contributions
    sampled = {"frozen": 0, "lora": layers * sim.RANK * (2 + 4) + layers * d * (2 + 4)}
    out = {"utterance table": int(sum(2 * u.n_samples for u in utterances) + frames.sum() * 2 * sim.N_MELS * 2)}
    for run, method in RUNS.items():
        for checkpoint in CHECKPOINTS[method]:
            unsampled = len(frames) * pooled[method] + int(frames.sum()) * per_frame
            out[f"{run}/{checkpoint}"] = unsampled + int(kept.sum()) * sampled[method]
            out[f"{run}/{checkpoint} layer-major copies"] = unsampled
    return out


def table_rows(utterances: list[sim.Utterance], seed: int) -> list:
    """The utterance table's rows: audio drawn, log-mel computed as ``loralens trace`` does."""
    from tqdm.auto import tqdm
    from transformers import WhisperFeatureExtractor

    from loralens.precompute.trace import log_mel_input
    from loralens.store.writer import UtteranceRow

    extractor = WhisperFeatureExtractor(feature_size=sim.N_MELS)
    rows = []
    for u in tqdm(utterances, desc="audio and log-mel", unit="utt"):
        audio = sim.audio(u, seed)
        mel = log_mel_input(extractor, audio)
        assert mel.shape == (sim.N_MELS, 2 * u.n_frames), (mel.shape, u.n_frames)
        rows.append(UtteranceRow(u.id, "iemocap", f"/data/IEMOCAP_full_release/{u.id.split('/')[1]}.wav",
                                 sim.SPEAKERS[u.speaker], sim.EMOTIONS[u.emotion], audio, u.n_frames, mel))
    return rows


def metrics(simulator: sim.Simulator, utterances: list[sim.Utterance], profile: sim.Profile, folds: int,
            epochs: int) -> dict:
    """The run's ``metrics.json`` as training writes it, from the predictions the store will hold."""
    from loralens.precompute.folds import over_folds, scores

    labels = np.array([u.emotion for u in utterances])
    predictions = np.array([simulator.prediction(u, profile) for u in utterances])
    fold_of = np.array([u.fold for u in utterances])
    per_fold = []
    for k in range(folds):
        mask = fold_of == k
        speakers = sorted({sim.SPEAKERS[j] for j in range(len(sim.SPEAKERS)) if j * folds // len(sim.SPEAKERS) == k})
        per_fold.append({"fold": k, "test_speakers": speakers, "epoch": epochs,
                         **scores(labels[mask], predictions[mask], len(sim.EMOTIONS))})
    return {"complete": True, "n_folds": folds, "n_done": folds, **over_folds(per_fold), "folds": per_fold}


def checkpoint_attrs(method: str, folds: int, capture: dict, run_metrics: dict) -> dict:
    """A checkpoint's attributes, as ``loralens trace`` writes them for this geometry."""
    from loralens.precompute.capture import module_name
    from loralens.precompute.config import TrainConfig

    config = TrainConfig(model=sim.MODEL, data=sim.DATA, method=method, rank=sim.RANK, alpha=sim.ALPHA,
                         folds="loso" if folds == len(sim.SPEAKERS) else str(folds), window="trim",
                         precision=PRECISION)
    modules = [module_name(i, "v_proj") for i in range(sim.N_LAYERS)] if method == "lora" else []
    return {"method": method, "model": sim.MODEL, "data": sim.DATA, "window": "trim", "emotions": list(sim.EMOTIONS),
            "rank": sim.RANK, "alpha": sim.ALPHA, "targets": ["v_proj"], "modules": modules,
            "n_layers": sim.N_LAYERS, "d_model": sim.D_MODEL, "train_config": config.to_json(),
            "metrics": run_metrics, "capture": capture, "simulated_by": "bench/scale.py"}


def write_rows(store: str, utterances: list[sim.Utterance], rows: list[int], keeps: list[bool], seed: int,
               part: tuple[int, int]) -> tuple[int, float, float]:
    """Write every unwritten row of part ``k`` of ``n`` (rows ``i % n == k``).

    Returns:
        (rows written, seconds in ``write_rows``, seconds drawing the arrays).
    """
    from tqdm.auto import tqdm

    from loralens.store.writer import StoreWriter

    k, n = part
    writer = StoreWriter(store)
    simulator = sim.Simulator(seed)
    todo: dict[tuple[str, str, str], list[int]] = {}
    for run, method in RUNS.items():
        for checkpoint in CHECKPOINTS[method]:
            written = writer.written(run, checkpoint)
            todo[run, method, checkpoint] = [i for i in range(len(utterances)) if i % n == k and not written[rows[i]]]
    batches = [(mine[j: j + BATCH], run, method, checkpoint) for (run, method, checkpoint), mine in todo.items()
               for j in range(0, len(mine), BATCH)]
    batches.sort(key=lambda b: b[0][0])  # batch by batch, as a trace batch does every checkpoint in turn
    writing = drawing = 0.0
    parent = os.getppid()
    with tqdm(total=sum(len(b[0]) for b in batches), desc=f"rows, part {k + 1}/{n}", unit="row", position=k,
              mininterval=5) as bar:
        for batch, run, method, checkpoint in batches:
            if n > 1 and os.getppid() != parent:  # the writing command was stopped: stop with it
                break
            profile = sim.PROFILES[(method, checkpoint)]
            mark = time.perf_counter()
            arrays = [simulator.arrays(utterances[i], profile, keeps[i]) for i in batch]
            drawn = time.perf_counter()
            writer.write_rows(run, checkpoint, [rows[i] for i in batch], arrays)
            writing += time.perf_counter() - drawn
            drawing += drawn - mark
            bar.update(len(batch))
    return sum(len(v) for v in todo.values()), writing, drawing


def _write_part(args: tuple) -> tuple[int, float, float]:
    return write_rows(*args)


def _commit(args: tuple[str, str, list[int]]) -> tuple[dict[str, bool], float]:
    from loralens.store.writer import StoreWriter

    store, run, rows = args
    started = time.perf_counter()
    return StoreWriter(store).commit(run, rows), time.perf_counter() - started


def baseline(args: argparse.Namespace) -> int:
    """Write ``STORE.REF`` with REF's store package, then ``STORE`` with this one; print each phase's ratio."""
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.baseline, "store"], capture_output=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        for label, code, store in ((args.baseline, f"{tmp}/store", f"{args.store}.{args.baseline}"),
                                   ("this checkout", "", args.store)):
            command = [sys.executable, __file__, "write", store, "--utterances", str(args.utterances),
                       "--per-frame-sample", str(args.per_frame_sample), "--folds", str(args.folds), "--seed",
                       str(args.seed), "--workers", str(args.workers), "--geometry", args.geometry]
            print(f"\n== {label}: {' '.join(command[1:])}", flush=True)
            result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, STORE_CODE: code})
            print(result.stdout, end="", flush=True)
            if result.returncode:
                return result.returncode
            line = next(x for x in result.stdout.splitlines() if x.startswith("TIMINGS "))
            timings[label] = json.loads(line.removeprefix("TIMINGS "))
    old, new = timings[args.baseline], timings["this checkout"]
    print(f"\nstore {args.baseline} -> this checkout, same machine, one run:")
    for key in old:
        if key in new and key != "n_written" and new[key] > 0:
            print(f"  {key}: {old[key]:.1f} s -> {new[key]:.1f} s ({old[key] / new[key]:.1f}x)")
    n = max(1, new["n_written"])
    print(f"  per row written: {old['rows (writes)'] / n * 1000:.1f} ms -> {new['rows (writes)'] / n * 1000:.1f} ms "
          f"({old['rows (writes)'] / new['rows (writes)']:.1f}x)")
    return 0


def write(args: argparse.Namespace) -> int:
    if args.baseline:
        return baseline(args)
    from loralens.precompute.capture import CaptureOptions
    from loralens.store.validate import sizes
    from loralens.store.writer import StoreWriter

    options = CaptureOptions(per_frame_b=True, per_frame_sample=args.per_frame_sample, precision=PRECISION)
    utterances = sim.corpus(args.utterances, args.folds, args.seed)
    keeps = [options.keeps_frames(u.id) for u in utterances]
    frames = np.array([u.n_frames for u in utterances])
    print(f"{len(utterances)} utterances, {frames.sum() / sim.FRAMES_PER_SECOND / 3600:.2f} h of audio, frames: mean "
          f"{frames.mean():.0f}, max {frames.max()}; per-frame arrays kept for {sum(keeps)} "
          f"({args.per_frame_sample:.1%} asked); {args.folds} folds")
    parts = estimate(utterances, keeps)
    need = sum(parts.values())
    store = Path(args.store)
    existing = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) if store.exists() else 0
    free = shutil.disk_usage(store.parent if store.parent.exists() else Path.cwd()).free
    print(f"estimated size {need / 2**30:.1f} GiB (floats uncompressed), of which layer-major copies "
          f"{sum(v for k, v in parts.items() if k.endswith('copies')) / 2**30:.1f} GiB; {free / 2**30:.1f} GiB free")
    if need - existing > 0.95 * free:
        print(f"refusing: {store} needs about {(need - existing) / 2**30:.1f} GiB more and the disk has "
              f"{free / 2**30:.1f} GiB free. Free some space, or lower --utterances or --per-frame-sample.",
              file=sys.stderr)
        return 2

    timings: dict[str, float] = {}
    started = time.perf_counter()
    writer = StoreWriter(args.store)
    known = set(writer._column("id")) if writer._node("utterances/id") is not None else set()
    missing = [u for u in utterances if u.id not in known]
    rows = writer.add_utterances(table_rows(missing, args.seed)) if missing else []
    index = {uid: i for i, uid in enumerate(writer._column("id"))}
    rows = [index[u.id] for u in utterances]
    timings["utterance table"] = time.perf_counter() - started

    mark = time.perf_counter()
    simulator = sim.Simulator(args.seed)
    for run, method in RUNS.items():
        run_metrics = metrics(simulator, utterances, sim.PROFILES[(method, "trained")], args.folds,
                              10 if method == "lora" else 30)
        attrs = checkpoint_attrs(method, args.folds, options.to_json(), run_metrics)
        lora = method == "lora"
        sizes_ = {"boundary": sim.N_LAYERS + 1, "layer": sim.N_LAYERS, "d_model": sim.D_MODEL,
                  "class": len(sim.EMOTIONS), "module": sim.N_LAYERS if lora else 0, "rank": sim.RANK,
                  "d_out": sim.D_MODEL if lora else 0}
        for checkpoint in CHECKPOINTS[method]:
            writer.create_checkpoint(run, checkpoint, attrs, sizes_, lora=lora, per_frame_b=True)
        print(f"{run}: UAR {run_metrics['uar']['mean']:.3f} ± {run_metrics['uar']['std']:.3f}, "
              f"WAR {run_metrics['war']['mean']:.3f}")
    timings["metrics and checkpoints"] = time.perf_counter() - mark

    mark = time.perf_counter()
    jobs = [(args.store, utterances, rows, keeps, args.seed, (k, args.workers)) for k in range(args.workers)]
    if args.workers == 1:
        done = [_write_part(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            done = pool.map(_write_part, jobs)
    n_written = sum(n for n, _, _ in done)
    timings["rows"] = time.perf_counter() - mark
    writing, drawing = sum(w for _, w, _ in done), sum(d for _, _, d in done)
    if n_written:
        print(f"{n_written} checkpoint rows in {writing:.1f} s ({writing / n_written * 1000:.1f} ms a row, "
              f"{args.workers} process(es); the store's writes alone, drawing the arrays took another "
              f"{drawing:.1f} s)")
    timings["rows (writes)"] = writing

    writer = StoreWriter(args.store)
    todo = [run for run in RUNS if not all(
        (a := writer.attrs(run, c)).get("complete") and a.get("consolidated") == a.get("n_written") == len(rows)
        for c in CHECKPOINTS[RUNS[run]])]
    mark = time.perf_counter()
    if args.workers == 1 or len(todo) < 2:
        committed = [_commit((args.store, run, rows)) for run in todo]
    else:  # runs are separate groups: their commits may run at once
        with multiprocessing.get_context("spawn").Pool(min(args.workers, len(todo))) as pool:
            committed = pool.map(_commit, [(args.store, run, rows) for run in todo])
    timings["commit"] = time.perf_counter() - mark
    for run, (state, seconds) in zip(todo, committed, strict=True):
        print(f"commit {run}: {state} in {seconds:.0f} s")
    total = time.perf_counter() - started
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + f"; total {total:.0f} s "
          f"({total / 60:.1f} min)")
    print("TIMINGS " + json.dumps({**timings, "n_written": n_written}))
    stored = sizes(args.store)
    print(f"stored: {sum(stored.values()) / 2**30:.2f} GiB (estimated {need / 2**30:.2f} GiB)")
    for part, n in stored.items():
        print(f"  {part}: {n / 2**20:,.1f} MiB")
    du = subprocess.run(["du", "-sb", args.store], capture_output=True, text=True).stdout.split()[0]
    print(f"on disk (du -sb): {int(du) / 2**30:.2f} GiB; `loralens validate {args.store}` checks every chunk")
    return 0


# -- measure ----------------------------------------------------------------------------------------------------
def _command_figure(result) -> str:
    state = ("" if result.rc == 0 else f", stopped at the {result.seconds / 60:.0f} min limit" if result.rc is None
             else f", FAILED with exit status {result.rc}")
    return f"{result.seconds / 60:.1f} min, peak {result.peak_gib:.2f} GiB{state}"


class _Figures(list):
    """(what, value, target, met) rows, each printed as it comes: a run stopped midway keeps what it measured."""

    def append(self, row: tuple[str, str, str, bool | None]) -> None:
        what, value, target, met = row
        print(f"  {what}: {value} (target {target}{'' if met is None else ', met' if met else ', NOT met'})",
              flush=True)
        super().append(row)

    def fail(self, what: str, target: str, error: str, errors: list[tuple[str, str]]) -> None:
        """A figure that could not be measured: its error is printed now and again after the table."""
        self.append((what, "FAILED (below)", target, False))
        print(f"    {error}", flush=True)
        errors.append((what, error))


def measure(args: argparse.Namespace) -> int:
    import pages

    only = set(args.only.split(",")) if args.only else {"summarise", "pages", "widgets", "report"}
    figures = _Figures()
    errors: list[tuple[str, str]] = []  # (what, the whole error), printed after the table
    if "summarise" in only:
        print(f"timing loralens summarise {args.store} ...", flush=True)
        # --force: a store summarised already would otherwise be skipped, and nothing timed
        result = pages.timed([sys.executable, "-m", "loralens.cli", "summarise", args.store, "--force"],
                             timeout=args.command_timeout)
        if result.missing:
            print("loralens summarise does not exist yet (its parser refused the command): not timed")
            figures.append(("loralens summarise", "not available", "<= 15 min", None))
        else:
            figures.append(("loralens summarise", _command_figure(result), "<= 15 min",
                            result.rc == 0 and result.seconds <= 15 * 60))
            if result.rc != 0:
                errors.append(("loralens summarise", result.tail))
    if "pages" in only:
        print("timing every page's first draw in Chromium ...", flush=True)

        def add(title: str, draw) -> None:
            # Counted from the page's opening (the "after it is first opened"); on a fresh app the time
            # from the command's start (the server's start-up included) is shown beside it.
            label = f"first draw: {title}" + (" (fresh app)" if args.fresh else "")
            if draw.error:
                figures.fail(label, "<= 3 s", draw.error, errors)
            else:
                since_start = f", {draw.from_start:.2f} s from the app's start" if args.fresh else ""
                figures.append((label, f"{draw.whole:.2f} s (first element {draw.first_element:.2f} s, {draw.charts} "
                                f"charts{since_start})", "<= 3 s", draw.whole <= 3))

        _, peak = (pages.fresh_draws if args.fresh else pages.warm_draws)(args.store, args.page_timeout, add)
        figures.append(("app peak memory (process tree RSS)", f"{peak / 2**30:.2f} GiB", "<= 2 GiB", peak <= 2 * 2**30))
    if "widgets" in only:
        for what, page, key in pages.WIDGETS:
            print(f"timing {what} with AppTest ...", flush=True)
            times = pages.widget_times(args.store, page, key, args.repeats, budget=args.widget_budget)
            if isinstance(times, str):
                figures.fail(f"{what} ({key})", "p95 <= 150 ms", times, errors)
                continue
            p50, p95 = np.percentile(times, 50), np.percentile(times, 95)
            figures.append((f"{what} ({key}), {len(times)} changes", f"p50 {p50:.0f} ms, p95 {p95:.0f} ms",
                            "p95 <= 150 ms", p95 <= 150))
    if "report" in only:
        print("timing loralens report ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            result = pages.timed([sys.executable, "-m", "loralens.cli", "report", "--store", args.store,
                                  "--out", str(args.report_out or tmp)], timeout=args.command_timeout)
        figures.append(("loralens report", _command_figure(result), "<= 10 min",
                        result.rc == 0 and result.seconds <= 600))
        if result.rc != 0:
            errors.append(("loralens report", result.tail))
    print(f"\n{args.store}")
    width = max(len(w) for w, *_ in figures)
    value_width = max(len(v) for _, v, *_ in figures)
    print(f"{'measure':<{width}}  {'value':<{value_width}}  {'target':<14}  met")
    for what, value, target, met in figures:
        verdict = "-" if met is None else "yes" if met else "NO"
        print(f"{what:<{width}}  {value:<{value_width}}  {target:<14}  {verdict}")
    for what, error in errors:
        print(f"\n{what}: {error}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write a simulated large-v2 x IEMOCAP store")
    w.add_argument("store")
    w.add_argument("--utterances", type=int, default=5500)
    w.add_argument("--per-frame-sample", type=float, default=0.02)
    w.add_argument("--folds", type=int, default=10, help="speaker-grouped folds (10: one per IEMOCAP speaker)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--workers", type=int, default=1, help="processes writing disjoint rows")
    w.add_argument("--geometry", choices=("large-v2", "base"), default="large-v2",
                   help="the model whose shapes the rows take (base: 6 layers, d_model 512)")
    w.add_argument("--baseline", default=None, metavar="REF",
                   help="first write STORE.REF with git commit REF's store package, then compare")
    m = sub.add_parser("measure", help="time the explorer, summarise and report on a store")
    m.add_argument("store")
    m.add_argument("--fresh", action="store_true",
                   help="a freshly started app per page (timed from the page's opening, and from the app's start)")
    m.add_argument("--repeats", type=int, default=20, help="changes per widget")
    m.add_argument("--widget-budget", type=float, default=300, help="seconds per widget before it stops changing it")
    m.add_argument("--page-timeout", type=float, default=600, help="seconds a page may take to draw")
    m.add_argument("--command-timeout", type=float, default=None,
                   help="seconds after which summarise and report are stopped (default: none)")
    m.add_argument("--report-out", type=Path, default=None, help="keep the report here (default: a temporary one)")
    m.add_argument("--only", default=None, help="comma list of summarise, pages, widgets, report")
    args = parser.parse_args()
    if args.command == "write":
        if args.workers < 1 or not 0 < args.per_frame_sample <= 1 or args.folds < 2 or args.folds > len(sim.SPEAKERS):
            parser.error("expected --workers >= 1, --per-frame-sample in (0, 1], --folds in 2..10")
        return write(args)
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
