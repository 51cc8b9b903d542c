"""The causal lens's interventions on a tiny trained run: each condition does what it says, and nothing else."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from loralens.analysis.counterfactuals import CHANGES
from loralens.precompute import intervene, windowing
from loralens.precompute.audio import load_audio
from loralens.precompute.checkpoints import load_fold_model
from loralens.precompute.data import load_corpus
from loralens.precompute.models import feature_extractor
from loralens.store import schema


def _batch(run, window="trim"):
    config = json.loads((run / "config.json").read_text())
    clips = [load_audio(u.path) for u in load_corpus(config["data"], tuple(config["emotions"])).utterances[:5]]
    model = load_fold_model(run, 0)
    return model, windowing.extract(feature_extractor(windowing.whisper_of(model).config), clips, window)


@pytest.mark.parametrize("window", ["trim", "full"])
def test_lora_off_everywhere_is_the_frozen_encoder_under_loras_head(tiny_runs, window):
    model, features = _batch(tiny_runs["lora"], window)
    with model.disable_adapter(), torch.no_grad():  # PEFT's own switch: the base encoder, the fold's head
        expected = windowing.classify(model, features).softmax(-1)
    with intervene.applied(model, intervene.Condition("lora_off_from", 0)):
        probabilities, lens = intervene.outcome(model, features)
    assert torch.equal(probabilities, expected)
    assert torch.allclose(lens[:, -1].softmax(-1), probabilities, atol=1e-6)  # the last boundary is the output
    none, _ = intervene.outcome(model, features)
    assert not torch.equal(none, expected)  # the adapters are back on afterwards


def _adapters_zeroed(model, layers):
    """A copy of ``model`` whose LoRA adds nothing in the encoder ``layers``: their ``lora_B`` weights set to zero."""
    copy = deepcopy(model)
    encoder = windowing.whisper_of(copy).encoder
    for k in layers:
        zeroed = [p for name, p in encoder.layers[k].named_parameters() if "lora_B" in name]
        assert zeroed, f"layer {k} has no LoRA to zero"
        with torch.no_grad():
            for p in zeroed:
                p.zero_()
    return copy


def test_lora_only_and_off_are_the_model_with_those_adapters_zeroed(tiny_runs):
    """Each LoRA condition gives the outcome of a copy whose adapters in exactly those layers add nothing, and
    changes the outcome; the model is as before on leaving, also when the block raises."""
    model, features = _batch(tiny_runs["lora"])
    n = len(windowing.whisper_of(model).encoder.layers)
    before = intervene.outcome(model, features)
    for k in range(n):
        for kind, off in (("lora_off", {k}), ("lora_only", set(range(n)) - {k}), ("lora_off_from", set(range(k, n)))):
            with intervene.applied(model, intervene.Condition(kind, k)):
                probabilities, lens = intervene.outcome(model, features)
            expected_probabilities, expected_lens = intervene.outcome(_adapters_zeroed(model, off), features)
            assert torch.equal(probabilities, expected_probabilities) and torch.equal(lens, expected_lens), (kind, k)
            # The adapters it switched off did something (one epoch of training moves the lens by ~1e-5 here):
            # more than float32 rounding.
            assert (lens - before[1]).abs().max() > 1e-6, (kind, k)
            # Below the lowest layer switched off, the residual is the model's as trained.
            assert torch.equal(lens[:, : min(off) + 1], before[1][:, : min(off) + 1]), (kind, k)
            after = intervene.outcome(model, features)
            assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])  # restored on leaving
    with pytest.raises(RuntimeError, match="inside"), intervene.applied(model, intervene.Condition("lora_only", 1)):
        raise RuntimeError("inside")
    after = intervene.outcome(model, features)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])  # restored on an error too


@pytest.mark.parametrize("method", ["lora", "frozen"])
def test_erasing_a_layer_is_skipping_it(tiny_runs, method):
    model, features = _batch(tiny_runs[method])
    encoder = windowing.whisper_of(model).encoder
    for k in range(len(encoder.layers)):
        with intervene.applied(model, intervene.Condition("erase", k)):
            probabilities, lens = intervene.outcome(model, features)
        kept = encoder.layers[k]
        encoder.layers[k] = _Identity()
        try:
            expected, expected_lens = intervene.outcome(model, features)
        finally:
            encoder.layers[k] = kept
        assert torch.equal(probabilities, expected) and torch.equal(lens, expected_lens)
        assert torch.equal(lens[:, k + 1], lens[:, k])  # the residual passes layer k unchanged
    untouched, _ = intervene.outcome(model, features)
    with torch.no_grad():
        assert torch.equal(untouched, windowing.classify(model, features).softmax(-1))


@pytest.mark.parametrize(("target", "source"), [("lora", "frozen"), ("frozen", "lora")])
def test_patching_a_layer_carries_the_sources_residual_from_there(tiny_runs, target, source):
    """patch@k: the lens is the target's up to layer k, the source's residual at k + 1 under the target's head."""
    model, features = _batch(tiny_runs[target])
    partner = load_fold_model(tiny_runs[source], 0)
    donor = intervene.layer_outputs(partner, features)
    whisper = windowing.whisper_of(model)
    mask = features.pooling_mask()
    _, unpatched = intervene.outcome(model, features)
    for k in range(len(whisper.encoder.layers)):
        with intervene.applied(model, intervene.Condition("patch", k), donor):
            probabilities, lens = intervene.outcome(model, features)
        assert torch.equal(lens[:, : k + 1], unpatched[:, : k + 1])  # below the patch nothing changes
        with torch.no_grad():
            expected = windowing.head_logits(model, windowing.masked_mean(whisper.encoder.layer_norm(donor[k]), mask))
        assert torch.allclose(lens[:, k + 1], expected, atol=1e-5)  # boundary k + 1 is the source's residual
    # At the last boundary the patched model's final layer is the source's: its decision is the source's
    # residual read by the target's head.
    assert torch.allclose(probabilities, expected.softmax(-1), atol=1e-5)
    with intervene.applied(model, intervene.Condition("patch", 1), intervene.layer_outputs(model, features)):
        itself = intervene.outcome(model, features)
    assert torch.equal(itself[1], unpatched)  # patching a model with itself changes nothing
    with pytest.raises(ValueError, match="partner run's output"), \
            intervene.applied(model, intervene.Condition("patch", 0)):
        pass


def test_outcome_is_what_the_trace_stores(tiny_runs):
    """No condition: outcome's lens equals the capture's lens_logits, its probabilities the logits'."""
    from loralens.precompute.capture import CaptureOptions, Capturer

    model, features = _batch(tiny_runs["lora"])
    probabilities, lens = intervene.outcome(model, features)
    rows = Capturer(model, "trim", CaptureOptions(gradients=False)).run(features, torch.zeros(5, dtype=torch.long))
    for i, row in enumerate(rows):
        assert torch.allclose(lens[i], torch.from_numpy(row["lens_logits"]), atol=1e-5)
        assert torch.allclose(probabilities[i], torch.from_numpy(row["logits"]).softmax(-1), atol=1e-6)


def test_conditions_and_names(tiny_runs):
    lora, frozen = (load_fold_model(tiny_runs[m], 0) for m in ("lora", "frozen"))
    n = len(windowing.whisper_of(lora).encoder.layers)
    audio = sum(len(c.strengths) for c in CHANGES.values())
    assert len(intervene.conditions(lora)) == 4 * n + 1 + audio and len(intervene.conditions(frozen)) == n + 1 + audio
    assert len(intervene.conditions(lora, partner=True)) == 5 * n + 1 + audio
    assert {c.kind for c in intervene.conditions(frozen, partner=True)} == {"none", "erase", "patch", *CHANGES}
    assert [c.name for c in intervene.conditions(lora, ("pitch",), {"pitch": (0, 3)})] == ["pitch@0", "pitch@3"]
    assert intervene.conditions(lora)[0].name == "none" and intervene.Condition.parse("none").kind == "none"
    assert intervene.Condition.parse("lora_off@3") == intervene.Condition("lora_off", 3)
    with pytest.raises(ValueError, match="KIND@LAYER"):
        intervene.Condition.parse("erase")
    with pytest.raises(ValueError, match="unknown intervention"):
        intervene.Condition.parse("mute@1")
    with pytest.raises(ValueError, match="no LoRA"), intervene.applied(frozen, intervene.Condition("lora_off", 0)):
        pass
    with pytest.raises(ValueError, match="layers 0 to"), intervene.applied(lora, intervene.Condition("erase", n)):
        pass


class _Identity(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def test_intervene_command_into_the_store_and_resume(tiny_runs, tmp_path, capsys):
    """loralens intervene: every condition of every traced utterance into the store; a rerun redoes what is missing."""
    from loralens.cli import main
    from loralens.store.reader import StoreReader
    from loralens.store.validate import validate

    run, store = tiny_runs["lora"], str(tmp_path / "s.zarr")
    assert main(["trace", "--run", str(run), "--store", store, "--per-class", "2", "--no-summary"]) == 0
    capsys.readouterr()
    assert main(["intervene", "--run", str(run), "--store", store]) == 0
    printed = capsys.readouterr().out
    reader = StoreReader(store)
    result = reader.interventions("tiny-lora")
    n = len(windowing.whisper_of(load_fold_model(run, 0)).encoder.layers)
    audio = sum(len(c.strengths) for c in CHANGES.values())
    assert result.done.all() and len(result.conditions) == 4 * n + 1 + audio and result.conditions[0] == "none"
    assert result.rows.tolist() == np.flatnonzero(reader.written("tiny-lora")).tolist()
    # none is the trace; the last boundary of every lens is that condition's output.
    logits = reader.read("tiny-lora", "trained", "logits", result.rows.tolist())
    assert np.allclose(result.probabilities[0], torch.from_numpy(logits).softmax(-1).numpy(), atol=1e-5)
    assert np.allclose(torch.from_numpy(result.lens_logits[:, :, -1]).softmax(-1).numpy(), result.probabilities,
                       atol=1e-5)
    assert "none" in printed and f"erase@{n - 1}" in printed
    assert validate(store).ok
    # The Causal page draws them: the heatmap (exported like every chart) and the utterances a condition flips.
    from streamlit.testing.v1 import AppTest

    from loralens.analysis import causal

    page = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=300)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORALENS_STORE", store)
        at = page.run()
        at.switch_page("sections/causal.py").run()
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        keys = [b.proto.id for b in at.get("download_button")]
        assert all(any(k.endswith(f"ca-{kind}") for k in keys) for kind in ("csv", "svg", "png")), keys
        metrics = causal.metrics(result.conditions, result.probabilities,
                                 reader.read("tiny-lora", "trained", "label", result.rows.tolist()).astype(int))
        worst = metrics.iloc[1:].sort_values("flipped").iloc[-1]
        at.selectbox(key="ca-condition").set_value(worst["condition"]).run()
        shown = next(t.value for t in [*at.table, *at.dataframe] if f"under {worst['condition']}" in t.value.columns)
        assert len(shown) == round(worst["flipped"] * len(result.rows))
        at.radio(key="ca-measure").set_value("kl").run()
        assert not at.exception
        # The URL holds the view: a link reopens the same measure and condition.
        assert at.query_params["measure"] in ("kl", ["kl"])
        assert at.query_params["condition"] in (worst["condition"], [worst["condition"]])
        linked = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=300)
        linked.query_params["measure"] = "flipped"
        linked.query_params["condition"] = worst["condition"]
        reopened = linked.run()
        reopened.switch_page("sections/causal.py").run()
        assert reopened.radio(key="ca-measure").value == "flipped"
        assert reopened.selectbox(key="ca-condition").value == worst["condition"]
    # Resume: a condition whose mark is gone is computed again, alone, to the same values.
    erase0 = result.conditions.index("erase@0")
    before = result.probabilities[erase0].copy()
    group = StoreReader(store, mode="a").root[f"runs/tiny-lora/{schema.INTERVENTIONS_GROUP}"]
    group["done"][erase0] = 0
    group["probabilities"][erase0] = 0
    assert main(["intervene", "--run", str(run), "--store", store]) == 0
    again = StoreReader(store).interventions("tiny-lora")
    assert again.done.all() and np.array_equal(again.probabilities[erase0], before)


def test_intervene_needs_a_traced_run(tiny_runs, tmp_path):
    from loralens.precompute.config import RunError

    with pytest.raises(RunError, match="trace it first"):
        intervene.run(tiny_runs["frozen"], str(tmp_path / "none.zarr"))


def test_zero_strength_audio_is_the_original_and_more_kinds_are_appended(tiny_runs, tmp_path):
    """An audio change at its identity strength reproduces the model as trained; a rerun asking for more conditions
    (patching from the frozen run) keeps what is there and adds them."""
    from loralens.cli import main
    from loralens.precompute.config import RunError
    from loralens.store.reader import StoreReader

    lora, frozen, store = tiny_runs["lora"], tiny_runs["frozen"], str(tmp_path / "s.zarr")
    assert main(["trace", "--run", str(lora), "--store", store, "--per-class", "2", "--no-summary"]) == 0
    assert main(["intervene", "--run", str(lora), "--store", store, "--kinds", "pitch,none,noise,loudness",
                 "--strength", "pitch=0,3", "--strength", "noise=inf", "--strength", "loudness=0,-30"]) == 0
    first = StoreReader(store).interventions("tiny-lora")
    assert first.conditions == ["none", "pitch@0", "pitch@3", "noise@inf", "loudness@0", "loudness@-30"]
    for same in (1, 3, 4):
        assert np.array_equal(first.probabilities[same], first.probabilities[0])
        assert np.array_equal(first.lens_logits[same], first.lens_logits[0])
    assert not np.array_equal(first.probabilities[2], first.probabilities[0])  # a real change changes something
    assert first.partner is None
    with pytest.raises(RunError, match="--partner"):
        intervene.run(lora, store, kinds=("patch",))
    assert main(["intervene", "--run", str(lora), "--store", store, "--kinds", "patch",
                 "--partner", str(frozen)]) == 0
    second = StoreReader(store).interventions("tiny-lora")
    n = len(windowing.whisper_of(load_fold_model(lora, 0)).encoder.layers)
    assert second.conditions == first.conditions + [f"patch@{k}" for k in range(n)] and second.done.all()
    assert np.array_equal(second.probabilities[: len(first.conditions)], first.probabilities)
    assert second.partner == "tiny-frozen"
    # Another partner of the same name (another seed's run, say): the patches are computed again from it.
    import shutil

    other = tmp_path / "elsewhere" / frozen.name
    shutil.copytree(frozen, other)
    key = StoreReader(store).root[f"runs/tiny-lora/{schema.INTERVENTIONS_GROUP}"].attrs["partner_key"]
    computed = []
    real_outcome = intervene.outcome
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(intervene, "outcome", lambda *a: computed.append(1) or real_outcome(*a))
        intervene.run(lora, store, kinds=("patch",), partner=other)
    assert computed and StoreReader(store).root[f"runs/tiny-lora/{schema.INTERVENTIONS_GROUP}"].attrs[
        "partner_key"] != key
    third = StoreReader(store).interventions("tiny-lora")
    assert third.done.all() and np.allclose(third.probabilities, second.probabilities, atol=1e-6)  # same weights
    # patch@k leaves the boundaries up to k as trained and changes the decision from there.
    for k in range(n):
        patched = second.lens_logits[second.conditions.index(f"patch@{k}")]
        assert np.allclose(patched[:, : k + 1], second.lens_logits[0][:, : k + 1], atol=1e-6)
        assert not np.array_equal(patched[:, k + 1], second.lens_logits[0][:, k + 1])  # (one epoch: barely apart)
    # The Causal page: an audio condition plays beside the original, its slider moves the strength, and the
    # utterance's trajectory under it is drawn over the original.
    from streamlit.testing.v1 import AppTest

    page = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=300)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORALENS_STORE", store)
        at = page.run()
        at.switch_page("sections/causal.py").run()
        at.selectbox(key="ca-condition").set_value("pitch@3").run()
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        assert len(at.get("audio")) == 2
        at.select_slider(key="ca-strength").set_value(0.0).run()
        assert at.selectbox(key="ca-condition").value == "pitch@0" and not at.exception
        assert at.query_params["condition"] in ("pitch@0", ["pitch@0"])
        at.selectbox(key="ca-condition").set_value("patch@0").run()
        assert len(at.get("audio")) == 0 and not at.exception
        keys = [b.proto.id for b in at.get("download_button")]
        assert any(k.endswith("ca-trajectory-csv") for k in keys) and any(k.endswith("ca-audio-csv") for k in keys)
        # While only the model as trained is done, the page says so and waits.
        group = StoreReader(store, mode="a").root[f"runs/tiny-lora/{schema.INTERVENTIONS_GROUP}"]
        group["done"][1:] = 0
        import streamlit

        streamlit.cache_data.clear()  # the page's reads are cached in this process (30 s) from the runs above
        partial = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=300)
        partial.run().switch_page("sections/causal.py").run()
        assert not partial.exception and any("Only the model as trained" in i.value for i in partial.info)


def test_an_upload_under_interventions(tiny_runs):
    """The upload page's conditions: as trained is the clip's prediction, each condition what outcome gives."""
    from scipy.special import softmax

    from loralens.precompute.predict import Predictor

    run = tiny_runs["lora"]
    config = json.loads((run / "config.json").read_text())
    audio = load_audio(load_corpus(config["data"], tuple(config["emotions"])).utterances[0].path)
    predictor = Predictor(run, 0)
    under = predictor.intervene(audio, ["erase@1", "pitch@0", "lora_off_from@0"], "clip.wav")
    assert list(under) == ["none", "erase@1", "pitch@0", "lora_off_from@0"]
    assert np.allclose(under["none"], predictor.predict(audio).probabilities, atol=1e-6)
    assert np.array_equal(under["pitch@0"], under["none"])
    features = windowing.extract(predictor.extractor, [audio], "trim")
    for name in ("erase@1", "lora_off_from@0"):
        with intervene.applied(predictor.model, intervene.Condition.parse(name)):
            _, lens = intervene.outcome(predictor.model, features)
        assert np.allclose(under[name], softmax(lens[0].numpy().astype(np.float64), -1), atol=1e-6)
        assert not np.allclose(under[name], under["none"], atol=1e-7)
    with pytest.raises(ValueError, match="not for uploads"):
        predictor.intervene(audio, ["patch@0"])


def test_intervene_reads_its_batches_as_it_goes(tiny_runs, tmp_path, monkeypatch):
    """Audio and log-mel are held per batch, not for the whole run (on the device, at IEMOCAP's size, gigabytes):
    when the first batch is computed only a few batches have been read, and the results are the same."""
    from loralens.cli import main
    from loralens.store.reader import StoreReader

    run, store = tiny_runs["lora"], str(tmp_path / "s.zarr")
    assert main(["trace", "--run", str(run), "--store", store, "--per-class", "4", "--no-summary"]) == 0
    events = []
    real_load, real_outcome = intervene.load_audio, intervene.outcome
    monkeypatch.setattr(intervene, "load_audio", lambda *a, **k: events.append("read") or real_load(*a, **k))
    monkeypatch.setattr(intervene, "outcome", lambda *a, **k: events.append("model") or real_outcome(*a, **k))
    assert main(["intervene", "--run", str(run), "--store", store, "--kinds", "erase", "--batch-size", "2"]) == 0
    n_rows = len(StoreReader(store).interventions("tiny-lora").rows)
    assert n_rows == 16 and events.count("model") >= n_rows // 2
    assert events.index("model") <= 3 * 2  # the first batch computed once at most three (of eight) were read


def test_the_causal_lens_of_a_bf16_run_reads_the_lens_as_the_trace_stores_it(tmp_path, tiny_model_dir):
    """One logit lens, computed in float32 outside autocast: the trace's and the causal lens's (and predict's) agree
    on a bf16 run, so 'none' is the stored lens exactly (inside bf16 autocast they differed by bf16's rounding)."""
    from loralens.cli import main
    from loralens.precompute.config import TrainConfig
    from loralens.precompute.train import train
    from loralens.store.reader import StoreReader
    from tests.conftest import write_tone_csv

    manifest = write_tone_csv(tmp_path)
    run, store = tmp_path / "bf16", str(tmp_path / "s.zarr")
    train(TrainConfig(model=str(tiny_model_dir), data=f"csv:{manifest}", epochs=1, batch_size=4, rank=4, alpha=8,
                      folds="2", device="cpu", precision="bf16"), run)
    assert main(["trace", "--run", str(run), "--store", store, "--per-class", "2", "--no-summary"]) == 0
    assert main(["intervene", "--run", str(run), "--store", store, "--kinds", "erase"]) == 0
    reader = StoreReader(store)
    result = reader.interventions("bf16")
    stored = reader.read("bf16", "trained", "lens_logits", result.rows.tolist())
    np.testing.assert_allclose(result.lens_logits[0], stored, atol=1e-6)  # condition 0: none
