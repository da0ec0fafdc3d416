"""SPEC's k*: one entry point, :func:`compute_kstar`, over an exact engine and an ANN-plus-verification path.

Exact (``method="exact"``): the symmetric blocked float32 kernel with float64 re-checks in
:mod:`kstar_utils.neighbours` (each pair of samples computed once); equal to the float64 definition for every
sample, ties included.

Approximate (``method="ann"``): a seeded pynndescent graph proposes each sample's nearest foreign neighbour. Then
* the candidates' distances are computed exactly (float64 direct form), every graph edge in both directions, and the
  nearest one gives r_p;
* a candidate farther than the sample's own k-th graph neighbour is not trusted (a nearer foreign sample could lie in
  between, unseen by the graph): such samples, and those without any foreign candidate, get the exact search;
* the same-class points nearer than r_p are counted exactly, by the exact kernel's same-class pass with these r_p
  (each same-class pair once, float64 re-checks in the float32 band);
* a random sample of points (``audit_size``) is computed both ways first and compared: ``result.audit``. Under
  ``method="auto"`` an audit with fewer than ``ANN_MIN_IDENTICAL`` (99%) identical k* discards the ANN path and the
  exact one runs instead (recorded as ``params["ann_fallback"]``); under ``method="ann"`` it raises a warning.
The only possible error is a missed nearest foreign neighbour (r_p too large, so k* too large); the audit measures how
often that happens. ``method="auto"`` picks exact while N^2 * D <= ``AUTO_EXACT_MAX_WORK`` (from the benchmark in
``benchmarks/bench_kstar.py``) and ANN above it.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import metrics
from .errors import ANNAccuracyWarning, KStarInputError  # noqa: F401  (re-exported for callers)
from .neighbours import (
    ann_neighbour_graph,
    exact_counts,
    exact_foreign_radius,
    exact_pair_distances,
    resolve_device,
    sort_by_class,
)
from .validation import METHODS, check_choice, check_count, check_fraction, check_inputs, check_number

# N^2 * D above which method="auto" uses ANN. With the symmetric exact kernel, ANN only caught up with exact at
# N = 200,000, D = 128 on data of low intrinsic dimension (1.12x, benchmarks/bench_kstar.py part 3a; see README,
# Performance), i.e. N^2 * D = 5.1e12; exact stays the default below it because it has no error at all.
AUTO_EXACT_MAX_WORK = 5.0e12
DEFAULT_N_NEIGHBORS = 30
DEFAULT_AUDIT_SIZE = 1000
# Below this fraction of identical k* in the audit, "auto" discards the ANN result and computes exact k*, and "ann"
# warns: a latent space of high intrinsic dimension defeats the neighbour graph (see README, Performance).
ANN_MIN_IDENTICAL = 0.99


def _encode_float(value: float) -> float | str:
    """JSON has no NaN or inf: encode them as strings so that a result survives a round trip exactly."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _decode_float(value: Any) -> Any:
    return float(value) if value in ("nan", "inf", "-inf") else value


def _encode_intervals(intervals: dict | None) -> dict | None:
    """Bootstrap intervals as JSON: (lo, hi) pairs as lists, non-finite bounds as strings."""
    if intervals is None:
        return None
    return {k: [_encode_float(float(b)) for b in v] if isinstance(v, (tuple, list)) else v for k, v in intervals.items()}


def _decode_intervals(data: dict | None) -> dict | None:
    """Inverse of :func:`_encode_intervals`: the (lo, hi) pairs come back as tuples of floats."""
    if data is None:
        return None
    return {k: tuple(float(_decode_float(b)) for b in v) if isinstance(v, list) else v for k, v in data.items()}


@dataclass
class KStarResult:
    """k* of every sample, in the caller's order, with its per-class and whole-space summaries.

    Attributes
    ----------
    kstar : int64 (N,)        SPEC's k*, 1-based rank of the nearest foreign neighbour.
    kstar_norm : float64 (N,) k* / n_c, in (0, 1].
    labels : (N,)             the labels as given (ints or strings).
    per_class : DataFrame     label, n, mean, std, skew, pattern.
    gamma_true : float        Gamma, skew of the pooled normalised k*.
    gamma_approx : float      Gamma', mean of per-class skews (SPEC's NaN/inf rule).
    method : str              "exact" or "ann": what actually ran.
    audit : dict | None       ANN path only: size, fraction_identical, max_abs_difference, ...
    params : dict             metric, threshold, method asked for, device, block size, seed, ...
    intervals : dict | None   with ``bootstrap > 0``: {"gamma": (lo, hi), "gamma_prime": (lo, hi), "n_bootstrap": B,
                              "confidence": c, "seed": s}, see :func:`metrics.bootstrap_gamma_intervals`
    """

    kstar: np.ndarray
    kstar_norm: np.ndarray
    labels: np.ndarray
    per_class: pd.DataFrame
    gamma_true: float
    gamma_approx: float
    method: str
    audit: dict | None = None
    params: dict = field(default_factory=dict)
    intervals: dict | None = None

    @property
    def pattern_counts(self) -> dict[str, int]:
        """Number of fractured, overlapped and clustered classes."""
        return metrics.pattern_counts(self.per_class)

    def samples_frame(self) -> pd.DataFrame:
        """One row per sample: index, label, kstar, kstar_norm."""
        return pd.DataFrame(
            {"index": np.arange(len(self.kstar)), "label": self.labels, "kstar": self.kstar, "kstar_norm": self.kstar_norm}
        )

    def summary(self) -> dict:
        """Scalars and the per-class table, JSON-ready (no per-sample arrays)."""
        return {
            "n_samples": int(len(self.kstar)),
            "n_classes": int(len(self.per_class)),
            "gamma_true": _encode_float(self.gamma_true),
            "gamma_approx": _encode_float(self.gamma_approx),
            "pattern_counts": self.pattern_counts,
            "method": self.method,
            "audit": self.audit,
            "params": self.params,
            "intervals": _encode_intervals(self.intervals),
            "per_class": [
                {k: _encode_float(v) for k, v in row.items()} for row in self.per_class.to_dict(orient="records")
            ],
        }

    def to_dict(self) -> dict:
        """Everything, including per-sample arrays, as plain JSON-compatible types; inverse of :meth:`from_dict`."""
        out = self.summary()
        label_kind = "str" if self.labels.dtype.kind in "US" else "int"
        out.update(
            kstar=self.kstar.tolist(),
            kstar_norm=self.kstar_norm.tolist(),
            labels=self.labels.tolist(),
            label_kind=label_kind,
        )
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "KStarResult":
        labels = np.asarray(data["labels"], dtype=str if data.get("label_kind") == "str" else np.int64)
        per_class = pd.DataFrame(
            [{k: _decode_float(v) for k, v in row.items()} for row in data["per_class"]],
            columns=["label", "n", "mean", "std", "skew", "pattern"],
        )
        per_class["skew"] = per_class["skew"].astype(np.float64)
        return cls(
            kstar=np.asarray(data["kstar"], dtype=np.int64),
            kstar_norm=np.asarray(data["kstar_norm"], dtype=np.float64),
            labels=labels,
            per_class=per_class,
            gamma_true=float(_decode_float(data["gamma_true"])),
            gamma_approx=float(_decode_float(data["gamma_approx"])),
            method=data["method"],
            audit=data.get("audit"),
            params=data.get("params", {}),
            intervals=_decode_intervals(data.get("intervals")),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "KStarResult":
        return cls.from_dict(json.loads(text))


def choose_method(n: int, dim: int, method: str = "auto") -> str:
    """Resolve ``auto`` to exact or ann by the work N^2 * D (see AUTO_EXACT_MAX_WORK)."""
    check_choice("method", method, METHODS)
    if method != "auto":
        return method
    return "exact" if float(n) * n * dim <= AUTO_EXACT_MAX_WORK else "ann"


def _ann_candidates(data, n_neighbors: int, seed: int, n_jobs: int | None) -> np.ndarray:
    """Verified candidate radius of every sorted row: the exact distance to its nearest foreign graph neighbour, or
    inf where the graph cannot vouch for one (the row then gets the exact search).

    Every edge of the graph is used in both directions: if q lists p, the pair (p, q) is a candidate for p as well as
    for q (the distance is the same, so this costs nothing more, and NN-descent often keeps a pair in one list only).
    A candidate is trusted only within the row's own neighbourhood: if it is farther than the row's k-th graph
    neighbour, a nearer foreign sample may lie between the two, unseen by the graph, so the row is searched exactly.
    """
    graph = ann_neighbour_graph(data.exact.cpu().numpy(), n_neighbors=n_neighbors, seed=seed, n_jobs=n_jobs)
    rows = np.repeat(np.arange(data.n), graph.shape[1])
    cols = graph.ravel()
    keep = (cols >= 0) & (cols != rows) & (data.codes[cols] != data.codes[rows])
    rows, cols = rows[keep], cols[keep]
    dist = exact_pair_distances(
        data.exact, torch.from_numpy(rows).to(data.device), torch.from_numpy(cols).to(data.device)
    ).cpu().numpy()
    radius = np.full(data.n, np.inf)
    np.minimum.at(radius, rows, dist)
    np.minimum.at(radius, cols, dist)  # the reverse edge
    valid = graph >= 0
    last = np.where(valid.any(axis=1), graph[np.arange(data.n), valid.sum(axis=1) - 1], np.arange(data.n))
    reach = exact_pair_distances(data.exact, torch.arange(data.n, device=data.device),
                                 torch.from_numpy(last).to(data.device)).cpu().numpy()
    radius[radius > reach] = np.inf  # beyond the row's own neighbourhood: not vouched for by the graph
    return radius


def _ann_exact_search(data, radius: np.ndarray, block_size: int | None) -> int:
    """Rows whose graph neighbours hold no foreign sample get their exact r_p (in place); returns how many."""
    missing = np.flatnonzero(~np.isfinite(radius))
    if missing.size:
        radius[missing] = exact_foreign_radius(data, missing, block_size=block_size)
    return int(missing.size)


def _ann_kstar(data, n_neighbors: int, seed: int, n_jobs: int | None, block_size: int | None,
               audit_size: int, min_identical: float | None, progress: bool) -> tuple[np.ndarray | None, dict, dict]:
    """k* (sorted order) from ANN candidates, verified as the module docstring says, audited first.

    The audit rows are computed both ways before anything else; when ``min_identical`` is given and the audit falls
    below it, returns None for k* (the caller runs the exact path instead) without doing the full ANN work. The full
    verification is the exact kernel's same-class pass with the candidate radii as r_p: each same-class pair once.
    """
    radius = _ann_candidates(data, n_neighbors, seed, n_jobs)
    exact_search = _ann_exact_search(data, radius, block_size)
    rng = np.random.default_rng(seed)
    size = int(min(max(audit_size, 0), data.n))
    audit_rows = np.sort(rng.choice(data.n, size=size, replace=False)) if size else np.empty(0, dtype=np.int64)
    ann_audit = 1 + exact_counts(data, audit_rows, radius=radius[audit_rows], block_size=block_size)[0]
    exact_audit = 1 + exact_counts(data, audit_rows, block_size=block_size)[0]
    diff = np.abs(ann_audit - exact_audit)
    audit = {
        "size": size,
        "fraction_identical": float(np.mean(diff == 0)) if size else math.nan,
        "max_abs_difference": int(diff.max()) if size else 0,
        "mean_abs_difference": float(diff.mean()) if size else 0.0,
        "seed": seed,
    }
    info = {"n_neighbors": int(min(n_neighbors, data.n - 1)), "exact_search_samples": exact_search}
    if min_identical is not None and size and audit["fraction_identical"] < min_identical:
        return None, audit, info
    kstar = 1 + exact_counts(data, radius=radius, block_size=block_size, progress=progress)[0]
    return kstar, audit, info


def compute_kstar(
    features: Any,
    labels: Any,
    metric: str = "euclidean",
    method: str = "auto",
    threshold: float = metrics.DEFAULT_THRESHOLD,
    device: str | None = None,
    block_size: int | None = None,
    n_neighbors: int = DEFAULT_N_NEIGHBORS,
    audit_size: int = DEFAULT_AUDIT_SIZE,
    seed: int = 0,
    n_jobs: int | None = None,
    progress: bool = False,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    confidence: float = metrics.DEFAULT_CONFIDENCE,
) -> KStarResult:
    """k* of every sample and its distribution statistics, as defined in SPEC.

    Parameters
    ----------
    features : array-like or torch.Tensor, (N, D) real
    labels : array-like (N,) of ints or strings; at least two classes
    metric : "euclidean" or "cosine" (rows L2-normalised, then Euclidean)
    method : "exact", "ann" (pynndescent plus exact verification) or "auto" (by problem size)
    threshold : pattern threshold t of SPEC (Fractured > t, Clustered < -t)
    device : "cpu", "cuda", "cuda:1", or None / "auto" for CUDA when available
    block_size : query rows per block (memory grows as block_size x N); default: about 8 MiB of float32
    n_neighbors, seed, n_jobs, audit_size : the ANN path's graph size (>= 2), seed, threads and audit sample size
    bootstrap, bootstrap_seed, confidence : with ``bootstrap`` = B > 0, ``result.intervals`` holds seeded percentile
        intervals of Gamma and Gamma' from B within-class resamples (see :func:`metrics.bootstrap_gamma_intervals`)

    Every numeric option is checked first; a bad value is a KStarInputError naming the option and what it accepts.
    """
    threshold = check_number("threshold", threshold, 0.0)
    block_size = check_count("block_size", block_size, 1, allow_none=True)
    n_neighbors = check_count("n_neighbors", n_neighbors, 2)
    audit_size = check_count("audit_size", audit_size, 0)
    seed = check_count("seed", seed, 0)
    n_jobs = check_count("n_jobs", n_jobs, 1, allow_none=True)
    bootstrap = check_count("bootstrap", bootstrap, 0)
    bootstrap_seed = check_count("bootstrap_seed", bootstrap_seed, 0)
    confidence = check_fraction("confidence", confidence)
    check_choice("method", method, METHODS)
    torch_device = resolve_device(device)
    checked = check_inputs(features, labels, metric)
    x, codes, classes = checked.features, checked.codes, checked.classes
    n, dim = x.shape
    resolved = choose_method(n, dim, method)
    data = sort_by_class(x, codes, torch_device)
    audit, extra, kstar_sorted = None, {}, None
    if resolved == "ann":
        # Under "auto" an ANN result that fails its audit is not returned: the exact path runs instead.
        kstar_sorted, audit, extra = _ann_kstar(data, n_neighbors, seed, n_jobs, block_size, audit_size,
                                                ANN_MIN_IDENTICAL if method == "auto" else None, progress)
        if kstar_sorted is None:
            warnings.warn(
                f"the ANN audit found only {audit['fraction_identical']:.1%} of {audit['size']} sampled k* identical "
                f"to exact (below {ANN_MIN_IDENTICAL:.0%}); computing exact k* instead.", ANNAccuracyWarning,
                stacklevel=2)
            extra["ann_fallback"] = True
            resolved = "exact"
        elif audit["size"] and audit["fraction_identical"] < ANN_MIN_IDENTICAL:
            warnings.warn(
                f"the ANN audit found only {audit['fraction_identical']:.1%} of {audit['size']} sampled k* identical "
                f"to exact: this latent space is hard for the neighbour graph. Use method='exact' (or 'auto', which "
                f"falls back by itself) or a larger n_neighbors.", ANNAccuracyWarning, stacklevel=2)
    if resolved == "exact":
        count, stats = exact_counts(data, block_size=block_size, progress=progress)
        kstar_sorted = 1 + count
        extra.update(rechecked_rows=stats.rechecked_rows, rechecked_pairs=stats.rechecked_pairs)
    kstar = np.empty(n, dtype=np.int64)
    kstar[data.order] = kstar_sorted
    kstar_norm = metrics.normalise_kstar(kstar, codes)
    per_class = metrics.per_class_table(kstar_norm, codes, classes, threshold)
    params = {
        "metric": metric,
        "method_requested": method,
        "threshold": float(threshold),
        "device": str(torch_device),
        "block_size": block_size,
        "seed": seed,
        **({"n_neighbors": n_neighbors, "audit_size": audit_size} if audit is not None else {}),
        "n_features": int(dim),
        **extra,
        "versions": versions(),
    }
    return KStarResult(
        kstar=kstar,
        kstar_norm=kstar_norm,
        labels=classes[codes],
        per_class=per_class,
        gamma_true=metrics.gamma_true(kstar_norm),
        gamma_approx=metrics.gamma_approx(per_class["skew"].to_numpy()),
        method=resolved,
        audit=audit,
        params=params,
        intervals=metrics.bootstrap_gamma_intervals(kstar_norm, codes, bootstrap, bootstrap_seed, confidence)
        if bootstrap else None,
    )


def versions(packages: tuple[str, ...] = ("kstar_utils", "numpy", "scipy", "torch", "pynndescent")) -> dict:
    """Installed versions of the libraries a result depends on (read from metadata: nothing is imported)."""
    return dict(_installed_versions(tuple(packages)))


@functools.lru_cache(maxsize=8)
def _installed_versions(packages: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """Read once per process: each metadata lookup scans sys.path (milliseconds), and results are made by the
    hundred (the bootstrap, the report's tasks)."""
    from importlib.metadata import PackageNotFoundError, version

    out = [("python", platform.python_version())]
    for name in packages:
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


__all__ = ["KStarResult", "compute_kstar", "choose_method", "versions", "ANNAccuracyWarning", "AUTO_EXACT_MAX_WORK"]
