"""``loralens intervene``: the causal lens of a traced run."""

from __future__ import annotations

import argparse
from pathlib import Path

from loralens.cli import options
from loralens.store.schema import UserError


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens intervene``'s parser to ``sub``."""
    from loralens.analysis.counterfactuals import CHANGES
    from loralens.precompute.config import INTERVENTION_KINDS

    grids = "; ".join(f"{c.kind} {', '.join(f'{v:g}' for v in c.strengths)} ({c.unit})" for c in CHANGES.values())
    p = sub.add_parser("intervene", help="the causal lens: the run's traced utterances under interventions",
                       description="Each traced utterance of the run, through the fold model that held it out, under "
                                   "every condition: LoRA off at one layer (lora_off@k), on at one layer only "
                                   "(lora_only@k), off from a layer up (lora_off_from@k), a layer's block erased "
                                   "(erase@k), a layer's output patched in from --partner (patch@k), and the audio "
                                   f"changed ({grids}); class probabilities and lens trajectories into the store. "
                                   "Re-run to resume, or with more --kinds to add them.")
    p.add_argument("--run", required=True, type=Path, help="a run directory traced into --store")
    p.add_argument("--store", required=True, help="a directory or fsspec URL")
    p.add_argument("--name", default=None, help="the run's name in the store (default: the run directory's name)")
    p.add_argument("--kinds", default=None,
                   help=f"comma list of {', '.join((*INTERVENTION_KINDS, *CHANGES))} (default all: a frozen run has "
                        "no LoRA kinds, patch needs --partner)")
    p.add_argument("--partner", type=Path, default=None,
                   help="the run directory patch@k patches from: the frozen run for a LoRA run, the LoRA run for a "
                        "frozen one (same data, folds and window)")
    p.add_argument("--strength", action="append", default=[], metavar="KIND=S1,S2,...",
                   help="an audio change's strengths instead of its default grid, e.g. pitch=-6,6 (repeatable)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (default: CUDA where there is one), cpu, cuda or cuda:N")
    options.add_storage(p)
    p.set_defaults(func=run)


def _strengths(items: list[str]) -> dict[str, tuple[float, ...]]:
    from loralens.analysis.counterfactuals import CHANGES

    out = {}
    for item in items:
        kind, _, values = item.partition("=")
        try:
            if kind not in CHANGES:
                raise UserError(f"{kind!r} is not an audio change ({', '.join(CHANGES)})")
            out[kind] = tuple(float(v) for v in values.split(",") if v.strip())
            if not out[kind]:
                raise UserError("no strength given")
        except ValueError as e:
            raise UserError(f"--strength {item!r}: {e}; expected KIND=S1,S2,..., e.g. pitch=-6,6") from e
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``loralens intervene``; returns its exit status."""
    from loralens.precompute import intervene

    kinds = None
    if args.kinds is not None:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        if unknown := [k for k in kinds if k not in intervene.KINDS]:
            raise UserError(f"--kinds {args.kinds!r}: unknown {unknown}; expected a comma list of "
                             f"{', '.join(intervene.KINDS[1:])}")
    results = intervene.run(args.run, args.store, name=args.name, kinds=kinds, strengths=_strengths(args.strength),
                            partner=args.partner, batch_size=args.batch_size, device=args.device,
                            storage_options=options.storage(args))
    print(f"{'condition':<18} {'UAR':>6} {'WAR':>6} {'KL':>8} {'flipped':>8}")
    for condition, m in results.items():
        print(f"{condition:<18} {m['uar']:6.3f} {m['war']:6.3f} {m['kl']:8.4f} {m['flipped']:8.3f}")
    return 0
