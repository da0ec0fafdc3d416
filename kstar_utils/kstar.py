"""SPEC's k*: one entry point, :func:`compute_kstar`, over an exact engine and an ANN-plus-verification path.

Exact (``method="exact"``): the blocked float32 kernel with float64 re-checks in :mod:`kstar_utils.neighbours`; equal
to the float64 definition for every sample, ties included.

Approximate (``method="ann"``): a seeded pynndescent graph proposes each sample's nearest foreign neighbour. Then
* the candidates' distances are computed exactly (float64 direct form) and the nearest one gives r_p;
* the same-class points nearer than r_p are counted exactly (the kernel, restricted to the class's own columns);
* samples whose graph neighbours hold no foreign point go through the exact search;
* a random sample of points (``audit_size``) is computed both ways first and compared: ``result.audit``. Under
  ``method="auto"`` an audit with fewer than ``ANN_MIN_IDENTICAL`` (99%) identical k* discards the ANN path and the
  exact one runs instead (recorded as ``params["ann_fallback"]``); under ``method="ann"`` it raises a warning.
The only possible error is a missed nearest foreign neighbour (r_p too large, so k* too large); the audit measures how
often that happens. ``method="auto"`` picks exact while N^2 * D <= ``AUTO_EXACT_MAX_WORK`` (from the benchmark in
``benchmarks/bench_kstar.py``) and ANN above it.
"""

from __future__ import annotations

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
from .errors import ANNAccuracyWarning, KStarInputError
from .neighbours import (
    ann_neighbour_graph,
    exact_counts,
    exact_pair_distances,
    resolve_device,
    sort_by_class,
)
from .validation import METHODS, check_choice, check_inputs

# N^2 * D above which method="auto" uses ANN. On the 2-core benchmark machine ANN overtakes exact at about this size
# (see README, Performance); exact stays the default below it because it has no error at all.
AUTO_EXACT_MAX_WORK = 2.0e12
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
    """Verified candidate radius of every sorted row: the exact distance to its nearest foreign graph neighbour
    (inf where the graph holds no foreign neighbour)."""
    graph = ann_neighbour_graph(data.exact.cpu().numpy(), n_neighbors=n_neighbors, seed=seed, n_jobs=n_jobs)
    rows = np.repeat(np.arange(data.n), graph.shape[1])
    cols = graph.ravel()
    keep = (cols >= 0) & (cols != rows) & (data.codes[cols] != data.codes[rows])
    rows, cols = rows[keep], cols[keep]
    dist = exact_pair_distances(
        data.exact, torch.from_numpy(rows).to(data.device), torch.from_numpy(cols).to(data.device)
    ).cpu().numpy()
    radius = np.full(data.n, np.inf)
    order = np.lexsort((dist, rows))  # per row, nearest first: the first entry of each row is its minimum
    first = np.ones(len(order), dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    radius[rows[order][first]] = dist[order][first]
    return radius


def _ann_counts(data, rows: np.ndarray, radius: np.ndarray, block_size: int | None, progress: bool) -> np.ndarray:
    """k* of sorted ``rows``: exact same-class counting within the candidate radius, exact search where there is none."""
    kstar = np.empty(len(rows), dtype=np.int64)
    found = np.isfinite(radius[rows])
    if found.any():
        count, _ = exact_counts(data, rows[found], radius=radius[rows][found], block_size=block_size,
                                progress=progress)
        kstar[found] = 1 + count
    if (~found).any():
        count, _ = exact_counts(data, rows[~found], block_size=block_size, progress=progress)
        kstar[~found] = 1 + count
    return kstar


def _ann_kstar(data, n_neighbors: int, seed: int, n_jobs: int | None, block_size: int | None,
               audit_size: int, min_identical: float | None, progress: bool) -> tuple[np.ndarray | None, dict, dict]:
    """k* (sorted order) from ANN candidates, verified as the module docstring says, audited first.

    The audit rows are computed both ways before anything else; when ``min_identical`` is given and the audit falls
    below it, returns None for k* (the caller runs the exact path instead) without doing the full ANN work.
    """
    radius = _ann_candidates(data, n_neighbors, seed, n_jobs)
    rng = np.random.default_rng(seed)
    size = int(min(max(audit_size, 0), data.n))
    audit_rows = np.sort(rng.choice(data.n, size=size, replace=False)) if size else np.empty(0, dtype=np.int64)
    ann_audit = _ann_counts(data, audit_rows, radius, block_size, False)
    exact_audit = 1 + exact_counts(data, audit_rows, block_size=block_size)[0]
    diff = np.abs(ann_audit - exact_audit)
    audit = {
        "size": size,
        "fraction_identical": float(np.mean(diff == 0)) if size else math.nan,
        "max_abs_difference": int(diff.max()) if size else 0,
        "mean_abs_difference": float(diff.mean()) if size else 0.0,
        "seed": seed,
    }
    info = {"n_neighbors": int(min(n_neighbors, data.n - 1)), "exact_search_samples": int(np.sum(~np.isfinite(radius)))}
    if min_identical is not None and size and audit["fraction_identical"] < min_identical:
        return None, audit, info
    kstar = np.empty(data.n, dtype=np.int64)
    rest = np.setdiff1d(np.arange(data.n), audit_rows, assume_unique=True)
    kstar[rest] = _ann_counts(data, rest, radius, block_size, progress)
    kstar[audit_rows] = ann_audit
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
    n_neighbors, seed, n_jobs, audit_size : the ANN path's graph size, seed, threads and audit sample size
    """
    checked = check_inputs(features, labels, metric)
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise KStarInputError(f"threshold must be a finite number >= 0, got {threshold!r}.")
    x, codes, classes = checked.features, checked.codes, checked.classes
    n, dim = x.shape
    resolved = choose_method(n, dim, method)
    torch_device = resolve_device(device)
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
    )


def versions(packages: tuple[str, ...] = ("kstar_utils", "numpy", "scipy", "torch", "pynndescent")) -> dict:
    """Installed versions of the libraries a result depends on (read from metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


__all__ = ["KStarResult", "compute_kstar", "choose_method", "versions", "ANNAccuracyWarning", "AUTO_EXACT_MAX_WORK"]
