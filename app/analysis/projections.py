"""2-D projections (t-SNE, UMAP) of per-utterance vectors, silhouette scores, and placing new utterances."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from sklearn.preprocessing import StandardScaler
# scikit-learn and umap-learn are imported where used: together they cost the app's first page over a second.

Method = Literal["tsne", "umap"]
NAMES: dict[str, str] = {"umap": "UMAP", "tsne": "t-SNE"}
"""Each method as a reader writes it."""


@dataclass
class Projection:
    """A fitted 2-D map of one set of vectors."""

    method: Method
    coordinates: np.ndarray
    """``(n_samples, 2)``."""
    model: object | None
    """The fitted reducer (UMAP only: t-SNE cannot place new points)."""
    scaler: StandardScaler

    def place(self, vectors: np.ndarray) -> np.ndarray:
        """Coordinates of new vectors on this map, ``(n, dim)`` -> ``(n, 2)`` (UMAP maps only)."""
        if self.model is None:
            raise ValueError("a t-SNE map cannot place new points; use the UMAP map")
        return self.model.transform(self.scaler.transform(np.atleast_2d(vectors)))


def project(vectors: np.ndarray, method: Method = "umap", seed: int = 0, n_neighbors: int = 15) -> Projection:
    """Fit a 2-D map of ``vectors`` (``(n_samples, dim)``), standardised first."""
    if len(vectors) < 5:
        raise ValueError(f"a 2-D map needs at least 5 utterances, got {len(vectors)}")
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(vectors)
    x = scaler.transform(vectors)
    if method == "tsne":
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        return Projection("tsne", coords, None, scaler)
    if method == "umap":
        import umap  # heavy import (numba): only when a UMAP is asked for

        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            coords = reducer.fit_transform(x)
        return Projection("umap", coords, reducer, scaler)
    raise ValueError(f"method={method!r}; expected 'tsne' or 'umap'")


def silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of ``labels`` in the (standardised) vector space; NaN with fewer than two labels."""
    if len(set(labels.tolist())) < 2 or len(vectors) <= len(set(labels.tolist())):
        return float("nan")
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    return float(silhouette_score(StandardScaler().fit_transform(vectors), labels))


def silhouette_per_layer(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Silhouette per layer: ``(n_samples, n_layers, dim)`` -> ``(n_layers,)``."""
    return np.array([silhouette(vectors[:, i], labels) for i in range(vectors.shape[1])])


def percentile_of(value: float, population: np.ndarray) -> float:
    """Where ``value`` falls among ``population``, in percent (0-100)."""
    population = np.asarray(population)
    return float(100.0 * np.mean(population <= value)) if len(population) else float("nan")
