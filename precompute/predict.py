"""Per-layer emotion predictions for new audio: ``loralens predict`` and the app's upload page.

This is the app's one entry point into torch; the app imports it lazily, only when a clip is uploaded.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from loralens.analysis import lens, occlusion  # pure NumPy: shared with the explorer and the report
from loralens.precompute import windowing
from loralens.precompute.audio import MAX_SECONDS, load_audio, prepare_speech, windows
from loralens.precompute.capture import CaptureOptions, Capturer
from loralens.precompute.checkpoints import load_fold_model, run_precision
from loralens.precompute.config import completed_folds, read_config
from loralens.precompute.models import feature_extractor
from loralens.precompute.train import resolve_device
from loralens.store.schema import SAMPLE_RATE, UserError


@dataclass
class Prediction:
    """What a checkpoint makes of one clip, layer by layer."""

    name: str
    """The clip's name."""
    emotions: list[str]
    """Class names in label order."""
    probabilities: list[list[float]]
    """Logit-lens class probabilities per boundary (0: embeddings), ``(n_boundaries, n_classes)``."""
    prediction: str
    """The model's final prediction."""
    resolution_depth: int
    """The first boundary from which the top-1 class no longer changes."""
    duration: float
    """Seconds of audio analysed."""
    residual_pooled: list[list[float]]
    """Pooled residual per boundary (for placing the clip on a map), ``(n_boundaries, d_model)``."""
    start: float = 0.0
    """Where the analysed audio starts in the clip, in seconds (speech trimmed of silence, clips over 30 s in
    windows)."""
    frame_probabilities: list[list[list[float]]] | None = None
    """The lens's class probabilities per boundary and encoder frame (20 ms), ``(n_boundaries, n_frames, n_classes)``:
    where in the clip each layer finds the evidence."""

    def to_json(self, with_vectors: bool = False) -> dict:
        """A JSON-able dict (without the residual vectors unless asked)."""
        out = asdict(self)
        if not with_vectors:
            out.pop("residual_pooled")
            out.pop("frame_probabilities")
        return out


class Predictor:
    """One fold's trained checkpoint, ready for clips."""

    def __init__(self, run: Path | str, fold: int | None = None, device: str = "cpu"):
        run = Path(run)
        self.run = run
        self.config = read_config(run)
        folds = completed_folds(run)
        if not folds:
            raise UserError(f"{run} has no completed fold to predict with; finish training first")
        self.fold = folds[0] if fold is None else fold
        self.device = resolve_device(device)
        self.model = load_fold_model(run, self.fold).to(self.device)
        # the run's own numeric regime, as loralens trace uses: predictions then match training's
        self.precision = run_precision(run)
        self.capturer = Capturer(self.model, self.config.window,
                                 CaptureOptions(gradients=False, precision=self.precision))
        self.extractor = feature_extractor(windowing.whisper_of(self.model).config)
        # The app shares one Predictor between its sessions (threads); an intervention switches adapters or hooks
        # a layer for the length of its forward pass, so no other pass may run meanwhile.
        self._lock = threading.Lock()

    @torch.no_grad()
    def predict(self, audio: np.ndarray, name: str = "clip", start: float = 0.0) -> Prediction:
        """Per-layer predictions for 16 kHz mono ``audio`` of at most 30 s."""
        if len(audio) > MAX_SECONDS * SAMPLE_RATE:
            raise ValueError(f"{name}: {len(audio) / SAMPLE_RATE:.1f} s is longer than Whisper's {MAX_SECONDS:.0f} s "
                             "window; use predict_windows")
        features = windowing.extract(self.extractor, [audio], self.config.window, device=self.device)
        with self._lock:
            (row,) = self.capturer.run(features, torch.zeros(1, dtype=torch.long, device=self.device))
        probs = lens.trajectory(row["lens_logits"])
        top = probs.argmax(-1)
        depth = int(lens.resolution_depth(row["lens_logits"][None])[0])
        emotions = list(self.config.emotions)
        frames = lens.trajectory(row["lens_logits_frames"].astype(np.float32))
        return Prediction(name, emotions, probs.round(6).tolist(), emotions[int(top[-1])], depth,
                          round(len(audio) / SAMPLE_RATE, 3), row["residual_pooled"].tolist(), round(start, 3),
                          frames.round(4).tolist())

    @torch.no_grad()
    def occlusion(self, audio: np.ndarray, batch_size: int = 8) -> occlusion.Occlusion:
        """What silencing each window of ``audio`` (16 kHz, at most 30 s) does to the model's prediction.

        Each masked copy runs through the model in the run's window and precision, as the clip does
        (``analysis.occlusion``); the drops are of the log-odds of the clip's predicted class.
        """
        bounds = occlusion.windows(len(audio))
        clips = [audio, *occlusion.masked(audio, bounds)]
        logits = []
        for i in range(0, len(clips), batch_size):
            features = windowing.extract(self.extractor, clips[i:i + batch_size], self.config.window,
                                         device=self.device)
            with self._lock, windowing.autocast(self.device, self.precision):
                logits.append(windowing.classify(self.model, features).float().cpu().numpy())
        logits = np.concatenate(logits)
        return occlusion.occlusion(logits[0], logits[1:], bounds, list(self.config.emotions))

    @torch.no_grad()
    def intervene(self, audio: np.ndarray, conditions: list[str], name: str = "clip") -> dict[str, np.ndarray]:
        """The clip's lens under each condition, as ``loralens intervene`` computes it for traced utterances.

        Args:
            audio: 16 kHz mono, at most 30 s.
            conditions: names (``precompute.intervene``: ``lora_off@3``, ``erase@0``, ``pitch@-2``, ...); ``patch``
                needs a partner's residuals on the same clip and is not offered for uploads.
            name: the clip's name, which seeds its noise (``counterfactuals.seed_of``).

        Returns:
            Condition name (``none`` first: the model as trained) -> class probabilities per boundary,
            ``(n_boundaries, n_classes)``.
        """
        from loralens.precompute import intervene

        chosen = [intervene.Condition.parse(c) for c in dict.fromkeys(["none", *conditions])]
        if patched := [c.name for c in chosen if c.kind == "patch"]:
            raise UserError(f"{patched[0]}: patching needs the partner run's residuals on the clip; not for uploads")
        features = windowing.extract(self.extractor, [audio], self.config.window, device=self.device)
        out = {}
        for condition in chosen:
            f = intervene.condition_features(condition, [audio], [name], features, self.extractor, self.config.window,
                                     self.device)
            with self._lock, intervene.applied(self.model, condition), windowing.autocast(self.device, self.precision):
                _, lens_logits = intervene.outcome(self.model, f)
            out[condition.name] = lens.trajectory(lens_logits[0].cpu().numpy())
        return out

    def predict_windows(self, audio: np.ndarray, name: str = "clip", offset: float = 0.0) -> list[Prediction]:
        """Per-layer predictions for each consecutive 30 s window of ``audio`` (one for a clip up to 30 s).

        ``offset``: where ``audio`` begins in the clip, in seconds (each prediction's ``start`` counts from the clip's).
        """
        parts = windows(audio)
        if len(parts) == 1:
            return [self.predict(parts[0][1], name, offset)]
        return [self.predict(part, f"{name} [{_clock(at)}-{_clock(at + len(part) / SAMPLE_RATE)}]", at)
                for at, part in ((offset + start, part) for start, part in parts)]

    def predict_clip(self, audio: np.ndarray, name: str = "clip") -> list[Prediction]:
        """Per-layer predictions for a recording: its speech prepared (``audio.prepare_speech``), per 30 s window.

        Raises:
            AudioError: silent audio, or too little speech.
        """
        speech = prepare_speech(audio, name)
        return self.predict_windows(speech.samples, name, speech.start)

    def predict_file(self, path: Path) -> list[Prediction]:
        """``predict_clip`` of an audio file (``AudioError`` for unusable or silent audio, or too little speech)."""
        return self.predict_clip(load_audio(path, long="keep"), Path(path).name)


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{seconds % 60:04.1f}"
