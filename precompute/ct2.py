"""Import a CTranslate2 (faster-whisper) Whisper encoder into Hugging Face weights.

A CTranslate2 ``model.bin`` is a flat binary: a format version, the spec name, the spec revision, then
named, typed, shaped arrays, then aliases. Whisper's encoder attention keeps q, k and v fused in one
linear layer (``linear_0``), stacked in that order, with a zero bias slot for k (Whisper's k has no bias).
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from transformers import WhisperConfig

from loralens.store.schema import UserError

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_SUPPORTED_BINARY_VERSIONS = (5, 6)


class CT2FormatError(UserError):
    """A CTranslate2 model file that this importer cannot read."""


class _ChainedReader(io.RawIOBase):
    """Reads several files as one stream (the bundled base model ships ``model.bin`` in parts)."""

    def __init__(self, paths: Iterable[Path]):
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in close()
        self._index = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._index < len(self._files):
            n = self._files[self._index].readinto(buffer)
            if n:
                return n
            self._index += 1
        return 0

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _read_exact(f: BinaryIO, n: int, where: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CT2FormatError(f"{where}: file ends early (wanted {n} bytes, got {len(data)}); is it truncated?")
    return data


def _unpack(f: BinaryIO, fmt: str, where: str):
    return struct.unpack("<" + fmt, _read_exact(f, struct.calcsize(fmt), where))[0]


def _read_string(f: BinaryIO, where: str) -> str:
    n = _unpack(f, "H", where)
    return _read_exact(f, n, where)[:-1].decode("utf-8")


def read_model_bin(paths: Path | list[Path], prefix: str = "encoder/") -> tuple[str, dict[str, np.ndarray]]:
    """Read the arrays of a CTranslate2 ``model.bin`` whose names start with ``prefix``.

    Args:
        paths: the model file, or its parts in order (they are read as one stream).
        prefix: only arrays whose name starts with this are kept; the others are skipped unread.

    Returns:
        The spec name (``"WhisperSpec"`` for Whisper) and the kept arrays by name, in their stored dtype.
    """
    parts = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
    where = " + ".join(str(p) for p in parts)
    for p in parts:
        if not p.is_file():
            raise FileNotFoundError(f"CTranslate2 model file not found: {p}")
    with io.BufferedReader(_ChainedReader(parts), buffer_size=1 << 20) as f:
        version = _unpack(f, "I", where)
        if version not in _SUPPORTED_BINARY_VERSIONS:
            raise CT2FormatError(
                f"{where}: CTranslate2 binary version {version}; this importer reads versions "
                f"{_SUPPORTED_BINARY_VERSIONS}. Re-convert the model with a ctranslate2 release that writes those."
            )
        spec = _read_string(f, where)
        _unpack(f, "I", where)  # spec revision
        arrays: dict[str, np.ndarray] = {}
        for _ in range(_unpack(f, "I", where)):
            name = _read_string(f, where)
            shape = tuple(_unpack(f, "I", where) for _ in range(_unpack(f, "B", where)))
            type_id = _unpack(f, "B", where)
            nbytes = _unpack(f, "I", where)
            if type_id >= len(_DTYPES):
                raise CT2FormatError(f"{where}: array {name!r} has unknown dtype id {type_id}")
            if not name.startswith(prefix):
                _read_exact(f, nbytes, where)  # the stream of parts cannot seek
                continue
            dtype = _DTYPES[type_id]
            raw = _read_exact(f, nbytes, where)
            if dtype == "bfloat16":
                array = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy()
            else:
                array = np.frombuffer(raw, dtype=dtype).copy()
            arrays[name] = array.reshape(shape)
    return spec, arrays


def whisper_config_from_arrays(arrays: dict[str, np.ndarray]) -> WhisperConfig:
    """Infer the encoder's ``WhisperConfig`` from its array shapes (CTranslate2 stores no hyper-parameters)."""
    try:
        d_model, n_mels, _ = arrays["encoder/conv1/weight"].shape
        n_positions = arrays["encoder/position_encodings/encodings"].shape[0]
        n_heads = int(arrays["encoder/num_heads"])
        ffn_dim = arrays["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    except KeyError as e:
        raise CT2FormatError(f"not a CTranslate2 Whisper encoder: array {e} is missing") from e
    n_layers = len({m.group(1) for k in arrays if (m := re.match(r"encoder/layer_(\d+)/", k))})
    return WhisperConfig(
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=n_layers,
        encoder_attention_heads=n_heads,
        encoder_ffn_dim=int(ffn_dim),
        decoder_layers=n_layers,
        decoder_attention_heads=n_heads,
        decoder_ffn_dim=int(ffn_dim),
        max_source_positions=int(n_positions),
    )


def encoder_state_dict(arrays: dict[str, np.ndarray], config: WhisperConfig) -> dict[str, torch.Tensor]:
    """Map CTranslate2 encoder arrays to ``WhisperForAudioClassification`` keys, as float32 tensors."""

    def t(name: str) -> torch.Tensor:
        try:
            value = np.asarray(arrays[name], dtype=np.float32)
        except KeyError as e:
            raise CT2FormatError(f"CTranslate2 Whisper encoder lacks array {name!r}") from e
        if (scale := arrays.get(f"{name}_scale")) is not None:  # int8 (a scale per row) or int16 (one scale)
            scale = np.asarray(scale, dtype=np.float32)
            value = value / scale.reshape(-1, *[1] * (value.ndim - 1)) if scale.ndim else value / scale
        return torch.from_numpy(np.ascontiguousarray(value))

    d = config.d_model
    out = {
        "encoder.conv1.weight": t("encoder/conv1/weight"),
        "encoder.conv1.bias": t("encoder/conv1/bias"),
        "encoder.conv2.weight": t("encoder/conv2/weight"),
        "encoder.conv2.bias": t("encoder/conv2/bias"),
        "encoder.embed_positions.weight": t("encoder/position_encodings/encodings"),
        "encoder.layer_norm.weight": t("encoder/layer_norm/gamma"),
        "encoder.layer_norm.bias": t("encoder/layer_norm/beta"),
    }
    for i in range(config.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"encoder.layers.{i}"
        qkv_w = t(f"{src}/self_attention/linear_0/weight")
        qkv_b = t(f"{src}/self_attention/linear_0/bias")
        if qkv_w.shape[0] != 3 * d:
            raise CT2FormatError(f"{src}: fused QKV weight has {qkv_w.shape[0]} rows, expected 3 x d_model = {3 * d}")
        q_w, k_w, v_w = qkv_w.split(d)
        q_b, _, v_b = qkv_b.split(d)
        out |= {
            f"{dst}.self_attn.q_proj.weight": q_w.clone(),
            f"{dst}.self_attn.q_proj.bias": q_b.clone(),
            f"{dst}.self_attn.k_proj.weight": k_w.clone(),
            f"{dst}.self_attn.v_proj.weight": v_w.clone(),
            f"{dst}.self_attn.v_proj.bias": v_b.clone(),
            f"{dst}.self_attn.out_proj.weight": t(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": t(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.self_attn_layer_norm.weight": t(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.self_attn_layer_norm.bias": t(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.fc1.weight": t(f"{src}/ffn/linear_0/weight"),
            f"{dst}.fc1.bias": t(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": t(f"{src}/ffn/linear_1/weight"),
            f"{dst}.fc2.bias": t(f"{src}/ffn/linear_1/bias"),
            f"{dst}.final_layer_norm.weight": t(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.final_layer_norm.bias": t(f"{src}/ffn/layer_norm/beta"),
        }
    return out


def convert(paths: Path | list[Path]) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """Read a CTranslate2 Whisper ``model.bin`` (or its parts) into an encoder config and state dict."""
    spec, arrays = read_model_bin(paths)
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{paths}: spec {spec!r} is not a Whisper model (expected 'WhisperSpec')")
    config = whisper_config_from_arrays(arrays)
    return config, encoder_state_dict(arrays, config)
