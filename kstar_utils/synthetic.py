"""Synthetic latent spaces for illustration and tests: the framework figure's fractured, overlapped and clustered
concepts in two dimensions."""

from __future__ import annotations

import numpy as np


def framework_example(n_per_class: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D latent space with three concepts whose k* distributions show the three patterns.

    * "fractured": small islands, each sitting inside another concept's region, so most of its samples have a foreign
      neighbour among their first few neighbours (k* mass near 0, positive skew);
    * "overlapped": a cloud spread through the middle, interleaved with the background concept (roughly uniform k*);
    * "clustered": one compact blob far from everything (k* mass at 1, negative skew).
    A fourth, "background" concept fills the space the first two live in.
    """
    rng = np.random.default_rng(seed)
    islands = rng.uniform(-4, 4, size=(12, 2))
    fractured = islands[rng.integers(0, len(islands), n_per_class)] + rng.normal(scale=0.18, size=(n_per_class, 2))
    background = rng.uniform(-5, 5, size=(2 * n_per_class, 2))
    overlapped = np.column_stack([rng.normal(0, 2.0, n_per_class), rng.normal(0, 2.0, n_per_class)])
    overlapped = 0.5 * overlapped + 0.5 * rng.normal(0, 1.0, size=(n_per_class, 2)) * 3.0
    clustered = rng.normal(loc=(9.5, 9.5), scale=0.8, size=(n_per_class, 2))
    x = np.vstack([fractured, overlapped, clustered, background])
    y = np.array(["fractured"] * n_per_class + ["overlapped"] * n_per_class + ["clustered"] * n_per_class
                 + ["background"] * (2 * n_per_class))
    return x, y


def gaussian_classes(n: int, dim: int, classes: int, separation: float = 1.0, seed: int = 0,
                     latent: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes with means ``separation`` apart on average: isotropic, or in a ``latent``-d subspace."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    if latent is None:
        return (rng.normal(size=(classes, dim))[y] * separation + rng.normal(size=(n, dim))).astype(np.float32), y
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T
    z = rng.normal(size=(classes, latent))[y] * separation + rng.normal(size=(n, latent))
    return (z @ basis + 0.1 * rng.normal(size=(n, dim))).astype(np.float32), y
