"""Audio counterfactuals of the causal lens: an utterance changed in one property, to see what the audio drives.

Pitch and tempo through Rubber Band (``pedalboard.time_stretch``: pitch shifted without changing the duration,
tempo changed without changing the pitch), the telephone band through a Butterworth band-pass (``scipy.signal``),
loudness as a digital gain (not clipped), noise as white Gaussian noise at a signal-to-noise ratio over the clip's
RMS, seeded by the utterance's id so that every run and every rerun hears the same noise.

A change's ``identity`` strength is no change: ``alter`` returns the audio untouched there, so the condition at
that strength is the model as trained. Shared by ``loralens intervene`` (precompute) and the explorer, which plays
the changed audio beside the original; torch-free.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from loralens.store.schema import SAMPLE_RATE, UserError


@dataclass(frozen=True)
class AudioChange:
    """One kind of audio counterfactual."""

    kind: str
    """Its name in condition names (``pitch@2``) and on screen."""
    unit: str
    """What a strength measures."""
    identity: float
    """The strength that changes nothing."""
    strengths: tuple[float, ...]
    """The grid ``loralens intervene`` computes by default."""
    label: str
    """How the explorer names it."""


CHANGES = {c.kind: c for c in (
    AudioChange("pitch", "semitones", 0.0, (-4.0, -2.0, 2.0, 4.0), "pitch shift"),
    AudioChange("tempo", "x speed", 1.0, (0.8, 0.9, 1.1, 1.25), "tempo (pitch kept)"),
    AudioChange("loudness", "dB gain", 0.0, (-20.0, -10.0, 10.0), "loudness"),
    AudioChange("noise", "dB SNR", math.inf, (20.0, 10.0, 0.0), "white noise"),
    AudioChange("bandlimit", "Hz, upper edge", SAMPLE_RATE / 2, (3400.0, 2000.0, 1000.0), "telephone band"),
)}
AUDIO_KINDS = tuple(CHANGES)
"""The audio counterfactuals, in the order the explorer lists them."""
TELEPHONE_LOW_HZ = 300.0
"""The telephone band's lower edge (ITU-T G.712: 300-3400 Hz)."""


def check(kind: str, strength: float) -> None:
    """Raise a ValueError naming what is wrong with ``kind@strength`` (e.g. a negative speed)."""
    if kind not in CHANGES:
        raise UserError(f"unknown audio change {kind!r}; expected one of {', '.join(AUDIO_KINDS)}")
    if kind == "tempo" and not 0.25 <= strength <= 4:
        raise UserError(f"tempo@{strength:g}: a speed factor between 0.25 and 4 (1 leaves it as it is)")
    if kind == "pitch" and abs(strength) > 24:
        raise UserError(f"pitch@{strength:g}: at most 24 semitones either way")
    if kind == "bandlimit" and not TELEPHONE_LOW_HZ < strength <= SAMPLE_RATE / 2:
        raise UserError(f"bandlimit@{strength:g}: an upper edge above {TELEPHONE_LOW_HZ:g} Hz and at most "
                         f"{SAMPLE_RATE // 2} Hz (no limit)")
    if kind == "noise" and math.isnan(strength):
        raise UserError("noise@nan: a signal-to-noise ratio in dB (inf: no noise)")
    if kind != "noise" and not math.isfinite(strength):
        raise UserError(f"{kind}@{strength}: a finite strength ({CHANGES[kind].unit})")


def seed_of(utterance_id: str) -> int:
    """The noise seed of an utterance: the same wherever and whenever it is computed."""
    return int.from_bytes(hashlib.sha256(utterance_id.encode()).digest()[:8], "big")


def alter(audio: np.ndarray, kind: str, strength: float, seed: int = 0) -> np.ndarray:
    """``audio`` changed by ``kind`` at ``strength`` (``CHANGES``).

    Args:
        audio: 16 kHz mono samples, ``(n_samples,)``.
        kind: one of ``AUDIO_KINDS``.
        strength: in the kind's ``unit``.
        seed: the noise's seed (``seed_of`` the utterance's id).

    Returns:
        float32 samples, ``(n_samples',)``: as many as given but for tempo (``n_samples / strength``); at the
        kind's ``identity``, ``audio`` itself, untouched.
    """
    check(kind, strength)
    if strength == CHANGES[kind].identity:
        return audio
    x = np.ascontiguousarray(audio, dtype=np.float32)
    if kind == "loudness":
        return x * np.float32(10 ** (strength / 20))
    if kind == "noise":
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0
        noise = np.random.default_rng(seed).standard_normal(len(x))
        return (x + noise * rms * 10 ** (-strength / 20)).astype(np.float32)
    if kind == "bandlimit":
        from scipy.signal import butter, sosfiltfilt

        sos = butter(4, [TELEPHONE_LOW_HZ, min(strength, SAMPLE_RATE / 2 - 1)], btype="bandpass", fs=SAMPLE_RATE,
                     output="sos")
        return sosfiltfilt(sos, x).astype(np.float32) if len(x) > 27 else x  # too short to filter: left as is
    import pedalboard

    # Rubber Band offline (time_stretch) for both: its real-time PitchShift misses low voices by up to 3 semitones.
    if kind == "pitch":
        return pedalboard.time_stretch(x, SAMPLE_RATE, stretch_factor=1.0, pitch_shift_in_semitones=strength)[0]
    return pedalboard.time_stretch(x, SAMPLE_RATE, stretch_factor=strength)[0]


def name(kind: str, strength: float) -> str:
    """The condition's name, ``kind@strength`` (``pitch@-2``, ``noise@inf``)."""
    return f"{kind}@{strength:g}"
