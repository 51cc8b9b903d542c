"""Audio loading: any rate and channel count to 16 kHz mono, with specific errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from loralens.precompute.audio import SAMPLE_RATE, SPEECH_RMS, AudioError, load_audio, prepare_speech
from tests.conftest import tone


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 96000])
def test_resampled_to_16k_keeps_pitch(tmp_path, rate):
    sf.write(tmp_path / "a.wav", tone(1.0, rate, 440.0), rate)
    audio = load_audio(tmp_path / "a.wav")
    assert audio.dtype == np.float32 and abs(len(audio) - SAMPLE_RATE) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(audio) - 440.0) < 3


def test_stereo_is_mixed_down(tmp_path):
    left = tone(0.5, 16000, 300.0)
    sf.write(tmp_path / "s.wav", np.stack([left, left], axis=1), 16000)
    assert np.allclose(load_audio(tmp_path / "s.wav"), left, atol=1e-4)


def test_bytes_source(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(0.3, 16000, 200.0), 16000, format="FLAC")
    assert len(load_audio(buf.getvalue(), name="clip.flac")) == int(0.3 * SAMPLE_RATE)


def test_not_audio_names_the_file(tmp_path):
    (tmp_path / "x.wav").write_text("not audio at all")
    with pytest.raises(AudioError, match=r"x\.wav: not readable as audio"):
        load_audio(tmp_path / "x.wav")


def test_empty_file(tmp_path):
    sf.write(tmp_path / "e.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(tmp_path / "e.wav")


def test_non_finite(tmp_path):
    data = tone(0.2, 16000, 200.0)
    data[10] = np.nan
    sf.write(tmp_path / "n.wav", data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "n.wav")


def test_long_audio_cropped_or_refused(tmp_path):
    sf.write(tmp_path / "l.wav", np.zeros(8000 * 31, dtype=np.float32), 8000)
    assert len(load_audio(tmp_path / "l.wav")) == 30 * SAMPLE_RATE
    with pytest.raises(AudioError, match="longer than"):
        load_audio(tmp_path / "l.wav", long="error")


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")


def _speechlike(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated tone: loud enough above its own silence to be found by the trim."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (level * envelope * (np.sin(2 * np.pi * 180 * t) + 0.1 * noise)).astype(np.float32)


def test_a_live_recording_is_trimmed_and_brought_to_speech_level():
    """A quiet recording with a second of room noise before and after: the speech is kept, where it began is said,
    and its level is brought to SPEECH_RMS whatever it was recorded at."""
    rng = np.random.default_rng(1)
    room = lambda s: (1e-4 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32)  # noqa: E731
    for level in (0.02, 0.5):  # a quiet microphone (-40 dBFS) and a loud one
        clip = np.concatenate([room(1.0), _speechlike(1.5, level), room(0.8)])
        speech = prepare_speech(clip, "recording.webm")
        assert speech.start == pytest.approx(1.0, abs=0.03)
        assert len(speech.samples) / SAMPLE_RATE == pytest.approx(1.5, abs=0.06)
        assert speech.trimmed == pytest.approx(1.8, abs=0.06)
        rms = np.sqrt(np.mean(np.square(speech.samples, dtype=np.float64)))
        assert rms == pytest.approx(SPEECH_RMS, rel=0.02) and np.abs(speech.samples).max() <= 1.0
        assert speech.gain_db == pytest.approx(20 * np.log10(SPEECH_RMS / np.sqrt(np.mean(
            np.square(_speechlike(1.5, level), dtype=np.float64)))), abs=0.5)


def test_too_little_sound_is_refused_not_predicted():
    """0.1 s of noise (a click of the record button) is no utterance: a message saying so, not a prediction."""
    click = np.random.default_rng(0).standard_normal(1600).astype(np.float32) * 0.3
    with pytest.raises(AudioError, match=r"mic\.wav: only 0\.1\d s of sound .* at least 0\.5 s of speech"):
        prepare_speech(click, "mic.wav")
    padded = np.concatenate([np.zeros(16000, np.float32), click, np.zeros(16000, np.float32)])
    with pytest.raises(AudioError, match="only 0.1"):  # silence around it does not make it longer
        prepare_speech(padded, "mic.wav")
    with pytest.raises(AudioError, match="silent"):
        prepare_speech(np.zeros(32000, np.float32), "mic.wav")
    assert len(prepare_speech(_speechlike(0.6, 0.1), "ok.wav").samples) >= 0.5 * SAMPLE_RATE
