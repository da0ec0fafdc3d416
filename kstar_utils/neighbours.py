"""Neighbour search for k*: a blocked, exact float32 kernel with float64 re-checks, and a pynndescent wrapper.

Why this shape
--------------
SPEC defines k*_p = 1 + #{same-class j != p : d(p, j) < r_p}, with r_p the distance to p's nearest foreign sample and
distances as computed in float64 by the direct form sqrt(sum (x - y)^2). Computing that directly costs an N x N x D
float64 pass; the fast path here does the same work as one float32 matrix product and re-checks in float64 only the
comparisons that float32 rounding could have decided wrongly.

* Samples are sorted by class, so each class is one contiguous range of columns. For a block of query rows the kernel
  computes one float32 matrix product whose entries are G_pj = |x_j|^2 - 2 x_p . x_j (the inner dimension is
  augmented with the squared norms, so no second pass over the block is needed). r_p comes from a row minimum over the
  foreign columns, and the count from a comparison over the p's own class columns only. Memory is block x N.
* Features are centred (in float64) before the cast to float32, which removes a large common offset: the expanded form
  |x|^2 + |y|^2 - 2 x.y is useless in float32 when |x| is large relative to the distances.
* Every float32 value of G_pj is within eps_p = kappa * (n_p + n_max)^2 of the exact value (n = norms of the centred
  rows, kappa = 1.05 (D + 8) 2^-24: the worst-case bound gamma_D of a float32 dot product in any summation order,
  plus the cast to float32 and the few additions around it, with 5% to spare). A
  same-class point counts for sure when G_pj < min_f G_pf - 2 eps_p and is out for sure when G_pj >= min_f G_pf +
  2 eps_p. Rows with anything in between are re-checked: exact float64 direct-form distances for the foreign
  candidates within the band (which must contain the true nearest foreign sample) and for the same-class points in the
  band, compared as SPEC compares them. The result therefore equals the float64 definition, ties included.
* All tensor work runs through torch, so the same code runs on CPU and CUDA (TF32 is switched off while it runs:
  its 10-bit mantissa would break the error bound).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

UNIT_ROUNDOFF_FP32 = 2.0**-24
DEFAULT_BLOCK_BYTES = 8 * 2**20  # one float32 block of block_size x width distances: its comparisons stay in cache
MIN_BLOCK_ROWS = 128  # fewer rows make the matrix product inefficient
PAIR_CHUNK_ELEMENTS = 2**24  # float64 elements gathered at once when re-checking pairs


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Pick the compute device: the one asked for, else CUDA, then Apple MPS (float64 is emulated there: CPU), then CPU."""
    if device not in (None, "auto"):
        resolved = torch.device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} was requested but CUDA is not available; pass device='cpu' or 'auto'."
            )
        if resolved.type == "mps":
            raise RuntimeError("the k* engine needs float64 re-checks, which MPS lacks; use device='cpu' or 'cuda'.")
        return resolved
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def full_float32_precision() -> Iterator[None]:
    """IEEE float32 matrix products while the exact kernel runs (no TF32 on CUDA, no bf16 through oneDNN on CPU, which
    torch's "medium"/"high" precision settings enable), restoring the caller's settings afterwards.

    Uses torch's per-backend ``fp32_precision`` switches where they exist (torch >= 2.9) and never mixes them with the
    legacy ones, which torch refuses to read back once both have been set.
    """
    backends = [b for b in (torch.backends.cuda.matmul, getattr(getattr(torch.backends, "mkldnn", None), "matmul", None))
                if b is not None and hasattr(b, "fp32_precision")]
    if backends:
        saved = [b.fp32_precision for b in backends]
        for b in backends:
            b.fp32_precision = "ieee"
        try:
            yield
        finally:
            for b, value in zip(backends, saved):
                b.fp32_precision = value
        return
    previous_precision = torch.get_float32_matmul_precision()  # older torch: the legacy switches only
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous_precision)
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


@dataclass
class ClassSortedFeatures:
    """Features laid out for the kernel: rows sorted by class, in float64 (exact) and centred float32 (fast) form.

    ``order[i]`` is the original index of sorted row i; class k occupies sorted rows ``starts[k]:ends[k]``.
    """

    exact: torch.Tensor  # (N, D) float64, the features as given (after the metric's normalisation), sorted
    augmented: torch.Tensor  # (N, D + 1) float32: [-2 * centred rows, |centred row|^2]
    queries: torch.Tensor  # (N, D + 1) float32: [centred rows, 1]
    norms: torch.Tensor  # (N,) float64 norms of the centred float32 rows, for the error bound
    max_norm: float
    kappa: float
    codes: np.ndarray  # (N,) class code of each sorted row
    order: np.ndarray  # (N,) original index of each sorted row
    starts: np.ndarray
    ends: np.ndarray
    device: torch.device

    @property
    def n(self) -> int:
        return int(self.exact.shape[0])


def sort_by_class(features: np.ndarray, codes: np.ndarray, device: torch.device) -> ClassSortedFeatures:
    """Sort rows by class and build the float64 and float32 forms the kernel needs."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    features = _unit_scale(features)
    n_classes = int(sorted_codes.max()) + 1
    counts = np.bincount(sorted_codes, minlength=n_classes)
    ends = np.cumsum(counts)
    starts = ends - counts
    exact = torch.from_numpy(np.ascontiguousarray(features[order], dtype=np.float64)).to(device)
    centred = exact - exact.mean(dim=0, keepdim=True)
    fast = centred.to(torch.float32)
    norms = fast.to(torch.float64).norm(dim=1)
    sq_norms = (norms**2).to(torch.float32).unsqueeze(1)
    ones = torch.ones((fast.shape[0], 1), dtype=torch.float32, device=device)
    dim = features.shape[1]
    return ClassSortedFeatures(
        exact=exact,
        augmented=torch.cat([-2.0 * fast, sq_norms], dim=1).contiguous(),
        queries=torch.cat([fast, ones], dim=1).contiguous(),
        norms=norms,
        max_norm=float(norms.max()),
        kappa=1.05 * (dim + 8) * UNIT_ROUNDOFF_FP32,
        codes=sorted_codes,
        order=order,
        starts=starts,
        ends=ends,
        device=device,
    )


def _unit_scale(features: np.ndarray) -> np.ndarray:
    """Features of extreme magnitude (squares that overflow float32, or underflow) rescaled by a power of two.

    Multiplying by 2^k is exact in binary floating point, so every distance scales by exactly 2^k and no comparison
    changes; values in a normal range are returned untouched.
    """
    peak = float(np.max(np.abs(features))) if features.size else 0.0
    if peak == 0.0 or 2.0**-30 <= peak <= 2.0**30:
        return features
    return np.ldexp(features, -int(np.floor(np.log2(peak))))


def default_block_size(n: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that one float32 block of distances takes about ``block_bytes`` (at least 128 rows)."""
    return int(max(1, min(n, max(MIN_BLOCK_ROWS, block_bytes // (4 * max(n, 1))))))


def exact_pair_distances(exact: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float64 direct-form distances sqrt(sum (x_r - x_c)^2) for index pairs, gathered in bounded chunks."""
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=exact.device)
    step = max(1, PAIR_CHUNK_ELEMENTS // max(1, exact.shape[1]))
    for lo in range(0, rows.shape[0], step):
        hi = lo + step
        diff = exact[rows[lo:hi]] - exact[cols[lo:hi]]
        out[lo:hi] = torch.sqrt((diff * diff).sum(dim=1))
    return out


@dataclass
class KernelStats:
    """What the exact kernel did: how many rows and pairs needed a float64 re-check (reported, for trust)."""

    rows: int = 0
    rechecked_rows: int = 0
    rechecked_pairs: int = 0


def _segment_min(block: torch.Tensor, segments: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row minimum of G over the foreign column segments, and the column where it lies."""
    best = torch.full((block.shape[0],), math.inf, dtype=block.dtype, device=block.device)
    where = torch.zeros(block.shape[0], dtype=torch.int64, device=block.device)
    for lo, hi in segments:
        if hi > lo:
            value, index = block[:, lo:hi].min(dim=1)
            better = value < best
            best = torch.where(better, value, best)
            where = torch.where(better, index + lo, where)
    return best, where


def _foreign_radius(
    data: ClassSortedFeatures, block: torch.Tensor, rows: torch.Tensor, global_rows: torch.Tensor,
    segments: tuple[tuple[int, int], ...], nearest_col: torch.Tensor, upper: torch.Tensor, stats: KernelStats,
) -> torch.Tensor:
    """Exact float64 r_p for ``rows`` of the block: the nearest foreign sample is among the columns within ``upper``.

    Usually only the float32 nearest one is: that is proven by masking it (in place) and finding the next minimum
    above ``upper``. Rows where it is not (ties, near-ties) search all foreign columns within ``upper``.
    """
    r_exact = exact_pair_distances(data.exact, global_rows, nearest_col)
    stats.rechecked_pairs += int(rows.numel())
    block[rows, nearest_col] = math.inf  # in place: a foreign column, never read again but here
    second = torch.full((rows.numel(),), math.inf, dtype=block.dtype, device=block.device)
    for lo, hi in segments:
        if hi > lo:
            second = torch.minimum(second, block[:, lo:hi].amin(dim=1)[rows])
    crowded = torch.nonzero(second <= upper, as_tuple=True)[0]
    if crowded.numel():
        sub = block[rows[crowded]]
        for lo, hi in segments:
            if hi <= lo:
                continue
            cand_r, cand_c = torch.nonzero(sub[:, lo:hi] <= upper[crowded, None], as_tuple=True)
            cand_r = crowded[cand_r]
            cand_d = exact_pair_distances(data.exact, global_rows[cand_r], cand_c + lo)
            r_exact.scatter_reduce_(0, cand_r, cand_d, reduce="amin")
            stats.rechecked_pairs += int(cand_r.numel())
    return r_exact


def _count_in_band(
    data: ClassSortedFeatures, same: torch.Tensor, global_rows: torch.Tensor, global_col_base: int,
    low: torch.Tensor, high: torch.Tensor, r_exact: torch.Tensor, stats: KernelStats,
) -> torch.Tensor:
    """Exactly decide the same-class points whose float32 value lies in [low, high): how many are nearer than r_p.

    ``r_exact`` is indexed like the rows of ``same``; it is only read for rows that have points in the band.
    """
    amb_r, amb_c = torch.nonzero((same >= low[:, None]) & (same < high[:, None]), as_tuple=True)
    amb_d = exact_pair_distances(data.exact, global_rows[amb_r], amb_c + global_col_base)
    stats.rechecked_pairs += int(amb_r.numel())
    extra = torch.zeros(same.shape[0], dtype=torch.int64, device=same.device)
    extra.scatter_add_(0, amb_r, (amb_d < r_exact[amb_r]).to(torch.int64))
    return extra


def exact_counts(
    data: ClassSortedFeatures,
    rows: np.ndarray | None = None,
    radius: np.ndarray | None = None,
    block_size: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, KernelStats]:
    """Exact same-class counts #{same-class j != p : d(p, j) < r_p} for sorted rows (all rows by default).

    k* = 1 + count. Without ``radius``, r_p is searched among the foreign columns; with ``radius`` (float64, one per
    requested row: the ANN path's verified candidate distance) r_p is given and only the class's own columns are
    scanned, at a cost of n_c instead of N columns per row.
    """
    rows = np.arange(data.n) if rows is None else np.asarray(rows, dtype=np.int64)
    count = np.zeros(len(rows), dtype=np.int64)
    stats = KernelStats(rows=len(rows))
    if len(rows) == 0:
        return count, stats
    order = np.argsort(rows, kind="stable")  # group the requested rows by class
    sorted_rows = rows[order]
    row_codes = data.codes[sorted_rows]
    width = data.n if radius is None else int(np.max(data.ends - data.starts))
    block_size = block_size or default_block_size(width)
    radius_t = None if radius is None else torch.from_numpy(np.asarray(radius, dtype=np.float64)[order]).to(data.device)
    with full_float32_precision(), torch.inference_mode():
        bar = tqdm(total=len(rows), desc="k* (exact)", unit="sample", disable=not progress, leave=False)
        for code in np.unique(row_codes):
            sel = np.flatnonzero(row_codes == code)  # contiguous in ``order``
            s, e = int(data.starts[code]), int(data.ends[code])
            for lo in range(0, len(sel), block_size):
                pos = sel[lo : lo + block_size]
                result = _count_block(data, torch.from_numpy(sorted_rows[pos]).to(data.device), s, e,
                                      None if radius_t is None else radius_t[pos], stats)
                count[order[pos]] = result.cpu().numpy()
                bar.update(len(pos))
        bar.close()
    return count, stats


def _count_block(
    data: ClassSortedFeatures, g_rows: torch.Tensor, s: int, e: int, radius: torch.Tensor | None, stats: KernelStats
) -> torch.Tensor:
    """Counts for one block of rows of class [s, e): the float32 decision, then exact re-checks where it is unsure."""
    if radius is None:
        block = data.queries[g_rows] @ data.augmented.T  # G_pj = |x_j|^2 - 2 x_p . x_j, (B, N)
        col_lo, col_hi, base = s, e, 0
    else:
        block = data.queries[g_rows] @ data.augmented[s:e].T  # the class's own columns only, (B, n_c)
        col_lo, col_hi, base = 0, e - s, s
    local = torch.arange(g_rows.shape[0], device=block.device)
    block[local, g_rows - base] = math.inf  # exclude self explicitly
    eps = data.kappa * (data.norms[g_rows] + data.max_norm) ** 2
    segments = ((0, s), (e, block.shape[1]))
    if radius is None:
        nearest, nearest_col = _segment_min(block, segments)
        r_g = nearest.to(torch.float64)
    else:
        r_g = radius * radius - data.norms[g_rows] ** 2  # the given radius in G's units
    low = (r_g - 2 * eps).to(torch.float32)
    high = (r_g + 2 * eps).to(torch.float32)
    same = block[:, col_lo:col_hi]
    n_low = torch.count_nonzero(same < low[:, None], dim=1)
    n_high = torch.count_nonzero(same < high[:, None], dim=1)
    unsure = torch.nonzero(n_high != n_low, as_tuple=True)[0]
    if unsure.numel():
        stats.rechecked_rows += int(unsure.numel())
        if radius is None:
            r_exact = torch.full((block.shape[0],), math.nan, dtype=torch.float64, device=block.device)
            r_exact[unsure] = _foreign_radius(data, block, unsure, g_rows[unsure], segments, nearest_col[unsure],
                                              high[unsure], stats)
        else:
            r_exact = radius
        # Rows that are sure have no point in [low, high), so the band search can run on the whole block.
        n_low += _count_in_band(data, same, g_rows, col_lo + base, low, high, r_exact, stats)
    return n_low


def brute_force_kstar(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """SPEC's k*, straight from the definition: float64 direct-form distances, O(N^2 D) memory per row. For tests."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    out = np.empty(len(x), dtype=np.int64)
    for p in range(len(x)):
        d = np.sqrt(((x - x[p]) ** 2).sum(axis=1))
        same = y == y[p]
        same[p] = False
        foreign = y != y[p]
        r = d[foreign].min()
        out[p] = 1 + int(np.count_nonzero(d[same] < r))
    return out


def ann_neighbour_graph(
    features: np.ndarray, n_neighbors: int, seed: int, n_jobs: int | None = None
) -> np.ndarray:
    """Indices (N, n_neighbors) of approximate nearest neighbours from pynndescent, seeded.

    pynndescent is deterministic for a fixed ``random_state`` and thread count; ``n_jobs`` defaults to the number of
    CPUs this process may use. Its numba code is compiled on first use and cached on disk.
    """
    from pynndescent import NNDescent  # imported lazily: numba compilation is slow

    if n_jobs is None:
        n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    index = NNDescent(
        np.ascontiguousarray(features, dtype=np.float32),
        metric="euclidean",
        n_neighbors=int(min(n_neighbors, len(features) - 1)),
        random_state=seed,
        n_jobs=n_jobs,
        low_memory=True,
        compressed=True,
    )
    indices, _ = index.neighbor_graph
    return indices
