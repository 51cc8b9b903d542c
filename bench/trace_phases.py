"""Time ``loralens trace``'s phases: prepare, the capture loop, commit (layer-major copies, intruder dimensions) and
the summary (issue #38, item 2).

    python bench/trace_phases.py [--code DIR] -- trace --run RUN --store STORE --per-class 25

``--code DIR``: a checkout of another commit (``git worktree add DIR REF``) whose packages are imported instead of
this one's, for a before/after on the same machine. Prints one ``PHASES`` line.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import time
from pathlib import Path

FOLDERS = {"loralens": "loralens", "loralens.store": "store", "loralens.analysis": "analysis",
           "loralens.precompute": "precompute", "loralens.app": "app", "loralens.cli": "cli"}
"""The packages and their folders in a checkout (pyproject.toml's package-dir)."""


def use_code(root: Path) -> None:
    """Import loralens from the checkout at ``root``: every package registered before any of them runs."""
    loaded = []
    for name, folder in FOLDERS.items():
        spec = importlib.util.spec_from_file_location(name, root / folder / "__init__.py",
                                                      submodule_search_locations=[str(root / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append((spec, module))
    for spec, module in loaded:
        spec.loader.exec_module(module)


def main() -> int:
    started = time.perf_counter()
    args = sys.argv[1:]
    if args[:1] == ["--code"]:
        use_code(Path(args[1]).resolve())
        args = args[2:]
    args = args[1:] if args[:1] == ["--"] else args
    times: dict[str, float] = {}

    def timed(owner, attribute: str, label: str) -> None:
        if not hasattr(owner, attribute):
            return
        function = getattr(owner, attribute)

        @functools.wraps(function)
        def wrapper(*a, **k):
            mark = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                times[label] = times.get(label, 0.0) + time.perf_counter() - mark

        setattr(owner, attribute, wrapper)

    from loralens.cli import main as loralens

    imports = time.perf_counter() - started
    import loralens.analysis.summary as summary
    import loralens.precompute.trace as trace
    import loralens.store.writer as writer

    timed(trace.Tracer, "prepare", "prepare")
    timed(trace.Tracer, "capture", "capture loop")
    timed(trace.Tracer, "commit", "commit")
    timed(writer.StoreWriter, "commit", "commit: layer-major copies")
    timed(trace, "run_intruders", "commit: intruder dimensions")
    timed(summary, "summarise", "summary")
    status = loralens(args)
    print(f"PHASES: imports {imports:.1f} s, " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
          + f", whole command {time.perf_counter() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
