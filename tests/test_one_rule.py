"""One rule, one place: ``loralens predict`` reads the lens with the explorer's functions."""

from __future__ import annotations

import numpy as np

from loralens.analysis import lens


def test_predict_uses_the_lens_rules_of_the_explorer(tiny_runs, monkeypatch):
    from loralens.precompute.predict import Predictor

    calls = []
    real_depth, real_trajectory = lens.resolution_depth, lens.trajectory
    monkeypatch.setattr(lens, "resolution_depth", lambda x: calls.append("depth") or real_depth(x))
    monkeypatch.setattr(lens, "trajectory", lambda x: calls.append("trajectory") or real_trajectory(x))
    predictor = Predictor(tiny_runs["lora"], 0)
    result = predictor.predict(0.1 * np.sin(np.arange(16000) / 5).astype(np.float32))
    assert sorted(calls) == ["depth", "trajectory", "trajectory"]  # the pooled lens, and the lens per frame
    probabilities = np.array(result.probabilities)
    assert np.allclose(probabilities.sum(-1), 1, atol=1e-5) and 0 <= result.resolution_depth < len(probabilities)
