"""Synthetic latent spaces for illustration and tests: Figure 1's fractured, overlapped and clustered concepts in two
dimensions, and Gaussian classes for benchmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import KStarInputError

# The pattern each concept of :func:`framework_example` is built to show (checked by tests/test_plots.py).
FRAMEWORK_INTENDED = {"fractured": "Fractured", "overlapped": "Overlapped", "clustered": "Clustered"}


def framework_example(n_per_class: int = 200, seed: int = 0,
                      separated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D latent space of exactly three concepts whose k* distributions land in the three patterns.

    The geometry is chosen so that each pattern follows from the definition of k*, not from luck:

    * "overlapped": a thin ring of radius 3. The foreign samples touching it sit on one short arc only, so a ring sample
      at arc distance theta from that arc has every ring sample within arc distance theta nearer than its nearest
      foreign one: k*/n_c grows linearly with theta. The ring samples inside the arc have small k*, the others spread
      evenly up to about 0.8: a flat, broad distribution (skew near 0).
    * "fractured": 80% of its samples are mixed into the ring on that arc (each has a ring sample within a step, so
      its k* is small), 20% form a tight island next to the clustered concept (k* about the island's size). Mass at
      low k* with a long right tail: positive skew (about +1.3).
    * "clustered": a compact Gaussian blob far from the ring; only its side facing the fractured island has smaller
      k*, most samples have every other sample of the blob nearer than any foreign one: mass at 1 with a short left
      tail, a *finite* negative skew (about -1.8), so its density has a curve.

    Over seeds 0..39 at the default size the skews stay within fractured [1.06, 1.63], overlapped [-0.06, 0.24] and
    clustered [-2.2, -1.3]. ``separated=True`` moves the fractured island far away, so the clustered blob becomes
    perfectly separated (every k* = n_c, skew -inf by SPEC): the case where SPEC's rule for infinite skews changes
    Gamma', which Figure 1 then explains.
    """
    if n_per_class < 20:
        raise KStarInputError(f"framework_example needs n_per_class >= 20 to show its patterns, got {n_per_class}.")
    rng = np.random.default_rng(seed)
    n = int(n_per_class)
    theta = rng.uniform(0, 2 * np.pi, n)
    radius = 3 + rng.normal(0, 0.08, n)
    overlapped = np.column_stack([radius * np.cos(theta), radius * np.sin(theta)])
    n_arc = round(0.8 * n)
    theta_f = rng.uniform(-0.6, 0.6, n_arc)
    radius_f = 3 + rng.normal(0, 0.25, n_arc)
    on_ring = np.column_stack([radius_f * np.cos(theta_f), radius_f * np.sin(theta_f)])
    clustered = rng.normal((11.0, 0.0), 0.6, size=(n, 2))
    island_centre = (11.0 - 1.9, 0.0) if not separated else (11.0, 9.0)
    island = rng.normal(island_centre, 0.12, size=(n - n_arc, 2))
    x = np.vstack([on_ring, island, overlapped, clustered])
    y = np.array(["fractured"] * n + ["overlapped"] * n + ["clustered"] * n)
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


def correlated_table(n: int, rho: float, seed: int = 0, n_seeds: int = 1) -> object:
    """A table of ``n`` configurations x ``n_seeds`` seeds whose Gamma' and accuracy have population correlation
    ``rho`` (Gaussian copula): significant (rho far from 0) or null (rho = 0) input for the verdict tests and figures.

    Columns: config, seed, accuracy, accuracy_n (evaluated samples), gamma_prime, gamma_prime_lo, gamma_prime_hi,
    clean_accuracy, latent_1nn_accuracy.
    """
    if not -1 < rho < 1:
        raise KStarInputError(f"rho must lie strictly between -1 and 1, got {rho}.")
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=n)
    z2 = rho * z1 + np.sqrt(1 - rho ** 2) * rng.normal(size=n)
    rows = []
    for i in range(n):
        for s in range(n_seeds):
            acc = float(np.clip(0.55 + 0.12 * z1[i] + 0.02 * rng.normal(), 0.05, 0.98))
            g = float(0.3 + 0.6 * z2[i] + 0.1 * rng.normal())
            rows.append({"config": f"m{i:02d}", "seed": s, "accuracy": acc, "accuracy_n": 150,
                         "gamma_prime": g, "gamma_prime_lo": g - 0.4, "gamma_prime_hi": g + 0.4,
                         "clean_accuracy": float(np.clip(acc + 0.2 + 0.03 * rng.normal(), 0, 1)),
                         "latent_1nn_accuracy": float(np.clip(0.7 + 0.05 * z1[i] + 0.02 * rng.normal(), 0, 1))})
    return pd.DataFrame(rows)
