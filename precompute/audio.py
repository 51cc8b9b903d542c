"""Read any audio soundfile can read into 16 kHz mono float32, with clear errors for bad input."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
"""Whisper's input rate."""
MAX_SECONDS = 30.0
"""Whisper's window: longer clips are cropped (``long="crop"``) or refused (``long="error"``)."""

LongPolicy = Literal["crop", "error"]


class AudioError(ValueError):
    """Audio that cannot be used, with what was wrong and what to do."""


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono ``audio`` from ``rate`` to 16 kHz with a polyphase anti-aliasing filter.

    Args:
        audio: samples, shape ``(n_samples,)``.
        rate: the input sample rate in Hz.

    Returns:
        float32 samples at 16 kHz, shape ``(round(n_samples * 16000 / rate),)``.
    """
    if rate == SAMPLE_RATE:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(rate, SAMPLE_RATE)
    from scipy.signal import resample_poly  # a second of imports: only when a clip needs resampling

    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def load_audio(
    source: str | Path | bytes | BinaryIO,
    *,
    name: str | None = None,
    long: LongPolicy = "crop",
    max_seconds: float = MAX_SECONDS,
) -> np.ndarray:
    """Load audio as 16 kHz mono float32 in [-1, 1].

    Args:
        source: a path, the file's bytes, or an open binary file.
        name: how to name the audio in errors (defaults to the path).
        long: what to do with audio longer than ``max_seconds``: crop it (with a warning) or raise.
        max_seconds: the longest audio accepted whole.

    Returns:
        Samples, shape ``(n_samples,)``.

    Raises:
        AudioError: the audio is unreadable, empty, non-finite or too long (with ``long="error"``).
    """
    name = name or (str(source) if isinstance(source, (str, Path)) else "<audio>")
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise AudioError(f"{name}: no such file")
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{name}: not readable as audio ({e}); expected WAV, FLAC, OGG or MP3") from e
    if data.size == 0:
        raise AudioError(f"{name}: the file holds no samples; expected at least a fraction of a second of speech")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: holds NaN or infinite samples; re-export it as PCM or float WAV")
    audio = resample(data.mean(axis=1), rate)
    limit = int(max_seconds * SAMPLE_RATE)
    if len(audio) > limit:
        seconds = len(audio) / SAMPLE_RATE
        if long == "error":
            raise AudioError(f"{name}: {seconds:.1f} s is longer than Whisper's {max_seconds:.0f} s window; "
                             "cut it, or allow cropping")
        log.warning("%s: %.1f s is longer than %.0f s; using the first %.0f s", name, seconds, max_seconds,
                    max_seconds)
        audio = audio[:limit]
    return np.clip(audio, -1.0, 1.0)
