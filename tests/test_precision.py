"""The GPU tests' tolerance rule, checked where there is no GPU: a bf16 trace on the CPU against the fp32 one."""

from __future__ import annotations

import numpy as np
import pytest

from loralens.cli import main
from loralens.store.reader import StoreReader
from tests.conftest import write_tone_csv
from tests.test_gpu import TOLERANCE, slice_deviation


@pytest.mark.parametrize("window", ["trim", "full"])
def test_a_bf16_trace_is_within_tolerance_per_slice_and_a_wrong_small_module_is_not(tiny_model_dir, tmp_path,
                                                                                     window, capsys):
    tones = write_tone_csv(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--data", f"csv:{tones}", "--out", str(run), "--epochs",
                 "1", "--batch-size", "4", "--rank", "4", "--alpha", "8", "--only-folds", "0", "--window", window,
                 "--device", "cpu"]) == 0
    stores = {}
    for precision in ("fp32", "bf16"):
        stores[precision] = str(tmp_path / f"{precision}.zarr")
        assert main(["trace", "--run", str(run), "--store", stores[precision], "--all", "--device", "cpu",
                     "--precision", precision, "--no-summary"]) == 0
    fp32, bf16 = StoreReader(stores["fp32"]), StoreReader(stores["bf16"])
    worst = {}
    for checkpoint in ("trained", "random_twin"):
        for name in sorted(fp32.group("run", checkpoint).array_keys()):
            if name in ("written", "sampled", "fold", "label", "prediction"):
                continue
            a = fp32.read("run", checkpoint, name)
            worst[f"{checkpoint}/{name}"] = slice_deviation(a, bf16.read("run", checkpoint, name))
    with capsys.disabled():
        print(f"\n{window}: largest slice deviations of bf16 from fp32:",
              ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items(), key=lambda kv: -kv[1])[:4]))
    assert max(worst.values()) <= TOLERANCE["bf16"], worst
    # A LoRA module whose B output is scaled to a fraction of the array's largest value, then lost: the old rule
    # (the largest difference over the largest value) passed it; per slice it is the whole slice.
    b = fp32.read("run", "trained", "lora_b_activation").astype(np.float64)
    small = b.copy()
    small[:, 1] *= 1e-3
    lost = small.copy()
    lost[:, 1] = 0.0
    assert np.abs(lost - small).max() / np.abs(small).max() < TOLERANCE["bf16"]
    assert slice_deviation(small, lost) == pytest.approx(1.0)
