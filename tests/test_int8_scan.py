"""The ANN path's int8 scan: the two-nearest reduction over int32 tiles, the int8 codes, the scan over every foreign
pair, and the ANN path that uses it (features >= 64 wide on a CPU with native int8 products).

torch._int_mm runs on every CPU (without VNNI through 16-bit pair sums that can saturate full-range codes, hence the
7-bit codes of ``int8_levels`` there and in these tests), so these tests exercise the scan on any machine; where the
real path depends on the CPU, ``native_int8`` is patched."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kstar_utils import compute_kstar
from kstar_utils.errors import KStarInputError
from kstar_utils.neighbours import int8_codes, int8_levels, int8_two_nearest_foreign, native_int8, sort_by_class
from kstar_utils.synthetic import gaussian_classes
from kstar_utils.tile_kernels import TwoNearestInt8


def _brute_two_nearest(codes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's two nearest rows of another class by integer squared distance, the smaller index on a tie."""
    q = codes.astype(np.int64)
    d = (q * q).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2 * q @ q.T
    d[labels[:, None] == labels[None, :]] = np.iinfo(np.int64).max
    order = np.lexsort((np.broadcast_to(np.arange(len(q)), d.shape), d), axis=1)[:, :2]
    return np.take_along_axis(d, order, axis=1), order


def _scan_tiles(codes: np.ndarray, starts: list[int], ends: list[int], rows: int, cols: int) -> TwoNearestInt8:
    q = torch.from_numpy(codes.astype(np.int8))
    best = TwoNearestInt8((codes.astype(np.int64) ** 2).sum(1))
    for s, e in zip(starts, ends):
        for lo in range(s, e, rows):
            hi = min(lo + rows, e)
            for clo in range(e, len(codes), cols):
                chi = min(clo + cols, len(codes))
                best.push(torch._int_mm(q[lo:hi], q[clo:chi].T), lo, clo)
    return best


@pytest.mark.parametrize("rows, cols", [(7, 5), (64, 256), (1000, 1000)])
def test_two_nearest_over_tiles_equals_a_brute_force_for_rows_and_columns_alike(rows, cols):
    """Every foreign pair pushed once, in tiles of any shape: each sample, as a row of some tiles and a column of
    others, ends with its two nearest foreign samples by code distance, with their exact integer distances."""
    rng = np.random.default_rng(3)
    labels = np.sort(rng.integers(0, 4, 300))
    levels = int8_levels(torch.device("cpu"))  # what the scan uses on this CPU: 127 where int8 is native, else 63
    codes = rng.integers(-levels, levels + 1, size=(300, 24))
    starts = [int(np.searchsorted(labels, c)) for c in range(4)]
    ends = starts[1:] + [300]
    values, indices = _scan_tiles(codes, starts, ends, rows, cols).result()
    want_values, want_indices = _brute_two_nearest(codes, labels)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(indices, want_indices)


def test_two_nearest_keeps_the_earlier_index_on_ties_and_marks_places_not_filled():
    """Equal code distances keep the sample pushed first (rows: the earlier column; columns: the earlier row); a sample
    that met one other has -1 in its second place."""
    codes = np.array([[0, 0], [3, 4], [-3, -4], [4, 3], [0, 5]])  # 1..4 all at squared distance 25 from 0
    best = TwoNearestInt8((codes ** 2).sum(1))
    q = torch.from_numpy(codes.astype(np.int8))
    best.push(torch._int_mm(q[:1], q[1:].T), 0, 1)  # row 0 against columns 1..4
    values, indices = best.result()
    assert indices[0].tolist() == [1, 2] and values[0].tolist() == [25, 25]
    for k in range(1, 5):
        assert indices[k].tolist() == [0, -1] and values[k, 0] == 25
    best.push(torch._int_mm(q[1:2], q[3:5].T), 1, 3)  # sample 1 meets 3 (squared distance 2) and 4 (10)
    values, indices = best.result()
    assert indices[1].tolist() == [3, 4] and values[1].tolist() == [2, 10]
    assert indices[3].tolist() == [1, 0] and indices[4].tolist() == [1, 0]


def test_two_nearest_keeps_the_earlier_row_on_a_column_tie():
    """Two rows of one tile at the same code distance from a column: the column keeps the earlier row first."""
    codes = np.array([[3, 4], [-3, -4], [0, 0], [9, 9]])
    best = TwoNearestInt8((codes ** 2).sum(1))
    q = torch.from_numpy(codes.astype(np.int8))
    best.push(torch._int_mm(q[:2], q[2:].T), 0, 2)
    values, indices = best.result()
    assert indices[2].tolist() == [0, 1] and values[2].tolist() == [25, 25]


def test_two_nearest_refuses_overlapping_blocks_tiles_that_do_not_fit_and_other_tiles():
    best = TwoNearestInt8(np.zeros(10, dtype=np.int64))
    with pytest.raises(ValueError, match="overlap"):
        best.push(torch.zeros((4, 4), dtype=torch.int32), 0, 2)
    for row0, col0 in ((8, 0), (0, 8), (-1, 5)):
        with pytest.raises(ValueError, match="does not fit 10 samples"):
            best.push(torch.zeros((3, 3), dtype=torch.int32), row0, col0)
    with pytest.raises(TypeError, match="int32"):
        best.push(torch.zeros((2, 2), dtype=torch.float32), 0, 5)
    q = torch.from_numpy(np.arange(20, dtype=np.int8).reshape(10, 2))
    best.push(torch._int_mm(q[:3], q[5:8].T), 0, 5)
    before = best.result()
    best.push(torch.zeros((0, 3), dtype=torch.int32), 0, 5)  # an empty tile changes nothing
    after = best.result()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert (after[1][:3, 0] >= 5).all() and (after[1][3:5] == -1).all()


def test_int8_codes_scale_clip_and_exact_squared_norms(monkeypatch):
    """The scale puts the 99.99% quantile of |centred value| at ``levels``; values beyond are clipped and counted; the
    squared norms are the codes' own, exactly; the quantile is fitted on a seeded sample of a large matrix; features
    that are all equal get the scale 1 and zero codes."""
    import kstar_utils.neighbours as neighbours

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 64))
    x[5, 7] = 1e3  # one outlier: clipped, it does not set the scale
    data = sort_by_class(x, np.repeat([0, 1], 1000), torch.device("cpu"))
    for levels in (127, 63):
        got = int8_codes(data, levels)
        codes, scale = got.codes, got.scale
        assert codes.dtype == torch.int8 and codes.shape == (2000, 64) and got.levels == levels
        assert 3.0 / levels < scale < 5.0 / levels  # the quantile of a standard normal's |value|, not the outlier
        assert int(codes.abs().max()) == levels and int(codes[5, 7]) == levels
        assert 0 < got.clipped_fraction <= 2e-4
        np.testing.assert_array_equal(got.sq_norms, (codes.numpy().astype(np.int64) ** 2).sum(1))
        centred = data.left[:, :64]
        inside = centred.abs() < levels * scale
        assert float((centred[inside] - scale * codes[inside].float()).abs().max()) <= scale / 2 * (1 + 1e-5)
    full = int8_codes(data).scale
    monkeypatch.setattr(neighbours, "INT8_SCALE_SAMPLE", 5000)  # 128,000 values: the sampled branch
    sampled = int8_codes(data).scale
    assert sampled == int8_codes(data).scale and abs(sampled / full - 1) < 0.25  # seeded, and near the full fit
    with pytest.raises(KStarInputError, match="levels <= 127"):
        int8_codes(data, 128)
    flat = int8_codes(sort_by_class(np.ones((10, 64)), np.repeat([0, 1], 5), torch.device("cpu")))
    assert flat.scale == 1.0 and not flat.codes.any() and not flat.sq_norms.any() and flat.clipped_fraction == 0


def test_int8_levels_follow_the_cpu(monkeypatch):
    import kstar_utils.neighbours as neighbours

    monkeypatch.setattr(neighbours, "native_int8", lambda device: True)
    assert neighbours.int8_levels(torch.device("cpu")) == 127
    monkeypatch.setattr(neighbours, "native_int8", lambda device: False)
    assert neighbours.int8_levels(torch.device("cpu")) == 63


@pytest.mark.parametrize("dim", [64, 80])  # the narrow tiles (at most 64 features) and the wide ones
def test_the_scan_finds_each_rows_two_nearest_foreign_codes_in_tiles_of_any_shape(monkeypatch, dim):
    """int8_two_nearest_foreign over the class-sorted layout, with classes split over several row and column tiles,
    equals a brute force over the same codes; class_done sees each class once its rows are final, and can stop."""
    import kstar_utils.neighbours as neighbours

    sizes = {"NARROW_SCAN_TILE_ROWS": 7, "NARROW_SCAN_TILE_COLUMNS": 5} if dim <= 64 else \
        {"SCAN_TILE_ROWS": 7, "SCAN_TILE_COLUMNS": 5}
    for name, value in sizes.items():
        monkeypatch.setattr(neighbours, name, value)
    x, y = gaussian_classes(400, dim, 3, separation=0.5, seed=2)
    data = sort_by_class(x, y, torch.device("cpu"))
    codes = int8_codes(data, 63).codes.numpy()
    want_values, want = _brute_two_nearest(codes, data.codes)
    seen = []
    nearest, used = int8_two_nearest_foreign(
        data, levels=63, class_done=lambda s, e, got: seen.append((s, e, got[s:e].copy())) or False)
    assert used.levels == 63
    np.testing.assert_array_equal(nearest, want)
    np.testing.assert_array_equal(((codes[:, None, :].astype(np.int64) - codes[nearest]) ** 2).sum(2), want_values)
    assert [(s, e) for s, e, _ in seen] == list(zip(data.starts.tolist(), data.ends.tolist()))
    for s, e, got in seen:
        np.testing.assert_array_equal(got, want[s:e])  # final when reported
    calls = []
    partial, _ = int8_two_nearest_foreign(data, levels=63, class_done=lambda s, e, got: calls.append(s) or True)
    assert calls == [0]
    np.testing.assert_array_equal(partial[: data.ends[0]], want[: data.ends[0]])


def test_native_int8_needs_a_cpu_with_vnni_or_amx(monkeypatch):
    import kstar_utils.neighbours as neighbours

    monkeypatch.setattr(neighbours, "int8_products_exact", lambda: True)  # what this host's _int_mm gives aside
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
    assert native_int8(torch.device("cpu"))
    assert not native_int8(torch.device("meta"))
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not native_int8(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_int8(torch.device("cpu"))
    monkeypatch.delattr(torch, "_int_mm")
    assert not native_int8(torch.device("cpu"))


@pytest.mark.slow
def test_wide_isotropic_features_take_the_int8_scan_instead_of_the_graph(monkeypatch):
    """Features of 64 dimensions or more, where int8 products are native: the candidates are
    the scan's, no graph is built, k* is never below exact and almost always equal, and the result says so."""
    import kstar_utils.kstar as kstar_module

    x, y = gaussian_classes(3000, 64, 5, separation=0.35, seed=1)
    exact = compute_kstar(x, y, method="exact")
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: True)
    monkeypatch.setattr(kstar_module, "ann_neighbour_graph", lambda *a, **k: pytest.fail("the scan builds no graph"))
    ann = compute_kstar(x, y, method="ann", n_jobs=1, audit_size=300)
    assert ann.method == "ann" and ann.params["candidate_source"] == "int8 scan"
    assert ann.params["candidate_precision"] == "int8" and ann.params["candidate_dims"] == 64
    assert list(ann.params["ann_phase_seconds"]) == ["candidate_space", "exact_audit", "int8_scan", "exact_search",
                                                     "ann_audit", "verification"]
    assert np.all(ann.kstar >= exact.kstar)
    assert np.mean(ann.kstar == exact.kstar) >= 0.99 and ann.audit["fraction_identical"] >= 0.99
    again = compute_kstar(x, y, method="ann", n_jobs=1, audit_size=300)
    np.testing.assert_array_equal(again.kstar, ann.kstar)  # deterministic


@pytest.mark.slow
def test_auto_in_the_middle_sizes_takes_the_scan_for_isotropic_features_where_int8_is_native(monkeypatch):
    """Where the projection check finds nothing, auto no longer hands isotropic features to exact when the scan can
    run: it takes ANN with the scan, audited as ever."""
    import kstar_utils.kstar as kstar_module

    for name, value in (("AUTO_ANN_MIN_WORK", 0.0), ("AUTO_EXACT_MAX_WORK", 1e15), ("PROJECTION_MIN_WORK", 0.0)):
        monkeypatch.setattr(kstar_module, name, value)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: True)
    x, y = gaussian_classes(3000, 64, 5, separation=0.35, seed=1)
    auto = compute_kstar(x, y, method="auto", n_jobs=1, audit_size=200)
    assert auto.method == "ann" and auto.params["candidate_source"] == "int8 scan"
    assert "auto_exact_reason" not in auto.params and auto.audit["fraction_identical"] >= 0.99


@pytest.mark.slow
def test_narrow_features_keep_the_graph(monkeypatch):
    """Below 64 features the scan is not used, whatever the CPU: the graph and sampled rows find the candidates."""
    import kstar_utils.kstar as kstar_module

    monkeypatch.setattr(kstar_module, "native_int8", lambda device: True)
    x, y = gaussian_classes(600, 16, 3, separation=1.0, seed=0)
    ann = compute_kstar(x, y, method="ann", n_neighbors=5, n_jobs=1, audit_size=50)
    assert ann.params["candidate_source"] == "pynndescent graph and sampled rows"
    assert ann.params["candidate_precision"] == "float32"


@pytest.mark.slow
def test_candidates_option_forces_either_source_and_is_checked(monkeypatch, tmp_path, capsys):
    """candidates="graph" keeps the graph where the scan would run; "int8-scan" scans where the graph would run
    (narrow features, any CPU), and skips the projection check; a bad value, or the scan off the CPU, is refused;
    `kstar compute --candidates` passes it on and names the source."""
    import kstar_utils.kstar as kstar_module
    from kstar_utils.cli import main

    monkeypatch.setattr(kstar_module, "native_int8", lambda device: True)
    wide_x, wide_y = gaussian_classes(1500, 64, 3, separation=0.5, seed=3)
    graph = compute_kstar(wide_x, wide_y, method="ann", candidates="graph", n_neighbors=5, n_jobs=1, audit_size=50)
    assert graph.params["candidate_source"] == "pynndescent graph and sampled rows"
    assert graph.params["candidates"] == "graph"
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: False)
    monkeypatch.setattr(kstar_module, "_candidate_space", lambda *a: pytest.fail("no projection check for the scan"))
    narrow_x, narrow_y = gaussian_classes(1500, 8, 3, separation=0.5, seed=3)
    scanned = compute_kstar(narrow_x, narrow_y, method="ann", candidates="int8-scan", audit_size=50)
    assert scanned.params["candidate_source"] == "int8 scan" and scanned.params["candidate_dims"] == 8
    exact = compute_kstar(narrow_x, narrow_y, method="exact")
    assert np.all(scanned.kstar >= exact.kstar) and np.mean(scanned.kstar == exact.kstar) >= 0.97
    with pytest.raises(KStarInputError, match="unknown candidates .hnsw.; use one of auto, graph, int8-scan"):
        compute_kstar(narrow_x, narrow_y, method="ann", candidates="hnsw")
    with pytest.raises(KStarInputError, match="method='exact' never runs it"):
        compute_kstar(narrow_x, narrow_y, method="exact", candidates="graph")
    cpu, cuda = SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(device=torch.device("cuda"))
    with pytest.raises(KStarInputError, match="runs on the CPU"):
        kstar_module.use_int8_scan(cuda, "int8-scan", 8)
    with pytest.raises(KStarInputError, match="at most 32768 features"):
        kstar_module.use_int8_scan(cpu, "int8-scan", 40_000)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: True)
    assert kstar_module.use_int8_scan(cpu, "auto", 64) and not kstar_module.use_int8_scan(cpu, "auto", 63)
    assert not kstar_module.use_int8_scan(cpu, "graph", 128)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: False)
    assert not kstar_module.use_int8_scan(cpu, "auto", 128) and kstar_module.use_int8_scan(cpu, "int8-scan", 128)
    np.save(tmp_path / "x.npy", narrow_x)
    np.save(tmp_path / "y.npy", narrow_y)
    assert main(["compute", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--out", str(tmp_path / "out"),
                 "--method", "ann", "--candidates", "int8-scan", "--audit-size", "50", "--quiet"]) == 0
    assert "ANN candidates: int8 scan." in capsys.readouterr().out


@pytest.mark.slow
def test_a_class_of_one_sample_leaves_second_places_empty_and_k_star_is_right():
    """Beside a class of one sample, every other sample has a single foreign sample: its second place stays -1, which
    must never reach the exact distances (index -1 would wrap to the last row)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 64))
    y = np.array([0] + [1] * 399)
    exact = compute_kstar(x, y, method="exact")
    scanned = compute_kstar(x, y, method="ann", candidates="int8-scan", audit_size=50)
    np.testing.assert_array_equal(scanned.kstar, exact.kstar)  # one foreign sample: no candidate can be missed


@pytest.mark.slow
def test_auto_stops_the_scan_at_the_first_class_that_fails_the_audit(monkeypatch):
    """Codes of three levels rank badly: under auto the audit gate stops the scan after a class, the result is exact
    k*, and the fallback is recorded; under ann the same codes warn."""
    import kstar_utils.kstar as kstar_module
    import kstar_utils.neighbours as neighbours
    from kstar_utils.kstar import ANNAccuracyWarning

    monkeypatch.setattr(neighbours, "int8_levels", lambda device: 1)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: True)
    monkeypatch.setattr(kstar_module, "AUTO_EXACT_MAX_WORK", 0.0)
    x, y = gaussian_classes(1500, 64, 5, separation=0.3, seed=4)
    exact = compute_kstar(x, y, method="exact")
    with pytest.warns(ANNAccuracyWarning, match="computing exact k\\* instead"):
        auto = compute_kstar(x, y, method="auto", audit_size=200)
    assert auto.method == "exact" and auto.params["ann_fallback"] is True
    assert auto.params["candidate_source"] == "int8 scan" and auto.params["stopped_early"] is True
    assert auto.audit["stopped_after_classes"] < 5 and auto.audit["fraction_identical"] < 0.99
    np.testing.assert_array_equal(auto.kstar, exact.kstar)
    with pytest.warns(ANNAccuracyWarning, match="int8 codes rank too coarsely.*candidates='graph'"):
        ann = compute_kstar(x, y, method="ann", audit_size=200)
    assert ann.method == "ann" and np.all(ann.kstar >= exact.kstar) and ann.params["int8_levels"] == 1


@pytest.mark.slow
def test_the_scan_runs_even_where_a_projection_would_be_found(monkeypatch):
    """Wide features of low intrinsic dimension (8 directions of 64) in a large problem: where int8 is native the scan
    runs, and the projection check is skipped (the scan was measured faster and more accurate there too)."""
    import kstar_utils.kstar as kstar_module

    monkeypatch.setattr(kstar_module, "native_int8", lambda device: True)
    monkeypatch.setattr(kstar_module, "PROJECTION_MIN_WORK", 0.0)
    monkeypatch.setattr(kstar_module, "_candidate_space", lambda *a: pytest.fail("no projection check for the scan"))
    x, y = gaussian_classes(3000, 64, 5, separation=1.0, seed=1, latent=8)
    ann = compute_kstar(x, y, method="ann", audit_size=300)
    assert ann.params["candidate_source"] == "int8 scan" and ann.params["candidate_dims"] == 64
    exact = compute_kstar(x, y, method="exact")
    assert np.all(ann.kstar >= exact.kstar) and np.mean(ann.kstar == exact.kstar) >= 0.99


def test_the_reason_auto_gives_names_what_kept_the_scan_off(monkeypatch):
    import kstar_utils.kstar as kstar_module

    cpu, cuda = SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(device=torch.device("cuda"))
    assert "candidates='graph' was asked for" == kstar_module._why_no_scan(cpu, "graph", 128)
    assert "narrower than 64" in kstar_module._why_no_scan(cpu, "auto", 32)
    assert "wider than 32768" in kstar_module._why_no_scan(cpu, "auto", 40_000)
    assert "this run on cuda" in kstar_module._why_no_scan(cuda, "auto", 128)
    assert "no native int8 products" in kstar_module._why_no_scan(cpu, "auto", 128)


def test_int8_products_are_checked_once_for_exactness(monkeypatch):
    """A torch whose _int_mm is missing, raises, or saturates gives False (the scan then stays off under auto); an
    exact one gives True. The check is cached per process."""
    import kstar_utils.neighbours as neighbours

    exact = lambda a, b: (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)  # noqa: E731

    def saturating(a, b):
        return exact(a, b).clamp(-32768, 32767)

    def failing(a, b):
        raise RuntimeError("no int8 kernel in this build")

    try:
        for fake, want in ((exact, True), (saturating, False), (failing, False)):
            neighbours.int8_products_exact.cache_clear()
            monkeypatch.setattr(torch, "_int_mm", fake)
            assert neighbours.int8_products_exact() is want
        neighbours.int8_products_exact.cache_clear()
        monkeypatch.delattr(torch, "_int_mm")
        assert neighbours.int8_products_exact() is False
        monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
        assert not native_int8(torch.device("cpu"))  # VNNI reported, but no usable _int_mm
    finally:
        monkeypatch.undo()
        neighbours.int8_products_exact.cache_clear()
