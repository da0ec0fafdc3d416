"""Fused reductions over one float32 tile of squared distances: threshold counts and row minima.

Why this module: after each matrix product the exact kernel and the ANN path reduce the tile. In torch each reduction
is its own pass that writes a mask or an index tensor, and on CPU those passes cost more than the product itself:
on a 512 x 2,048 tile at D = 128 (2 cores), the four threshold counts of the same-class pass took 2.8 ms against the
product's 1.9 ms, and ``min(dim=1)`` with indices 1.2 ms against ``amin``'s 0.1 ms. The numba loops here read the tile
once, in cache, and take about 0.2 ms for the four counts. On other devices (CUDA) the torch forms run: there they
are cheap next to the product.

Every function takes a 2-D float32 tile and returns torch tensors on the tile's device, equal to the torch forms
(``_torch_*``), which the tests compare them with. NaN never reaches a tile (inputs are checked finite); ``inf`` does
(excluded pairs) and compares as IEEE says: no fast-math flags are used.
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
