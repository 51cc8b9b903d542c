"""Streaming sums for SVD spectra and linear CKA: memory grows with the width, not with the number of frames.

A ``Moments`` accumulates, over chunks of samples, the count, the sums and the (cross-)products of one or two
representations of the same samples, in float64. The spectra of ``loralens.analysis.spectra`` and the linear CKA of
``loralens.analysis.cka`` follow from those d x d sums exactly (equal to the in-memory results to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def eigenvalues(gram: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, descending, with the BLAS on one thread.

    LAPACK's eigensolver synchronises its threads at every step: on a busy machine a threaded solve of a
    1280 x 1280 matrix is many times slower than a single-threaded one.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return np.linalg.eigvalsh(gram)[::-1]


@dataclass
class Moments:
    """Count, sums and products of ``x`` (and optionally ``y``) over the samples added so far."""

    n: int
    sum_x: np.ndarray
    """``(d_x,)``."""
    xx: np.ndarray
    """``X^T X``, ``(d_x, d_x)``."""
    sum_y: np.ndarray | None = None
    """``(d_y,)`` (with a second representation)."""
    yy: np.ndarray | None = None
    """``Y^T Y``, ``(d_y, d_y)``."""
    xy: np.ndarray | None = None
    """``X^T Y``, ``(d_x, d_y)``."""

    @classmethod
    def empty(cls, d_x: int, d_y: int | None = None) -> Moments:
        """Nothing added yet: one representation of width ``d_x``, and a second of width ``d_y`` if given."""
        if d_y is None:
            return cls(0, np.zeros(d_x), np.zeros((d_x, d_x)))
        return cls(0, np.zeros(d_x), np.zeros((d_x, d_x)), np.zeros(d_y), np.zeros((d_y, d_y)), np.zeros((d_x, d_y)))

    def add(self, x: np.ndarray, y: np.ndarray | None = None) -> Moments:
        """Add samples: ``x`` ``(n, d_x)`` and, with a second representation, ``y`` ``(n, d_y)`` of the same ones."""
        x = np.asarray(x, dtype=np.float64)
        if (y is None) != (self.xy is None):
            raise ValueError("add y exactly when the moments were made with a second representation (d_y)")
        self.n += len(x)
        self.sum_x += x.sum(0)
        self.xx += x.T @ x
        if y is not None:
            y = np.asarray(y, dtype=np.float64)
            if len(y) != len(x):
                raise ValueError(f"x and y must hold the same samples: {len(x)} vs {len(y)} rows")
            self.sum_y += y.sum(0)
            self.yy += y.T @ y
            self.xy += x.T @ y
        return self

    def singular_values(self) -> np.ndarray:
        """Singular values of the stacked ``x`` (uncentered, as ``spectra.singular_values``), descending.

        ``min(n, d_x)`` of them: a matrix of ``n`` samples has no more.
        """
        eig = eigenvalues(self.xx)[: min(self.n, len(self.xx))]
        return np.sqrt(np.clip(eig, 0, None))

    def linear_cka(self) -> float:
        """Linear CKA between ``x`` and ``y`` (feature-space form on mean-removed data, as ``cka.linear_cka``)."""
        if self.xy is None:
            raise ValueError("linear CKA needs moments of two representations (Moments.empty(d_x, d_y))")
        if self.n == 0:
            return 0.0
        mx, my = self.sum_x / self.n, self.sum_y / self.n
        cxx = self.xx - self.n * np.outer(mx, mx)
        cyy = self.yy - self.n * np.outer(my, my)
        cxy = self.xy - self.n * np.outer(mx, my)
        denom = np.linalg.norm(cxx) * np.linalg.norm(cyy)
        return float(np.linalg.norm(cxy) ** 2 / denom) if denom > 0 else 0.0
