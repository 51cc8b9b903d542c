"""The app's one way into ``precompute``: decoding an upload and running a run's model on it (Upload only).

Every other page reads the store alone. torch and the model code are imported by ``predictor``, when an upload
first needs a checkpoint, never when the explorer starts.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import streamlit as st

from loralens.precompute.audio import MAX_SECONDS, AudioError, load_audio, prepare_speech, windows

__all__ = ["MAX_SECONDS", "AudioError", "load_audio", "occlusion", "predictor", "prepare_speech",
           "upload_interventions", "warm_up", "windows"]


MAX_MODELS = 4
"""Fold models kept loaded at once (the oldest is let go)."""
_MODELS: dict[tuple[str, int | None], Future] = {}
_MODELS_LOCK = threading.Lock()
_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loralens-load")


def _load(run_dir: str, fold: int | None):
    """A run's fold model for clips: torch is imported here, lazily, and only here."""
    import librosa  # noqa: F401  (a recording's preparation needs it: loaded with the model, not on the first clip)
    import scipy.signal  # noqa: F401  (resampling a 44.1 or 48 kHz file)

    from loralens.precompute.predict import Predictor

    return Predictor(Path(run_dir), fold)


def warm_up(run_dir: str, fold: int | None) -> None:
    """Start loading a run's fold model in the background, shared by every session of the app.

    The Upload page asks as it opens, so the first clip waits only for what is left of the load (seconds on a CPU).
    """
    key = (run_dir, fold)
    with _MODELS_LOCK:
        if key in _MODELS and not (_MODELS[key].done() and _MODELS[key].exception() is not None):
            return  # loaded, or loading (a failed load is tried again)
        _MODELS[key] = _LOADER.submit(_load, run_dir, fold)
        while len(_MODELS) > MAX_MODELS:
            _MODELS.pop(next(iter(_MODELS)))


def predictor(run_dir: str, fold: int | None):
    """A run's fold model (``Predictor``), loaded once: waits for a load ``warm_up`` started."""
    warm_up(run_dir, fold)
    with _MODELS_LOCK:
        future = _MODELS[(run_dir, fold)]
    return future.result()


@st.cache_data(show_spinner=False, max_entries=16)
def upload_interventions(run_dir: str, fold: int | None, audio: np.ndarray, name: str,
                         conditions: tuple[str, ...]) -> dict[str, np.ndarray]:
    """An uploaded clip's lens under each condition (``Predictor.intervene``), computed once per clip and choice."""
    return predictor(run_dir, fold).intervene(audio, list(conditions), name)


@st.cache_data(show_spinner=False, max_entries=16)
def occlusion(run_dir: str, fold: int | None, audio: np.ndarray):
    """What silencing each stretch of a clip does to a run's prediction (``Predictor.occlusion``), computed once."""
    return predictor(run_dir, fold).occlusion(audio)
