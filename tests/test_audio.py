"""Audio loading: any rate and channel count to 16 kHz mono, with specific errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from loralens.precompute.audio import SAMPLE_RATE, AudioError, load_audio
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
