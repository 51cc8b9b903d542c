"""Audio counterfactuals change the one property they name, by the strength asked, and nothing at identity."""

from __future__ import annotations

import numpy as np
import pytest

from loralens.analysis import counterfactuals

RATE = counterfactuals.SAMPLE_RATE


def _tone(hz: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[spectrum.argmax()])


def _db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2))


@pytest.mark.parametrize("kind", counterfactuals.AUDIO_KINDS)
def test_identity_strength_changes_nothing(kind):
    x = _tone(220)
    assert counterfactuals.alter(x, kind, counterfactuals.CHANGES[kind].identity, seed=3) is x


@pytest.mark.parametrize(("semitones", "hz"),
                         [(12, 440.0), (-12, 110.0), (-4, 220 * 2 ** (-4 / 12)), (2, 220 * 2 ** (2 / 12))])
def test_pitch_shifts_the_fundamental_and_keeps_the_duration(semitones, hz):
    x = _tone(220)
    shifted = counterfactuals.alter(x, "pitch", semitones)
    assert len(shifted) == len(x)
    assert abs(_peak_hz(shifted[RATE // 4: -RATE // 4]) - hz) < 3


def test_tempo_changes_the_duration_and_keeps_the_pitch():
    x = _tone(220, seconds=2.0)
    fast, slow = counterfactuals.alter(x, "tempo", 2.0), counterfactuals.alter(x, "tempo", 0.8)
    assert abs(len(fast) - len(x) / 2) <= 0.01 * len(x) and abs(len(slow) - len(x) / 0.8) <= 0.01 * len(x)
    assert abs(_peak_hz(fast) - 220) < 5 and abs(_peak_hz(slow) - 220) < 5


def test_loudness_is_a_gain_in_db():
    x = _tone(220)
    assert np.allclose(counterfactuals.alter(x, "loudness", 20 * np.log10(2)), 2 * x, atol=1e-6)
    assert abs(_db(counterfactuals.alter(x, "loudness", -10)) - (_db(x) - 10)) < 1e-3


def test_noise_at_the_asked_snr_and_seeded():
    x = _tone(220, seconds=2.0)
    for snr in (20.0, 10.0, 0.0):
        noisy = counterfactuals.alter(x, "noise", snr, seed=counterfactuals.seed_of("emodb/03a01Fa"))
        assert abs(_db(x) - _db(noisy - x) - snr) < 0.2, snr
    same = counterfactuals.alter(x, "noise", 10, seed=counterfactuals.seed_of("emodb/03a01Fa"))
    assert np.array_equal(same, counterfactuals.alter(x, "noise", 10, seed=counterfactuals.seed_of("emodb/03a01Fa")))
    other = counterfactuals.seed_of("emodb/03a01Fb")
    assert not np.array_equal(same, counterfactuals.alter(x, "noise", 10, seed=other))


def test_bandlimit_keeps_the_band_and_cuts_the_rest():
    inside, above, below = _tone(800), _tone(3000), _tone(80)
    for x, loss in ((inside, (-1.0, 0.5)), (above, (-np.inf, -30.0)), (below, (-np.inf, -20.0))):
        edge = slice(RATE // 10, -RATE // 10)
        change = _db(counterfactuals.alter(x, "bandlimit", 1000)[edge]) - _db(x[edge])
        assert loss[0] <= change <= loss[1], (len(x), change)
    telephone = counterfactuals.alter(_tone(2500), "bandlimit", 3400)
    assert _db(telephone) - _db(_tone(2500)) > -1.0  # inside the telephone band
    assert _db(counterfactuals.alter(_tone(5000), "bandlimit", 3400)) - _db(_tone(5000)) < -30


@pytest.mark.parametrize(("kind", "strength", "match"), [
    ("tempo", 0.0, "speed factor"), ("pitch", 30, "24 semitones"), ("bandlimit", 200, "upper edge"),
    ("noise", float("nan"), "signal-to-noise"), ("echo", 1, "unknown audio change")])
def test_bad_strengths_are_named(kind, strength, match):
    with pytest.raises(ValueError, match=match):
        counterfactuals.alter(_tone(220), kind, strength)


def test_names_round_trip():
    from loralens.precompute.intervene import Condition

    for kind, change in counterfactuals.CHANGES.items():
        for strength in change.strengths:
            condition = Condition(kind, strength=strength)
            assert Condition.parse(condition.name) == condition
    assert Condition.parse("noise@inf").strength == np.inf
    with pytest.raises(ValueError, match="KIND@STRENGTH"):
        Condition.parse("pitch@up")
