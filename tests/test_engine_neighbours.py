"""nearest_foreign_index and the symmetric exact kernel's block layouts, against SPEC's brute-force definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kstar_utils import KStarInputError, compute_kstar
from kstar_utils.neighbours import brute_force_kstar, exact_counts, nearest_foreign_index, sort_by_class


def _brute_nearest_foreign(x: np.ndarray, y: np.ndarray, queries: np.ndarray) -> np.ndarray:
    out = []
    for q in queries:
        d = np.sqrt(((x - x[q]) ** 2).sum(axis=1))
        d[y == y[q]] = np.inf
        out.append(int(np.flatnonzero(d == d.min())[0]))  # the lowest index among ties
    return np.array(out)


@pytest.mark.parametrize("seed", range(3))
def test_nearest_foreign_index_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 7)) + 50.0
    y = rng.integers(0, 4, 300)
    queries = rng.choice(300, size=40, replace=False)
    got = nearest_foreign_index(x, y, queries)
    np.testing.assert_array_equal(got, _brute_nearest_foreign(x, y, queries))
    assert np.all(y[got] != y[queries])


def test_nearest_foreign_index_breaks_ties_by_lowest_index():
    x = np.array([[0.0], [1.0], [-1.0], [1.0], [5.0]])  # rows 1, 2 and 3 are all at distance 1 from row 0
    y = np.array([0, 1, 1, 1, 0])
    assert nearest_foreign_index(x, y, [0]).tolist() == [1]
    assert nearest_foreign_index(x, y, np.array([0, 4])).tolist() == [1, 1]
    perm = np.array([3, 1, 2, 0, 4])  # after reordering the tied rows, the lowest index among them wins again
    assert nearest_foreign_index(x[perm], y[perm], [3]).tolist() == [0]


def test_nearest_foreign_index_on_integer_pixels_with_many_ties():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=(200, 5)).astype(np.float64) + 1e6  # ties everywhere, large common offset
    y = rng.integers(0, 3, 200)
    queries = np.arange(200)
    np.testing.assert_array_equal(nearest_foreign_index(x, y, queries), _brute_nearest_foreign(x, y, queries))


def test_nearest_foreign_index_cosine_and_string_labels():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 6))
    y = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, 120)]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    queries = np.arange(0, 120, 7)
    np.testing.assert_array_equal(nearest_foreign_index(x * 3.0, y, queries, metric="cosine"),
                                  _brute_nearest_foreign(unit, y, queries))


@pytest.mark.parametrize("queries", [[-1], [10], [[0, 1]], [0.5]])
def test_nearest_foreign_index_rejects_bad_queries(queries):
    x = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(KStarInputError, match="quer"):
        nearest_foreign_index(x, [0, 1] * 5, queries)


def test_nearest_foreign_index_empty_queries():
    x = np.random.default_rng(0).normal(size=(10, 2))
    assert nearest_foreign_index(x, [0, 1] * 5, []).shape == (0,)


# ---------------------------------------------------------------------------------------------- the symmetric kernel
@pytest.mark.parametrize("block_size", [1, 3, 16, 17, 64, 1000])
def test_blocks_straddling_classes_and_single_block_classes(block_size):
    """Class sizes 1, 2, 17, 40 and 3: with these block sizes, row blocks end inside classes, straddle class
    boundaries in the column tiles, and some classes fit in a single block."""
    rng = np.random.default_rng(11)
    sizes = [1, 2, 17, 40, 3]
    y = np.repeat(np.arange(5), sizes)
    perm = rng.permutation(len(y))
    y = y[perm]
    x = rng.normal(size=(len(y), 3)) + y[:, None] * 0.4
    with pytest.warns(Warning):  # classes of fewer than three samples
        res = compute_kstar(x, y, method="exact", block_size=block_size)
    np.testing.assert_array_equal(res.kstar, brute_force_kstar(x, y))


def test_symmetric_kernel_tiles_columns(monkeypatch):
    """A tiny tile forces several column tiles per row block in both passes; results do not change."""
    import kstar_utils.neighbours as nb

    rng = np.random.default_rng(12)
    y = rng.integers(0, 3, 500)
    x = rng.integers(0, 4, size=(500, 4)).astype(np.float64)  # many exact ties
    monkeypatch.setattr(nb, "TILE_BYTES", 4 * 8 * 37)
    res = compute_kstar(x, y, method="exact", block_size=8)
    np.testing.assert_array_equal(res.kstar, brute_force_kstar(x, y))
    assert res.params["rechecked_rows"] > 0


def test_symmetric_and_row_wise_kernels_agree():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(400, 9))
    y = rng.integers(0, 6, 400)
    data = sort_by_class(x, y, torch.device("cpu"))
    symmetric, _ = exact_counts(data, block_size=50)
    row_wise, _ = exact_counts(data, rows=np.arange(400), block_size=50)
    np.testing.assert_array_equal(symmetric, row_wise)
    np.testing.assert_array_equal(1 + symmetric, brute_force_kstar(x[data.order], y[data.order]))


def test_band_overflow_falls_back_to_row_rescans(monkeypatch):
    """With no room for band pairs the unsure rows are re-scanned row by row: same result."""
    import kstar_utils.neighbours as nb

    rng = np.random.default_rng(14)
    x = rng.integers(0, 3, size=(300, 3)).astype(np.float64) + 1e6
    y = rng.integers(0, 3, 300)
    monkeypatch.setattr(nb, "BAND_PAIRS_LIMIT", 0)
    np.testing.assert_array_equal(compute_kstar(x, y, method="exact", block_size=32).kstar, brute_force_kstar(x, y))


def test_given_radius_for_all_rows_uses_the_same_class_pass():
    rng = np.random.default_rng(15)
    x = rng.integers(0, 4, size=(350, 3)).astype(np.float64)
    y = rng.integers(0, 4, 350)
    data = sort_by_class(x, y, torch.device("cpu"))
    xs, ys = x[data.order], y[data.order]
    radius = np.array([np.sqrt(((xs[ys != ys[r]] - xs[r]) ** 2).sum(1)).min() for r in range(350)])
    for block in (None, 9):
        counts, stats = exact_counts(data, radius=radius, block_size=block)
        np.testing.assert_array_equal(1 + counts, brute_force_kstar(xs, ys))
    assert stats.rechecked_pairs > 0  # integer distances: pairs exactly at r_p, decided in float64


def test_exact_foreign_radius_is_the_float64_nearest_foreign_distance():
    from kstar_utils.neighbours import exact_foreign_radius

    rng = np.random.default_rng(16)
    x = rng.integers(0, 5, size=(200, 3)).astype(np.float64) + 1e5
    y = rng.integers(0, 3, 200)
    data = sort_by_class(x, y, torch.device("cpu"))
    xs, ys = x[data.order], y[data.order]
    rows = np.array([0, 17, 199, 64])
    expected = [np.sqrt(((xs[ys != ys[r]] - xs[r]) ** 2).sum(1)).min() for r in rows]
    np.testing.assert_array_equal(exact_foreign_radius(data, rows), expected)


def test_tile_shape_follows_the_device_and_the_inner_width():
    """On CUDA each tile costs kernel launches and host syncs, so its tiles hold 16 times more (measured on an H200);
    on the CPU a narrow inner dimension gets a tile that stays in cache (measured here: see TILE_ELEMENTS_PER_INNER)."""
    import kstar_utils.neighbours as nb

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert nb._tile_shape(cpu, 520) == (nb.DEFAULT_TILE_ROWS, nb.TILE_BYTES, nb.SAME_CLASS_ROWS)  # D = 512: 2048^2
    rows, tile_bytes, _ = nb._tile_shape(cpu, 136)  # D = 128
    assert rows == 1024 and tile_bytes == 4 * nb.TILE_ELEMENTS_PER_INNER * 136
    rows, tile_bytes, _ = nb._tile_shape(cpu, 8)  # D <= 6: the smallest tile
    assert rows == nb.SAME_CLASS_ROWS and tile_bytes == nb.MIN_TILE_BYTES
    for inner in (8, 72, 136, 520, 4104):
        rows, tile_bytes, same_rows = nb._tile_shape(cpu, inner)
        assert nb.SAME_CLASS_ROWS <= rows <= nb.DEFAULT_TILE_ROWS and rows * rows * 4 <= tile_bytes <= nb.TILE_BYTES
    assert nb._tile_shape(cuda, 136) == (nb.CUDA_TILE_ROWS, nb.CUDA_TILE_BYTES, nb.CUDA_SAME_CLASS_ROWS)
    assert nb.CUDA_TILE_BYTES == 16 * nb.TILE_BYTES and nb.CUDA_SAME_CLASS_ROWS > nb.SAME_CLASS_ROWS


@pytest.mark.parametrize("m", [1, 5, 40])
def test_foreign_top_returns_the_m_nearest_foreign_samples_in_order(m, monkeypatch):
    """The ANN path's sampled rows: their m nearest foreign samples, searched exactly (in blocks of 3 rows: a memory
    limit of 3 whole rows of distances)."""
    import kstar_utils.neighbours as nb
    from kstar_utils.neighbours import foreign_top

    monkeypatch.setattr(nb, "FOREIGN_TOP_BYTES", 3 * 400 * 4)

    rng = np.random.default_rng(m)
    x = rng.normal(size=(400, 6))
    y = rng.integers(0, 3, 400)
    data = sort_by_class(x, y, torch.device("cpu"))
    xs, ys = data.exact.numpy(), data.codes
    rows = torch.from_numpy(rng.choice(400, size=37, replace=False))
    values, indices = foreign_top(data, rows, m, block_rows=16)
    assert values.shape == indices.shape == (37, m)
    for r, v, i in zip(rows.numpy(), values.numpy(), indices.numpy()):
        d2 = ((xs - xs[r]) ** 2).sum(axis=1)
        d2[ys == ys[r]] = np.inf
        np.testing.assert_allclose(v, np.sort(d2)[:m], rtol=1e-4, atol=1e-4)
        assert np.all(ys[i] != ys[r]) and len(set(i)) == m
        np.testing.assert_allclose(d2[i], v, rtol=1e-4, atol=1e-4)


def test_foreign_top_cuts_m_to_the_foreign_samples_there_are():
    """A class with fewer foreign samples than m asked for: m is cut, and no same-class index is ever returned."""
    from kstar_utils.neighbours import foreign_top

    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 3))
    y = np.array([0] * 50 + [1] * 6 + [2] * 4)  # class 0 has 10 foreign samples, class 2 has 56
    data = sort_by_class(x, y, torch.device("cpu"))
    rows = torch.tensor([0, 7, 52, 58])  # rows of classes 0, 0, 1, 2
    values, indices = foreign_top(data, rows, 256)
    assert values.shape == (4, 10)
    codes = data.codes
    assert all(np.all(codes[i] != codes[r]) for r, i in zip(rows.numpy(), indices.numpy()))
    assert np.all(np.isfinite(values.numpy()))
    np.testing.assert_array_equal(np.sort(indices[0].numpy()), np.arange(50, 60))
    only_class_2 = foreign_top(data, torch.tensor([58]), 256)[1]
    assert only_class_2.shape == (1, 56) and len(set(only_class_2[0].tolist())) == 56


def test_nearest_among_picks_the_nearest_candidate_column():
    from kstar_utils.neighbours import nearest_among

    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 4))
    y = np.repeat([0, 1], 150)
    data = sort_by_class(x, y, torch.device("cpu"))
    xs = data.exact.numpy()
    rows = torch.arange(0, 150)
    cols = torch.from_numpy(rng.choice(np.arange(150, 300), size=60, replace=False))
    values, found = nearest_among(data, rows, cols, block_rows=32)
    d2 = ((xs[:150, None, :] - xs[None, cols.numpy(), :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(found.numpy(), cols.numpy()[d2.argmin(axis=1)])
    np.testing.assert_allclose(values.numpy(), d2.min(axis=1), rtol=1e-4, atol=1e-4)
    empty_values, _ = nearest_among(data, rows, torch.zeros(0, dtype=torch.int64))
    assert torch.isinf(empty_values).all()


def _low_rank(n: int = 600, dim: int = 24, latent: int = 3, classes: int = 3, seed: int = 0, noise: float = 1e-3):
    """Classes that vary in ``latent`` directions of ``dim`` (plus a little isotropic noise), as learned features do."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T
    z = rng.normal(size=(classes, latent))[y] + rng.normal(size=(n, latent))
    return z @ basis + noise * rng.normal(size=(n, dim)), y, basis


def test_principal_axes_find_the_directions_the_features_vary_in():
    from kstar_utils.neighbours import principal_axes

    x, y, basis = _low_rank()
    data = sort_by_class(x, y, torch.device("cpu"))
    held, axes = principal_axes(data, 10_000, np.random.default_rng(0))
    assert held.shape == (24,) and axes.shape == (24, 24)
    assert held[1] < 0.99 < held[2] and held[-1] == pytest.approx(1.0) and np.all(np.diff(held) >= -1e-12)
    np.testing.assert_allclose((axes.T @ axes).numpy(), np.eye(24), atol=1e-10)  # orthonormal
    leading = axes[:, :3].numpy()
    np.testing.assert_allclose(np.linalg.norm(basis @ leading, axis=0), 1.0, atol=1e-3)  # they span the basis


def test_projected_distances_are_lower_bounds_and_exact_with_every_axis():
    from kstar_utils.neighbours import principal_axes, projected_coordinates

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 10)) * np.linspace(3, 0.1, 10), rng.integers(0, 2, 200)
    data = sort_by_class(x, y, torch.device("cpu"))
    _, axes = principal_axes(data, 200, rng)
    full = data.exact.numpy()
    true = ((full[:, None] - full[None]) ** 2).sum(axis=2)
    held = []
    for dims in (1, 3, 6):
        c = projected_coordinates(data, axes, dims).numpy()
        assert c.shape == (200, dims + 1)
        projected = ((c[:, None] - c[None]) ** 2).sum(axis=2)
        assert np.all(projected <= true * (1 + 1e-5) + 1e-9)  # a lower bound (the float32 layout's rounding aside)
        held.append(np.mean(projected) / np.mean(true))
    assert held[0] < held[1] < held[2] and held[2] > 0.95  # tighter with each axis kept
    every = projected_coordinates(data, axes, 10).numpy()
    np.testing.assert_allclose(every[:, 10], 0.0, atol=1e-5)
    np.testing.assert_allclose(((every[:, None] - every[None]) ** 2).sum(axis=2), true, rtol=1e-5, atol=1e-8)


def test_projected_rank_counts_the_foreign_samples_nearer_in_the_projection():
    from kstar_utils.neighbours import foreign_top, principal_axes, projected_coordinates, projected_rank

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 8)), rng.integers(0, 3, 300)
    data = sort_by_class(x, y, torch.device("cpu"))
    coords = projected_coordinates(data, principal_axes(data, 300, rng)[1], 2)
    rows = torch.from_numpy(rng.choice(300, size=40, replace=False))
    nearest = foreign_top(data, rows, 1)[1][:, 0]
    full, codes, c = data.exact.numpy(), data.codes, coords.numpy()
    for r, q in zip(rows.numpy(), nearest.numpy()):
        d2 = ((full - full[r]) ** 2).sum(axis=1)
        d2[codes == codes[r]] = np.inf
        assert d2[q] == d2.min() and codes[q] != codes[r]  # the exact nearest foreign sample
    ranks = projected_rank(data, coords, rows, nearest).numpy()
    for r, q, rank in zip(rows.numpy(), nearest.numpy(), ranks):
        p2 = ((c - c[r]) ** 2).sum(axis=1)
        assert rank == np.count_nonzero((p2 < p2[q]) & (codes != codes[r]))
    assert ranks.max() > 0  # two axes of eight isotropic ones do misrank: the test can tell


def test_projected_search_keeps_the_order_and_finds_the_exact_nearest_of_its_top_few():
    """nearest_among_projected and foreign_top_projected rank in the projection, then take exact float64 distances:
    on low-rank features they agree with the full-space search."""
    import kstar_utils.neighbours as nb

    x, y, _ = _low_rank(n=500, seed=3, noise=0.05)
    data = sort_by_class(x, y, torch.device("cpu"))
    axes = nb.principal_axes(data, 500, np.random.default_rng(0))[1]
    projected = nb.projected_features(data, nb.projected_coordinates(data, axes, 3))
    assert projected.n == data.n and np.array_equal(projected.codes, data.codes) and projected.exact.shape[1] == 4
    s, e = int(data.starts[0]), int(data.ends[0])
    rows, cols = torch.arange(s, e), torch.arange(e, data.n)
    values, found = nb.nearest_among_projected(data, projected, rows, cols, top=4, block_rows=32)
    exact_found = nb.nearest_among(data, rows, cols)[1]
    np.testing.assert_array_equal(found.numpy(), exact_found.numpy())
    assert values.dtype == torch.float64
    np.testing.assert_array_equal(values.numpy(), nb.exact_pair_distances(data.exact, rows, found).numpy() ** 2)
    top_values, top_indices = nb.foreign_top_projected(data, projected, rows, 16)
    assert top_values.shape == top_indices.shape == (e - s, 16)
    np.testing.assert_array_equal(top_indices[:, 0].numpy(), nb.foreign_top(data, rows, 1)[1][:, 0].numpy())
    assert torch.all(top_values[:, 1:] >= top_values[:, :-1])  # ascending exact distances
    assert np.all(data.codes[top_indices.numpy()] != 0)
    empty = nb.nearest_among_projected(data, projected, rows, torch.zeros(0, dtype=torch.int64), top=4)[0]
    assert torch.isinf(empty).all()


def test_the_projected_search_takes_the_exact_nearest_of_its_top_only():
    """top=1 takes whatever the projection ranks first; a wider top finds the nearest in the full space."""
    from kstar_utils.neighbours import nearest_among_projected, projected_features

    # the projection keeps the first axis and the norm of the rest: it cannot tell (0.5, -1, 0) from (0.5, 1, 0), so it
    # ranks candidate 1 at 0.25 before candidate 2 at 1.0; in full, candidate 2 is the nearer (1.0 against 4.25)
    x = np.array([[0.0, 1.0, 0.0], [0.5, -1.0, 0.0], [1.0, 1.0, 0.0]])
    data = sort_by_class(x, np.array([0, 1, 1]), torch.device("cpu"))
    coords = torch.from_numpy(np.column_stack([x[:, 0], np.linalg.norm(x[:, 1:], axis=1)]))
    projected = projected_features(data, coords)
    rows, cols = torch.tensor([0]), torch.tensor([1, 2])
    values, found = nearest_among_projected(data, projected, rows, cols, top=1)
    assert found.tolist() == [1] and values.item() == pytest.approx(4.25)
    values, found = nearest_among_projected(data, projected, rows, cols, top=2)
    assert found.tolist() == [2] and values.item() == pytest.approx(1.0)


def test_native_bfloat16_follows_the_cpu_flags_and_is_off_elsewhere():
    from kstar_utils.neighbours import native_bfloat16

    flags = [getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                    "_is_amx_tile_supported")]
    assert native_bfloat16(torch.device("cpu")) == any(flags)
    assert native_bfloat16(torch.device("meta")) is False  # CUDA and the rest keep float32 ranking


def test_bfloat16_ranking_layout_ranks_by_squared_distance_within_its_rounding():
    """left . right in bfloat16 is the squared distance of the bfloat16-rounded centred rows within the rounding of
    the result itself (the norms are carried in three parts: with the second part missing, errors were 40 times the
    bound here), and the searches that rank in it find the float32 search's nearest candidates on separated data."""
    import kstar_utils.neighbours as nb

    rng = np.random.default_rng(5)
    centres = np.zeros((3, 40))
    centres[0, 0], centres[1, 1], centres[2, 2] = 50, 50, -50  # norms far larger than the distances within a class
    y = np.repeat(np.arange(3), 200)
    x = rng.normal(size=(600, 40)) + centres[y] + 100.0  # and a large common offset
    data = sort_by_class(x, y, torch.device("cpu"))
    ranking = nb.bfloat16_ranking_features(data)
    assert ranking.left.dtype == ranking.right.dtype == torch.bfloat16 and ranking.inner % nb.BF16_INNER_PAD == 0
    assert ranking.exact is data.exact and np.array_equal(ranking.codes, data.codes)
    approx = (ranking.left @ ranking.right.T).double()
    rounded = data.left[:, :40].to(torch.bfloat16).double()
    d2 = torch.cdist(rounded, rounded) ** 2
    norms = rounded.norm(dim=1)
    bound = 2**-8 * d2 + 2**-15 * (norms[:, None] + norms[None, :]) ** 2
    assert bool(((approx - d2).abs() <= bound).all())
    centred = data.left[:, :40].double()
    assert float(((approx - torch.cdist(centred, centred) ** 2).abs()).max()) > 0  # rounded: not float32
    rows, cols = torch.arange(0, 200), torch.arange(200, 600)
    values, found = nb.nearest_among_projected(data, ranking, rows, cols, top=8)
    np.testing.assert_array_equal(found.numpy(), nb.nearest_among(data, rows, cols)[1].numpy())
    np.testing.assert_array_equal(values.numpy(), nb.exact_pair_distances(data.exact, rows, found).numpy() ** 2)
    top_values, top_indices = nb.foreign_top_projected(data, ranking, rows, 16)
    np.testing.assert_array_equal(top_indices[:, 0].numpy(), nb.foreign_top(data, rows, 1)[1][:, 0].numpy())
    assert torch.all(top_values[:, 1:] >= top_values[:, :-1])
