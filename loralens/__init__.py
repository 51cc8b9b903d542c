"""loralens: what LoRA does inside a Whisper encoder fine-tuned for speech emotion recognition.

The Python API, for notebooks and scripts: a few nouns over the same functions the explorer and
``loralens report`` use, so a figure made here is the figure the app draws.

    import loralens

    store = loralens.open_store("runs/store.zarr")   # a directory or an fsspec URL
    runs = loralens.runs(store)                      # every traced run: name, method, model, rank, metrics, ...
    lens = loralens.views.lens_of(store, runs[0].name)
    frame = loralens.views.lens_frame({runs[0].name: lens})   # the tidy frame the logit-lens chart draws
    model = loralens.Predictor("runs/lora", fold=0)  # a run's fold model, for your own audio (imports torch)

The floors themselves are importable for everything else: ``loralens.store`` (the Zarr store),
``loralens.analysis`` (pure analyses and the views' queries and frames), ``loralens.precompute`` (training,
tracing, prediction; torch), ``loralens.app`` (the Streamlit explorer) and ``loralens.cli``. ``docs/notebook.py``
walks through them on a store.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loralens.analysis.views import RunInfo
    from loralens.store.reader import StoreReader

__all__ = ["Predictor", "RunInfo", "StoreReader", "analysis", "open_store", "runs", "views"]

def _floors_of_a_checkout() -> None:
    """Where a checkout is on PYTHONPATH but not installed (a lent GPU machine runs it so), find its floors.

    They are the folders beside this one. Installed (``pip install -e .`` too), setuptools maps them under
    ``loralens`` itself and this adds nothing.
    """
    import importlib.util

    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "cli" / "__init__.py").is_file() and importlib.util.find_spec(f"{__name__}.store") is None:
        __path__.append(str(checkout))  # noqa: F821 (a package's own __path__)


_floors_of_a_checkout()

_LAZY = {
    "StoreReader": ("loralens.store.reader", "StoreReader"),
    "RunInfo": ("loralens.analysis.views", "RunInfo"),
    "Predictor": ("loralens.precompute.predict", "Predictor"),
    "views": ("loralens.analysis.views", None),
    "analysis": ("loralens.analysis", None),
}


def open_store(path: str, storage_options: dict | None = None) -> StoreReader:
    """Open a store to read.

    Args:
        path: a directory, or an fsspec URL (``s3://``, ``memory://``, ...).
        storage_options: fsspec's options for a URL (credentials, ``endpoint_url``).

    Raises:
        loralens.store.reader.StoreError: the store is missing, damaged, or of a schema this version cannot read;
            the message says which and what to do.
    """
    from loralens.store.reader import StoreReader

    return StoreReader(path, storage_options)


def runs(store: StoreReader) -> list[RunInfo]:
    """Every run traced into ``store``, as the explorer lists them."""
    from loralens.analysis.views import run_info

    return run_info(store)


def __getattr__(name: str) -> Any:
    """The heavier nouns load on first use: ``Predictor`` imports torch, the views pandas."""
    if name not in _LAZY:
        raise AttributeError(f"module 'loralens' has no attribute {name!r}; it has {', '.join(__all__)}")
    module, attribute = _LAZY[name]
    loaded = importlib.import_module(module)
    return loaded if attribute is None else getattr(loaded, attribute)
