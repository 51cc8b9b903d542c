"""Read any audio soundfile can read into 16 kHz mono float32, with clear errors for bad input."""

from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf

from loralens.store.schema import SAMPLE_RATE, UserError

log = logging.getLogger(__name__)

MAX_SECONDS = 30.0
"""Whisper's window: longer clips are cropped (``long="crop"``), refused (``long="error"``), or kept whole
(``long="keep"``) for analysis in consecutive windows (``windows``)."""
MIN_WINDOW_SECONDS = 1.0
"""A last window shorter than this is left out (unless it is the only one)."""

LongPolicy = Literal["crop", "error", "keep"]


class AudioError(UserError):
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
        long: what to do with audio longer than ``max_seconds``: crop it (with a warning), raise, or keep it
            whole (to split with ``windows``).
        max_seconds: the longest audio accepted whole.

    Returns:
        Samples, shape ``(n_samples,)``.

    Raises:
        AudioError: the audio is unreadable, empty, non-finite or too long (with ``long="error"``).
    """
    name = name or (str(source) if isinstance(source, (str, Path)) else "<audio>")
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise AudioError(f"{name}: no such file")
    if (len(source) if isinstance(source, (bytes, bytearray)) else
            Path(source).stat().st_size if isinstance(source, (str, Path)) else None) == 0:
        raise AudioError(f"{name}: the file is empty (0 bytes); expected WAV, FLAC, OGG or MP3 audio")
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        reason = re.sub(r"^Error opening .*?: ", "", str(e))  # libsndfile names the buffer object, not the file
        raise AudioError(f"{name}: not readable as audio ({reason}); expected WAV, FLAC, OGG or MP3") from e
    if data.size == 0:
        raise AudioError(f"{name}: the file holds no samples; expected at least a fraction of a second of speech")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: holds NaN or infinite samples; re-export it as PCM or float WAV")
    audio = resample(data.mean(axis=1), rate)
    limit = int(max_seconds * SAMPLE_RATE)
    if len(audio) > limit and long != "keep":
        seconds = len(audio) / SAMPLE_RATE
        if long == "error":
            raise AudioError(f"{name}: {seconds:.1f} s is longer than Whisper's {max_seconds:.0f} s window; "
                             "cut it, or allow cropping")
        log.warning("%s: %.1f s is longer than %.0f s; using the first %.0f s", name, seconds, max_seconds,
                    max_seconds)
        audio = audio[:limit]
    return np.clip(audio, -1.0, 1.0)


def windows(audio: np.ndarray, seconds: float = MAX_SECONDS) -> list[tuple[float, np.ndarray]]:
    """Split 16 kHz audio into consecutive windows of at most ``seconds``: ``(start in seconds, samples)``.

    A last window shorter than ``MIN_WINDOW_SECONDS`` is left out, unless it is the only one.
    """
    size = int(seconds * SAMPLE_RATE)
    out = [(start / SAMPLE_RATE, audio[start:start + size]) for start in range(0, max(len(audio), 1), size)]
    if len(out) > 1 and len(out[-1][1]) < MIN_WINDOW_SECONDS * SAMPLE_RATE:
        out.pop()
    return out


SILENCE_RMS = 1e-4
"""Below this RMS a clip is treated as silence (about -80 dBFS)."""


def require_sound(audio: np.ndarray, name: str) -> np.ndarray:
    """Return ``audio``, or raise ``AudioError`` if it is silent: a prediction on silence means nothing."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms < SILENCE_RMS:
        raise AudioError(f"{name}: the clip is silent (RMS {rms:.1e}, below {SILENCE_RMS:.0e}); record or upload "
                         "speech")
    return audio
