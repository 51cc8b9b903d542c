"""``loralens import``: checkpoints trained elsewhere (PEFT adapters, whole models) as a run directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("loralens")


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens import``'s parser to ``sub``."""
    from loralens.precompute.config import PRECISIONS

    p = sub.add_parser(
        "import", help="make a run directory of checkpoints trained elsewhere (Hugging Face Trainer + PEFT, ...)",
        description="One checkpoint per fold: a PEFT LoRA adapter directory (save_pretrained's, or Trainer's "
                    "checkpoint-N/ or the folder above them; its head in modules_to_save or given with --head), or a "
                    "whole WhisperForAudioClassification directory (a frozen baseline where its encoder is --model's, "
                    "else a fully fine-tuned model, whose weights the run points at). "
                    "Each is rebuilt on --model, evaluated on the utterances it never saw and saved as a run that "
                    "trace, intervene, predict, report and the app take. Re-run to resume.")
    p.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT",
                   help="one directory per fold, in fold order (e.g. v_proj/whisper-large-v2/fold{1..10})")
    p.add_argument("--model", required=True,
                   help="the base they were trained on: HF id or dir, ct2:DIR, bundled:tiny.en, bundled:base, "
                        "random:NAME")
    p.add_argument("--data", required=True, help="the data set whose utterances the folds held out (as for train)")
    p.add_argument("--out", required=True, type=Path, help="the run directory to write (resumed if it exists)")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--folds", default="loso", choices=["loso", "split"],
                      help="test sets as loralens train makes them: loso (fold k holds out the k-th speaker in "
                           "sorted order, as the paper's script) or split (the data's split column; default loso)")
    held.add_argument("--test-speakers", action="append", default=None, metavar="S[,S...]",
                      help="the speakers one checkpoint never trained on (repeat once per checkpoint, in order)")
    held.add_argument("--test-ids", action="append", type=Path, default=None, metavar="FILE",
                      help="a file of the utterance ids one checkpoint never trained on (repeat once per checkpoint)")
    held.add_argument("--not-held-out", action="store_true",
                      help="one checkpoint that may have trained on any utterance: every utterance is traced, and "
                           "the store and report say its predictions are not held out")
    p.add_argument("--emotions", default=None,
                   help="the checkpoints' classes in label order (default: a whole model's id2label; for adapters, "
                        "which carry none, anger,happiness,neutral,sadness as the paper's script)")
    p.add_argument("--head", action="append", type=Path, default=None, metavar="FILE",
                   help="a safetensors file of one checkpoint's head (projector.*, classifier.*) where the adapter "
                        "has none (repeat once per checkpoint)")
    p.add_argument("--window", choices=["full", "trim"], default="full",
                   help="the input window (default full: 30 s padding, what Trainer-based training feeds; trim says "
                        "how many test predictions it changes)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the random twins")
    p.add_argument("--keep-excitement", action="store_true", help="IEMOCAP: keep excitement apart from happiness")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``loralens import``; returns its exit status."""
    from loralens.precompute.data import parse_emotions
    from loralens.precompute.importing import ImportPlan, import_run

    emotions = parse_emotions(args.emotions) if args.emotions else None  # None: the checkpoints' own labels
    explicit = args.test_speakers is not None or args.test_ids is not None or args.not_held_out
    plan = ImportPlan(
        model=args.model, data=args.data, checkpoints=args.checkpoints, folds=None if explicit else args.folds,
        test_speakers=[[s.strip() for s in group.split(",") if s.strip()] for group in args.test_speakers]
        if args.test_speakers is not None else None,
        test_ids=args.test_ids, held_out=not args.not_held_out, emotions=list(emotions) if emotions else None,
        heads=args.head, window=args.window, precision=args.precision, device=args.device,
        batch_size=args.batch_size, seed=args.seed, merge_excitement=not args.keep_excitement)
    summary = import_run(plan, args.out)
    if summary.get("n_done"):
        log.info("%s: %d/%d folds, UAR %.3f ± %.3f, WAR %.3f ± %.3f; trace it with loralens trace --run %s "
                 "--store STORE", args.out, summary["n_done"], summary["n_folds"], summary["uar"]["mean"],
                 summary["uar"]["std"], summary["war"]["mean"], summary["war"]["std"], args.out)
    return 0
