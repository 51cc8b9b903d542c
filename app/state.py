"""The view's state in the URL: parsed and checked against the store, never trusted (no paths, only ids)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

COLOURINGS = ("emotion", "speaker", "correct", "fold")
PROJECTIONS = ("umap", "tsne")
SOURCES = ("residual", "lora_a")
OUTCOMES = ("all", "correct", "wrong")
MEASURES = ("uar_drop", "kl", "flipped")
"""What the Causal page's heatmap shows: UAR drop, KL(none || condition), the share of predictions flipped."""
THRESHOLD_RANGE = (0.5, 0.99)
"""The effective rank's energy threshold: the LoRA dynamics slider's range, in steps of 0.01."""
MAX_TEXT = 100
"""The longest value kept from a free-text parameter (a search, an emotion or speaker name)."""
MAX_VALUES = 64
"""The most values kept from a repeated parameter."""

Params = Mapping[str, str | Sequence[str]]
"""Query parameters: a value per key, or every value of a repeated key (``st.query_params.get_all``)."""


@dataclass
class ViewState:
    """What a link reopens: every widget that shapes what a page shows.

    ``parse`` checks what it can against the store; a page checks the rest against its own options (an emotion
    this run lacks, a fold it did not trace) and falls back to its default.
    """

    run: str | None = None
    """The run (every page)."""
    utt: str | None = None
    """The utterance (Utterance; the clicked point on Clusters)."""
    layer: int | None = None
    """A layer boundary, or a LoRA module on Clusters' LoRA A maps; None: the last."""
    colour: str = "emotion"
    """What colours the Clusters map: one of ``COLOURINGS``."""
    projection: str = "umap"
    """The Clusters map: one of ``PROJECTIONS``."""
    source: str = "residual"
    """The vectors mapped on Clusters: one of ``SOURCES``."""
    present: bool = False
    """Presentation mode."""
    fold: int | None = None
    """The fold model (LoRA dynamics, Clusters, Upload); None: every fold averaged (LoRA dynamics), every fold's
    utterances on one map (Clusters), the first (Upload)."""
    threshold: float = 0.9
    """The effective rank's energy threshold (LoRA dynamics), in ``THRESHOLD_RANGE``."""
    series: tuple[str, ...] | None = None
    """The series Contributions draws; None: all of them, ``()``: none."""
    emotion: tuple[str, ...] = ()
    """The utterance filter on emotion (Overview; Utterance's single choice is the first); empty: every one."""
    speaker: tuple[str, ...] = ()
    """The utterance filter on speaker, like ``emotion``."""
    outcome: str = "all"
    """The utterance filter on the prediction: one of ``OUTCOMES``."""
    search: str = ""
    """The utterance id search (Utterance)."""
    lens_class: str | None = None
    """The emotion of Utterance's layers x time view of the LoRA run (or of the page's only run); None: its
    final prediction."""
    frozen_lens_class: str | None = None
    """The same for the frozen run beside it."""
    measure: str = "uar_drop"
    """What the Causal heatmap shows: one of ``MEASURES``."""
    condition: str | None = None
    """The intervention whose flipped utterances Causal lists (``erase@3``); None: the first."""

    def to_params(self) -> dict[str, str | list[str]]:
        """Query parameters (defaults left out); a tuple is a repeated parameter, an empty one ``key=``."""
        out: dict[str, str | list[str]] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == f.default:
                continue
            if isinstance(value, bool):
                out[f.name] = "1" if value else "0"
            elif isinstance(value, tuple):
                out[f.name] = list(value) or [""]
            else:
                out[f.name] = str(value)
        return out


def parse(params: Params, runs: list[str], utterances: set[str], n_boundaries: dict[str, int]) -> ViewState:
    """A ``ViewState`` from query parameters; anything unknown to the store falls back to its default.

    Args:
        params: the query parameters (untrusted).
        runs: the store's run names.
        utterances: the store's utterance ids.
        n_boundaries: layer boundaries per run.
    """
    state = ViewState()
    run = _last(params, "run")
    state.run = run if run in runs else None
    utt = _last(params, "utt")
    state.utt = utt if utt in utterances else None
    limit = n_boundaries.get(state.run, 0) if state.run else max(n_boundaries.values(), default=0)
    state.layer = _index(_last(params, "layer"), limit)
    colour = _last(params, "colour")
    state.colour = colour if colour in COLOURINGS else "emotion"
    projection = _last(params, "projection")
    state.projection = projection if projection in PROJECTIONS else "umap"
    source = _last(params, "source")
    state.source = source if source in SOURCES else "residual"
    state.present = _last(params, "present") in ("1", "true", "yes")
    state.fold = _index(_last(params, "fold"), 10_000)
    state.threshold = _number(_last(params, "threshold"), *THRESHOLD_RANGE, default=state.threshold)
    series = _all(params, "series")
    state.series = None if series is None else _names(series)
    state.emotion = _names(_all(params, "emotion") or [])
    state.speaker = _names(_all(params, "speaker") or [])
    outcome = _last(params, "outcome")
    state.outcome = outcome if outcome in OUTCOMES else "all"
    state.search = (_last(params, "search") or "")[:MAX_TEXT]
    state.lens_class = next(iter(_names([_last(params, "lens_class") or ""])), None)
    state.frozen_lens_class = next(iter(_names([_last(params, "frozen_lens_class") or ""])), None)
    measure = _last(params, "measure")
    state.measure = measure if measure in MEASURES else "uar_drop"
    state.condition = next(iter(_names([_last(params, "condition") or ""])), None)
    return state


def _all(params: Params, key: str) -> list[str] | None:
    value = params.get(key)
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _last(params: Params, key: str) -> str | None:
    values = _all(params, key)
    return values[-1] if values else None


def _index(text: str | None, limit: int) -> int | None:
    """A non-negative integer below ``limit``, or None."""
    # "²".isdigit() holds but int() refuses it; isascii() keeps to 0-9
    if text and text.isascii() and text.isdigit() and len(text) < 10 and int(text) < limit:
        return int(text)
    return None


def _number(text: str | None, low: float, high: float, default: float) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return round(value, 2) if math.isfinite(value) and low <= value <= high else default


def _names(values: Sequence[str]) -> tuple[str, ...]:
    """Distinct non-empty names of a reasonable length, in order (the page keeps those among its options)."""
    return tuple(dict.fromkeys(v for v in values[:MAX_VALUES] if v and len(v) <= MAX_TEXT))
