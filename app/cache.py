"""Cached access to the store and the views for the pages.

The only place the app caches store reads and analyses (pages cache only the figures they draw from them).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import soundfile as sf
import streamlit as st

from loralens.analysis import counterfactuals, lens, projections, views
from loralens.analysis.intruders import Intruders, intruders_of
from loralens.store.reader import StoreReader
from loralens.store.schema import SAMPLE_RATE
from loralens.store.storage import STORAGE_OPTIONS_ENV

STORE_ENV = "LORALENS_STORE"


def store_path() -> str | None:
    """The configured store (``loralens app --store PATH`` sets ``LORALENS_STORE``)."""
    return os.environ.get(STORE_ENV) or None


@st.cache_resource(show_spinner=False)
def reader(path: str) -> StoreReader:
    """One read-only reader per store, shared by sessions (with the storage options ``loralens app`` was given)."""
    options = os.environ.get(STORAGE_OPTIONS_ENV)
    return StoreReader(path, json.loads(options) if options else None)


@st.cache_data(show_spinner=False)
def runs(path: str) -> list[views.RunInfo]:
    """The store's runs."""
    return views.run_info(reader(path))


@st.cache_data(show_spinner=False, ttl=30)
def table(path: str, run: str) -> pd.DataFrame:
    """The utterance table with the run's predictions (refreshed every 30 s while captures add rows)."""
    return views.utterance_table(reader(path), run)


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz samples as float WAV bytes, at their own scale.

    ``st.audio`` would scale an array to its peak, and so play every loudness change alike; float, so that a gain
    above full scale is not clipped in the file.
    """
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.float32), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


@st.cache_data(show_spinner=False, max_entries=64)
def audio_wav(path: str, row: int) -> bytes:
    """An utterance's audio as WAV bytes (encoded once, not on every rerun)."""
    buffer = io.BytesIO()
    sf.write(buffer, reader(path).audio(row), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@st.cache_data(show_spinner=False, max_entries=256)
def lens_rows(path: str, run: str, row: int) -> tuple[np.ndarray, np.ndarray]:
    """One utterance's lens: pooled logits per boundary and per-frame logits."""
    r = reader(path)
    return r.read(run, "trained", "lens_logits", row), r.read(run, "trained", "lens_logits_frames", row)


def log_mel(path: str, row: int) -> np.ndarray:
    """One utterance's log-mel, the model's input."""
    return reader(path).log_mel(row)


@st.cache_data(show_spinner=False)
def lens_summary(path: str, run: str) -> lens.LensSummary:
    """The run's logit-lens summary over everything it traced."""
    return views.lens_of(reader(path), run)


@st.cache_data(show_spinner=False, ttl=30)
def causal(path: str, run: str) -> views.CausalView | None:
    """The run's interventions finished so far, or None (``views.causal_of``).

    Refreshed every 30 s while ``loralens intervene`` adds conditions.
    """
    return views.causal_of(reader(path), run)


@st.cache_data(show_spinner=False, max_entries=32)
def altered_wav(path: str, row: int, kind: str, strength: float) -> bytes:
    """An utterance's audio changed as an audio counterfactual does (``counterfactuals.alter``), as WAV bytes."""
    r = reader(path)
    return _altered(r.audio(row), str(np.asarray(r.utterances()["id"])[row]), kind, strength)


@st.cache_data(show_spinner=False, max_entries=16)
def altered_clip_wav(audio: np.ndarray, name: str, kind: str, strength: float) -> bytes:
    """An uploaded clip changed as ``altered_wav`` changes an utterance (its noise seeded by its name), as WAV bytes.

    Made once, not on every rerun of the page (Rubber Band on up to 30 s of audio).
    """
    return _altered(audio, name, kind, strength)


def _altered(audio: np.ndarray, uid: str, kind: str, strength: float) -> bytes:
    return wav_bytes(counterfactuals.alter(audio, kind, strength, counterfactuals.seed_of(uid)))


@st.cache_data(show_spinner=False)
def contributions(path: str, run: str, rows: tuple[int, ...]):
    """Per-layer contributions over ``rows``."""
    return views.contributions_of(reader(path), run, list(rows))


@st.cache_resource(show_spinner=False, max_entries=16)
def spectra(path: str, run: str, fold: int | None):
    """SVD spectra, trained and random twin, per LoRA quantity (``Spectrum.at`` sets the threshold).

    Shared, not copied (read only: ``Spectrum`` is frozen): at large-v2's size they are 24 MB, which a data cache
    would pickle on the first draw and unpickle on every threshold move.
    """
    return views.spectra_of(reader(path), run, fold=fold)


@st.cache_data(show_spinner=False)
def cka_ab(path: str, run: str, fold: int | None):
    """CKA between LoRA A and B outputs per layer."""
    return views.cka_a_vs_b(reader(path), run, fold=fold)


@st.cache_data(show_spinner=False)
def intruders(path: str, run: str) -> dict[str, Intruders]:
    """The run's recorded intruder dimensions per checkpoint (empty where none are recorded)."""
    return intruders_of(reader(path), run)


@st.cache_data(show_spinner=False)
def fold_sizes(path: str, run: str) -> dict[int, int]:
    """Fold -> how many utterances its model traced."""
    return {fold: len(rows) for fold, rows in views.fold_groups(reader(path), run).items()}


@st.cache_data(show_spinner=False)
def residual_cka(path: str, run_a: str, run_b: str, fold: int | None = None) -> np.ndarray:
    """Layer x layer minibatch CKA of pooled residuals within each fold model, averaged (``fold``: that one alone)."""
    return views.residual_cka(reader(path), run_a, run_b, fold=fold)


@st.cache_data(show_spinner=False)
def residual_cka_scope(path: str, run_a: str, run_b: str, fold: int | None = None) -> str:
    """What ``residual_cka`` averages (``views.residual_cka_scope``), for its chart's title."""
    return views.residual_cka_scope(views.residual_cka_groups(reader(path), run_a, run_b, fold=fold))


@st.cache_data(show_spinner=False, max_entries=256)
def map_of(path: str, run: str, source: str, layer: int, method: str,
           fold: int | None = None) -> tuple[np.ndarray, list[int], float]:
    """A 2-D map's coordinates, rows and emotion silhouette (``views.map_of``).

    From the run's summary; fitted where it has none, or for one fold model's utterances.
    """
    return views.map_of(reader(path), run, source, layer, method, fold)


@st.cache_data(show_spinner=False, max_entries=256)
def fold_silhouette(path: str, run: str, source: str, layer: int, method: str) -> float:
    """Silhouette of the fold models on a 2-D map (``map_of``): how far apart each fold's utterances lie on it.

    Computed as the page draws (the summary has none), on at most ``FOLD_SILHOUETTE_SAMPLE`` utterances.
    """
    coordinates, rows, _ = map_of(path, run, source, layer, method)
    folds = reader(path).read(run, "trained", "fold", rows)
    return projections.silhouette(coordinates, folds, FOLD_SILHOUETTE_SAMPLE)


FOLD_SILHOUETTE_SAMPLE = 500
"""The Clusters page's fold silhouette is estimated on this many utterances of a larger map. The 2,000 of the other
silhouettes cost each layer slider move more than this does; 500 tell folds that mix (near 0) from folds apart
(its error against the exact value: docs/benchmarks.md)."""


@st.cache_resource(show_spinner=False, max_entries=8)
def placing_map(path: str, run: str, source: str, layer: int) -> tuple[projections.Projection, list[int]]:
    """A UMAP map that places new vectors (uploads), and its rows: ``views.placing_map``."""
    return views.placing_map(reader(path), run, source, layer)


@st.cache_data(show_spinner=False, max_entries=256)
def silhouette(path: str, run: str, source: str, layer: int, fold: int | None = None) -> float:
    """Emotion silhouette of the vectors themselves (a 2-D map's value moves with its seed and settings)."""
    return views.silhouette_of(reader(path), run, source, layer, fold)
