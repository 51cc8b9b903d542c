"""The real-speech model loralens ships: a LoRA adapter and head for bundled whisper-base, trained on EmoDB.

It is a PEFT checkpoint like any user's (``shipped/real-speech/``, its model card beside it), made into a run by
``loralens import``: the demo traces it beside the runs it trains on synthetic speech, and the Upload page and
``loralens predict`` use it unless told otherwise. ``bench/real_voice.py`` makes it and measures it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from loralens.precompute.data import load_corpus
from loralens.precompute.importing import ImportPlan, import_run

log = logging.getLogger(__name__)

CHECKPOINT = Path(__file__).parent / "shipped" / "real-speech"
"""The PEFT checkpoint (adapter_config.json, adapter_model.safetensors) and its model card (README.md)."""
MODEL = "bundled:base"
"""The base it was trained on."""
WINDOW = "trim"
"""The window it was trained in."""
TRAINED_ON = "emodb"
"""The data set it learned every clip of (a run on it is not held out)."""
RUN_NAME = "real-speech"
"""Its run's name in the demo."""


def make_run(run: Path, data: str, device: str = "auto") -> Path:
    """Import the shipped checkpoint as ``run`` over ``data`` (resumed where it is done); return ``run``.

    Every utterance of ``data`` is held out (the model never heard its speakers), unless ``data`` is EmoDB, which it
    trained on: then the run says its predictions are not held out.
    """
    corpus = load_corpus(data)
    seen = corpus.utterances[0].dataset == TRAINED_ON if corpus.utterances else False
    plan = ImportPlan(model=MODEL, data=data, checkpoints=[CHECKPOINT], window=WINDOW, compare_windows=False,
                      device=device,
                      test_speakers=None if seen else [corpus.speakers], held_out=not seen)
    log.info("importing the real-speech model (%s) over %s", CHECKPOINT, data)
    import_run(plan, run)
    return run
