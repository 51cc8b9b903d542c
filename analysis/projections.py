"""2-D projections (t-SNE, UMAP) of per-utterance vectors, silhouette scores, and placing new utterances."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from loralens.store.schema import UserError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline
# scikit-learn and umap-learn are imported where used: their imports are heavy, and most pages never fit a map.

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
    """The fitted reducer, where it can place new points (UMAP fitted ``placeable``)."""
    inputs: Pipeline
    """Standardisation (and PCA to ``INPUT_DIMS``) fitted on the map's vectors."""

    def place(self, vectors: np.ndarray) -> np.ndarray:
        """Coordinates of new vectors on this map, ``(n, dim)`` -> ``(n, 2)`` (UMAP maps only)."""
        if self.model is None:
            raise ValueError(f"this {NAMES[self.method]} map cannot place new points; fit a UMAP map with "
                             "project(..., placeable=True)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=UNCACHEABLE)
            return self.model.transform(self.inputs.transform(np.atleast_2d(vectors)))


MIN_POINTS = 5
"""The fewest utterances a 2-D map is fitted on."""
INPUT_DIMS = 50
"""Wider vectors are reduced to this many principal components before a map is fitted (after standardising), as
is usual for t-SNE and UMAP: neighbours in 1280 dimensions cost 25x more to find and carry mostly noise."""
SILHOUETTE_SAMPLE = 2000
"""Silhouettes of more utterances are estimated on this many, drawn with a fixed seed (the exact score costs
n^2 x dim: 40 GFLOP for 5,500 large-v2 utterances)."""
LARGE = 1000
"""From this many utterances maps are optimised for fewer epochs: UMAP 200 (its own choice from 10,000 samples;
500 below) and t-SNE 500 iterations (1,000 below); both settle well before (the layout changes little after)."""
EXACT_NEIGHBOURS = 4096
"""From this many vectors UMAP finds their neighbours approximately (pynndescent), which is compiled in every new
process, at a cost many times that of fitting the map itself. Maps that place no new points take their exact
neighbours from scikit-learn instead (in ``INPUT_DIMS`` dimensions), through UMAP's ``precomputed_knn``: below this
size UMAP's own neighbours are exact too."""


TSNE_ROWS = LARGE
"""A t-SNE map of more utterances shows a fixed sample of this many (``map_rows``): t-SNE is the slower of the two
at thousands of utterances, and a summary fits one map per layer and LoRA module (98 for a large-v2 LoRA run and
its frozen partner); UMAP maps every utterance."""


def map_rows(n: int, method: Method) -> np.ndarray:
    """Which of ``n`` utterances a ``method`` map shows, ascending.

    Every one, or t-SNE's fixed sample of ``TSNE_ROWS`` (the same for every layer: a point stays one utterance as
    the layer slider moves).
    """
    return fixed_sample(n, TSNE_ROWS) if method == "tsne" else np.arange(n)


def fixed_sample(n: int, size: int) -> np.ndarray:
    """Indices of ``size`` of ``n`` items, ascending, drawn with a fixed seed (all ``n`` where ``n <= size``)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size, replace=False))


def project(vectors: np.ndarray, method: Method = "umap", seed: int = 0, n_neighbors: int = 15,
            placeable: bool = False) -> Projection:
    """Fit a 2-D map of ``vectors`` (``(n_samples, dim)``), standardised first (and reduced to ``INPUT_DIMS``).

    ``placeable``: keep what placing new points needs (UMAP only; ``Projection.place``). From ``EXACT_NEIGHBOURS``
    vectors that costs pynndescent's compilation: ask for it only where a new point is placed.
    """
    if len(vectors) < MIN_POINTS:
        raise UserError(f"a 2-D map needs at least {MIN_POINTS} utterances, got {len(vectors)}")
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()]
    if vectors.shape[1] > INPUT_DIMS and len(vectors) > INPUT_DIMS:
        steps.append(PCA(INPUT_DIMS, random_state=seed))
    inputs = make_pipeline(*steps).fit(vectors)
    x = inputs.transform(vectors)
    if method == "tsne":
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                      max_iter=500 if len(x) >= LARGE else 1000).fit_transform(x)
        return Projection("tsne", coords, None, inputs)
    if method == "umap":
        umap = _umap()
        k = min(n_neighbors, len(x) - 1)
        knn: tuple = (None, None, None)
        if not placeable and len(x) >= EXACT_NEIGHBOURS:
            from sklearn.neighbors import NearestNeighbors

            distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)  # each point first
            knn = (indices, distances)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # placing nothing, as asked
            warnings.filterwarnings("ignore", message=UNCACHEABLE)
            reducer = umap.UMAP(n_components=2, n_neighbors=k, random_state=seed, precomputed_knn=knn,
                                n_epochs=200 if len(x) >= LARGE else None)
            coords = reducer.fit_transform(x)
        return Projection("umap", coords, reducer if placeable else None, inputs)
    raise ValueError(f"method={method!r}; expected 'tsne' or 'umap'")


UNCACHEABLE = "Cannot cache compiled function"
"""numba's warning for a function that cannot be cached (two of pynndescent's): it is compiled in each process."""


def _umap():
    """umap-learn (imported when a UMAP is asked for: numba), its compiled functions cached on disk.

    UMAP compiles its numba functions in every process that fits a map (most are not declared for numba's cache):
    in each summary worker and in the app before its first live map, a compilation that costs far more than a small
    map itself, and more again before an upload is placed on a map of ``EXACT_NEIGHBOURS`` or more (pynndescent's
    neighbour search). Cached, a process after the first loads them instead (numba keys each by its source and
    signature, so a new umap-learn compiles again).
    """
    import umap
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if module is not None and name.split(".")[0] in ("umap", "pynndescent"):
            for value in list(vars(module).values()):
                if isinstance(value, CPUDispatcher) and value.stats.cache_path is None:  # not cached yet
                    try:
                        value.enable_caching()
                    except RuntimeError:  # nowhere writable to cache it (numba's own error): compiled as before
                        pass
    return umap


def silhouette(vectors: np.ndarray, labels: np.ndarray, sample: int = SILHOUETTE_SAMPLE) -> float:
    """Silhouette of ``labels`` in the (standardised) vector space; NaN with fewer than two labels.

    More than ``sample`` vectors: estimated on that many, drawn with a fixed seed.
    """
    if len(set(labels.tolist())) < 2 or len(vectors) <= len(set(labels.tolist())):
        return float("nan")
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    sample = sample if len(vectors) > sample else None
    return float(silhouette_score(StandardScaler().fit_transform(vectors), labels, sample_size=sample,
                                  random_state=0))


def silhouette_per_layer(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Silhouette per layer: ``(n_samples, n_layers, dim)`` -> ``(n_layers,)``."""
    return np.array([silhouette(vectors[:, i], labels) for i in range(vectors.shape[1])])


def percentile_of(value: float, population: np.ndarray) -> float:
    """Where ``value`` falls among ``population``, in percent (0-100)."""
    population = np.asarray(population)
    return float(100.0 * np.mean(population <= value)) if len(population) else float("nan")
