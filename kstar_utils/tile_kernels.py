"""Fused reductions over one tile of squared distances: threshold counts, row minima and top-m of float32 tiles, and
the two nearest per sample over int32 tiles of the ANN path's int8 scan.

Why this module: after each matrix product the exact kernel and the ANN path reduce the tile. In torch each reduction
is its own pass that writes a mask or an index tensor, and on CPU those passes cost more than the product itself:
on a 512 x 2,048 tile at D = 128 (2 cores), the four threshold counts of the same-class pass took 2.8 ms against the
product's 1.9 ms, and ``min(dim=1)`` with indices 1.2 ms against ``amin``'s 0.1 ms. The numba loops here read the tile
once, in cache, and take about 0.2 ms for the four counts. On other devices (CUDA) the torch forms run: there they
are cheap next to the product.

Every float32 function takes a 2-D float32 tile and returns torch tensors on the tile's device, equal to the torch
forms (``_torch_*``), which the tests compare them with; ``TwoNearestInt8`` (CPU only) is compared with a brute
force. NaN never reaches a tile (inputs are checked finite); ``inf`` does (excluded pairs) and compares as IEEE says:
no fast-math flags are used.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import torch
from numba import config, njit, prange, set_num_threads

_LOCK = threading.Lock()  # numba's default thread pool must not be entered by two Python threads at once


@njit(parallel=True, cache=True, boundscheck=False)
def _row_counts(g, low, high, out_low, out_high):  # pragma: no cover - compiled
    m, n = g.shape
    for i in prange(m):
        a, b = low[i], high[i]
        below_a = np.int32(0)
        below_b = np.int32(0)
        for j in range(n):
            v = g[i, j]
            below_a += np.int32(1) if v < a else np.int32(0)
            below_b += np.int32(1) if v < b else np.int32(0)
        out_low[i] = below_a
        out_high[i] = below_b


@njit(parallel=True, cache=True, boundscheck=False)
def _column_counts(g, low, high, out_low, out_high, chunks):  # pragma: no cover - compiled
    # each chunk of columns in its own thread, with local counters, so that the loop over j vectorises
    m, n = g.shape
    step = (n + chunks - 1) // chunks
    for t in prange(chunks):
        j0 = min(n, t * step)
        j1 = min(n, j0 + step)
        width = j1 - j0
        count_a = np.zeros(width, np.int32)
        count_b = np.zeros(width, np.int32)
        a = low[j0:j1].copy()
        b = high[j0:j1].copy()
        for i in range(m):
            row = g[i, j0:j1]
            for j in range(width):
                v = row[j]
                count_a[j] += np.int32(1) if v < a[j] else np.int32(0)
                count_b[j] += np.int32(1) if v < b[j] else np.int32(0)
        out_low[j0:j1] = count_a
        out_high[j0:j1] = count_b


@njit(parallel=True, cache=True, boundscheck=False)
def _row_min(g, out_value, out_index):  # pragma: no cover - compiled
    m, n = g.shape
    for i in prange(m):
        row = g[i]
        best = np.float32(np.inf)
        for j in range(n):  # the minimum first, then its first column
            best = min(best, row[j])
        at = 0
        for j in range(n):
            if row[j] == best:
                at = j
                break
        out_value[i] = best
        out_index[i] = at


@njit(parallel=True, cache=True, boundscheck=False)
def _pair_distances(x, rows, cols, out):  # pragma: no cover - compiled
    # SPEC's direct form, the sum taken in index order (no fast-math: no reassociation, no fused multiply-add)
    for k in prange(rows.shape[0]):
        a, b = rows[k], cols[k]
        total = 0.0
        for i in range(x.shape[1]):
            d = x[a, i] - x[b, i]
            total += d * d
        out[k] = np.sqrt(total)


@njit(parallel=True, cache=True, boundscheck=False)
def _push_smallest(g, offset, heap_values, heap_indices):  # pragma: no cover - compiled
    # each row keeps a max-heap of its m smallest (value, column) pairs so far, ordered by value and then column, so
    # that the set kept does not depend on how ties fall; a chunk of the row is first counted against the root (a
    # loop that vectorises), and only a chunk holding a value not above it is walked entry by entry
    m = heap_values.shape[1]
    n = g.shape[1]
    for i in prange(g.shape[0]):
        row = g[i]
        values = heap_values[i]
        indices = heap_indices[i]
        root = values[0]
        for j0 in range(0, n, 64):
            j1 = min(n, j0 + 64)
            candidates = np.int32(0)
            for j in range(j0, j1):
                candidates += np.int32(1) if row[j] <= root else np.int32(0)
            if candidates == 0:
                continue
            for j in range(j0, j1):
                v = row[j]
                col = offset + j
                if v > values[0] or (v == values[0] and col >= indices[0]):
                    continue
                pos = 0
                while True:  # sift the new entry down from the root
                    child = 2 * pos + 1
                    if child >= m:
                        break
                    if child + 1 < m and (values[child + 1] > values[child] or (
                            values[child + 1] == values[child] and indices[child + 1] > indices[child])):
                        child += 1
                    if values[child] < v or (values[child] == v and indices[child] < col):
                        break
                    values[pos] = values[child]
                    indices[pos] = indices[child]
                    pos = child
                values[pos] = v
                indices[pos] = col
            root = values[0]


@njit(parallel=True, cache=True, boundscheck=False)
def _two_smallest_rows(p, other, values, indices, offset):  # pragma: no cover - compiled
    # entry (i, j) scores other[j] - 2 p[i, j]; each row keeps its two smallest scores, the earlier column on a tie.
    # The row's minimum over the tile is taken first (a loop that vectorises); only a row whose minimum beats its
    # second place is walked, in chunks of 64 counted against that place first
    m, n = p.shape
    for i in prange(m):
        row = p[i]
        v1, c1, v2, c2 = values[i, 0], indices[i, 0], values[i, 1], indices[i, 1]
        best = np.int32(2**31 - 1)
        for j in range(n):
            best = min(best, other[j] - row[j] - row[j])
        if best >= v2:
            continue
        for j0 in range(0, n, 64):
            j1 = min(n, j0 + 64)
            hits = np.int32(0)
            for j in range(j0, j1):
                hits += np.int32(1) if other[j] - row[j] - row[j] < v2 else np.int32(0)
            if hits == 0:
                continue
            for j in range(j0, j1):
                v = other[j] - row[j] - row[j]
                if v < v2:
                    if v < v1:
                        v2, c2, v1, c1 = v1, c1, v, offset + j
                    else:
                        v2, c2 = v, offset + j
        values[i, 0], indices[i, 0], values[i, 1], indices[i, 1] = v1, c1, v2, c2


@njit(parallel=True, cache=True, boundscheck=False)
def _two_smallest_columns(p, other, values, indices, offset, chunks):  # pragma: no cover - compiled
    # entry (i, j) scores other[i] - 2 p[i, j]; each column keeps its two smallest scores, the earlier row on a tie.
    # Each chunk of columns in its own thread, walking the rows in order: a row is counted against the columns'
    # second places first (a loop that vectorises) and walked only where one of them is beaten
    m, n = p.shape
    step = (n + chunks - 1) // chunks
    for t in prange(chunks):
        j0 = min(n, t * step)
        j1 = min(n, j0 + step)
        v1 = values[j0:j1, 0].copy()
        c1 = indices[j0:j1, 0].copy()
        v2 = values[j0:j1, 1].copy()
        c2 = indices[j0:j1, 1].copy()
        for i in range(m):
            row = p[i, j0:j1]
            h = other[i]
            hits = np.int32(0)
            for j in range(j1 - j0):
                hits += np.int32(1) if h - row[j] - row[j] < v2[j] else np.int32(0)
            if hits == 0:
                continue
            for j in range(j1 - j0):
                v = h - row[j] - row[j]
                if v < v2[j]:
                    if v < v1[j]:
                        v2[j], c2[j], v1[j], c1[j] = v1[j], c1[j], v, offset + i
                    else:
                        v2[j], c2[j] = v, offset + i
        values[j0:j1, 0] = v1
        indices[j0:j1, 0] = c1
        values[j0:j1, 1] = v2
        indices[j0:j1, 1] = c2


def direct_distances(exact: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float64 sqrt(sum_i (x_i - y_i)^2) of each (row, col) pair of ``exact``, the sum taken in index order
    (i = 0, 1, ..., D - 1), one rounding per operation: the order the brute-force oracle uses too, so that two
    distances that are equal in exact arithmetic compare the same way in both (a sum's rounding depends on its order).
    On CPU one fused numba loop (also because torch's CPU float64 sqrt is not always correctly rounded: measured
    here, 8 of 400 distances one ulp off numpy's IEEE sqrt, enough to turn a tie); elsewhere one column at a time in
    torch, the same operations in the same order."""
    if exact.device.type == "cpu" and exact.dtype == torch.float64:
        out = torch.empty(rows.shape[0], dtype=torch.float64)
        if rows.numel():
            _run(_pair_distances, _numpy(exact), _numpy(rows.to(torch.int64)), _numpy(cols.to(torch.int64)),
                 out.numpy())
        return out
    return torch.sqrt(_torch_direct_sums(exact, rows, cols))  # CUDA's float64 sqrt is correctly rounded


def _torch_direct_sums(exact: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(rows.shape[0], dtype=exact.dtype, device=exact.device)
    for i in range(exact.shape[1]):  # one column at a time: separate kernels, so nothing is fused or reordered
        d = exact[rows, i] - exact[cols, i]
        total += d * d
    return total


def _use_numba(g: torch.Tensor) -> bool:
    return g.device.type == "cpu" and g.dtype == torch.float32 and g.dim() == 2 and g.numel() > 0


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _run(kernel, *args) -> None:
    """Run a kernel on as many threads as torch uses (the pipeline's workers set that share), one call at a time."""
    with _LOCK, torch_threads_kept():
        set_num_threads(max(1, min(torch.get_num_threads(), config.NUMBA_NUM_THREADS)))
        kernel(*args)


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's thread count after numba code. numba's OpenMP pool and torch's share the OpenMP library, and a
    parallel numba launch sets its thread count to numba's (all cores) in the calling thread: measured here, torch set
    to 1 thread then ran on 2 in a Dask worker, which oversubscribed the cores shared by the workers."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _torch_counts(g: torch.Tensor, low: torch.Tensor, high: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
    shape = (-1, 1) if dim == 1 else (1, -1)
    return ((g < low.reshape(shape)).sum(dim=dim, dtype=torch.int32),
            (g < high.reshape(shape)).sum(dim=dim, dtype=torch.int32))


def counts_below(g: torch.Tensor, low: torch.Tensor, high: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 counts of tile entries below ``low`` and below ``high`` (float32 thresholds), per row (``dim=1``: one
    threshold per row) or per column (``dim=0``: one per column)."""
    if not _use_numba(g):
        return _torch_counts(g, low, high, dim)
    size = g.shape[0] if dim == 1 else g.shape[1]
    out_low = torch.empty(size, dtype=torch.int32)
    out_high = torch.empty(size, dtype=torch.int32)
    tile, a, b = _numpy(g), _numpy(low.reshape(-1)), _numpy(high.reshape(-1))
    if dim == 1:
        _run(_row_counts, tile, a, b, out_low.numpy(), out_high.numpy())
    else:
        _run(_column_counts, tile, a, b, out_low.numpy(), out_high.numpy(), max(1, torch.get_num_threads()))
    return out_low, out_high


def row_minimum(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's smallest value and the column holding it (the first such column on CPU; any one of them on other
    devices, as torch's ``min`` gives)."""
    if not _use_numba(g):
        return g.min(dim=1)
    values = torch.empty(g.shape[0], dtype=torch.float32)
    index = torch.empty(g.shape[0], dtype=torch.int64)
    _run(_row_min, _numpy(g), values.numpy(), index.numpy())
    return values, index


class RowSmallest:
    """The ``m`` smallest values of each row over tiles pushed one after another, with their columns: a top-m that
    reads each tile once (the ANN path's sampled rows, whose m nearest foreign samples are searched exactly).

    On CPU a numba max-heap per row: ``torch.topk(m)`` over a row of 70,000 columns cost more than the float32
    product that made it at D = 64 (measured here: 0.58 s of top-m against 0.37 s of products for 2,560 rows of
    Fashion-MNIST features; the heap takes about 0.2 s), and the heap rejects almost every entry with one comparison. On
    CPU the m kept are the smallest by value and then by column, whatever the order of the pushes; elsewhere each
    tile's top-m is merged with the running one in torch, and a tie at the m-th place is broken as ``topk`` breaks
    it. ``result()`` gives each row ascending by value, then by column."""

    _EMPTY = torch.iinfo(torch.int64).max  # the column of a place not filled yet: after every real column

    def __init__(self, rows: int, m: int, device: torch.device) -> None:
        self.m, self.device = int(m), device
        self.values = torch.full((rows, self.m), np.inf, dtype=torch.float32, device=device)
        self.indices = torch.full((rows, self.m), self._EMPTY, dtype=torch.int64, device=device)

    def push(self, g: torch.Tensor, offset: int) -> None:
        """Take the tile ``g`` (rows x columns), whose column 0 is column ``offset`` of the whole."""
        if g.shape[1] == 0:
            return
        if g.device.type == "cpu" and g.dtype == torch.bfloat16:
            g = g.float()  # a bfloat16 ranking tile: exact in float32, one pass that the heap then reads in cache
        if _use_numba(g):
            _run(_push_smallest, _numpy(g), int(offset), self.values.numpy(), self.indices.numpy())
            return
        top = g.topk(min(self.m, g.shape[1]), dim=1, largest=False)
        values = torch.cat([self.values, top.values], dim=1)
        indices = torch.cat([self.indices, top.indices + offset], dim=1)
        self.values, pick = values.topk(self.m, dim=1, largest=False)
        self.indices = indices.gather(1, pick)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, columns), each row ascending by value and then by column; a row given fewer than m columns has
        inf and -1 in its last places."""
        by_column = self.indices.argsort(dim=1)
        values, indices = self.values.gather(1, by_column), self.indices.gather(1, by_column)
        order = values.argsort(dim=1, stable=True)
        values, indices = values.gather(1, order), indices.gather(1, order)
        return values, torch.where(indices == self._EMPTY, -1, indices)


class TwoNearestInt8:
    """Each sample's two nearest other samples by quantised distance, over int32 tiles of integer products pushed one
    after another: the ANN path's int8 scan (see :func:`kstar_utils.neighbours.int8_two_nearest_foreign`).

    ``sq_norms[k]`` is |q_k|^2 of sample k's integer code; a tile ``p`` holds q_i . q_j for a block of rows i and a
    block of columns j, and |q_i|^2 + |q_j|^2 - 2 p_ij is then the *exact* squared distance of the two codes (integers,
    no rounding). One tile updates its rows (against its columns) and its columns (against its rows), so a scan that
    pushes each unordered pair once serves both of its samples. Ties keep the earlier pushed index. CPU only (numba,
    int32 arithmetic: the scores stay below 2^31 for codes of at most ``MAX_DIMS`` entries of magnitude <= 127)."""

    MAX_DIMS = 32768  # 3 x MAX_DIMS x 127^2 < 2^31: no score can overflow int32

    def __init__(self, sq_norms: np.ndarray) -> None:
        self.sq_norms = np.ascontiguousarray(sq_norms, dtype=np.int32)
        n = self.sq_norms.shape[0]
        self.values = np.full((n, 2), np.iinfo(np.int32).max, dtype=np.int32)
        self.indices = np.full((n, 2), -1, dtype=np.int64)

    def push(self, p: torch.Tensor, row0: int, col0: int) -> None:
        """Take the int32 tile ``p`` whose entry (0, 0) is the product of sample ``row0`` with sample ``col0``."""
        if p.dtype != torch.int32 or p.dim() != 2 or p.device.type != "cpu":
            raise TypeError(f"TwoNearestInt8.push takes a 2-D int32 CPU tile, not {p.dtype} on {p.device}")
        m, n = p.shape
        if m == 0 or n == 0:
            return
        size = self.sq_norms.shape[0]
        if not (0 <= row0 and row0 + m <= size and 0 <= col0 and col0 + n <= size):
            raise ValueError(f"TwoNearestInt8.push: a {m} x {n} tile at ({row0}, {col0}) does not fit {size} samples")
        if row0 < col0 + n and col0 < row0 + m:
            raise ValueError(f"TwoNearestInt8.push: rows [{row0}, {row0 + m}) and columns [{col0}, {col0 + n}) "
                             "overlap; push disjoint blocks (each unordered pair once, never a sample with itself)")
        tile = _numpy(p)
        rows, cols = slice(row0, row0 + m), slice(col0, col0 + n)
        _run(_two_smallest_rows, tile, self.sq_norms[cols], self.values[rows], self.indices[rows], int(col0))
        _run(_two_smallest_columns, tile, self.sq_norms[rows], self.values[cols], self.indices[cols], int(row0),
             max(1, 8 * torch.get_num_threads()))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(squared code distances as int64, indices), each sample's two nearest in ascending order; a sample given
        fewer than two has -1 as index (and int32's maximum plus its norm as distance) in the places not filled."""
        return self.values.astype(np.int64) + self.sq_norms[:, None], self.indices.copy()
