"""The view's state in the URL: parsed and checked against the store, never trusted (no paths, only ids)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

COLOURINGS = ("emotion", "speaker", "correct")
PROJECTIONS = ("umap", "tsne")
SOURCES = ("residual", "lora_a")


@dataclass
class ViewState:
    """What a link reopens."""

    run: str | None = None
    utt: str | None = None
    layer: int | None = None
    colour: str = "emotion"
    projection: str = "umap"
    source: str = "residual"
    present: bool = False

    def to_params(self) -> dict[str, str]:
        """Query parameters (defaults and empty values left out)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == f.default:
                continue
            out[f.name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def parse(params: Mapping[str, str], runs: list[str], utterances: set[str], n_boundaries: dict[str, int]) -> ViewState:
    """A ``ViewState`` from query parameters; anything unknown to the store falls back to its default.

    Args:
        params: the query parameters (untrusted).
        runs: the store's run names.
        utterances: the store's utterance ids.
        n_boundaries: layer boundaries per run.
    """
    state = ViewState()
    run = params.get("run")
    state.run = run if run in runs else None
    utt = params.get("utt")
    state.utt = utt if utt in utterances else None
    layer = params.get("layer", "")
    limit = n_boundaries.get(state.run, 0) if state.run else max(n_boundaries.values(), default=0)
    if layer.isascii() and layer.isdigit() and int(layer) < limit:  # "²".isdigit() holds; int() refuses it
        state.layer = int(layer)
    colour = params.get("colour")
    state.colour = colour if colour in COLOURINGS else "emotion"
    projection = params.get("projection")
    state.projection = projection if projection in PROJECTIONS else "umap"
    source = params.get("source")
    state.source = source if source in SOURCES else "residual"
    state.present = params.get("present") in ("1", "true", "yes")
    return state
