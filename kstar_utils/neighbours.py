"""Neighbour search for k*: a symmetric, blocked, exact float32 kernel with float64 re-checks, and a pynndescent wrapper.

Why this shape
--------------
SPEC defines k*_p = 1 + #{same-class j != p : d(p, j) < r_p}, with r_p the distance to p's nearest foreign sample and
distances as computed in float64 by the direct form sqrt(sum (x - y)^2). Computing that directly costs an N x N x D
float64 pass; the fast path here does about *half* the work of one float32 matrix product X @ X.T and re-checks in
float64 only the comparisons that float32 rounding could have decided wrongly.

* Samples are sorted by class, so each class is one contiguous range [s_c, e_c). Distances are symmetric, so every
  unordered pair is computed once, as one entry of a float32 tile D2_pj = [c_p, 1, |c_p|^2] . [-2 c_j, |c_j|^2, 1]
  (the squared distance, with the squared norms carried in the inner dimension: no second pass over the tile).
* **Foreign pass.** For each class c, its rows against the columns of all *later* classes [e_c, N), in tiles of
  ``block_size`` rows x a few thousand columns. Each tile's row minima update the rows' foreign minima and its
  column minima update the columns' ones, so after the pass every row holds m_p = min over foreign j of D2_pj, having
  seen each of its foreign pairs once. Work: sum over c < c' of n_c n_c' pairs.
* **Same-class pass.** r_p is only known once the foreign pass is complete, so the counts come second: for each class,
  the upper triangle of its own diagonal block (each same-class pair once), counting for the row *and* the column
  whether the pair lies below the row's (the column's) threshold. Work: sum_c n_c^2 / 2 pairs. In all about N^2 / 2
  pairs: half of X @ X.T. Memory is one tile plus O(N) vectors: O(block x N) at most.
* Features are centred (in float64) before the cast to float32, which removes a large common offset: the expanded form
  |x|^2 + |y|^2 - 2 x.y is useless in float32 when |x| is large relative to the distances.
* Every float32 value of D2_pj is within eps_p = kappa * (n_p + n_max)^2 of the exact value (n = norms of the centred
  rows, kappa = 1.05 (D + 8) 2^-24: the worst-case bound gamma_{D+2} of a float32 dot product in any summation order,
  plus the casts to float32 and the stored squared norms, with 5% to spare). A same-class point counts for sure when
  D2_pj < m_p - 2 eps_p and is out for sure when D2_pj >= m_p + 2 eps_p. Rows with anything in between are
  re-checked: their foreign candidates within m_p + 2 eps_p (which must contain the true nearest foreign sample) and
  their same-class points in the band are recomputed and compared in exact float64 direct form, as SPEC compares
  them. The result therefore equals the float64 definition, ties included.
* All tensor work runs through torch, so the same code runs on CPU and CUDA (TF32 is switched off while it runs:
  its 10-bit mantissa would break the error bound).
* For the ANN path's candidate search only: ``principal_axes`` and ``projected_coordinates`` give a few-axis layout
  whose distances are lower bounds of the true ones, ``projected_rank`` measures how well it ranks,
  ``bfloat16_ranking_features`` gives a full-space layout in bfloat16 (for CPUs that multiply it natively), and
  ``nearest_among_projected`` / ``foreign_top_projected`` rank in either and take exact distances of the first few;
  ``int8_codes`` and ``int8_two_nearest_foreign`` give the int8 scan (every foreign pair scored once by integer code
  distance, each sample's two nearest kept). Nothing in the exact kernel uses them.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from .errors import KStarInputError
from .tile_kernels import RowSmallest, TwoNearestInt8, counts_below, direct_distances, row_minimum, torch_threads_kept

UNIT_ROUNDOFF_FP32 = 2.0**-24
DEFAULT_BLOCK_BYTES = 8 * 2**20  # used by default_block_size (the row-wise paths' rows per block)
MIN_BLOCK_ROWS = 128  # fewer rows make the matrix product inefficient
PAIR_CHUNK_ELEMENTS = 2**20  # float64 elements gathered at once when re-checking pairs
DEFAULT_TILE_ROWS = 2048  # rows of one tile of the symmetric kernel (CPU, inner width >= 256)
TILE_BYTES = 16 * 2**20  # one float32 tile of the symmetric kernel at most: rows x columns x 4 bytes
# On the CPU a tile holds about TILE_ELEMENTS_PER_INNER x (inner width) distances: the elementwise work after the
# product (minima, comparisons, counts) runs at memory speed, so a narrow inner dimension wants a tile that stays in
# cache. Measured here (2-core EPYC, torch 2.14): D = 512 is fastest at 2048 x 2048, D = 128 at 1024 x 1024 and
# D = 64 at 512 x 1024 (product plus two minima, ns per pair; the product alone also slows down on larger tiles).
TILE_ELEMENTS_PER_INNER = 8192
MIN_TILE_BYTES = 2**20
SAME_CLASS_ROWS = 512  # rows per block of the same-class pass: its diagonal squares are computed in both orders
# On CUDA every tile costs a dozen kernel launches and a host sync or two, so tiles are 16 times larger (256 MiB).
# Measured on an H200 (benchmarks/bench_kstar_gpu.py, N = 200,000, D = 512): the kernel took 1.73 s with the CPU's
# tiles and 0.68 s with these (0.82 times the bare product); at N = 20,000, 0.069 s and 0.020 s.
CUDA_TILE_ROWS = 8192
CUDA_TILE_BYTES = 256 * 2**20
CUDA_SAME_CLASS_ROWS = 2048
INNER_PAD = 8  # the inner dimension (D + 2) is padded with zeros to a multiple of this (aligned matrix products)
LAYOUT_CHUNK_BYTES = 2**20  # float64 rows per chunk when the CPU builds the kernel's layout (fits in L2)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The compute device: the one asked for (see :func:`kstar_utils.plumbing.pick_device`), else CUDA, else CPU.

    MPS is refused (it has no float64, which the re-checks need); under ``auto`` it is passed over for the CPU.
    """
    from .plumbing import pick_device

    resolved = pick_device(device)
    if resolved.type == "mps":
        if device in (None, "auto"):
            return torch.device("cpu")
        raise KStarInputError("the k* engine needs float64 re-checks, which MPS lacks; use device='cpu' or 'cuda'.")
    return resolved


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
    ``left[p] . right[j]`` is the float32 squared distance of the centred rows p and j.
    """

    exact: torch.Tensor  # (N, D) float64, the features as given (after the metric's normalisation), sorted
    left: torch.Tensor  # (N, P) float32: [centred row, 1, |centred row|^2, 0 ...]
    right: torch.Tensor  # (N, P) float32: [-2 * centred row, |centred row|^2, 1, 0 ...]
    norms: torch.Tensor  # (N,) float64 norms of the centred float32 rows, for the error bound
    max_norm: float
    kappa: float
    codes: np.ndarray  # (N,) class code of each sorted row
    codes_t: torch.Tensor  # the same on the device
    order: np.ndarray  # (N,) original index of each sorted row
    starts: np.ndarray
    ends: np.ndarray
    device: torch.device

    @property
    def n(self) -> int:
        return int(self.exact.shape[0])

    @property
    def inner(self) -> int:
        """Width of the float32 rows the kernel multiplies (D + 2, padded)."""
        return int(self.left.shape[1])

    def eps(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """float64 bound on the float32 error of D2_pj for the given rows and any column j."""
        return self.kappa * (self.norms[rows] + self.max_norm) ** 2


def sort_by_class(features: np.ndarray, codes: np.ndarray, device: torch.device) -> ClassSortedFeatures:
    """Sort rows by class and build the float64 and float32 forms the kernel needs."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = np.asarray(codes)[order]
    features = _unit_scale(np.asarray(features, dtype=np.float64))
    n_classes = int(sorted_codes.max()) + 1
    counts = np.bincount(sorted_codes, minlength=n_classes)
    ends = np.cumsum(counts)
    starts = ends - counts
    exact = torch.from_numpy(np.ascontiguousarray(features[order], dtype=np.float64)).to(device)
    n, dim = exact.shape
    width = -(-(dim + 2) // INNER_PAD) * INNER_PAD
    mean = exact.mean(dim=0, keepdim=True)
    left = torch.zeros((n, width), dtype=torch.float32, device=device)
    right = torch.zeros((n, width), dtype=torch.float32, device=device)
    norms = torch.empty(n, dtype=torch.float64, device=device)
    # In row chunks that stay in cache on a CPU (one chunk on CUDA): centre in float64, cast into place, and take the
    # norms of the float32 rows in float64; whole-array temporaries made this a tenth of the exact path's time.
    step = n if device.type == "cuda" else max(1, LAYOUT_CHUNK_BYTES // (8 * max(dim, 1)))
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        fast = left[lo:hi, :dim]
        fast.copy_(exact[lo:hi] - mean)
        norms[lo:hi] = fast.to(torch.float64).norm(dim=1)
        sq_norms = (norms[lo:hi] ** 2).to(torch.float32)
        left[lo:hi, dim] = 1.0
        left[lo:hi, dim + 1] = sq_norms
        torch.mul(fast, -2.0, out=right[lo:hi, :dim])
        right[lo:hi, dim] = sq_norms
        right[lo:hi, dim + 1] = 1.0
    return ClassSortedFeatures(
        exact=exact,
        left=left,
        right=right,
        norms=norms,
        max_norm=float(norms.max()),
        kappa=1.05 * (dim + 8) * UNIT_ROUNDOFF_FP32,
        codes=sorted_codes,
        codes_t=torch.from_numpy(np.ascontiguousarray(sorted_codes)).to(device),
        order=order,
        starts=starts,
        ends=ends,
        device=device,
    )


# After rescaling, no nonzero feature may lie below this: a square below 2**-1000 nears float64's subnormal range
MIN_SCALED_MAGNITUDE = 2.0**-500


def _unit_scale(features: np.ndarray) -> np.ndarray:
    """Features of extreme magnitude (squares that overflow float32, or underflow) rescaled by a power of two.

    Multiplying by 2^k is exact in binary floating point, so every distance scales by exactly 2^k and no comparison
    changes; values in a normal range are returned untouched. Features whose magnitudes differ so much that the
    rescale would push the small ones' squares out of float64's normal range are refused (KStarInputError).
    """
    peak = max(float(features.max()), -float(features.min())) if features.size else 0.0  # no |x| temporary
    if peak == 0.0 or 2.0**-30 <= peak <= 2.0**30:
        return features
    shift = -int(np.floor(np.log2(peak)))
    magnitude = np.abs(features)
    smallest = float(magnitude[magnitude > 0].min())
    if np.ldexp(smallest, shift) < MIN_SCALED_MAGNITUDE:
        row = int(np.flatnonzero(magnitude.max(axis=1) == peak)[0])
        raise KStarInputError(
            f"features span too many orders of magnitude: the largest |value| is {peak:.3g} (row {row}), the "
            f"smallest nonzero one {smallest:.3g}. k* is computed on the features scaled by one power of two (exact), "
            "so that the largest fits float32's range for the fast pass; scaled that far, the small values' squares "
            "fall below float64's normal range, and their exact re-check would lose them. Standardise the features, "
            "or remove the outlying rows.")
    return np.ldexp(features, shift)


def default_block_size(n: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per block so that one float32 block of distances takes about ``block_bytes`` (at least 128 rows)."""
    return int(max(1, min(n, max(MIN_BLOCK_ROWS, block_bytes // (4 * max(n, 1))))))


def _tile_shape(device: torch.device, inner: int) -> tuple[int, int, int]:
    """(tile rows, tile bytes, same-class block rows) of the symmetric kernel on this device, for rows of ``inner``
    float32 values (see the constants)."""
    if torch.device(device).type == "cuda":
        return CUDA_TILE_ROWS, CUDA_TILE_BYTES, CUDA_SAME_CLASS_ROWS
    tile_bytes = int(min(TILE_BYTES, max(MIN_TILE_BYTES, 4 * TILE_ELEMENTS_PER_INNER * inner)))
    rows = 1 << int(math.log2(math.sqrt(tile_bytes / 4)))  # the largest power of two with a square tile in bytes
    return min(DEFAULT_TILE_ROWS, max(SAME_CLASS_ROWS, rows)), tile_bytes, SAME_CLASS_ROWS


def _tile_columns(block_rows: int, data: "ClassSortedFeatures") -> int:
    """Columns per tile so that a tile of ``block_rows`` rows takes about the device's tile bytes."""
    return max(block_rows, _tile_shape(data.device, data.inner)[1] // (4 * max(block_rows, 1)))


def exact_pair_distances(exact: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float64 direct-form distances sqrt(sum (x_r - x_c)^2) for index pairs, the sum in index order
    (:func:`kstar_utils.tile_kernels.direct_distances`), in bounded chunks off the CPU."""
    if exact.device.type == "cpu":
        return direct_distances(exact, rows, cols)
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=exact.device)
    step = max(1, PAIR_CHUNK_ELEMENTS // max(1, exact.shape[1]))
    for lo in range(0, rows.shape[0], step):
        out[lo : lo + step] = direct_distances(exact, rows[lo : lo + step], cols[lo : lo + step])
    return out


@dataclass
class KernelStats:
    """What the exact kernel did: how many rows and pairs needed a float64 re-check (reported, for trust)."""

    rows: int = 0
    rechecked_rows: int = 0
    rechecked_pairs: int = 0


def _thresholds(data: ClassSortedFeatures, rows: torch.Tensor | slice, r2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """float32 band [low, high) around the squared radius ``r2`` (float64): below low counts for sure, at or above
    high is out for sure."""
    eps = data.eps(rows)
    return (r2 - 2 * eps).to(torch.float32), (r2 + 2 * eps).to(torch.float32)


@dataclass
class ForeignMinima:
    """What the foreign pass keeps per sorted row: the smallest float32 D2 over its foreign samples (``best``), the
    smallest minimum of any *other* tile the row took part in (``second``), and the range of the other side of the
    tile that held ``best`` ([lo, hi): columns when the row was a row of it, rows when it was a column). When
    second > best + 2 eps, every foreign candidate of the row lies in that one tile, so its exact r_p needs only that
    tile's range to be recomputed."""

    best: torch.Tensor
    second: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def _merge_tile_minimum(fm: ForeignMinima, part: slice | torch.Tensor, tile_min: torch.Tensor, lo: int, hi: int) -> None:
    better = tile_min < fm.best[part]
    fm.second[part] = torch.where(better, fm.best[part], torch.minimum(fm.second[part], tile_min))
    fm.best[part] = torch.where(better, tile_min, fm.best[part])
    fm.lo[part] = torch.where(better, lo, fm.lo[part])
    fm.hi[part] = torch.where(better, hi, fm.hi[part])


def _foreign_pass(data: ClassSortedFeatures, block_rows: int, bar: Any) -> ForeignMinima:
    """float32 minimum of D2 over each row's foreign columns, every foreign pair computed once (rows and columns)."""
    n = data.n
    inf = torch.full((n,), math.inf, dtype=torch.float32, device=data.device)
    zero = torch.zeros(n, dtype=torch.int64, device=data.device)
    fm = ForeignMinima(best=inf, second=inf.clone(), lo=zero, hi=zero.clone())
    tile = _tile_columns(block_rows, data)
    for s, e in zip(data.starts.tolist(), data.ends.tolist()):
        for lo in range(s, e, block_rows):
            hi = min(lo + block_rows, e)
            left = data.left[lo:hi]
            for clo in range(e, n, tile):  # the later classes only: each unordered pair once
                chi = min(clo + tile, n)
                g = left @ data.right[clo:chi].T
                _merge_tile_minimum(fm, slice(lo, hi), g.amin(dim=1), clo, chi)
                _merge_tile_minimum(fm, slice(clo, chi), g.amin(dim=0), lo, hi)
            bar.update(hi - lo)
    return fm


BAND_PAIRS_LIMIT = 2**24  # same-class pairs in the float32 band kept for re-checking; beyond, rows are re-scanned


def _same_class_pass(
    data: ClassSortedFeatures, low: torch.Tensor, high: torch.Tensor, block_rows: int, bar: Any
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Per row, the number of same-class points surely nearer than r_p (float32 value below ``low``), and the
    same-class pairs (p, j) in p's band [low_p, high_p) that need a float64 re-check; each same-class pair is
    computed once. The pairs come back as None when there are more than BAND_PAIRS_LIMIT (pathological ties)."""
    n = data.n
    n_low = torch.zeros(n, dtype=torch.int64, device=data.device)
    band_p, band_j, kept = [], [], 0
    # small diagonal squares: the triangle is mostly computed once
    block_rows = min(block_rows, _tile_shape(data.device, data.inner)[2])
    tile = _tile_columns(block_rows, data)

    def count_and_collect(g: torch.Tensor, r_low: torch.Tensor, r_high: torch.Tensor, dim: int,
                          row_base: int, col_base: int) -> torch.Tensor:
        """Counts below ``r_low`` along ``dim`` (1: for the tile's rows, 0: for its columns); the band pairs of the
        few rows (columns) whose count below ``r_high`` differs are kept for the re-check. Comparing two counts
        (one fused pass over the tile, :mod:`tile_kernels`) instead of scanning the whole band mask keeps the work
        after the product small."""
        nonlocal kept
        n_below, n_high = counts_below(g, r_low, r_high, dim)
        banded = torch.nonzero(n_high != n_below, as_tuple=True)[0]
        if banded.numel() and kept <= BAND_PAIRS_LIMIT:
            if dim == 1:
                sub = g[banded]
                r, c = torch.nonzero((sub < r_high[banded]) & (sub >= r_low[banded]), as_tuple=True)
                p, j = banded[r] + row_base, c + col_base
            else:
                sub = g[:, banded]
                r, c = torch.nonzero((sub < r_high[:, banded]) & (sub >= r_low[:, banded]), as_tuple=True)
                p, j = banded[c] + col_base, r + row_base
            band_p.append(p)
            band_j.append(j)
            kept += int(r.numel())
        return n_below

    for s, e in zip(data.starts.tolist(), data.ends.tolist()):
        for lo in range(s, e, block_rows):
            hi = min(lo + block_rows, e)
            left, r_low, r_high = data.left[lo:hi], low[lo:hi, None], high[lo:hi, None]
            g = left @ data.right[lo:hi].T  # the square on the diagonal: both orders of each pair, counted by row
            g.fill_diagonal_(math.inf)  # self excluded explicitly
            n_low[lo:hi] += count_and_collect(g, r_low, r_high, 1, lo, lo)
            for clo in range(hi, e, tile):  # the rest of the class's upper triangle: count for rows and columns
                chi = min(clo + tile, e)
                g = left @ data.right[clo:chi].T
                n_low[lo:hi] += count_and_collect(g, r_low, r_high, 1, lo, clo)
                n_low[clo:chi] += count_and_collect(g, low[None, clo:chi], high[None, clo:chi], 0, lo, clo)
            bar.update(hi - lo)
    if kept > BAND_PAIRS_LIMIT:
        return n_low, None
    if not band_p:
        empty = torch.zeros(0, dtype=torch.int64, device=data.device)
        return n_low, (empty, empty)
    return n_low, (torch.cat(band_p), torch.cat(band_j))


def _exact_radius_from_tiles(
    data: ClassSortedFeatures, rows: torch.Tensor, fm: ForeignMinima, block_rows: int, stats: KernelStats
) -> torch.Tensor:
    """Exact float64 r_p of the given sorted rows after the foreign pass: rows whose foreign candidates all lie in one
    tile recompute that tile's range only; the others (a tie or near-tie across tiles) all their foreign columns."""
    best = fm.best[rows]
    upper = (best.to(torch.float64) + 2 * data.eps(rows)).to(torch.float32)
    one_tile = fm.second[rows] > upper
    radius = torch.full((rows.numel(),), math.inf, dtype=torch.float64, device=data.device)
    spread = torch.nonzero(~one_tile, as_tuple=True)[0]
    if spread.numel():
        radius[spread], _ = _exact_radius(data, rows[spread], best[spread], block_rows, stats)
    local = torch.nonzero(one_tile, as_tuple=True)[0]
    if local.numel():
        keys = (fm.lo[rows[local]] * (data.n + 1) + fm.hi[rows[local]]).cpu().numpy()
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for group in np.split(order, bounds):
            idx = local[torch.from_numpy(group).to(data.device)]
            lo, hi = int(fm.lo[rows[idx[0]]]), int(fm.hi[rows[idx[0]]])
            for start in range(0, idx.numel(), block_rows):
                part = idx[start : start + block_rows]
                g = data.left[rows[part]] @ data.right[lo:hi].T
                cand_r, cand_c = torch.nonzero(g <= upper[part, None], as_tuple=True)
                dist = exact_pair_distances(data.exact, rows[part][cand_r], cand_c + lo)
                stats.rechecked_pairs += int(cand_r.numel())
                radius.scatter_reduce_(0, part[cand_r], dist, reduce="amin")
    return radius


def _foreign_minima_rows(data: ClassSortedFeatures, rows: torch.Tensor, block_rows: int) -> ForeignMinima:
    """The foreign pass for a subset of (sorted) rows: per row, the float32 minimum of D2 over its foreign columns and
    the tile that held it (a ForeignMinima over all N positions, filled at ``rows`` only), so that the exact r_p of a
    row needs that one tile again, not the whole row (:func:`_exact_radius_from_tiles`).

    Rows are taken by class and multiplied against the two foreign ranges [0, s) and [e, N) only: the class's own
    columns are skipped, not masked."""
    inf = torch.full((data.n,), math.inf, dtype=torch.float32, device=data.device)
    zero = torch.zeros(data.n, dtype=torch.int64, device=data.device)
    fm = ForeignMinima(best=inf, second=inf.clone(), lo=zero, hi=zero.clone())
    tile = _tile_columns(block_rows, data)
    row_codes = data.codes[rows.cpu().numpy()]
    for code in np.unique(row_codes):
        members = rows[torch.from_numpy(np.flatnonzero(row_codes == code)).to(data.device)]
        ranges = ((0, int(data.starts[code])), (int(data.ends[code]), data.n))
        for lo in range(0, members.numel(), block_rows):
            part = members[lo : lo + block_rows]
            left = data.left[part]
            for a, b in ranges:
                for clo in range(a, b, tile):
                    chi = min(clo + tile, b)
                    _merge_tile_minimum(fm, part, (left @ data.right[clo:chi].T).amin(dim=1), clo, chi)
    return fm


def _exact_radius(
    data: ClassSortedFeatures, rows: torch.Tensor, best: torch.Tensor, block_rows: int, stats: KernelStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float64 r_p of the given rows, and the sorted index of the nearest foreign sample (ties: lowest original
    index). The true nearest foreign sample has a float32 value within ``best + 2 eps``: those candidates are
    recomputed in float64 direct form."""
    upper = (best.to(torch.float64) + 2 * data.eps(rows)).to(torch.float32)
    found_r, found_c = [], []
    tile = _tile_columns(block_rows, data)
    for lo in range(0, rows.numel(), block_rows):
        part = rows[lo : lo + block_rows]
        left, code, up = data.left[part], data.codes_t[part, None], upper[lo : lo + block_rows, None]
        for clo in range(0, data.n, tile):
            chi = min(clo + tile, data.n)
            g = left @ data.right[clo:chi].T
            hit = (g <= up) & (data.codes_t[None, clo:chi] != code)
            r, c = torch.nonzero(hit, as_tuple=True)
            found_r.append(r + lo)
            found_c.append(c + clo)
    cand_r, cand_c = torch.cat(found_r), torch.cat(found_c)
    dist = exact_pair_distances(data.exact, rows[cand_r], cand_c)
    stats.rechecked_pairs += int(cand_r.numel())
    r_np, c_np, d_np = cand_r.cpu().numpy(), cand_c.cpu().numpy(), dist.cpu().numpy()
    pick = np.lexsort((data.order[c_np], d_np, r_np))  # per row: nearest first, then the lowest original index
    first = np.ones(len(pick), dtype=bool)
    first[1:] = r_np[pick][1:] != r_np[pick][:-1]
    radius = np.full(rows.numel(), math.inf)
    nearest = np.full(rows.numel(), -1, dtype=np.int64)
    radius[r_np[pick][first]] = d_np[pick][first]
    nearest[r_np[pick][first]] = c_np[pick][first]
    return torch.from_numpy(radius).to(data.device), torch.from_numpy(nearest).to(data.device)


def _same_class_rows(
    data: ClassSortedFeatures, rows: torch.Tensor, low: torch.Tensor, high: torch.Tensor, block_rows: int,
    r_exact: torch.Tensor | None, stats: KernelStats | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row by row over each row's own class: the counts below ``low`` and ``high`` or, given ``r_exact``, the number
    of points in the band [low, high) whose exact float64 distance is below r_exact (the re-check)."""
    first = torch.zeros(rows.numel(), dtype=torch.int64, device=data.device)
    second = torch.zeros(rows.numel(), dtype=torch.int64, device=data.device)
    row_codes = data.codes[rows.cpu().numpy()]
    tile = _tile_columns(block_rows, data)
    for code in np.unique(row_codes):
        sel = torch.from_numpy(np.flatnonzero(row_codes == code)).to(data.device)
        s, e = int(data.starts[code]), int(data.ends[code])
        for lo in range(0, sel.numel(), block_rows):
            pos = sel[lo : lo + block_rows]
            part = rows[pos]
            left, r_low, r_high = data.left[part], low[pos, None], high[pos, None]
            local = torch.arange(part.numel(), device=data.device)
            for clo in range(s, e, tile):
                chi = min(clo + tile, e)
                g = left @ data.right[clo:chi].T
                inside = (part >= clo) & (part < chi)
                g[local[inside], part[inside] - clo] = math.inf  # self excluded explicitly
                if r_exact is None:
                    below_low, below_high = counts_below(g, r_low, r_high, 1)
                    first[pos] += below_low
                    second[pos] += below_high
                else:
                    amb_r, amb_c = torch.nonzero((g >= r_low) & (g < r_high), as_tuple=True)
                    amb_d = exact_pair_distances(data.exact, part[amb_r], amb_c + clo)
                    stats.rechecked_pairs += int(amb_r.numel())
                    first.index_add_(0, pos[amb_r], (amb_d < r_exact[pos][amb_r]).to(torch.int64))
    return first, second


RADIUS_MARGIN = 1.01  # widens the interval known to hold r_p^2: covers the float64 rounding of d^2 and of r_p


def _band_counts(data: ClassSortedFeatures, rows: torch.Tensor, dist: torch.Tensor, r2: torch.Tensor,
                 given: torch.Tensor | None, fm: ForeignMinima | None, block_rows: int,
                 stats: KernelStats) -> torch.Tensor:
    """1 where the band pair (row p, distance ``dist`` in float64) has d < r_p, as SPEC compares them.

    With r_p given (the ANN path) that is one comparison. After the foreign pass, r_p^2 is known to lie within
    eps_p of the float32 minimum m_p, so a pair whose exact d^2 lies outside [m_p - eps_p, m_p + eps_p] (widened by
    RADIUS_MARGIN) is decided already; only the rows holding a pair inside need their exact r_p, which costs a
    matrix product over their foreign candidates.
    """
    if given is not None:
        return (dist < given[rows]).to(torch.int64)
    m2, eps = r2[rows], RADIUS_MARGIN * data.eps(rows)
    d2 = dist * dist
    inside = d2 < m2 - eps
    open_ = ~inside & (d2 <= m2 + eps)
    need = torch.unique(rows[open_])
    if need.numel():
        r_exact = torch.full((data.n,), math.nan, dtype=torch.float64, device=data.device)
        r_exact[need] = _exact_radius_from_tiles(data, need, fm, block_rows, stats)
        inside[open_] = dist[open_] < r_exact[rows[open_]]
    return inside.to(torch.int64)


def exact_counts(
    data: ClassSortedFeatures,
    rows: np.ndarray | None = None,
    radius: np.ndarray | None = None,
    block_size: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, KernelStats]:
    """Exact same-class counts #{same-class j != p : d(p, j) < r_p} for sorted rows (all rows by default).

    k* = 1 + count. r_p is searched among the foreign samples, or given as ``radius`` (float64, one per requested row:
    the ANN path's verified candidate distance), in which case no foreign distance is computed at all.
    For all rows, the symmetric kernel runs: the foreign pass (unless ``radius`` is given), then the same-class pass,
    each pair once (see the module docstring). For a subset of ``rows``, each row is handled on its own.
    """
    all_rows = rows is None
    rows_np = np.arange(data.n) if all_rows else np.asarray(rows, dtype=np.int64)
    stats = KernelStats(rows=len(rows_np))
    if len(rows_np) == 0:
        return np.zeros(0, dtype=np.int64), stats
    default_rows = _tile_shape(data.device, data.inner)[0] if all_rows else MIN_BLOCK_ROWS * 2
    block_rows = int(block_size) if block_size else default_rows
    rows_t = torch.from_numpy(rows_np).to(data.device)
    given = None if radius is None else torch.from_numpy(np.asarray(radius, dtype=np.float64)).to(data.device)
    with full_float32_precision(), torch.inference_mode():
        bar = tqdm(total=2 * len(rows_np), desc="k* (exact: 2 passes over the rows)", unit="row",
                   disable=not progress, leave=False)
        if all_rows:
            if given is None:
                fm = _foreign_pass(data, block_rows, bar)
                r2 = fm.best.to(torch.float64)
            else:
                bar.update(data.n)
                fm, r2 = None, given * given
            low, high = _thresholds(data, slice(None), r2)
            n_low, band = _same_class_pass(data, low, high, block_rows, bar)
            if band is not None:
                unsure = torch.unique(band[0])
                if unsure.numel():
                    stats.rechecked_rows += int(unsure.numel())
                    dist = exact_pair_distances(data.exact, band[0], band[1])
                    stats.rechecked_pairs += int(band[0].numel())
                    n_low.index_add_(0, band[0], _band_counts(data, band[0], dist, r2, given, fm, block_rows,
                                                              stats))
                bar.close()
                return n_low.cpu().numpy(), stats
            n_high = n_low + 1  # too many pairs in the band to keep (massive ties): re-scan every row below
        else:
            if given is None:
                fm = _foreign_minima_rows(data, rows_t, block_rows)
                r2 = fm.best[rows_t].to(torch.float64)
            else:
                fm, r2 = None, given * given
            bar.update(len(rows_np))
            low, high = _thresholds(data, rows_t, r2)
            n_low, n_high = _same_class_rows(data, rows_t, low, high, block_rows, None, None)
            bar.update(len(rows_np))
        unsure = torch.nonzero(n_low != n_high, as_tuple=True)[0]
        if unsure.numel():
            stats.rechecked_rows += int(unsure.numel())
            u_rows = rows_t[unsure]
            if given is None:
                r_exact = _exact_radius_from_tiles(data, u_rows, fm, block_rows, stats)
            else:
                r_exact = given[unsure]
            extra, _ = _same_class_rows(data, u_rows, low[unsure], high[unsure], block_rows, r_exact, stats)
            n_low[unsure] += extra
        bar.close()
    return n_low.cpu().numpy(), stats


def exact_foreign_radius(data: ClassSortedFeatures, rows: np.ndarray, block_size: int | None = None) -> np.ndarray:
    """Exact float64 r_p (distance to the nearest foreign sample) of the given sorted rows, searched row by row."""
    rows_t = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(data.device)
    block_rows = int(block_size) if block_size else MIN_BLOCK_ROWS * 2
    with full_float32_precision(), torch.inference_mode():
        fm = _foreign_minima_rows(data, rows_t, block_rows)
        radius = _exact_radius_from_tiles(data, rows_t, fm, block_rows, KernelStats())
    return radius.cpu().numpy()


def nearest_foreign_index(
    features: Any, labels: Any, queries: Any, metric: str = "euclidean", device: str | None = None
) -> np.ndarray:
    """For each query row index, the index of its nearest sample of another class (SPEC's distance: exact float64
    direct form after the metric's normalisation; ties broken by the lowest index).

    Used beside k* to show *what* splits a concept: the foreign sample that sets r_p.
    """
    from .validation import check_inputs

    checked = check_inputs(features, labels, metric)
    n = len(checked.codes)
    q = np.asarray(queries)
    if q.ndim == 0:
        q = q.reshape(1)
    if q.ndim != 1 or not (q.size == 0 or np.issubdtype(q.dtype, np.integer)):
        raise KStarInputError(f"queries must be a 1-D list of integer row indices, got {q.dtype} of shape {q.shape}.")
    bad = q[(q < 0) | (q >= n)] if q.size else q
    if bad.size:
        raise KStarInputError(f"query indices {bad[:10].tolist()} are out of range for {n} samples (use 0 .. {n - 1}).")
    if q.size == 0:
        return np.zeros(0, dtype=np.int64)
    data = sort_by_class(checked.features, checked.codes, resolve_device(device))
    inverse = np.empty(n, dtype=np.int64)
    inverse[data.order] = np.arange(n)
    rows = torch.from_numpy(inverse[q.astype(np.int64)]).to(data.device)
    with full_float32_precision(), torch.inference_mode():
        best = _foreign_minima_rows(data, rows, MIN_BLOCK_ROWS).best[rows]
        _, nearest = _exact_radius(data, rows, best, MIN_BLOCK_ROWS, KernelStats())
    return data.order[nearest.cpu().numpy()]


FOREIGN_TOP_BYTES = 64 * 2**20  # float32 distances of whole rows held at once by foreign_top


def foreign_top(data: ClassSortedFeatures, rows: torch.Tensor, m: int,
                block_rows: int = MIN_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 squared distances and sorted indices of the ``m`` nearest foreign samples of each given sorted row,
    nearest first (an exact search over every foreign column: the ANN path's sampled rows). ``m`` is cut to the
    fewest foreign samples any of the rows has, so that every index returned is foreign.

    Rows are taken by class, a block at a time: the foreign columns of class [s, e) are the two ranges [0, s) and
    [e, N), multiplied tile by tile into a running top-m (``tile_kernels.RowSmallest``), which skips the class's own
    columns instead of masking them. On CPU each tile is reduced while it is in cache by a heap per row; elsewhere
    each range is one product cut by one ``topk`` (at most FOREIGN_TOP_BYTES of distances at once), which there is
    several times faster than a top-m per tile merged across tiles."""
    row_codes = data.codes[rows.cpu().numpy()]
    sizes = data.ends - data.starts
    m = int(min(m, data.n - sizes[np.unique(row_codes)].max())) if rows.numel() else int(m)
    values = torch.empty((rows.numel(), m), dtype=torch.float32, device=data.device)
    indices = torch.empty((rows.numel(), m), dtype=torch.int64, device=data.device)
    on_cpu = data.device.type == "cpu"
    step = max(1, int(block_rows) if on_cpu else min(int(block_rows), FOREIGN_TOP_BYTES // (4 * data.n)))
    width = _tile_columns(step, data) if on_cpu else data.n
    with full_float32_precision(), torch.inference_mode():
        for code in np.unique(row_codes):
            members = torch.from_numpy(np.flatnonzero(row_codes == code)).to(data.device)
            ranges = [(a, b) for a, b in ((0, int(data.starts[code])), (int(data.ends[code]), data.n)) if b > a]
            for lo in range(0, members.numel(), step):
                out = members[lo : lo + step]
                left = data.left[rows[out]]
                top = RowSmallest(out.numel(), m, data.device)
                for a, b in ranges:
                    for c in range(a, b, width):
                        top.push(left @ data.right[c : min(c + width, b)].T, c)
                values[out], indices[out] = top.result()
    return values, indices


def nearest_among(data: ClassSortedFeatures, rows: torch.Tensor, cols: torch.Tensor,
                  block_rows: int = 4 * MIN_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """For each given sorted row, the smallest float32 squared distance to the candidate columns ``cols`` and that
    column (a dense product over the candidates; the caller passes columns foreign to the rows)."""
    values = torch.full((rows.numel(),), math.inf, dtype=torch.float32, device=data.device)
    found = torch.zeros(rows.numel(), dtype=torch.int64, device=data.device)
    if cols.numel() == 0:
        return values, found
    tile = _tile_columns(block_rows, data)
    with full_float32_precision(), torch.inference_mode():
        right = data.right[cols]  # gathered once: every block of rows multiplies the same candidates
        for lo in range(0, rows.numel(), block_rows):
            left = data.left[rows[lo : lo + block_rows]]
            for clo in range(0, cols.numel(), tile):
                v, i = row_minimum(left @ right[clo : clo + tile].T)
                better = v < values[lo : lo + block_rows]
                values[lo : lo + block_rows] = torch.where(better, v, values[lo : lo + block_rows])
                found[lo : lo + block_rows] = torch.where(better, cols[clo : clo + tile][i],
                                                          found[lo : lo + block_rows])
    return values, found


def brute_force_kstar(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """SPEC's k*, straight from the definition: float64 direct-form distances (the sum over dimensions in index
    order, as the engine's re-check takes it), a block of rows at a time. For tests."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n = len(x)
    out = np.empty(n, dtype=np.int64)
    step = max(1, 2**22 // max(n, 1))
    for lo in range(0, n, step):
        rows = np.arange(lo, min(lo + step, n))
        total = np.zeros((len(rows), n))
        for i in range(x.shape[1]):
            total += (x[None, :, i] - x[rows, None, i]) ** 2
        d = np.sqrt(total)
        same = y[None, :] == y[rows, None]
        same[np.arange(len(rows)), rows] = False  # self excluded explicitly
        foreign = y[None, :] != y[rows, None]
        r = np.where(foreign, d, np.inf).min(axis=1)
        out[rows] = 1 + np.count_nonzero(same & (d < r[:, None]), axis=1)
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
        from .plumbing import usable_cpus

        n_jobs = usable_cpus()
    with torch_threads_kept():  # pynndescent is parallel numba code too
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


def principal_axes(data: ClassSortedFeatures, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
    """The fraction of the variance held by the first 1, 2, ... D principal axes of the centred features (D,), and
    those axes (D, D) float64, largest variance first, fitted on at most ``rows`` random rows (the ANN path may rank
    its candidates in the leading axes: see :func:`projected_coordinates`)."""
    dim = data.exact.shape[1]
    pick = torch.from_numpy(np.sort(rng.choice(data.n, size=min(rows, data.n), replace=False))).to(data.device)
    sample = data.left[pick, :dim].to(torch.float64)
    variances, axes = torch.linalg.eigh(sample.T @ sample)
    held = np.cumsum(variances.flip(dims=(0,)).clamp(min=0).cpu().numpy())
    return held / max(float(held[-1]), np.finfo(np.float64).tiny), axes.flip(dims=(1,))


def projected_coordinates(data: ClassSortedFeatures, axes: torch.Tensor, dims: int) -> torch.Tensor:
    """(N, dims + 1) float64: each sorted row in the first ``dims`` principal axes, then the norm of what they leave
    out.

    Why: the squared distance of two such rows, |P(x - y)|^2 + (|r_x| - |r_y|)^2, is a lower bound of |x - y|^2 that
    is tight when the features vary mostly in a few directions (learned features do: 99% of the variance of the 64-d
    Fashion-MNIST features of ``benchmarks/bench_kstar.py`` lies in 10 axes), so ranking candidates in it costs a
    fraction of the full product."""
    dim = data.exact.shape[1]
    out = torch.empty((data.n, dims + 1), dtype=torch.float64, device=data.device)
    step = max(1, LAYOUT_CHUNK_BYTES // (8 * max(dim, 1)))
    for lo in range(0, data.n, step):
        centred = data.left[lo : lo + step, :dim].to(torch.float64)
        kept = centred @ axes[:, :dims]
        out[lo : lo + step, :dims] = kept
        out[lo : lo + step, dims] = ((centred * centred).sum(dim=1) - (kept * kept).sum(dim=1)).clamp(min=0).sqrt()
    return out


def projected_rank(data: ClassSortedFeatures, coordinates: torch.Tensor, rows: torch.Tensor,
                   nearest: torch.Tensor) -> torch.Tensor:
    """For each given sorted row, how many of its foreign samples are nearer in the projection (``coordinates``) than
    its nearest foreign sample ``nearest`` of the full space: the place the true answer takes in a projected ranking
    (0 is first). Computed in float64."""
    ranks = torch.zeros(rows.numel(), dtype=torch.int64, device=data.device)
    squares = (coordinates * coordinates).sum(dim=1)
    step = max(1, min(MIN_BLOCK_ROWS, 2**22 // max(data.n, 1)))  # about 32 MiB of float64 distances at once
    for lo in range(0, rows.numel(), step):
        part, near = rows[lo : lo + step], nearest[lo : lo + step]
        d2 = squares[part, None] + squares[None, :] - 2 * coordinates[part] @ coordinates.T
        target = d2.gather(1, near[:, None])
        foreign = data.codes_t[None, :] != data.codes_t[part, None]
        ranks[lo : lo + step] = ((d2 < target) & foreign).sum(dim=1)
    return ranks


def projected_features(data: ClassSortedFeatures, coordinates: torch.Tensor) -> ClassSortedFeatures:
    """The kernel's layout of projected coordinates: rows keep their order, classes and device."""
    projected = sort_by_class(coordinates.cpu().numpy(), data.codes, data.device)
    assert np.array_equal(projected.order, np.arange(data.n))  # the codes are sorted already: the order stays
    return projected


BF16_INNER_PAD = 16  # the bfloat16 ranking rows are padded to a multiple of this (oneDNN's bfloat16 blocking)
# Narrower features keep the float32 graph and sampled rows: measured here (1,024 x 4,096 tiles), bfloat16 costs 0.20
# against 0.97 ns per pair at D = 64 and 0.33 against 1.56 at D = 128, and int8 0.14 to 0.2 at either, but at D = 16 the
# bfloat16 rows are padded to 32 (against 24 in float32), int8 products are bound by writing their int32 results, and
# narrow features are where the graph works: the gain was not measured there
LOW_PRECISION_MIN_DIMS = 64


def native_bfloat16(device: torch.device) -> bool:
    """Whether this device multiplies bfloat16 natively: a CPU with AVX512-BF16 or AMX (torch's oneDNN then runs a
    bfloat16 product at about a fifth of the float32 one's time: measured on a 2-core AMD EPYC with AVX512-BF16,
    0.33 against 1.56 ns per pair at D = 128). Elsewhere bfloat16 is emulated and slower than float32, and on CUDA the
    float32 products are cheap already, so the ANN path keeps float32 there."""
    if torch.device(device).type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if callable(check))


def bfloat16_ranking_features(data: ClassSortedFeatures) -> ClassSortedFeatures:
    """The kernel's layout in bfloat16, for *ranking* candidates only: ``left[p] . right[j]`` is about the squared
    distance of the centred rows p and j, each rounded to bfloat16 (8 significant bits), the product accumulated in
    float32 and then rounded to bfloat16 itself. Rows keep their order, classes, device and float64 ``exact`` form.

    Why: where bfloat16 products are native (:func:`native_bfloat16`), the ANN path's dense products over candidates
    cost a fifth of float32 ones. Ranking tolerates the rounding (relative errors near 2^-8, several times smaller than
    the gaps between a row's nearest foreign candidates on the data measured) because the searches that use this
    layout (:func:`nearest_among_projected`, :func:`foreign_top_projected`) take exact float64 distances of the few
    ranked first. The squared norm of each rounded row is carried as three bfloat16 parts (24 significant bits in
    all), so that adding it inside the product loses no more than float32 would."""
    n, dim = data.exact.shape
    width = -(-(dim + 6) // BF16_INNER_PAD) * BF16_INNER_PAD
    left = torch.zeros((n, width), dtype=torch.bfloat16, device=data.device)
    right = torch.zeros((n, width), dtype=torch.bfloat16, device=data.device)
    step = max(1, LAYOUT_CHUNK_BYTES // (8 * max(dim, 1)))  # float64 work in cache-sized row chunks, never N x D
    for lo in range(0, n, step):
        rounded = data.left[lo : lo + step, :dim].to(torch.bfloat16)
        left[lo : lo + step, :dim] = rounded
        torch.mul(rounded, -2, out=right[lo : lo + step, :dim])  # times -2: exact in bfloat16
        squares = rounded.to(torch.float64).square().sum(dim=1)
        for k in range(3):  # the squared norm as three bfloat16 parts, each the rounding of what is left
            part = squares.to(torch.bfloat16)
            left[lo : lo + step, dim + k] = part
            right[lo : lo + step, dim + 3 + k] = part
            squares = squares - part.to(torch.float64)
    left[:, dim + 3 : dim + 6] = 1
    right[:, dim : dim + 3] = 1
    return ClassSortedFeatures(exact=data.exact, left=left, right=right, norms=data.norms, max_norm=data.max_norm,
                               kappa=data.kappa, codes=data.codes, codes_t=data.codes_t, order=data.order,
                               starts=data.starts, ends=data.ends, device=data.device)


# The int8 scan (int8_two_nearest_foreign): codes are the centred rows divided by a scale that puts the
# INT8_CLIP_QUANTILE quantile of |value| at the largest code (the rare values beyond are clipped), fitted on at most
# INT8_SCALE_SAMPLE values. Tiles of SCAN_TILE_ROWS x SCAN_TILE_COLUMNS products (int32, 4 MiB), or
# NARROW_SCAN_TILE_ROWS x NARROW_SCAN_TILE_COLUMNS (8 MiB) for features at most NARROW_SCAN_MAX_DIMS wide. Measured here
# (2-core EPYC with AVX512-VNNI, 10 Gaussian classes, the scan alone, best of 2): at D = 128, 1,024 x 1,024 took 1.23 s
# at N = 100,000 against 1.30 s for 4,096 x 512 (0.66 s and 0.65 s at N = 70,000; 0.29 ns a pair at N = 50,000
# against 0.42 for 512 x 2,048); at D = 64 and N = 70,000, 0.61 s against 0.47 s for 4,096 x 512 (on the 70,000
# Fashion-MNIST features of bench_kstar.py part 4: 0.60 s against 0.49 s).
INT8_CLIP_QUANTILE = 0.9999
INT8_SCALE_SAMPLE = 2**20
SCAN_TILE_ROWS = 1024
SCAN_TILE_COLUMNS = 1024
NARROW_SCAN_MAX_DIMS = 64
NARROW_SCAN_TILE_ROWS = 4096
NARROW_SCAN_TILE_COLUMNS = 512


def native_int8(device: torch.device) -> bool:
    """Whether this device multiplies int8 natively into int32 for the ANN path's scan: a CPU with AVX512-VNNI or AMX
    as torch reports them (a CPU with AVX-VNNI alone is not detected, and keeps the graph), and a torch whose
    ``_int_mm`` runs and gives the exact products of full-range codes (:func:`int8_products_exact`). Measured on a
    2-core AMD EPYC with AVX512-VNNI: 0.14 ns per pair at D = 128 against 0.29 in bfloat16 and 1.2 in float32 (1,024 x
    1,024 tiles; 1.56 in float32 at 1,024 x 4,096), and the int32 result is exact where a bfloat16 product is rounded
    to 8 bits. CUDA keeps float32 (its exact kernel is fast already)."""
    if torch.device(device).type != "cpu" or not callable(getattr(torch, "_int_mm", None)):
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_vnni_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if callable(check)) and int8_products_exact()


@functools.lru_cache(maxsize=1)
def int8_products_exact() -> bool:
    """Whether ``torch._int_mm`` runs on this CPU and returns the exact int32 products of codes in [-127, 127], the
    extremes included (checked once per process on a 64 x 256 by 256 x 48 product: a build without the kernel, or a
    CPU that saturates 16-bit pair sums, makes the scan fall back to the graph instead of failing or ranking badly)."""
    if not callable(getattr(torch, "_int_mm", None)):
        return False
    rng = np.random.default_rng(0)
    a = rng.integers(-127, 128, size=(64, 256)).astype(np.int8)
    b = rng.integers(-127, 128, size=(256, 48)).astype(np.int8)
    a[0], b[:, 0] = 127, 127  # a row and a column at the extreme: the largest sums
    a[1], b[:, 1] = -127, -127
    try:
        got = torch._int_mm(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    except (RuntimeError, NotImplementedError):
        return False
    return bool(np.array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64)))


@dataclass
class Int8Codes:
    """The centred rows as int8 codes, for *ranking* only (see :func:`int8_codes`)."""

    codes: torch.Tensor  # (N, D) int8, |code| <= levels
    sq_norms: np.ndarray  # (N,) int32: |q|^2 of each code, exact
    scale: float  # scale * q approximates the centred row
    levels: int  # the largest |code|
    clipped_fraction: float  # of the values the scale was fitted on, those beyond levels * scale (clipped)


def int8_levels(device: torch.device) -> int:
    """127 where int8 products are native (:func:`native_int8`: exact int32 sums of full-range codes), else 63: a CPU
    without VNNI multiplies int8 with pairwise 16-bit sums that saturate (oneDNN's int8 nuances), and 7-bit codes keep
    every pair sum below 2^15 there (191 x 63 x 2 < 32,767, with oneDNN's +128 shift of one side)."""
    return 127 if native_int8(device) else 63


def int8_codes(data: ClassSortedFeatures, levels: int = 127, seed: int = 0) -> Int8Codes:
    """The centred rows divided by one scale and rounded to integers in [-levels, levels], the scale putting the
    INT8_CLIP_QUANTILE quantile of |value| at ``levels`` (the rarer values beyond are clipped). |q_i - q_j|^2 is exact
    in integers, so two codes' distance has no rounding of its own, only the codes' (at most scale / 2 per value, more
    for the clipped few). The quantile is fitted on at most INT8_SCALE_SAMPLE values drawn with the fixed ``seed``
    (not the ANN path's: the codes of a data set do not depend on the audit's seed)."""
    n, dim = data.exact.shape
    if dim > TwoNearestInt8.MAX_DIMS:
        raise KStarInputError(f"int8 codes take at most {TwoNearestInt8.MAX_DIMS} features, got {dim}")
    if not 1 <= levels <= 127:
        raise KStarInputError(f"int8 codes need 1 <= levels <= 127, got {levels}")
    centred = data.left[:, :dim]
    if n * dim > INT8_SCALE_SAMPLE:  # values drawn at random (with replacement), never an N x D temporary
        rng = np.random.default_rng(seed)
        rows, cols = (torch.from_numpy(rng.integers(0, size, INT8_SCALE_SAMPLE)).to(data.device) for size in (n, dim))
        values = centred[rows, cols].abs().to(torch.float64)
    else:
        values = centred.reshape(-1).abs().to(torch.float64)
    peak = float(torch.quantile(values, INT8_CLIP_QUANTILE)) if values.numel() else 0.0
    if peak == 0.0:
        peak = float(centred.abs().max()) if centred.numel() else 0.0
    scale = peak / levels if peak > 0 else 1.0
    clipped = float((values > (levels + 0.5) * scale).to(torch.float64).mean()) if values.numel() else 0.0
    codes = torch.empty((n, dim), dtype=torch.int8, device=data.device)
    sq_norms = np.empty(n, dtype=np.int32)
    step = max(1, LAYOUT_CHUNK_BYTES // (4 * max(dim, 1)))
    for lo in range(0, n, step):  # in cache-sized row chunks: no N x D temporary
        chunk = torch.round(centred[lo : lo + step] / scale).clamp_(-levels, levels)
        codes[lo : lo + step] = chunk.to(torch.int8)
        sq_norms[lo : lo + step] = chunk.to(torch.int32).square().sum(dim=1, dtype=torch.int32).cpu().numpy()
    return Int8Codes(codes=codes, sq_norms=sq_norms, scale=scale, levels=levels, clipped_fraction=clipped)


def int8_two_nearest_foreign(data: ClassSortedFeatures, progress: bool = False, levels: int | None = None,
                             class_done: Callable[[int, int, np.ndarray], bool] | None = None,
                             ) -> tuple[np.ndarray, Int8Codes]:
    """Each sorted row's two nearest foreign samples by int8 code distance (sorted indices, (N, 2); -1 where a row has
    fewer foreign samples), every foreign pair scored once, for rows and columns alike (the exact kernel's foreign
    pass, in int8: ``torch._int_mm`` products reduced by :class:`~kstar_utils.tile_kernels.TwoNearestInt8`), and the
    codes used (``levels``: :func:`int8_levels` of the device when None).

    Why two: the codes' rounding can swap a row's nearest foreign sample with its runner-up, and the caller takes the
    exact float64 distance of both. Measured on 10 isotropic 128-d Gaussian classes at N = 200,000: the nearer of the
    two was the true nearest foreign sample for 99.6% of rows, and k* was identical for 99.93% (the first alone was
    right for 96.5% of rows at N = 50,000).

    Classes are scanned in order, each class's rows against every later class: once a class's row tiles are done,
    its rows' two nearest are final (the earlier classes met them as columns before). ``class_done(start, end,
    nearest)`` is called then (rows ``start:end`` of ``nearest`` final); when it returns True the scan stops there
    (the rows of later classes are then incomplete). CPU only."""
    prepared = int8_codes(data, int8_levels(data.device) if levels is None else levels)
    codes = prepared.codes
    best = TwoNearestInt8(prepared.sq_norms)
    n = data.n
    if data.exact.shape[1] <= NARROW_SCAN_MAX_DIMS:
        tile_rows, tile_columns = NARROW_SCAN_TILE_ROWS, NARROW_SCAN_TILE_COLUMNS
    else:
        tile_rows, tile_columns = SCAN_TILE_ROWS, SCAN_TILE_COLUMNS
    with tqdm(total=n, desc="k* int8 scan", unit="sample", disable=not progress, leave=False) as bar:
        for s, e in zip(data.starts.tolist(), data.ends.tolist()):
            for lo in range(s, e, tile_rows):
                hi = min(lo + tile_rows, e)
                rows = codes[lo:hi]
                for clo in range(e, n, tile_columns):  # the later classes only: each unordered pair once
                    chi = min(clo + tile_columns, n)
                    best.push(torch._int_mm(rows, codes[clo:chi].T), lo, clo)
                bar.update(hi - lo)
            if class_done is not None and class_done(s, e, best.indices):
                break
    return best.result()[1], prepared


def nearest_among_projected(data: ClassSortedFeatures, projected: ClassSortedFeatures, rows: torch.Tensor,
                            cols: torch.Tensor, top: int,
                            block_rows: int = 4 * MIN_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """For each given sorted row, the candidate column nearest in the full space among the ``top`` nearest in
    ``projected``, with its exact float64 squared distance (the float64 direct form, as the verification takes it).

    The dense product over the candidates runs in the ranking layout (a projection's few columns, or the bfloat16
    layout of :func:`bfloat16_ranking_features`); only ``top`` pairs per row are then computed in full. What this can
    miss (a true nearest candidate ranked below ``top`` there) is what the ANN path's recall check and audit
    measure."""
    values = torch.full((rows.numel(),), math.inf, dtype=torch.float64, device=data.device)
    found = torch.zeros(rows.numel(), dtype=torch.int64, device=data.device)
    if cols.numel() == 0 or rows.numel() == 0:
        return values, found
    m = int(min(top, cols.numel()))
    tile = _tile_columns(block_rows, projected)
    with full_float32_precision(), torch.inference_mode():
        right = projected.right[cols]
        for lo in range(0, rows.numel(), block_rows):
            part = rows[lo : lo + block_rows]
            left = projected.left[part]
            best = RowSmallest(part.numel(), m, data.device)
            for clo in range(0, cols.numel(), tile):
                best.push(left @ right[clo : clo + tile].T, clo)
            picked = cols[best.result()[1]]
            dist = exact_pair_distances(data.exact, part.repeat_interleave(m), picked.reshape(-1)).reshape(-1, m)
            nearest, at = dist.min(dim=1)
            values[lo : lo + block_rows] = nearest * nearest
            found[lo : lo + block_rows] = picked.gather(1, at[:, None])[:, 0]
    return values, found


def foreign_top_projected(data: ClassSortedFeatures, projected: ClassSortedFeatures, rows: torch.Tensor, m: int,
                          block_rows: int = MIN_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`foreign_top` searched in ``projected``: the ``m`` nearest foreign samples of each row in the projection,
    then ordered by their exact float64 squared distances in the full space (returned in place of float32 ones).
    The first is the row's nearest foreign sample whenever the projection ranks that within its first m."""
    _, indices = foreign_top(projected, rows, m, block_rows)
    m = indices.shape[1]
    with torch.inference_mode():
        dist = exact_pair_distances(data.exact, rows.repeat_interleave(m), indices.reshape(-1)).reshape(-1, m)
    values, order = (dist * dist).sort(dim=1, stable=True)
    return values, indices.gather(1, order)
