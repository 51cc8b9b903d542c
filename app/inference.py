"""The app's one way into ``precompute``: decoding an upload and running a run's model on it (Upload only).

Every other page reads the store alone. torch and the model code are imported by ``predictor``, when an upload
first needs a checkpoint, never when the explorer starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from loralens.precompute.audio import MAX_SECONDS, AudioError, Speech, load_audio, prepare_speech, windows

__all__ = ["MAX_SECONDS", "AudioError", "Speech", "load_audio", "occlusion", "predictor", "prepare_speech",
           "upload_interventions", "windows"]


@st.cache_resource(show_spinner="Loading the checkpoint ...", max_entries=4)
def predictor(run_dir: str, fold: int | None):
    """A run's fold model for uploads: torch is imported here, lazily, and only here."""
    from loralens.precompute.predict import Predictor

    return Predictor(Path(run_dir), fold)


@st.cache_data(show_spinner=False, max_entries=16)
def upload_interventions(run_dir: str, fold: int | None, audio: np.ndarray, name: str,
                         conditions: tuple[str, ...]) -> dict[str, np.ndarray]:
    """An uploaded clip's lens under each condition (``Predictor.intervene``), computed once per clip and choice."""
    return predictor(run_dir, fold).intervene(audio, list(conditions), name)


@st.cache_data(show_spinner=False, max_entries=16)
def occlusion(run_dir: str, fold: int | None, audio: np.ndarray):
    """What silencing each stretch of a clip does to a run's prediction (``Predictor.occlusion``), computed once."""
    return predictor(run_dir, fold).occlusion(audio)
