"""Read any audio soundfile can read into 16 kHz mono float32, with clear errors for bad input."""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass
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


MIN_SPEECH_SECONDS = 0.5
"""Less sound than this, once the silence around it is trimmed, is no utterance to predict an emotion of."""
TRIM_TOP_DB = 30.0
"""Leading and trailing frames this far below the clip's loudest are silence (``librosa.effects.trim``)."""
SPEECH_RMS = 0.1
"""The level speech is brought to (-20 dBFS RMS, about the training corpus's: EmoDB's clips have a median of 0.13)."""
PEAK = 0.99
"""No sample is raised above this: the gain stops short of clipping."""


@dataclass(frozen=True)
class Speech:
    """A clip ready for the model: the silence around it trimmed, its level normalised."""

    samples: np.ndarray
    """16 kHz mono float32, the trimmed and scaled speech."""
    start: float
    """Seconds trimmed from the clip's start: where ``samples`` begin in the clip."""
    trimmed: float
    """Seconds trimmed in all (start and end)."""
    gain_db: float
    """The gain applied, in dB (positive: raised)."""


def prepare_speech(audio: np.ndarray, name: str) -> Speech:
    """Trim leading and trailing silence and normalise the level of 16 kHz ``audio``, as a microphone needs.

    Training corpora are cut close around loud, clean speech; a recording made live has silence before and after it
    and any level. The speech is scaled to ``SPEECH_RMS`` (less if its peak would pass ``PEAK``).

    Raises:
        AudioError: the clip is silent, or holds less than ``MIN_SPEECH_SECONDS`` of sound once trimmed.
    """
    import librosa  # a second of imports: only when a clip is prepared

    require_sound(audio, name)
    trimmed, (begin, end) = librosa.effects.trim(audio, top_db=TRIM_TOP_DB, frame_length=512, hop_length=128)
    seconds = len(trimmed) / SAMPLE_RATE
    if seconds < MIN_SPEECH_SECONDS:
        raise AudioError(f"{name}: only {seconds:.2f} s of sound once the silence around it is trimmed; record at "
                         f"least {MIN_SPEECH_SECONDS} s of speech (a word or two)")
    rms = float(np.sqrt(np.mean(np.square(trimmed, dtype=np.float64))))
    gain = min(SPEECH_RMS / rms, PEAK / float(np.abs(trimmed).max()))
    return Speech(np.clip(trimmed * gain, -1.0, 1.0).astype(np.float32), begin / SAMPLE_RATE,
                  (len(audio) - len(trimmed)) / SAMPLE_RATE, 20 * math.log10(gain))
