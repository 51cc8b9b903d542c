"""Structured random traces of whisper-large-v2 emotion classifiers on an IEMOCAP-like corpus (for bench/scale.py).

Nothing is traced: every array is drawn, seeded by (seed, row, stream), so a row reads the same whichever process
draws it and disjoint rows can be drawn in separate processes. The geometry is large-v2's (32 layers, d_model 1280,
80 mel bins, 50 encoder frames per second, trim window) with a LoRA run (r=32 on v_proj; checkpoints ``trained``
and ``random_twin``) and a frozen run. What is random and what is structured:

- Utterances: 10 speakers (Ses01F .. Ses05M; a speaker's fold is the utterance's), emotions in IEMOCAP's 4-class
  shares (excitement merged into happiness), durations log-normal (mean 4.5 s, clipped to 0.5..30 s). Audio: a
  harmonic tone whose pitch follows the speaker's sex and the emotion (higher and livelier for anger and happiness,
  flatter for sadness) under a syllable-rate envelope, plus noise; its log-mel is computed as ``loralens trace``
  does (``precompute.trace.log_mel_input``).
- Pooled residual ``(boundary, d_model)``: a fixed mean per boundary whose norm grows with depth; a random walk over
  depth shared by the runs (the content: LoRA and frozen agree early, so their layer x layer CKA falls late); a
  speaker direction that fades with depth; a walk of the checkpoint's own that grows late (LoRA diverges from the
  frozen encoder there); and an emotion direction growing as a sigmoid of depth (half-way at layer 23 for LoRA, 21
  for frozen, 27 for the random twin). The emotion is the true one for a share of utterances (the checkpoint's
  accuracy) and another otherwise, from a per-utterance draw the runs share (hard utterances are hard for all).
- Logit lens ``(boundary, class)``: the pooled residual layer-normed and read by a head whose rows are the emotion
  directions, so the top-1 class settles where the emotion direction outgrows the walk (resolution depth for LoRA:
  mean 19, median 21 of 32; the frozen run settles about 2 layers earlier). ``logits`` are the last boundary's
  lens, ``prediction`` their argmax. Per frame: the pooled lens plus noise smoothed over frames.
- Per-frame residual (sampled rows, for stores of schema 6 and before, which kept it): the pooled residual plus
  zero-mean frame noise.
- Contributions ``(layer, frame)``: norm ratios log-normal around a profile rising with depth (clipped to 0.05..1),
  cosines around a profile falling with depth (clipped to -0.5..0.5); LoRA adds growth past layer ~21 and a more
  negative cosine there (the paper's late-layer contribution growth against the residual). Block ratio and cosine
  combine the attention and MLP ones as vectors would (cos(a, m) = 0.1).
- LoRA A activation ``(module, frame, rank)``: a per-utterance latent (an emotion code growing with depth, plus
  utterance noise) plus frame noise, through a fixed per-(fold, module) map: for ``trained`` a decaying spectrum
  (s_k = exp(-k / 4), a few dominant directions: effective rank about 5 of 32) then a rotation; for ``random_twin``
  a nearly flat one (s_k = exp(-k / 40): full rank, about 26). B activation = A activation @ B^T (B fixed per fold
  and module: N(0, 0.3^2 / r) for ``trained``, N(0, 0.02^2) for the twin) plus 1 % noise. Gradients: d loss / d B
  output per frame = a per-utterance scale (log-normal with sigma 1.2, heavy-tailed, larger in late layers, about
  1e-7..1e-3) times (8 fixed directions plus isotropic noise: dispersed); d loss / d A output = that @ B (the chain
  rule). Pooled A and B are the frame means; rows without frames draw the frame noise's mean directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy.ndimage import uniform_filter1d

GEOMETRY = os.environ.get("LORALENS_BENCH_GEOMETRY", "large-v2")
"""The model whose shapes the traces take: ``large-v2`` (the default), or ``base`` (6 layers, d_model 512, for the
write speed of base-size rows; its depths are large-v2's profiles scaled to 6 layers)."""
if GEOMETRY not in ("large-v2", "base"):
    raise SystemExit(f"LORALENS_BENCH_GEOMETRY={GEOMETRY!r}; expected large-v2 or base")
N_LAYERS, D_MODEL = {"large-v2": (32, 1280), "base": (6, 512)}[GEOMETRY]
N_MELS, RANK, ALPHA = 80, 32, 64.0
DEPTH = N_LAYERS / 32
"""The profiles' depths (layer 23 of 32, ...) scale by this."""
EMOTIONS = ("anger", "happiness", "neutral", "sadness")
EMOTION_SHARES = np.array([1103, 1636, 1708, 1084]) / 5531
"""IEMOCAP's four classes with excitement merged into happiness (5,531 utterances)."""
SPEAKERS = tuple(f"Ses{s:02d}{g}" for s in range(1, 6) for g in "FM")
SAMPLE_RATE, FRAMES_PER_SECOND = 16000, 50
MODEL, DATA = f"openai/whisper-{GEOMETRY}", "iemocap:/data/IEMOCAP_full_release"
BOUNDARIES = np.arange(N_LAYERS + 1, dtype=np.float32)
LAYERS = BOUNDARIES[:-1]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@dataclass(frozen=True)
class Utterance:
    """One row of the simulated corpus."""

    row: int
    id: str
    speaker: int
    """Index into ``SPEAKERS``."""
    emotion: int
    """Index into ``EMOTIONS``."""
    n_samples: int
    n_frames: int
    fold: int
    """The fold whose model traced it: its speaker's."""


def corpus(n: int, folds: int, seed: int) -> list[Utterance]:
    """``n`` utterances; speaker ``j``'s fold is ``j * folds // 10`` (10 folds: leave one speaker out)."""
    rng = np.random.default_rng([seed, 0])
    speakers = rng.integers(len(SPEAKERS), size=n)
    emotions = rng.choice(len(EMOTIONS), size=n, p=EMOTION_SHARES)
    seconds = np.clip(rng.lognormal(np.log(4.5) - 0.7**2 / 2, 0.7, size=n), 0.5, 30.0)
    kinds = rng.choice(["impro", "script"], size=n)
    dialogs = rng.integers(1, 9, size=n)
    out, count = [], {}
    for i in range(n):
        s = SPEAKERS[speakers[i]]
        count[s] = count.get(s, -1) + 1
        n_samples = int(round(seconds[i] * SAMPLE_RATE))
        uid = f"iemocap/{s[:5]}{'FM'[i % 2]}_{kinds[i]}{dialogs[i]:02d}_{s[5]}{count[s]:03d}"
        out.append(Utterance(i, uid, int(speakers[i]), int(emotions[i]), n_samples,
                             max(1, -(-(n_samples // 160) // 2)), int(speakers[i]) * folds // len(SPEAKERS)))
    return out


def audio(u: Utterance, seed: int) -> np.ndarray:
    """A speech-like clip: harmonics of a wandering pitch under a syllable envelope, plus noise. ``(n_samples,)``."""
    rng = np.random.default_rng([seed, u.row, 1])
    t = np.arange(u.n_samples, dtype=np.float32) / SAMPLE_RATE
    lift, wander = {0: (1.25, 0.15), 1: (1.2, 0.2), 2: (1.0, 0.06), 3: (0.9, 0.04)}[u.emotion]
    f0 = (210.0 if SPEAKERS[u.speaker].endswith("F") else 115.0) * lift
    pitch = f0 * (1 + wander * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 9))
    syllables = np.abs(uniform_filter1d(rng.standard_normal(u.n_samples // 800 + 2), 3))  # 20 Hz control rate
    envelope = np.interp(t, np.arange(len(syllables)) / 20, syllables)
    x = 0.12 * envelope * voice + 0.004 * rng.standard_normal(u.n_samples)
    return np.clip(x, -1, 1).astype(np.float32)


@dataclass(frozen=True)
class Profile:
    """How one checkpoint's traces are drawn."""

    accuracy: float
    """Share of utterances whose residual carries their true emotion."""
    emerges: float
    """The layer where the emotion direction reaches half its size."""
    gain: float
    """The emotion direction's size at the last boundary."""
    divergence: float
    """Size of the checkpoint's own late walk (0: the frozen encoder's residual)."""
    growth: float
    """Late-layer growth of the relative contributions."""
    late_cosine: float
    """Late-layer shift of the contribution cosines."""
    lora: Literal["trained", "random_twin"] | None
    """Which LoRA maps it draws, if any."""


PROFILES: dict[tuple[str, str], Profile] = {
    ("lora", "trained"): Profile(0.72, 23.0, 30.0, 1.0, 0.3, -0.3, "trained"),
    ("lora", "random_twin"): Profile(0.4, 27.0, 14.0, 0.1, 0.02, -0.02, "random_twin"),
    ("frozen", "trained"): Profile(0.62, 21.0, 24.0, 0.0, 0.0, 0.0, None),
}


class Simulator:
    """Draws every array of a row for a checkpoint (``PROFILES``) of the simulated runs."""

    def __init__(self, seed: int):
        self.seed = seed
        rng = np.random.default_rng([seed, 2])
        basis, _ = np.linalg.qr(rng.standard_normal((D_MODEL, 5 + len(SPEAKERS))))
        self.emotion_dirs = basis[:, :4].T.astype(np.float32)  # (class, d_model), orthonormal
        mean_dir = basis[:, 4]
        self.speaker_dirs = (basis[:, 5:].T * 4.0).astype(np.float32)
        # A mean per boundary, growing with depth, orthogonal to the emotion directions (the head reads none of it).
        self.mean = (np.outer(1 + BOUNDARIES / 6, mean_dir) * 60.0
                     + rng.standard_normal((N_LAYERS + 1, D_MODEL)) * 2.0).astype(np.float32)
        self.mean -= (self.mean @ self.emotion_dirs.T) @ self.emotion_dirs
        self.codes = np.zeros((len(EMOTIONS), RANK), np.float32)  # emotion codes in A's top latent directions
        self.codes[:, :6] = rng.standard_normal((len(EMOTIONS), 6)) * 1.5

    # -- shared per utterance --------------------------------------------------------------------------------
    def _expressed(self, u: Utterance, accuracy: float) -> tuple[int, float]:
        rng = np.random.default_rng([self.seed, u.row, 3])
        draw, other, ease = rng.random(), rng.integers(1, len(EMOTIONS)), np.exp(0.3 * rng.standard_normal())
        return (u.emotion if draw < accuracy else (u.emotion + other) % len(EMOTIONS)), float(ease)

    def _content(self, u: Utterance) -> np.ndarray:
        rng = np.random.default_rng([self.seed, u.row, 4])
        return np.cumsum(rng.standard_normal((N_LAYERS + 1, D_MODEL), dtype=np.float32), axis=0)

    # -- pooled residual and lens ----------------------------------------------------------------------------
    def pooled(self, u: Utterance, p: Profile, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Residual at every boundary and its lens: ``residual_pooled`` ``(33, 1280)``, ``lens_logits`` ``(33, 4)``,
        ``logits``, ``prediction``, and ``expressed`` / ``ease`` for the LoRA draws."""
        expressed, ease = self._expressed(u, p.accuracy)
        residual = self.mean + self._content(u)
        residual += (3.0 * (1 - 0.7 * BOUNDARIES / N_LAYERS))[:, None] * self.speaker_dirs[u.speaker]
        if p.divergence:
            own = np.cumsum(rng.standard_normal((N_LAYERS + 1, D_MODEL), dtype=np.float32), axis=0)
            residual += (p.divergence * (BOUNDARIES / N_LAYERS) ** 2)[:, None] * own
        size = p.gain * ease * _sigmoid((BOUNDARIES - p.emerges * DEPTH) / (1.5 * DEPTH))
        residual += size[:, None] * self.emotion_dirs[expressed]
        normed = residual - residual.mean(1, keepdims=True)
        normed /= normed.std(1, keepdims=True)
        lens = 3.0 * normed @ self.emotion_dirs.T
        return {"residual_pooled": residual, "lens_logits": lens, "logits": lens[-1],
                "prediction": np.int16(lens[-1].argmax()), "expressed": expressed, "ease": ease}

    def prediction(self, u: Utterance, p: Profile) -> int:
        """The checkpoint's prediction for ``u`` (as ``arrays`` draws it; for the runs' metrics)."""
        return int(self.pooled(u, p, self._rng(u, p))["prediction"])

    def _rng(self, u: Utterance, p: Profile) -> np.random.Generator:
        return np.random.default_rng([self.seed, u.row, 10 + list(PROFILES.values()).index(p)])

    # -- a row ---------------------------------------------------------------------------------------------------
    def arrays(self, u: Utterance, p: Profile, frames: bool) -> dict[str, np.ndarray]:
        """Every array ``StoreWriter.write`` takes for one row; the sampled per-frame ones only with ``frames``."""
        rng = self._rng(u, p)
        out = self.pooled(u, p, rng)
        expressed, ease = out.pop("expressed"), out.pop("ease")
        out.update(fold=np.int16(u.fold), label=np.int16(u.emotion))
        n = u.n_frames
        def smooth(shape: tuple[int, ...], width: int) -> np.ndarray:  # unit-variance noise, smoothed over frames
            return uniform_filter1d(rng.standard_normal(shape, dtype=np.float32), width, axis=-1) * np.sqrt(width)

        out["lens_logits_frames"] = (out["lens_logits"][:, None, :]
                                     + smooth((N_LAYERS + 1, len(EMOTIONS), n), 9).transpose(0, 2, 1))
        out.update(self._contributions(p, n, smooth))
        from loralens.store.schema import CHECKPOINT_ARRAYS  # here: bench/scale.py --baseline swaps the store first

        if frames and "residual" in CHECKPOINT_ARRAYS:  # a store of schema 6 or before (--baseline)
            noise = rng.standard_normal((N_LAYERS + 1, n, D_MODEL), dtype=np.float32)
            noise -= noise.mean(1, keepdims=True)
            noise *= (0.5 * np.sqrt(BOUNDARIES + 1))[:, None, None]
            out["residual"] = noise + out["residual_pooled"][:, None, :]
        if p.lora:
            out.update(self._lora(u, p, rng, expressed, ease, frames))
        return out

    @staticmethod
    def _contributions(p: Profile, n: int, smooth) -> dict[str, np.ndarray]:
        depth, late = LAYERS / (N_LAYERS - 1), _sigmoid((LAYERS - 21 * DEPTH) / (2 * DEPTH))
        ratio_a = 0.12 + 0.08 * depth + 0.8 * p.growth * late
        ratio_m = 0.18 + 0.12 * depth + p.growth * late
        cos_a = -0.02 - 0.08 * depth + 0.7 * p.late_cosine * late
        cos_m = 0.05 - 0.15 * depth + p.late_cosine * late
        noise = smooth((4, N_LAYERS, n), 5)
        ra = np.clip(ratio_a[:, None] * np.exp(0.3 * noise[0]), 0.05, 1)
        rm = np.clip(ratio_m[:, None] * np.exp(0.3 * noise[1]), 0.05, 1)
        ca = np.clip(cos_a[:, None] + 0.07 * noise[2], -0.5, 0.5)
        cm = np.clip(cos_m[:, None] + 0.07 * noise[3], -0.5, 0.5)
        block = np.sqrt(ra**2 + rm**2 + 0.2 * ra * rm)
        return {"attention_norm_ratio": ra, "attention_cosine": ca, "mlp_norm_ratio": rm, "mlp_cosine": cm,
                "block_norm_ratio": np.clip(block, 0.05, 1), "block_cosine": np.clip((ra * ca + rm * cm) / block,
                                                                                      -0.5, 0.5)}

    def _lora(self, u: Utterance, p: Profile, rng: np.random.Generator, expressed: int, ease: float,
              frames: bool) -> dict[str, np.ndarray]:
        maps = _lora_maps(self.seed, u.fold, p.lora)
        a_map, b_map = maps["a"], maps["b"]  # (module, rank, rank), (module, d_out, rank)
        code = 1.0 if p.lora == "trained" else 0.3
        size = code * ease * _sigmoid((LAYERS - p.emerges * DEPTH) / (1.5 * DEPTH))
        latent = (size[:, None] * self.codes[expressed]
                  + 0.5 * (rng.standard_normal(RANK, dtype=np.float32) + rng.standard_normal((N_LAYERS, RANK),
                                                                                           dtype=np.float32)))
        out = {}
        if frames:
            n = u.n_frames
            wiggle = rng.standard_normal((N_LAYERS, n, RANK), dtype=np.float32)
            a = np.matmul(latent[:, None, :] + wiggle, a_map)  # (module, frame, rank)
            b = np.matmul(a, b_map.transpose(0, 2, 1))
            b += 0.01 * b.std() * rng.standard_normal(b.shape, dtype=np.float32)
            scale = (1e-5 * np.exp(1.2 * rng.standard_normal()) * (2.0 if p.lora == "random_twin" else 1.0)
                     * (0.3 + 0.7 * LAYERS / (N_LAYERS - 1))).astype(np.float32)
            b_grad = np.matmul(rng.standard_normal((N_LAYERS, n, 8), dtype=np.float32), maps["grad"])
            b_grad += 0.15 * rng.standard_normal(b_grad.shape, dtype=np.float32)
            b_grad *= scale[:, None, None]
            out.update(lora_a_activation=a, lora_b_activation=b, lora_b_gradient=b_grad,
                       lora_a_gradient=np.matmul(b_grad, b_map), lora_a_pooled=a.mean(1), lora_b_pooled=b.mean(1))
        else:
            wiggle = rng.standard_normal((N_LAYERS, RANK), dtype=np.float32) / np.sqrt(u.n_frames)
            a = np.einsum("mr,mrs->ms", latent + wiggle, a_map)
            b = np.einsum("ms,mds->md", a, b_map)
            b += 0.01 * b.std() / np.sqrt(u.n_frames) * rng.standard_normal(b.shape, dtype=np.float32)
            out.update(lora_a_pooled=a, lora_b_pooled=b)
        return out


@lru_cache(maxsize=24)
def _lora_maps(seed: int, fold: int, checkpoint: str) -> dict[str, np.ndarray]:
    """One fold model's fixed LoRA maps per module: A's latent map, B, and the gradient's directions."""
    rng = np.random.default_rng([seed, 5, fold, 0 if checkpoint == "trained" else 1])
    if checkpoint == "trained":
        spectrum = 2.0 * (np.exp(-np.arange(RANK) / 4) + 0.02)
        rotations = np.linalg.qr(rng.standard_normal((N_LAYERS, RANK, RANK)))[0]
        a = spectrum[None, :, None] * rotations
        b = rng.standard_normal((N_LAYERS, D_MODEL, RANK)) * 0.3 / np.sqrt(RANK)
    else:
        a = 0.72 * np.exp(-np.arange(RANK) / 40)[None, :, None] * np.linalg.qr(rng.standard_normal((N_LAYERS, RANK,
                                                                                                     RANK)))[0]
        b = rng.standard_normal((N_LAYERS, D_MODEL, RANK)) * 0.02
    directions = np.linalg.qr(rng.standard_normal((N_LAYERS, D_MODEL, 8)))[0].transpose(0, 2, 1)
    grad = directions * np.array([3, 2, 1.5, 1.2, 1, 0.8, 0.6, 0.5])[None, :, None]
    return {"a": a.astype(np.float32), "b": b.astype(np.float32), "grad": grad.astype(np.float32)}
