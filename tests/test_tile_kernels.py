"""The fused tile reductions (numba on CPU) equal their torch forms, ties and inf included."""

import threading

import numpy as np
import pytest
import torch

from conftest import torch_threads_after_in_worker

from kstar_utils import tile_kernels


def _tile(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.from_numpy(np.random.default_rng(seed).integers(0, 6, size=(rows, cols)).astype(np.float32))
    if rows and cols:
        g[0, 0] = np.inf  # an excluded pair (the diagonal)
    return g


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (64, 257), (300, 2048), (3, 9000)])
@pytest.mark.parametrize("dim", [0, 1])
def test_counts_below_equal_torch_with_ties_and_inf(shape, dim):
    g = _tile(*shape, seed=shape[0])
    size = shape[0] if dim == 1 else shape[1]
    rng = np.random.default_rng(1)
    low = torch.from_numpy(rng.integers(0, 6, size=size).astype(np.float32))  # integers: many entries tie
    high = low + torch.from_numpy(rng.integers(0, 2, size=size).astype(np.float32))
    low[0], high[-1] = -np.inf, np.inf
    got = tile_kernels.counts_below(g, low, high, dim)
    expected = tile_kernels._torch_counts(g, low, high, dim)
    assert got[0].dtype == torch.int32
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    # strictly below: an entry equal to the threshold is not counted
    column = g[:, 0] if dim == 0 else g[0]
    assert int(got[0][0]) == int((column < low[0]).sum())


def test_counts_below_accept_broadcast_shapes_and_non_contiguous_tiles():
    g = _tile(40, 80)[:, ::2]  # a view with strides: copied to a contiguous tile
    low = torch.full((40, 1), 3.0)
    high = torch.full((40, 1), 4.0)
    for a, b in zip(tile_kernels.counts_below(g, low, high, 1), tile_kernels._torch_counts(g, low, high, 1)):
        assert torch.equal(a, b)
    low_c, high_c = torch.full((1, 40), 2.0), torch.full((1, 40), 5.0)
    for a, b in zip(tile_kernels.counts_below(g, low_c, high_c, 0), tile_kernels._torch_counts(g, low_c, high_c, 0)):
        assert torch.equal(a, b)


def test_float64_tiles_take_the_torch_form():
    g = _tile(5, 6).double()
    low, high = torch.zeros(5, dtype=torch.float64), torch.full((5,), 3.0, dtype=torch.float64)
    low_count, high_count = tile_kernels.counts_below(g, low, high, 1)
    assert torch.equal(low_count, (g < 0).sum(1, dtype=torch.int32))
    assert torch.equal(high_count, (g < 3).sum(1, dtype=torch.int32))


@pytest.mark.parametrize("shape", [(1, 1), (9, 5), (200, 3000)])
def test_row_minimum_is_the_first_smallest_column(shape):
    g = _tile(*shape, seed=3)
    g[-1] = np.inf  # a row with nothing below inf keeps inf and column 0
    values, index = tile_kernels.row_minimum(g)
    assert torch.equal(values, g.amin(dim=1))
    assert torch.equal(index, torch.from_numpy(g.numpy().argmin(axis=1)))  # numpy: the first minimum
    assert index.dtype == torch.int64


def _smallest_reference(g: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's m smallest values, ordered by value and then by column (a stable sort of the whole row)."""
    order = np.argsort(g, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(g, order, axis=1), order


@pytest.mark.parametrize("rows, cols, m, width", [(1, 1, 1, 1), (5, 300, 7, 64), (40, 5000, 256, 700),
                                                  (3, 130, 130, 50), (17, 2049, 1, 2049)])
def test_row_smallest_keeps_the_m_smallest_by_value_then_column_over_tiles(rows, cols, m, width):
    """Integer-valued tiles (ties everywhere) and inf, pushed tile by tile: the m kept are the stable sort's first m."""
    g = _tile(rows, cols, seed=cols)
    top = tile_kernels.RowSmallest(rows, m, torch.device("cpu"))
    for lo in range(0, cols, width):
        top.push(g[:, lo : lo + width], lo)
    values, indices = top.result()
    expected_values, expected_indices = _smallest_reference(g.numpy(), m)
    assert torch.equal(values, torch.from_numpy(expected_values))
    assert torch.equal(indices, torch.from_numpy(expected_indices))


def test_row_smallest_does_not_depend_on_the_order_of_the_tiles():
    g = _tile(30, 900, seed=8)
    forwards, backwards = (tile_kernels.RowSmallest(30, 40, torch.device("cpu")) for _ in range(2))
    for lo in range(0, 900, 100):
        forwards.push(g[:, lo : lo + 100], lo)
    for lo in reversed(range(0, 900, 100)):
        backwards.push(g[:, lo : lo + 100], lo)
    for a, b in zip(forwards.result(), backwards.result()):
        assert torch.equal(a, b)


def test_row_smallest_fills_short_rows_with_inf_and_minus_one():
    g = _tile(4, 3, seed=2)
    top = tile_kernels.RowSmallest(4, 5, torch.device("cpu"))
    top.push(g, 10)
    values, indices = top.result()
    expected_values, expected_indices = _smallest_reference(g.numpy(), 3)
    assert torch.equal(values[:, :3], torch.from_numpy(expected_values))
    assert torch.equal(indices[:, :3], torch.from_numpy(expected_indices) + 10)
    assert torch.all(torch.isinf(values[:, 3:])) and torch.all(indices[:, 3:] == -1)


def test_row_smallest_takes_bfloat16_tiles_as_their_float32_values():
    """The ANN path's bfloat16 ranking tiles: pushed as they are, they keep what their float32 values would."""
    g = (_tile(12, 500, seed=6) / 7).to(torch.bfloat16)
    as_bf16, as_f32 = (tile_kernels.RowSmallest(12, 20, torch.device("cpu")) for _ in range(2))
    for lo in range(0, 500, 128):
        as_bf16.push(g[:, lo : lo + 128], lo)
        as_f32.push(g[:, lo : lo + 128].float(), lo)
    for a, b in zip(as_bf16.result(), as_f32.result()):
        assert torch.equal(a, b)
    assert as_bf16.result()[0].dtype == torch.float32


def test_row_smallest_torch_form_keeps_the_same_values():
    """Other devices merge torch top-m per tile (a float64 tile takes that form here): the same values, and the
    columns hold them (which of tied columns is kept is torch's choice)."""
    g = _tile(20, 600, seed=4).double()
    top = tile_kernels.RowSmallest(20, 30, torch.device("cpu"))
    top.values = top.values.double()
    for lo in range(0, 600, 128):
        top.push(g[:, lo : lo + 128], lo)
    values, indices = top.result()
    expected_values, _ = _smallest_reference(g.numpy(), 30)
    assert torch.equal(values, torch.from_numpy(expected_values))
    assert torch.equal(g.gather(1, indices), values)


def test_kernels_are_safe_from_several_python_threads():
    g = _tile(256, 1024, seed=5)
    low, high = torch.full((256,), 2.0), torch.full((256,), 4.0)
    expected = tile_kernels._torch_counts(g, low, high, 1)
    failures = []

    def work():
        for _ in range(20):
            got = tile_kernels.counts_below(g, low, high, 1)
            if not all(torch.equal(a, b) for a, b in zip(got, expected)):
                failures.append(got)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_a_kernel_leaves_torchs_thread_count_alone_in_a_worker_thread():
    """numba's OpenMP launch used to set torch's thread count (shared OpenMP library) in the calling thread: a Dask
    worker's task thread, set to 1, then ran torch on every core. The count is restored after each kernel."""
    def work():
        tile_kernels.counts_below(_tile(64, 64), torch.zeros(64), torch.ones(64), 1)
        tile_kernels.row_minimum(_tile(64, 64))

    assert torch_threads_after_in_worker(work)[0] == 1


def test_direct_distances_sum_in_index_order_on_every_path():
    """The float64 re-check and the brute-force oracle must round alike: both sum (x_i - y_i)^2 in index order."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 37)) * rng.choice([1e-3, 1.0, 1e3], size=37)
    rows, cols = torch.from_numpy(rng.integers(0, 50, 400)), torch.from_numpy(rng.integers(0, 50, 400))
    exact = torch.from_numpy(x)
    sums = np.empty(400)
    for k, (a, b) in enumerate(zip(rows.tolist(), cols.tolist())):
        total = 0.0
        for i in range(x.shape[1]):
            total += (x[a, i] - x[b, i]) ** 2
        sums[k] = total
    fused = tile_kernels.direct_distances(exact, rows, cols).numpy()
    assert np.array_equal(fused, np.sqrt(sums))  # bit for bit, IEEE sqrt included
    # the other devices' path: the same sums (its sqrt is CUDA's, correctly rounded; torch's CPU one is not)
    assert np.array_equal(tile_kernels._torch_direct_sums(exact, rows, cols).numpy(), sums)
    assert tile_kernels.direct_distances(exact, rows[:0], cols[:0]).shape == (0,)
