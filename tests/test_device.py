"""Devices and numeric regimes without a GPU: windowing, capture, a training step, prediction and tracing on the
meta device; a run's precision, fixed when it starts and followed by its trace.

A meta tensor has a device but no data. Mixing it with a CPU tensor raises the same "not on the expected device"
error as mixing CUDA and CPU tensors, so a tensor made on the CPU where the batch's device was meant fails here as
it failed on a GPU (issue #20). Meta tensors cannot be read (no ``.item()``, no NumPy): the capture paths stop at
``capture.to_numpy``, the one place results leave the device, which these tests replace with a check that every
tensor reaches it on the meta device (it returns zeros of the tensor's shape). What meta cannot show: numerics,
and reads of device values on the host (``.item()``, ``.cpu()``); ``tests/test_gpu.py`` covers those on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperForAudioClassification

from loralens.precompute import capture, models, windowing
from loralens.precompute.checkpoints import attach_lora, randomise_lora
from loralens.precompute.config import TrainConfig
from loralens.precompute.train import Trainer, batches, lr_schedule, train
from tests.conftest import tiny_config, write_tone_csv

META = torch.device("meta")


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000, 12000)]


def _lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = WhisperForAudioClassification(tiny_config()).eval()
    return attach_lora(model, TrainConfig(model="x", data="y", rank=4, alpha=8, targets=["v_proj", "fc1"])).eval()


@pytest.fixture()
def host_boundary(monkeypatch) -> list[torch.Tensor]:
    """``capture.to_numpy`` replaced by a check that its tensors arrive on the meta device; returns what it saw."""
    seen = []

    def to_numpy(tensor: torch.Tensor) -> np.ndarray:
        assert tensor.device == META, f"a {tuple(tensor.shape)} tensor left the device from {tensor.device}"
        seen.append(tensor)
        return np.zeros(tensor.shape, dtype=torch.empty(0, dtype=tensor.dtype).numpy().dtype)

    monkeypatch.setattr(capture, "to_numpy", to_numpy, raising=False)  # raising=False: runs on HEAD 3278351 too
    return seen


@pytest.mark.parametrize("window", ["trim", "full"])
@pytest.mark.parametrize("lengths_on", ["cpu", "meta"])
def test_pooling_mask_is_made_on_the_log_mel_device(window, lengths_on):
    features = windowing.Features(torch.zeros(2, 80, 8, device=META), torch.tensor([4, 2], device=lengths_on), window)
    mask = features.pooling_mask()
    assert mask.device == META and mask.shape == (2, 4)


def test_features_to_a_device_keeps_lengths_on_the_host():
    features = windowing.extract(models.feature_extractor(tiny_config()), _clips(), "trim").to(META)
    assert features.input_features.device == META
    assert features.n_frames.device.type == "cpu" and features.n_frames.tolist() == [50, 28, 38]


@pytest.mark.parametrize("window", ["trim", "full"])
def test_classify_on_a_device(window):
    model = _lora_model().to(META)
    features = windowing.extract(models.feature_extractor(model.config), _clips(), window).to(META)
    with torch.no_grad():
        logits = windowing.classify(model, features)
    assert logits.device == META and logits.shape == (3, 4)


@pytest.mark.parametrize("window", ["trim", "full"])
@pytest.mark.parametrize("labels_on", ["cpu", "meta"])
def test_capture_on_a_device(window, labels_on, host_boundary):
    model = _lora_model().to(META)
    features = windowing.extract(models.feature_extractor(model.config), _clips(), window).to(META)
    rows = capture.Capturer(model, window, capture.CaptureOptions()).run(
        features, torch.tensor([1, 2, 0], device=labels_on))
    assert len(rows) == 3 and host_boundary
    for row, n in zip(rows, features.n_frames.tolist(), strict=True):
        assert row["residual_pooled"].shape == (3, 32) and row["lens_logits_frames"].shape == (3, n, 4)
        assert row["lora_a_gradient"].shape == (4, n, 4) and row["lora_b_gradient"].shape == (4, n, 64)
        assert row["label"].dtype == np.int16 and row["prediction"].dtype == np.int16


def test_random_twin_of_a_model_on_a_device():
    model = _lora_model().to(META)
    randomise_lora(model, seed=1)
    assert {p.device for p in model.parameters()} == {META}


@pytest.mark.parametrize("method", ["lora", "frozen"])
@pytest.mark.parametrize("window", ["trim", "full"])
def test_training_step_on_a_device(tmp_path, tiny_model_dir, method, window):
    manifest = write_tone_csv(tmp_path)
    config = TrainConfig(model=str(tiny_model_dir), data=f"csv:{manifest}", method=method, window=window, epochs=1,
                         batch_size=4, rank=4, alpha=8, device="meta")
    trainer = Trainer(config, tmp_path / "run")
    trainer.prepare()
    assert trainer.config.precision == "fp32"  # auto: bf16 only on CUDA
    model, optimizer = trainer.build(seed=0)
    scheduler = lr_schedule(trainer.config, optimizer, steps_per_epoch=2, epochs_done=0)
    model.train()
    for chunk in batches(trainer.examples[:8], 4):
        loss = trainer.step(model, chunk, optimizer, scheduler)
        assert loss.device == META and loss.shape == ()
    assert {p.device for p in model.parameters()} == {META}
    assert all(v.device == META for state in optimizer.state.values() for k, v in state.items() if k != "step")


@pytest.fixture(scope="module")
def tiny_lora_run(tmp_path_factory, tiny_model_dir) -> tuple:
    """One fold of a tiny LoRA run (trained on the CPU) and its data."""
    root = tmp_path_factory.mktemp("device-run")
    manifest = write_tone_csv(root)
    run = root / "run"
    train(TrainConfig(model=str(tiny_model_dir), data=f"csv:{manifest}", epochs=1, batch_size=4, rank=4, alpha=8,
                      device="cpu"), run, only=[0])
    return run, manifest


def test_prediction_on_a_device(tiny_lora_run, host_boundary):
    from loralens.precompute.predict import Predictor

    run, _ = tiny_lora_run
    predictor = Predictor(run, device="meta")
    assert {p.device for p in predictor.model.parameters()} == {META}
    (result,) = predictor.predict_windows(_clips()[0], "clip")
    assert len(result.probabilities) == 3 and host_boundary


def test_trace_on_a_device(tiny_lora_run, tmp_path, host_boundary):
    from loralens.precompute.trace import Selection, Tracer

    run, manifest = tiny_lora_run
    tracer = Tracer(run, f"csv:{manifest}", str(tmp_path / "store.zarr"), selection=Selection(all=True),
                    device="meta")
    rows = tracer.prepare()
    assert tracer.capture(rows) == 2 * len(rows)  # trained and random twin
    assert all(tracer.writer.written(tracer.name, c)[rows].all() for c in tracer.checkpoints)


def test_precision_is_fixed_per_run_and_the_trace_follows_it(tiny_lora_run, tmp_path, tiny_model_dir, caplog):
    """``auto`` is saved resolved (fp32 on the CPU); a bf16 run is traced under bf16 and the agreement recorded.

    The full window: only the model runs under autocast, not the log-mel extraction.
    """
    import json

    from loralens.precompute.checkpoints import run_precision
    from loralens.precompute.config import RunError
    from loralens.precompute.trace import Selection, Tracer

    run, manifest = tiny_lora_run
    assert json.loads((run / "config.json").read_text())["precision"] == "fp32"
    assert json.loads((run / "fold_00" / "metrics.json").read_text())["precision"] == "fp32"
    bf16 = tmp_path / "bf16"
    train(TrainConfig(model=str(tiny_model_dir), data=f"csv:{manifest}", epochs=1, batch_size=4, rank=4, alpha=8,
                      window="full", device="cpu", precision="bf16"), bf16, only=[0])
    assert run_precision(bf16) == "bf16"
    store = str(tmp_path / "store.zarr")
    tracer = Tracer(bf16, f"csv:{manifest}", store, selection=Selection(all=True))
    rows = tracer.prepare()
    tracer.capture(rows)
    with caplog.at_level("INFO", logger="loralens.precompute"):
        assert all(tracer.commit(rows).values())
    attrs = tracer.writer.attrs("bf16", "trained")
    assert attrs["capture"]["precision"] == "bf16"
    agreement = attrs["prediction_agreement"]
    assert agreement["n_compared"] == len(rows) and agreement["train_precision"] == "bf16"
    assert agreement["rate"] == agreement["n_agree"] / len(rows) and "as training's predictions.csv" in caplog.text
    with pytest.raises(RunError, match="traced under bf16, not fp32"):
        Tracer(bf16, f"csv:{manifest}", store, selection=Selection(all=True), precision="fp32").capture(rows)
    # loralens predict reads a clip in the run's regime too, so its answer is the one training would give
    from loralens.precompute.predict import Predictor

    predictor = Predictor(bf16, 0)
    assert predictor.precision == "bf16" and predictor.capturer.options.precision == "bf16"
    assert Predictor(run, 0).capturer.options.precision == "fp32"
    assert predictor.predict(_clips()[0]).prediction in predictor.config.emotions


def test_runs_from_before_the_precision_setting(tiny_lora_run, tmp_path):
    """Their config.json has no precision: CUDA-trained folds ran under bf16, and they resume unchanged."""
    import json
    import shutil

    from loralens.precompute.checkpoints import run_precision

    old = tmp_path / "old"
    shutil.copytree(tiny_lora_run[0], old)
    config = json.loads((old / "config.json").read_text())
    del config["precision"]
    (old / "config.json").write_text(json.dumps(config))
    assert run_precision(old) == "fp32"
    metrics = json.loads((old / "fold_00" / "metrics.json").read_text())
    (old / "fold_00" / "metrics.json").write_text(json.dumps({**metrics, "device": "cuda:0"}))
    assert run_precision(old) == "bf16"
    config = TrainConfig.from_json(config)
    assert config.precision == "auto"
    train(config, old, only=[0])  # nothing left to train; a refusal would raise


@pytest.mark.parametrize("window", ["trim", "full"])
def test_interventions_on_a_device(window):
    """Every kind of condition (loralens intervene, the upload page) with the model and the batch on a device."""
    from loralens.precompute import intervene

    model, partner = _lora_model().to(META), _lora_model().to(META)
    features = windowing.extract(models.feature_extractor(model.config), _clips(), window).to(META)
    source = intervene.layer_outputs(partner, features)
    assert all(s.device == META for s in source)
    for name in ("none", "lora_off@0", "lora_only@1", "lora_off_from@1", "erase@0", "patch@1"):
        with intervene.applied(model, intervene.Condition.parse(name), source):
            probabilities, lens = intervene.outcome(model, features)
        assert probabilities.device == META and lens.device == META, name
        assert probabilities.shape == (3, 4) and lens.shape == (3, 3, 4), name


@pytest.mark.parametrize("command", [["train", "--model", "m", "--data", "d", "--out", "o"],
                                     ["import", "c", "--model", "m", "--data", "d", "--out", "o"],
                                     ["trace", "--run", "r", "--store", "s"],
                                     ["intervene", "--run", "r", "--store", "s"],
                                     ["predict", "--run", "r", "clip.wav"]])
def test_every_command_that_runs_a_model_takes_a_gpu_where_there_is_one(command):
    """``auto`` by default (CUDA where there is one): a command left at the CPU on a GPU machine wastes it."""
    from loralens.cli import build_parser

    assert build_parser().parse_args(command).device == "auto"
