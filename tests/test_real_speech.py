"""The shipped real-speech model on real EmoDB audio: an import like any user's, and where in a clip it hears the
emotion (integration: bundled whisper-base and the shipped adapter)."""

from __future__ import annotations

import numpy as np
import pytest

from loralens.analysis import occlusion
from loralens.precompute import real_speech
from loralens.precompute.audio import load_audio
from loralens.precompute.config import read_config
from loralens.precompute.predict import Predictor

PAIRS = (("03a01Nc", "03a01Wa"), ("08a02Na", "08a02Wc"))
"""A neutral and an angry reading of one sentence by one speaker, which the model tells apart."""
OTHERS = ("03a01Fa", "08a02Tb")
"""A happy and a sad clip: an import's data holds every class of the model."""


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, emodb) -> Predictor:
    data = tmp_path_factory.mktemp("emodb-pairs")
    (data / "wav").mkdir()
    for name in (*(n for pair in PAIRS for n in pair), *OTHERS):
        (data / "wav" / f"{name}.wav").symlink_to(emodb / "wav" / f"{name}.wav")
    run = real_speech.make_run(tmp_path_factory.mktemp("runs") / real_speech.RUN_NAME, f"emodb:{data}", "cpu")
    return Predictor(run)


def test_the_shipped_model_is_imported_with_what_its_card_says(predictor):
    """Made by loralens import from a PEFT checkpoint; its card's training data kept; EmoDB is not held out."""
    source = read_config(predictor.run).source
    assert source["tool"] == "loralens import" and source["kind"] == "lora"
    assert source["card"]["datasets"] == ["EmoDB"] and source["card"]["language"] == ["de"]
    assert source["held_out"] is False  # it trained on every EmoDB clip
    assert predictor.config.window == "trim" and predictor.config.rank == 32


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[0][:5])
@pytest.mark.parametrize("angry_first", [False, True], ids=["neutral+angry", "angry+neutral"])
def test_occlusion_and_the_lens_put_the_anger_on_the_angry_half(predictor, emodb, pair, angry_first):
    neutral, angry = (load_audio(emodb / "wav" / f"{n}.wav") for n in pair)
    clip = np.concatenate([angry, neutral] if angry_first else [neutral, angry])
    cut = len(angry if angry_first else neutral) / 16000
    prediction = predictor.predict(clip)
    assert prediction.prediction == "anger"
    result = predictor.occlusion(clip)
    assert result.target == "anger"
    times, drops = occlusion.timeline(result)
    on_angry = (times < cut) if angry_first else (times >= cut)
    # Silencing the angry half costs the anger (its log-odds fall); silencing the neutral half adds to it.
    assert drops[on_angry].mean() > 0.3 and drops[~on_angry].mean() < 0
    frames = np.array(prediction.frame_probabilities)[-1, :, prediction.emotions.index("anger")]  # last boundary
    angry_frames = np.arange(len(frames)) * 0.02 < cut
    angry_frames = angry_frames if angry_first else ~angry_frames
    assert frames[angry_frames].mean() > 0.5 > frames[~angry_frames].mean()
