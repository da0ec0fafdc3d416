"""SPEC's k*: one entry point, :func:`compute_kstar`, over an exact engine and an ANN-plus-verification path.

Exact (``method="exact"``): the symmetric blocked float32 kernel with float64 re-checks in
:mod:`kstar_utils.neighbours` (each pair of samples computed once); equal to the float64 definition for every
sample, ties included.

Approximate (``method="ann"``): each sample's r_p is the exact distance to the nearest of a few *candidate* foreign
samples, proposed two ways:
* a seeded pynndescent graph: every graph edge, in both directions, that joins two classes. In a fractured or
  overlapped concept the nearest foreign sample is among a sample's nearest neighbours, and the graph finds it;
* sampled rows: per class, rows drawn at random (never the audit's) are searched exactly for their ``SAMPLE_TOP``
  nearest foreign samples, and these serve as candidates for the rows of the same region (k-means cells of the
  class). Inside a clustered concept the nearest foreign samples are few and shared by many samples (hubs), so a few
  hundred sampled rows cover almost every row.
  Sampling goes on, a batch at a time, until a fresh batch finds the candidates so far covering all but
  ``SAMPLE_MAX_MISSES`` of its rows (a measured recall), or until ``SAMPLE_MAX_FRACTION`` of the class. A graph
  candidate no farther than the sample's own k-th graph neighbour is *settled*: when a fresh batch shows settled
  candidates right as well, the class's settled samples skip the dense product over the sampled candidates.
  In a large problem (N^2 * D >= ``PROJECTION_MIN_WORK``) the sampled rows' searches, the recall checks and that
  dense product run in a few principal axes (plus the norm of the rest: a lower bound of the distance) when a check
  on random rows shows that ranking keeping the nearest foreign sample near its top; each row then takes the nearest
  in full of its ``PROJECTED_TOP`` first, and the recall checks measure what that misses.
  ``params["candidate_dims"]`` says which space was used (D: the full one).
* or, in place of both, the *int8 scan* (an exhaustive quantised pass, not a sublinear index), for features at least
  ``LOW_PRECISION_MIN_DIMS`` (64) wide on a CPU that multiplies int8 natively (AVX512-VNNI or AMX): the centred rows
  are rounded to int8 codes, every foreign pair is scored once by its codes' exact integer distance (``torch._int_mm``
  tiles, each reduced for its rows and its columns), and each sample's two nearest by code are its candidates.
  Measured at N = 200,000, D = 128: 2.7 to 3.6 times faster than exact on 10 isotropic classes (99.93% identical),
  where the graph finds few nearest foreign samples (1.3x to 1.5x, 97.9%), and 2.7 to 4.1 times on classes in a 16-d
  subspace (99.99%), where the graph and the projection reach 1.9x to 2.5x (99.19%); at N = 400,000 on the latter,
  47 s against the graph's 61 s. ``candidates="graph"`` or ``"int8-scan"`` forces either source;
  ``params["candidate_source"]`` says which ran. Where the graph runs instead (``candidates="graph"``, or a CPU with
  native bfloat16 but, as torch reports it, no int8 products), a large problem with no projection ranks the sampled
  rows' searches in bfloat16 where the CPU multiplies that natively (``params["candidate_precision"]``: "int8",
  "bfloat16" or "float32").
Then
* every candidate distance is computed exactly (float64 direct form), so r_p is never underestimated; a sample with
  no candidate at all gets the exact search;
* the same-class points nearer than r_p are counted exactly, by the exact kernel's same-class pass with these r_p
  (each same-class pair once, float64 re-checks in the float32 band);
* a random sample of points (``audit_size``) is computed both ways first and compared: ``result.audit``. Under
  ``method="auto"`` an audit with fewer than ``ANN_MIN_IDENTICAL`` (99%) identical k* discards the ANN path and the
  exact one runs instead (recorded as ``params["ann_fallback"]``); under ``method="ann"`` it raises a warning. The
  audit rows keep their exact k* in the result (the audit itself compares the ANN values);
The only possible error is a missed nearest foreign neighbour (r_p too large, so k* too large); the audit measures how
often that happens. ``method="auto"`` picks exact while N^2 * D <= ``AUTO_ANN_MIN_WORK``. Up to
``AUTO_EXACT_MAX_WORK`` it runs ANN only where it was measured faster: features at most ``AUTO_NARROW_DIMS`` wide,
features with a projection found by the candidate-space check, and, where the int8 scan runs, any features
(otherwise exact, recorded as ``params["auto_exact_reason"]``). Above it, ANN runs on any features. The thresholds
were measured with ``benchmarks/bench_kstar.py`` (see ``kstar_utils/defaults.py``). Under ``auto`` the audit is
checked class by class, and the ANN work stops as soon as the audit is sure to fail.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import metrics
from .defaults import (AUTO_ANN_MIN_WORK, AUTO_EXACT_MAX_WORK, AUTO_NARROW_DIMS, CANDIDATE_SOURCES,
                       DEFAULT_AUDIT_SIZE, DEFAULT_N_NEIGHBORS)
from .errors import ANNAccuracyWarning, KStarInputError  # noqa: F401  (re-exported for callers)
from .neighbours import (
    LOW_PRECISION_MIN_DIMS,
    ann_neighbour_graph,
    bfloat16_ranking_features,
    exact_counts,
    exact_foreign_radius,
    exact_pair_distances,
    foreign_top,
    foreign_top_projected,
    int8_two_nearest_foreign,
    nearest_among,
    nearest_among_projected,
    native_bfloat16,
    native_int8,
    principal_axes,
    projected_coordinates,
    projected_features,
    projected_rank,
    resolve_device,
    sort_by_class,
)
from .tile_kernels import TwoNearestInt8
from .validation import MAX_SEED, METHODS, check_choice, check_count, check_fraction, check_inputs, check_number

# Below this fraction of identical k* in the audit, "auto" discards the ANN result and computes exact k*, and "ann"
# warns: isotropic high-dimensional classes have few shared nearest foreign samples (see README, Performance).
ANN_MIN_IDENTICAL = 0.99
# The sampled candidates of the ANN path (see _sampled_candidates): rows per batch, nearest foreign samples kept per
# sampled row, the misses a batch may show for sampling to stop, and the largest fraction of a class sampled.
SAMPLE_BATCH = 128
SAMPLE_TOP = 256
SAMPLE_MAX_MISSES = 0
SAMPLE_MAX_FRACTION = 0.05
# The dense pass over the sampled candidates is split by region: a class's rows fall in SAMPLE_CELLS k-means cells,
# and a candidate serves the cell of each sampled row that found it and its CELL_LISTS nearest cells (not the whole
# class). Classes below CELL_MIN_ROWS rows keep one cell.
SAMPLE_CELLS = 8
CELL_LISTS = 2
CELL_MIN_ROWS = 4096
KMEANS_ROWS = 4096  # rows the cells are fitted on (every row is then assigned)
KMEANS_ITERATIONS = 8
# Problems of N^2 * D >= PROJECTION_MIN_WORK search their sampled candidates in a few principal axes when such a ranking
# is measured to keep each row's nearest foreign sample near its top (see _candidate_space): the sampled rows are
# searched there, and each row takes, of its PROJECTED_TOP first there, the nearest in the full space (the graph stays
# in the full space: built in the projection, it settled fewer rows on data (a) and cost as much). Tried fewest first:
# the axis counts of PROJECTED_DIMS up to half of D. One is taken when it puts the nearest foreign sample of all but
# PROJECTION_MAX_MISSES of PROJECTION_CHECK_ROWS random rows within the first PROJECTED_TOP of its projected ranking
# over all of that row's foreign samples (a dense pass ranks a subset of them, where its place can only be earlier); the
# axes are fitted on PROJECTION_FIT_ROWS rows, and only axis counts holding PROJECTION_MIN_VARIANCE of the variance
# are tried (isotropic features skip the check). The check took 1.0 s at N = 200,000, D = 128, where the projection
# saved about 14 s (benchmarks/bench_kstar.py, data (a)); on 70,000 Fashion-MNIST features (N^2 * D = 3e11) the dense
# pass is too small (5e7 pairs) to gain from it.
PROJECTION_MIN_WORK = 1e12
PROJECTION_MIN_VARIANCE = 0.9
PROJECTED_DIMS = (8, 16, 24, 32, 48, 64)
PROJECTED_TOP = 8
PROJECTION_CHECK_ROWS = 256
PROJECTION_MAX_MISSES = 1
PROJECTION_FIT_ROWS = 8192


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
            "audit": None if self.audit is None else {k: _encode_float(v) for k, v in self.audit.items()},
            "params": self.params,
            "intervals": _encode_intervals(self.intervals),
            "per_class": [
                {k: _encode_float(v) for k, v in row.items()} for row in self.per_class.to_dict(orient="records")
            ],
        }

    def to_dict(self) -> dict:
        """Everything, including per-sample arrays, as plain JSON-compatible types; inverse of :meth:`from_dict`."""
        out = self.summary()
        label_kind = "str" if self.labels.dtype.kind in "US" else "bool" if self.labels.dtype.kind == "b" else "int"
        out.update(
            kstar=self.kstar.tolist(),
            kstar_norm=self.kstar_norm.tolist(),
            labels=self.labels.tolist(),
            label_kind=label_kind,
        )
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "KStarResult":
        kind = data.get("label_kind")
        labels = np.asarray(data["labels"], dtype=str if kind == "str" else bool if kind == "bool" else np.int64)
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
            audit=None if data.get("audit") is None else {k: _decode_float(v) for k, v in data["audit"].items()},
            params=data.get("params", {}),
            intervals=_decode_intervals(data.get("intervals")),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "KStarResult":
        """A result saved by :meth:`to_json`; anything else is a :class:`KStarInputError` naming what is missing."""
        try:
            data = json.loads(text)
        except ValueError as err:
            hint = (" This looks like a file name: pass the file's text, from_json(open(path).read())."
                    if isinstance(text, str) and text.strip().endswith(".json") else "")
            raise KStarInputError(f"not a k* result: invalid JSON ({err}).{hint}") from None
        if not isinstance(data, dict):
            raise KStarInputError(f"not a k* result: a JSON {type(data).__name__}, not an object.")
        missing = [k for k in ("kstar", "kstar_norm", "labels", "per_class", "gamma_true", "gamma_approx", "method")
                   if k not in data]
        if missing:
            raise KStarInputError(f"not a k* result: missing {', '.join(missing)} (save results with to_json).")
        return cls.from_dict(data)


def choose_method(n: int, dim: int, method: str = "auto") -> str:
    """Resolve ``auto`` by the work N^2 * D: "exact" up to AUTO_ANN_MIN_WORK, "ann" above it. Up to
    AUTO_EXACT_MAX_WORK that ANN is conditional for features wider than AUTO_NARROW_DIMS
    (:func:`projection_required`): it runs only where the int8 scan runs or the features have a projection to search
    candidates in, and otherwise :func:`compute_kstar` computes exact k*."""
    check_choice("method", method, METHODS)
    if method != "auto":
        return method
    return "ann" if float(n) * n * dim > min(AUTO_ANN_MIN_WORK, AUTO_EXACT_MAX_WORK) else "exact"


def projection_required(n: int, dim: int, method: str) -> bool:
    """Whether an ANN run must find a projection for its candidates, or run the int8 scan, or else hand over to exact:
    under ``auto`` between AUTO_ANN_MIN_WORK and AUTO_EXACT_MAX_WORK, for features wider than AUTO_NARROW_DIMS; there
    the graph and sampled rows were measured faster on features of low intrinsic dimension only (on isotropic 128-d
    features they need no less work than exact), and the scan on any features."""
    return (method == "auto" and dim > AUTO_NARROW_DIMS
            and AUTO_ANN_MIN_WORK < float(n) * n * dim <= AUTO_EXACT_MAX_WORK)


def _graph_candidates(data, n_neighbors: int, seed: int, n_jobs: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Verified candidate radius of every sorted row from the pynndescent graph: the exact distance to its nearest
    foreign graph neighbour (inf where the graph holds none), and whether that candidate is *settled*: no farther than
    the row's own k-th graph neighbour, so that the graph has seen the row's neighbourhood out to it. A settled row
    skips the sampled candidates (the dense product over them is the ANN path's largest cost); the sampling's
    recall check measures that rule on fresh rows, and where settled rows turn out wrong it searches every row.

    Every edge is used in both directions: if q lists p, the pair (p, q) is a candidate for p as well as for q (the
    distance is the same, so this costs nothing more, and NN-descent often keeps a pair in one list only). In a
    fractured or overlapped concept the nearest foreign sample is among a sample's nearest neighbours, and the graph
    finds it; deep inside a clustered one it is not, and the sampled candidates below find it.
    """
    graph = ann_neighbour_graph(data.exact.cpu().numpy(), n_neighbors=n_neighbors, seed=seed, n_jobs=n_jobs)
    rows = np.repeat(np.arange(data.n), graph.shape[1])
    cols = graph.ravel()
    keep = (cols >= 0) & (cols != rows) & (data.codes[cols] != data.codes[rows])
    radius = np.full(data.n, np.inf)
    _offer(data, radius, torch.from_numpy(rows[keep]).to(data.device), torch.from_numpy(cols[keep]).to(data.device),
           both_ways=True)
    valid = graph >= 0
    last = np.where(valid.any(axis=1), graph[np.arange(data.n), valid.sum(axis=1) - 1], np.arange(data.n))
    reach = exact_pair_distances(data.exact, torch.arange(data.n, device=data.device),
                                 torch.from_numpy(last).to(data.device)).cpu().numpy()
    return radius, radius <= reach


def _offer(data, radius: np.ndarray, rows: torch.Tensor, cols: torch.Tensor, both_ways: bool = False) -> None:
    """Lower ``radius`` (in place) to the exact float64 distance of each (row, foreign column) pair where nearer;
    ``both_ways`` lowers the column's radius too (the distance is the same: a graph edge serves both ends)."""
    if rows.numel():
        dist = exact_pair_distances(data.exact, rows, cols).cpu().numpy()
        np.minimum.at(radius, rows.cpu().numpy(), dist)
        if both_ways:
            np.minimum.at(radius, cols.cpu().numpy(), dist)


def _class_cells(data, start: int, end: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means cells of the class's rows [start, end): each row's cell and the centroids (centred float32 space).

    Lloyd's iterations on at most KMEANS_ROWS rows, then every row assigned to its nearest centroid; one cell when
    the class is smaller than CELL_MIN_ROWS or SAMPLE_CELLS is 1."""
    dim = data.exact.shape[1]
    x = data.left[start:end, :dim]
    k = SAMPLE_CELLS if end - start >= max(CELL_MIN_ROWS, 2 * SAMPLE_CELLS) else 1
    if k <= 1:
        return torch.zeros(end - start, dtype=torch.int64, device=data.device), x.mean(dim=0, keepdim=True)
    fit = x[torch.from_numpy(rng.choice(end - start, size=min(end - start, KMEANS_ROWS), replace=False))
            .to(data.device)]
    centroids = fit[:k].clone()
    for _ in range(KMEANS_ITERATIONS):
        cell = torch.cdist(fit, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, cell, fit)
        counts = torch.bincount(cell, minlength=k).to(fit.dtype)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return torch.cdist(x, centroids).argmin(dim=1), centroids


def _candidate_space(data, rng: np.random.Generator, exclude: np.ndarray):
    """The projection the sampled candidates are searched in, or None for the full space (always below
    PROJECTION_MIN_WORK), and the number of axes it keeps (``D`` for the full space).

    Rows drawn at random (never the audit's) have their nearest foreign sample found; the fewest axes of
    PROJECTED_DIMS (up to D / 2) whose projection ranks it within the first PROJECTED_TOP foreign samples for all
    but PROJECTION_MAX_MISSES of these rows are taken. Features that vary in many directions alike (isotropic
    classes) pass at none and keep the full space."""
    dim = data.exact.shape[1]
    if float(data.n) ** 2 * dim < PROJECTION_MIN_WORK:  # first: every ANN call comes here
        return None, dim
    pool = np.setdiff1d(np.arange(data.n), exclude)
    if len(pool) < PROJECTION_CHECK_ROWS:
        return None, dim
    held, axes = principal_axes(data, PROJECTION_FIT_ROWS, rng)
    ladder = [d for d in PROJECTED_DIMS if 2 * d <= dim and held[d - 1] >= PROJECTION_MIN_VARIANCE]
    if not ladder:
        return None, dim
    rows = torch.from_numpy(np.sort(rng.choice(pool, size=PROJECTION_CHECK_ROWS, replace=False))).to(data.device)
    nearest = foreign_top(data, rows, 1)[1][:, 0]  # float32 nearest: a near-tie may swap, which moves a rank by one
    for dims in ladder:
        coordinates = projected_coordinates(data, axes, dims)
        ranks = projected_rank(data, coordinates, rows, nearest)
        if int((ranks >= PROJECTED_TOP).sum()) <= PROJECTION_MAX_MISSES:
            return projected_features(data, coordinates), dims
    return None, dim


def _nearest_in_cells(data, rows: torch.Tensor, row_cells: torch.Tensor, cell_sets: list[torch.Tensor],
                      projected=None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the nearest candidate of its own cell's set: float64 squared distance (exact after a projected
    ranking, float32 in the full space) and sorted index."""
    values = torch.full((rows.numel(),), math.inf, dtype=torch.float64, device=data.device)
    nearest = torch.zeros(rows.numel(), dtype=torch.int64, device=data.device)
    for c in torch.unique(row_cells).tolist():
        members = torch.nonzero(row_cells == c, as_tuple=True)[0]
        if projected is None:
            found, nearest[members] = nearest_among(data, rows[members], cell_sets[c])
            values[members] = found.to(torch.float64)
        else:
            values[members], nearest[members] = nearest_among_projected(data, projected, rows[members], cell_sets[c],
                                                                        PROJECTED_TOP)
    return values, nearest


def _add_lists(data, cell_sets: list[torch.Tensor], lists: torch.Tensor, list_cells: torch.Tensor,
               centroids: torch.Tensor) -> None:
    """Add sampled rows' candidate lists (in place): each list to its row's cell, each candidate to its CELL_LISTS
    nearest cells as well (a foreign sample is nearest to the rows of the region closest to it)."""
    dim = data.exact.shape[1]
    new = torch.unique(lists)
    near = torch.cdist(data.left[new, :dim], centroids).topk(min(CELL_LISTS, len(cell_sets)), dim=1,
                                                              largest=False).indices
    cells = torch.cat([list_cells[:, None].expand_as(lists).reshape(-1), near.reshape(-1)])
    members = torch.cat([lists.reshape(-1), new.repeat_interleave(near.shape[1])])
    for c in torch.unique(cells).tolist():
        cell_sets[c] = torch.unique(torch.cat([cell_sets[c], members[cells == c]]))


def _sampled_candidates(data, radius: np.ndarray, settled: np.ndarray, rng: np.random.Generator,
                        exclude: np.ndarray, block_size: int | None,
                        stop_after: Callable[[int, int], bool] | None = None, projected=None) -> dict:
    """Lower every row's candidate radius with the foreign samples that are nearest to *sampled* rows of its class.

    Why this works: the nearest foreign samples of a class are few and shared (hubs: at N = 50,000 only about one
    sample in ten is anyone's nearest foreign sample), so the ``SAMPLE_TOP`` nearest foreign samples of a few hundred
    rows, searched exactly, hold the nearest foreign sample of almost every other row of the class. They are shared
    by region: the class is cut into k-means cells (``SAMPLE_CELLS``), and a row is offered the candidates of its own
    cell only (see ``_add_lists``), which shrinks the dense product to a fraction of the class's candidates.

    Rows are sampled in batches of ``SAMPLE_BATCH``; before a batch is added, its rows' exact nearest foreign samples
    measure the recall of the candidates so far (graph and their cells' sets) on fresh rows, under two rules: settled
    rows keep the graph's candidate, or every row takes the sampled ones too. Sampling stops once a batch has at most
    ``SAMPLE_MAX_MISSES`` misses under either rule (the cheaper first), or at ``SAMPLE_MAX_FRACTION`` of the class.
    A class stopped by that cap does not trust its cells (isotropic classes have little locality): every row takes
    all of the class's candidates. The rows the rule names take their cell's nearest candidate (one dense product
    per cell), verified in float64 like the graph's. ``exclude`` (the audit rows) is never sampled, so the audit
    measures rows the sample did not see. ``stop_after(start, end)``, called once a class's rows have their final
    candidates, may end the work there (``"stopped_early"``): the audit gate does that as soon as the audit is sure
    to fail. With ``projected`` (see ``_candidate_space``) the sampled rows' searches, the recall checks and the dense
    pass rank candidates in that projection and take exact distances of the few ranked first.
    """
    block_rows = int(block_size) if block_size else 2 * SAMPLE_BATCH
    excluded = np.zeros(data.n, dtype=bool)
    excluded[exclude] = True
    sampled, candidates, classes_capped, searched, pairs = 0, 0, 0, 0, 0
    for s, e in zip(data.starts.tolist(), data.ends.tolist()):
        pool = s + rng.permutation(e - s)
        pool = pool[~excluded[pool]]
        cap = min(len(pool), max(SAMPLE_BATCH, math.ceil(SAMPLE_MAX_FRACTION * (e - s))))
        cell_of, centroids = _class_cells(data, s, e, rng)
        cell_sets = [torch.zeros(0, dtype=torch.int64, device=data.device) for _ in range(centroids.shape[0])]
        taken, misses, skip_settled = 0, None, False
        while taken < cap:
            batch = torch.from_numpy(np.sort(pool[taken : min(taken + SAMPLE_BATCH, cap)])).to(data.device)
            taken += batch.numel()
            if projected is None:
                values, indices = foreign_top(data, batch, SAMPLE_TOP, block_rows)
            else:
                values, indices = foreign_top_projected(data, projected, batch, SAMPLE_TOP, block_rows)
            batch_np = batch.cpu().numpy()
            graph_only = torch.from_numpy(radius[batch_np] ** 2).to(data.device)
            in_cells = _nearest_in_cells(data, batch, cell_of[batch - s], cell_sets, projected)[0]
            with_sample = torch.minimum(graph_only, in_cells)
            open_rows = torch.from_numpy(~settled[batch_np]).to(data.device)
            bound = values[:, 0].to(torch.float64) + 2 * data.eps(batch)  # float32 band: a tie is not a miss
            # the two rules the final pass may use: settled rows keep the graph's candidate, or every row is searched
            misses_settled = int((torch.where(open_rows, with_sample, graph_only) > bound).sum())
            misses = int((with_sample > bound).sum())
            _add_lists(data, cell_sets, indices, cell_of[batch - s], centroids)
            _offer(data, radius, batch, indices[:, 0])
            if misses_settled <= SAMPLE_MAX_MISSES or misses <= SAMPLE_MAX_MISSES:
                skip_settled = misses_settled <= SAMPLE_MAX_MISSES
                break
        else:
            if misses is not None:  # the loop ran out: every batch had too many misses, so the cells are not
                classes_capped += 1  # trusted and every row takes all of the class's candidates
                cell_of = torch.zeros_like(cell_of)
                cell_sets = [torch.unique(torch.cat(cell_sets))]
        rows = torch.arange(s, e, device=data.device)
        if skip_settled:
            rows = rows[torch.from_numpy(~settled[s:e]).to(data.device)]
        if rows.numel():
            row_cells = cell_of[rows - s]
            sizes = torch.tensor([c.numel() for c in cell_sets], device=data.device)
            _, nearest = _nearest_in_cells(data, rows, row_cells, cell_sets, projected)
            has = sizes[row_cells] > 0
            _offer(data, radius, rows[has], nearest[has])
            searched += int(has.sum())
            pairs += int(sizes[row_cells].sum())
        sampled += taken
        candidates += int(torch.unique(torch.cat(cell_sets)).numel())
        if stop_after is not None and stop_after(s, e):
            stopped = True
            break
    else:
        stopped = False
    return {"sampled_rows": sampled, "sampled_candidates": candidates, "classes_at_sample_cap": classes_capped,
            "rows_given_sampled_candidates": searched, "sampled_candidate_pairs": pairs, "stopped_early": stopped}


def _ann_exact_search(data, radius: np.ndarray, block_size: int | None) -> int:
    """Rows with no verified candidate at all get their exact r_p (in place); returns how many."""
    missing = np.flatnonzero(~np.isfinite(radius))
    if missing.size:
        radius[missing] = exact_foreign_radius(data, missing, block_size=block_size)
    return int(missing.size)


def use_int8_scan(data, candidates: str, dims: int) -> bool:
    """Whether the ANN path takes its candidates from the int8 scan (see the module docstring): always for
    ``candidates="int8-scan"`` (on the CPU; an error elsewhere), never for ``"graph"``; under ``"auto"`` for features at
    least LOW_PRECISION_MIN_DIMS wide on a CPU with native int8 products, where it was measured faster than the graph
    and sampled rows at every size tried, and as accurate or more on the synthetic sets (on Fashion-MNIST features
    99.90% identical against the graph's 99.98%; README, Performance)."""
    if candidates == "graph":
        return False
    if candidates == "int8-scan":
        if data.device.type != "cpu" or not callable(getattr(torch, "_int_mm", None)):
            raise KStarInputError(f"candidates='int8-scan' runs on the CPU with a torch that has _int_mm (this run: "
                                  f"{data.device}, torch {torch.__version__}); use device='cpu' or "
                                  "candidates='auto'.")
        if dims > TwoNearestInt8.MAX_DIMS:
            raise KStarInputError(f"candidates='int8-scan' takes at most {TwoNearestInt8.MAX_DIMS} features, got "
                                  f"{dims}; use candidates='auto'.")
        return True
    return LOW_PRECISION_MIN_DIMS <= dims <= TwoNearestInt8.MAX_DIMS and native_int8(data.device)


def _why_no_scan(data, candidates: str, dims: int) -> str:
    """Why :func:`use_int8_scan` said no, for a message (the projection aside)."""
    if candidates == "graph":
        return "candidates='graph' was asked for"
    if dims < LOW_PRECISION_MIN_DIMS:
        return f"features narrower than {LOW_PRECISION_MIN_DIMS}"
    if dims > TwoNearestInt8.MAX_DIMS:
        return f"features wider than {TwoNearestInt8.MAX_DIMS}"
    if data.device.type != "cpu":
        return f"the scan runs on the CPU, this run on {data.device}"
    return "this CPU has no native int8 products (AVX512-VNNI or AMX)"


def _ann_kstar(data, n_neighbors: int, seed: int, n_jobs: int | None, block_size: int | None,
               audit_size: int, min_identical: float | None, progress: bool,
               require_projection: bool = False, candidates: str = "auto") -> tuple[np.ndarray | None, dict | None,
                                                                                    dict]:
    """k* (sorted order) from ANN candidates, verified as the module docstring says, audited. ``candidates`` picks
    their source (:func:`use_int8_scan`).

    With ``require_projection`` (``auto`` in the middle sizes, see :func:`projection_required`) features with no
    projection for the candidates, where the int8 scan does not run either, end the ANN work before anything costly:
    None comes back for k* and for the audit, and ``info["auto_exact_reason"]`` says why.

    The audit rows are drawn first, kept out of the sample, and their exact k* computed before anything else. When
    ``min_identical`` is given (``auto``), each class's audit rows are compared as soon as the class's candidates are
    final, and once more than ``1 - min_identical`` of the audit differs the ANN work stops there: None comes back
    for k* (the caller runs the exact path) with the audit of the classes done so far. The full verification is the
    exact kernel's same-class pass with the candidate radii as r_p: each same-class pair once.

    ``info["ann_phase_seconds"]`` says where the time went: the candidate-space check, the audit rows' exact k*, the
    pynndescent graph and the sampled candidates (with the gated audit) or the int8 scan (likewise), the exact search,
    the ANN audit and the final verification. The graph (where one is built), the verification and the audits do not
    depend on how the sampled or scanned candidates are found, so exact time over their sum is the most any such
    search could gain here (benchmarks/bench_kstar.py prints it).
    """
    rng = np.random.default_rng(seed)
    phases: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - clock[0], 3)
        clock[0] = now

    size = int(min(max(audit_size, 0), data.n))
    audit_rows = np.sort(rng.choice(data.n, size=size, replace=False)) if size else np.empty(0, dtype=np.int64)
    scan = use_int8_scan(data, candidates, int(data.exact.shape[1]))
    if scan:  # no projection is used: skip its check
        projected, dims = None, int(data.exact.shape[1])
    else:
        projected, dims = _candidate_space(data, np.random.default_rng([seed, 1]), audit_rows)  # own random stream
    lap("candidate_space")
    if require_projection and projected is None and not scan:
        reason = (f"N^2 x D is at most {AUTO_EXACT_MAX_WORK:.0e}, and no projection onto a few principal axes kept "
                  "each sampled row's nearest foreign sample among its first candidates (features of high intrinsic "
                  f"dimension), and the int8 scan does not run here ({_why_no_scan(data, candidates, dims)}): there "
                  "the graph and sampled rows are no faster than exact")
        return None, None, {"candidate_dims": int(dims), "candidate_precision": None, "ann_phase_seconds": phases,
                            "auto_exact_reason": reason}
    exact_audit = 1 + exact_counts(data, audit_rows, block_size=block_size)[0]
    lap("exact_audit")
    if scan:
        return _scanned_kstar(data, audit_rows, exact_audit, seed, block_size, min_identical, progress, phases, lap)
    precision = "float32"
    if (projected is None and dims >= LOW_PRECISION_MIN_DIMS and float(data.n) ** 2 * dims >= PROJECTION_MIN_WORK
            and native_bfloat16(data.device)):
        projected, precision = bfloat16_ranking_features(data), "bfloat16"
    radius, settled = _graph_candidates(data, n_neighbors, seed, n_jobs)
    lap("graph")
    gate = _AuditGate(data, audit_rows, exact_audit, min_identical, block_size) if min_identical is not None and size \
        else None
    sample_info = _sampled_candidates(data, radius, settled, rng, audit_rows, block_size,
                                      stop_after=(lambda s, e: gate.check(s, e, radius)) if gate else None,
                                      projected=projected)
    lap("sampled_candidates")
    info = {"candidate_source": "pynndescent graph and sampled rows", "n_neighbors": int(min(n_neighbors, data.n - 1)),
            "candidate_dims": int(dims), "candidate_precision": precision, **sample_info,
            "ann_phase_seconds": phases}
    if sample_info["stopped_early"]:
        return None, gate.audit(seed), {**info, "exact_search_samples": 0}
    info["exact_search_samples"] = _ann_exact_search(data, radius, block_size)
    lap("exact_search")
    return _verified_kstar(data, radius, audit_rows, exact_audit, seed, block_size, min_identical, progress, info, lap)


class _AuditGate:
    """The audit under ``auto``, class by class as each class's candidates become final: once more than
    ``1 - min_identical`` of the whole audit differs, the audit can no longer pass and the ANN work may stop."""

    def __init__(self, data, audit_rows: np.ndarray, exact_audit: np.ndarray, min_identical: float,
                 block_size: int | None) -> None:
        self.data, self.audit_rows, self.exact_audit = data, audit_rows, exact_audit
        self.min_identical, self.block_size = min_identical, block_size
        self.rows, self.wrong, self.classes, self.differences = 0, 0, 0, []

    def check(self, start: int, end: int, radius: np.ndarray) -> bool:
        """Compare the audit rows of the class in sorted rows [start, end) (a row still without a candidate gets the
        exact search later, so it counts as identical); True once the audit can no longer pass."""
        rows = self.audit_rows
        mine = np.flatnonzero((rows >= start) & (rows < end))
        found = mine[np.isfinite(radius[rows[mine]])]
        if found.size:
            got = 1 + exact_counts(self.data, rows[found], radius=radius[rows[found]], block_size=self.block_size)[0]
            self.wrong += int(np.count_nonzero(got != self.exact_audit[found]))
            self.differences.append(np.abs(got - self.exact_audit[found]))
        self.rows += int(mine.size)
        self.classes += 1
        return self.wrong > (1 - self.min_identical) * len(rows)

    def audit(self, seed: int) -> dict:
        """The audit of the classes checked so far (the work stopped there)."""
        diff = np.concatenate(self.differences or [np.zeros(0, dtype=np.int64)])
        return {"size": self.rows, "fraction_identical": 1 - self.wrong / max(self.rows, 1),
                "max_abs_difference": int(diff.max()) if diff.size else 0,
                "mean_abs_difference": float(diff.sum() / max(self.rows, 1)),
                "seed": seed, "stopped_after_classes": self.classes, "classes": len(self.data.starts)}


def _verified_kstar(data, radius: np.ndarray, audit_rows: np.ndarray, exact_audit: np.ndarray, seed: int,
                    block_size: int | None, min_identical: float | None, progress: bool, info: dict,
                    lap: Callable[[str], None]) -> tuple[np.ndarray | None, dict, dict]:
    """The ANN path's last steps, whatever found the candidates: the audit (the audit rows' k* from the candidate
    radii against their exact k*), then, unless ``min_identical`` rejects it, every row's k* counted exactly from its
    radius (the exact kernel's same-class pass); the audit rows keep their exact k*."""
    size = len(audit_rows)
    ann_audit = 1 + exact_counts(data, audit_rows, radius=radius[audit_rows], block_size=block_size)[0]
    lap("ann_audit")
    diff = np.abs(ann_audit - exact_audit)
    audit = {
        "size": size,
        "fraction_identical": float(np.mean(diff == 0)) if size else math.nan,
        "max_abs_difference": int(diff.max()) if size else 0,
        "mean_abs_difference": float(diff.mean()) if size else 0.0,
        "seed": seed,
    }
    if min_identical is not None and size and audit["fraction_identical"] < min_identical:
        return None, audit, info
    kstar = 1 + exact_counts(data, radius=radius, block_size=block_size, progress=progress)[0]
    kstar[audit_rows] = exact_audit  # computed exactly already: the audit measures ANN, the result keeps the best
    lap("verification")
    return kstar, audit, info


def _scanned_kstar(data, audit_rows: np.ndarray, exact_audit: np.ndarray, seed: int, block_size: int | None,
                   min_identical: float | None, progress: bool, phases: dict,
                   lap: Callable[[str], None]) -> tuple[np.ndarray | None, dict, dict]:
    """The ANN path with the int8 scan (:func:`use_int8_scan`): each row's candidates are its two nearest foreign
    samples by int8 code distance, every foreign pair scored once
    (:func:`~kstar_utils.neighbours.int8_two_nearest_foreign`), in place of the graph and the sampled rows; the
    audit gate checks each class as the scan finishes it. Verification and audit as everywhere else."""
    radius = np.full(data.n, np.inf)
    gate = _AuditGate(data, audit_rows, exact_audit, min_identical, block_size) if min_identical is not None and len(
        audit_rows) else None
    stopped = []

    def class_done(start: int, end: int, nearest: np.ndarray) -> bool:
        for k in range(nearest.shape[1]):  # the exact distance of both candidates; -1 marks a place not filled
            rows = start + np.flatnonzero(nearest[start:end, k] >= 0)
            _offer(data, radius, torch.from_numpy(rows).to(data.device),
                   torch.from_numpy(nearest[rows, k]).to(data.device))
        if gate is not None and gate.check(start, end, radius):
            stopped.append(True)
        return bool(stopped)

    _, codes = int8_two_nearest_foreign(data, progress=progress, class_done=class_done)
    lap("int8_scan")
    info = {"candidate_source": "int8 scan", "candidate_dims": int(data.exact.shape[1]), "candidate_precision": "int8",
            "int8_scale": codes.scale, "int8_levels": codes.levels, "int8_clipped_fraction": codes.clipped_fraction,
            "stopped_early": bool(stopped), "ann_phase_seconds": phases}
    if stopped:
        return None, gate.audit(seed), {**info, "exact_search_samples": 0}
    info["exact_search_samples"] = _ann_exact_search(data, radius, block_size)
    lap("exact_search")
    return _verified_kstar(data, radius, audit_rows, exact_audit, seed, block_size, min_identical, progress, info, lap)


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
    candidates: str = "auto",
) -> KStarResult:
    """k* of every sample and its distribution statistics, as defined in SPEC.

    Parameters
    ----------
    features : array-like or torch.Tensor, (N, D) real
    labels : array-like (N,) of ints or strings; at least two classes
    metric : "euclidean" or "cosine" (rows L2-normalised, then Euclidean)
    method : "exact", "ann" (candidates, from the int8 scan or the pynndescent graph, plus exact verification) or
        "auto" (by problem size)
    threshold : pattern threshold t of SPEC (Fractured > t, Clustered < -t)
    device : "cpu", "cuda", "cuda:1", or None / "auto" for CUDA when available
    block_size : query rows per block (memory grows as block_size x N); default: about 8 MiB of float32
    n_neighbors, seed, n_jobs, audit_size : the ANN path's graph size (>= 2), seed, threads and audit sample size
    bootstrap, bootstrap_seed, confidence : with ``bootstrap`` = B > 0, ``result.intervals`` holds seeded percentile
        intervals of Gamma and Gamma' from B within-class resamples (see :func:`metrics.bootstrap_gamma_intervals`)
    candidates : where the ANN path finds candidates: "auto" (the int8 scan for features at least 64 wide on a CPU
        with AVX512-VNNI or AMX, else the pynndescent graph and sampled rows), "graph" (always the
        graph) or "int8-scan" (always the scan; CPU only)

    Every numeric option is checked first; a bad value is a KStarInputError naming the option and what it accepts.
    """
    threshold = check_number("threshold", threshold, 0.0)
    block_size = check_count("block_size", block_size, 1, allow_none=True)
    n_neighbors = check_count("n_neighbors", n_neighbors, 2)
    audit_size = check_count("audit_size", audit_size, 0)
    seed = check_count("seed", seed, 0, maximum=MAX_SEED)
    n_jobs = check_count("n_jobs", n_jobs, 1, allow_none=True)
    bootstrap = check_count("bootstrap", bootstrap, 0)
    bootstrap_seed = check_count("bootstrap_seed", bootstrap_seed, 0, maximum=MAX_SEED)
    confidence = check_fraction("confidence", confidence)
    check_choice("method", method, METHODS)
    check_choice("candidates", candidates, CANDIDATE_SOURCES)
    if candidates != "auto" and method == "exact":
        raise KStarInputError(f"candidates={candidates!r} chooses how the ANN path finds candidates, and "
                              "method='exact' never runs it; use method='ann' or 'auto', or leave candidates='auto'.")
    torch_device = resolve_device(device)
    if candidates == "int8-scan" and torch_device.type != "cpu":
        raise KStarInputError(f"candidates='int8-scan' runs on the CPU, and this run would use {torch_device}; use "
                              "device='cpu' or candidates='auto'.")
    checked = check_inputs(features, labels, metric)
    x, codes, classes = checked.features, checked.codes, checked.classes
    n, dim = x.shape
    resolved = choose_method(n, dim, method)
    data = sort_by_class(x, codes, torch_device)
    audit, extra, kstar_sorted = None, {}, None
    if resolved == "ann":
        # Under "auto" an ANN result that fails its audit is not returned: the exact path runs instead.
        kstar_sorted, audit, extra = _ann_kstar(data, n_neighbors, seed, n_jobs, block_size, audit_size,
                                                ANN_MIN_IDENTICAL if method == "auto" else None, progress,
                                                require_projection=projection_required(n, dim, method),
                                                candidates=candidates)
        if "auto_exact_reason" in extra:  # auto declined ANN for these features before any ANN work
            resolved = "exact"
        elif kstar_sorted is None:
            where = (f" in the first {audit['stopped_after_classes']} of {audit['classes']} classes, where the ANN "
                     "work stopped" if "stopped_after_classes" in audit else "")
            warnings.warn(
                f"the ANN audit found only {audit['fraction_identical']:.1%} of {audit['size']} sampled k* identical "
                f"to exact{where} (below {ANN_MIN_IDENTICAL:.0%}); computing exact k* instead.", ANNAccuracyWarning,
                stacklevel=2)
            extra["ann_fallback"] = True
            resolved = "exact"
        elif audit["size"] and audit["fraction_identical"] < ANN_MIN_IDENTICAL:
            if extra.get("candidate_source") == "int8 scan":
                why = "its int8 codes rank too coarsely here (see params['int8_clipped_fraction'])"
                remedy = "candidates='graph'"
            else:
                why, remedy = "this latent space is hard for the neighbour graph", "a larger n_neighbors"
            warnings.warn(
                f"the ANN audit found only {audit['fraction_identical']:.1%} of {audit['size']} sampled k* identical "
                f"to exact: {why}. Use method='exact' (or 'auto', which falls back by itself) or {remedy}.",
                ANNAccuracyWarning, stacklevel=2)
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
        **({"n_neighbors": n_neighbors, "audit_size": audit_size, "candidates": candidates}
           if audit is not None else {}),
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


__all__ = ["KStarResult", "compute_kstar", "choose_method", "projection_required", "versions", "ANNAccuracyWarning",
           "AUTO_ANN_MIN_WORK", "AUTO_EXACT_MAX_WORK", "AUTO_NARROW_DIMS"]
