"""The real-speech model's recipe, measured: EmoDB-trained runs scored on RAVDESS, speakers and language never heard.

  python bench/real_voice.py manifest OUT [--emodb DIR] [--ravdess DIR] [--synthetic DIR]
      OUT/manifest.csv: every EmoDB clip of the four classes with split=train (and the synthetic corpus's, if
      given), every RAVDESS clip with split=test, for ``loralens train --data csv:OUT/manifest.csv --folds split``
      (the fold's metrics are then RAVDESS's).
  python bench/real_voice.py export RUN OUT
      RUN's fold 0 (trained on every EmoDB clip with the manifest above) as a PEFT checkpoint in OUT, the head in
      modules_to_save, as Trainer + PEFT code saves one: what loralens ships (OUT's README.md, the model card, is
      kept).
  python bench/real_voice.py score RUN [RUN ...] [--ravdess DIR] [--as-recorded]
      UAR and WAR on RAVDESS through ``loralens predict``'s path (the Upload page's), clips prepared as Upload
      prepares them (``--as-recorded``: raw, as the training's loader reads them), side by side.

RAVDESS is for evaluation only (its licence): nothing trained on it may ship, and nothing here trains on it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

EMOTIONS = ("anger", "happiness", "neutral", "sadness")


def manifest(out: Path, emodb: Path, ravdess: Path, synthetic: Path | None) -> Path:
    rows = []
    for root, split in ((emodb, "train"), (ravdess, "test")):
        with open(root / "labels.csv", newline="") as f:
            rows += [{"path": str((root / r["path"]).resolve()), "emotion": r["emotion"],
                      "speaker": f"{root.name}-{r['speaker']}", "split": split}
                     for r in csv.DictReader(f) if r["emotion"] in EMOTIONS]
    if synthetic is not None:
        with open(synthetic / "manifest.csv", newline="") as f:
            rows += [{"path": str((synthetic / r["path"]).resolve()), "emotion": r["emotion"],
                      "speaker": f"synthetic-{r['speaker']}", "split": "train"}
                     for r in csv.DictReader(f) if r["emotion"] in EMOTIONS]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "emotion", "speaker", "split"])
        writer.writeheader()
        writer.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "test")}
    print(f"{path}: {counts['train']} clips to train on, {counts['test']} RAVDESS clips to score")
    return path


def uar(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean([(predicted[labels == c] == c).mean() for c in np.unique(labels)]))


def score(runs: list[Path], ravdess: Path, as_recorded: bool) -> None:
    from loralens.precompute.audio import load_audio
    from loralens.precompute.predict import Predictor

    with open(ravdess / "labels.csv", newline="") as f:
        table = [r for r in csv.DictReader(f) if r["emotion"] in EMOTIONS]
    clips = [load_audio(ravdess / r["path"]) for r in table]
    for run in runs:
        predictor = Predictor(run)
        labels = np.array([predictor.config.emotions.index(r["emotion"]) for r in table])
        for mode in (("as recorded",) if as_recorded else ("prepared", "as recorded")):
            start, predicted = time.perf_counter(), []
            for r, clip in zip(table, clips):
                p = (predictor.predict(clip, r["path"]) if mode == "as recorded" else
                     predictor.predict_clip(clip, r["path"])[0])
                predicted.append(predictor.config.emotions.index(p.prediction))
            predicted = np.array(predicted)
            seconds = (time.perf_counter() - start) / len(clips)
            print(f"{run}: RAVDESS {mode}: UAR {uar(labels, predicted):.3f}, WAR {(labels == predicted).mean():.3f}, "
                  f"{len(clips)} clips, {1000 * seconds:.0f} ms a clip", flush=True)


def export(run: Path, out: Path) -> None:
    import json
    import shutil
    import tempfile

    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from loralens.precompute.checkpoints import lora_config
    from loralens.precompute.config import read_config
    from loralens.precompute.models import load_classifier

    config = read_config(run)
    model = load_classifier(config.model, list(config.emotions))
    peft_config = lora_config(config)
    peft_config.modules_to_save = ["projector", "classifier"]
    model = get_peft_model(model, peft_config)
    fold = run / "fold_00"
    head = {f"base_model.model.{k}": v for k, v in load_file(fold / "head.safetensors").items()}
    set_peft_model_state_dict(model, load_file(fold / "adapter" / "adapter_model.safetensors") | head)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(tmp) / name, out / name)
    metrics = json.loads((fold / "metrics.json").read_text())
    print(f"wrote {out}: {config.model}, LoRA r={config.rank} on {','.join(config.targets)}, {config.epochs} epochs, "
          f"seed {config.seed}, {metrics['n_train']} training clips; "
          f"{sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MB")


def main(argv: list[str] | None = None) -> None:
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("out", type=Path)
    m.add_argument("--emodb", type=Path, default=shared / "emodb")
    m.add_argument("--ravdess", type=Path, default=shared / "ravdess")
    m.add_argument("--synthetic", type=Path)
    e = sub.add_parser("export")
    e.add_argument("run", type=Path)
    e.add_argument("out", type=Path)
    s = sub.add_parser("score")
    s.add_argument("runs", type=Path, nargs="+")
    s.add_argument("--ravdess", type=Path, default=shared / "ravdess")
    s.add_argument("--as-recorded", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "manifest":
        manifest(args.out, args.emodb, args.ravdess, args.synthetic)
    elif args.command == "export":
        export(args.run, args.out)
    else:
        score(args.runs, args.ravdess, args.as_recorded)


if __name__ == "__main__":
    sys.exit(main())
