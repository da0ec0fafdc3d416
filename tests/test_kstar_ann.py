"""The ANN path (pynndescent + exact verification) against the exact engine. Compiles numba once per process."""

from __future__ import annotations

import numpy as np
import pytest

from kstar_utils import compute_kstar
from kstar_utils.kstar import AUTO_ANN_MIN_WORK, AUTO_EXACT_MAX_WORK, choose_method, projection_required

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def overlapping():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 1500)
    x = rng.normal(size=(4, 8))[y] * 0.8 + rng.normal(size=(1500, 8))
    return x, y


def test_ann_matches_exact_on_a_small_set_and_never_underestimates(overlapping):
    x, y = overlapping
    exact = compute_kstar(x, y, method="exact")
    ann = compute_kstar(x, y, method="ann", n_neighbors=15, audit_size=300, seed=1, n_jobs=1)
    assert ann.method == "ann"
    assert np.all(ann.kstar >= exact.kstar)  # a missed foreign neighbour can only make r_p larger
    assert np.mean(ann.kstar == exact.kstar) >= 0.97
    audit = ann.audit
    assert audit["size"] == 300 and 0.95 <= audit["fraction_identical"] <= 1.0
    assert audit["max_abs_difference"] >= 0


def test_audit_rows_keep_their_exact_k_star_in_the_result(overlapping):
    """The audit computes its rows exactly; returning the ANN values there would throw the better ones away (and with
    audit_size = N, where no row is left to sample, every row would get the weakest candidates)."""
    x, y = overlapping
    exact = compute_kstar(x, y, method="exact")
    for audit_size in (len(y), 1400):
        ann = compute_kstar(x, y, method="ann", audit_size=audit_size, seed=1, n_jobs=1)
        mismatched = np.flatnonzero(ann.kstar != exact.kstar)
        assert len(mismatched) <= len(y) - audit_size  # only rows outside the audit can differ
    assert np.array_equal(compute_kstar(x, y, method="ann", audit_size=len(y), seed=1, n_jobs=1).kstar, exact.kstar)


def test_ann_is_deterministic_for_a_seed_and_thread_count(overlapping):
    x, y = overlapping
    a = compute_kstar(x, y, method="ann", n_neighbors=10, seed=3, n_jobs=1, audit_size=50)
    b = compute_kstar(x, y, method="ann", n_neighbors=10, seed=3, n_jobs=1, audit_size=50)
    np.testing.assert_array_equal(a.kstar, b.kstar)
    assert a.audit == b.audit


def test_ann_reports_where_its_time_went(overlapping):
    """params["ann_phase_seconds"]: one entry per phase, in the order they ran, none negative, and no more in all
    than the call took; kept through the JSON round trip."""
    import time

    from kstar_utils import KStarResult

    x, y = overlapping
    start = time.perf_counter()
    ann = compute_kstar(x, y, method="ann", n_neighbors=10, seed=3, n_jobs=1, audit_size=50)
    elapsed = time.perf_counter() - start
    phases = ann.params["ann_phase_seconds"]
    assert list(phases) == ["candidate_space", "exact_audit", "graph", "sampled_candidates", "exact_search",
                            "ann_audit", "verification"]
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= elapsed + 0.01
    assert KStarResult.from_json(ann.to_json()).params["ann_phase_seconds"] == phases


def _far_apart_clusters(n_per_class: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], n_per_class)
    return rng.normal(size=(3 * n_per_class, 5)) + 50.0 * y[:, None], y


def test_clustered_samples_get_their_candidates_from_the_sampled_rows():
    """Far-apart clusters: no graph neighbour is foreign, so every candidate comes from the sampled rows' nearest
    foreign samples; k* is exact and nothing needs the row-by-row exact search."""
    x, y = _far_apart_clusters()
    ann = compute_kstar(x, y, method="ann", n_neighbors=5, n_jobs=1, audit_size=100)
    exact = compute_kstar(x, y, method="exact")
    np.testing.assert_array_equal(ann.kstar, exact.kstar)
    assert ann.params["exact_search_samples"] == 0 and ann.params["sampled_rows"] > 0
    assert ann.audit["fraction_identical"] == 1.0


def test_without_sampled_rows_samples_lacking_graph_candidates_get_the_exact_search(monkeypatch):
    import kstar_utils.kstar as kstar_module

    monkeypatch.setattr(kstar_module, "SAMPLE_BATCH", 0)
    monkeypatch.setattr(kstar_module, "SAMPLE_MAX_FRACTION", 0.0)
    x, y = _far_apart_clusters()
    ann = compute_kstar(x, y, method="ann", n_neighbors=5, n_jobs=1, audit_size=100)
    np.testing.assert_array_equal(ann.kstar, compute_kstar(x, y, method="exact").kstar)
    assert ann.params["sampled_rows"] == 0 and ann.params["exact_search_samples"] == 600


def test_sampling_stops_when_a_fresh_batch_is_covered_and_never_takes_audit_rows(monkeypatch):
    """The first batch of a far-apart cluster has no candidate yet (all misses); its nearest foreign samples cover
    the next batch, so sampling stops after two batches per class. Audit rows are never sampled."""
    import torch

    import kstar_utils.kstar as kstar_module
    from kstar_utils.neighbours import resolve_device, sort_by_class

    x, y = _far_apart_clusters(600)
    data = sort_by_class(x.astype(np.float64), y, resolve_device("cpu"))
    seen = []
    real_top = kstar_module.foreign_top
    monkeypatch.setattr(kstar_module, "foreign_top",
                        lambda d, rows, *a: (seen.append(rows.clone()), real_top(d, rows, *a))[1])
    audit = np.arange(0, data.n, 7)
    batch = kstar_module.SAMPLE_BATCH
    # at the default cap (5% of 600 rows, at least one batch) the first batch is all the sample may take: capped
    radius = np.full(data.n, np.inf)
    info = kstar_module._sampled_candidates(data, radius, np.zeros(data.n, dtype=bool), np.random.default_rng(0),
                                            audit, None)
    assert info["sampled_rows"] == 3 * batch and info["classes_at_sample_cap"] == 3
    assert np.isfinite(radius).all()  # every row got a verified candidate all the same
    # with room for more, the second batch is covered by the first one's candidates: sampling stops there
    monkeypatch.setattr(kstar_module, "SAMPLE_MAX_FRACTION", 0.5)
    seen.clear()
    radius = np.full(data.n, np.inf)
    info = kstar_module._sampled_candidates(data, radius, np.zeros(data.n, dtype=bool), np.random.default_rng(0),
                                            audit, None)
    sampled = torch.cat(seen).numpy()
    assert info["sampled_rows"] == 3 * 2 * batch == len(sampled) == len(np.unique(sampled))
    assert info["classes_at_sample_cap"] == 0 and not np.isin(sampled, audit).any()
    assert np.isfinite(radius).all()


def test_settled_samples_keep_the_graph_candidate_when_a_fresh_batch_confirms_it():
    """Overlapping classes in 2-d: almost every sample has a foreign sample among its graph neighbours, and the graph
    is right there, so the recall check lets settled samples skip the dense product; k* stays exact."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 6000)
    x = rng.normal(size=(3, 2))[y] * 0.5 + rng.normal(size=(6000, 2))
    ann = compute_kstar(x, y, method="ann", n_jobs=1, audit_size=200)
    assert 0 < ann.params["rows_given_sampled_candidates"] < 6000 - ann.params["sampled_rows"]
    assert np.mean(ann.kstar == compute_kstar(x, y, method="exact").kstar) >= 0.99


def test_auto_picks_exact_for_small_and_ann_for_large_problems():
    assert choose_method(1000, 64) == "exact"
    middle = int(np.sqrt(AUTO_ANN_MIN_WORK / 128)) + 1000  # N = 126,000 at D = 128: ANN if the features allow it
    big = int(np.sqrt(AUTO_EXACT_MAX_WORK / 128)) + 1000
    assert choose_method(middle - 2000, 128) == "exact" and not projection_required(middle - 2000, 128, "auto")
    assert choose_method(middle, 128) == "ann" and projection_required(middle, 128, "auto")
    assert choose_method(big, 128) == "ann" and not projection_required(big, 128, "auto")
    assert choose_method(big, 128, "exact") == "exact"
    assert not projection_required(middle, 128, "ann")  # asked for by name, ANN runs on any features
    assert not projection_required(4 * middle, 16, "auto")  # narrow features: ANN in the middle sizes as they are


def test_auto_in_the_middle_sizes_runs_ann_only_for_features_of_low_intrinsic_dimension(monkeypatch, tmp_path,
                                                                                         capsys):
    """Between AUTO_ANN_MIN_WORK and AUTO_EXACT_MAX_WORK, isotropic features go to exact before any ANN work (no graph,
    no audit: the reason is recorded, and `kstar compute` prints it) where the int8 scan is not native; narrow ones
    (16 axes) get ANN as they are, and low-rank ones get ANN with its candidates searched in a projection."""
    import kstar_utils.kstar as kstar_module
    from kstar_utils.cli import main
    from kstar_utils.synthetic import gaussian_classes

    middle_sizes = (("AUTO_ANN_MIN_WORK", 0.0), ("AUTO_EXACT_MAX_WORK", 1e15), ("PROJECTION_MIN_WORK", 0.0))
    for name, value in middle_sizes:
        monkeypatch.setattr(kstar_module, name, value)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: False)
    monkeypatch.setattr(kstar_module, "ann_neighbour_graph", lambda *a, **k: pytest.fail("no graph for exact"))
    iso_x, iso_y = gaussian_classes(3000, 64, 5, separation=0.35, seed=1)
    auto = compute_kstar(iso_x, iso_y, method="auto", n_jobs=1, audit_size=200)
    assert auto.method == "exact" and auto.audit is None and auto.params["candidate_dims"] == 64
    assert "high intrinsic dimension" in auto.params["auto_exact_reason"] and "ann_fallback" not in auto.params
    assert "this CPU has no native int8 products" in auto.params["auto_exact_reason"]
    np.testing.assert_array_equal(auto.kstar, compute_kstar(iso_x, iso_y, method="exact").kstar)
    np.save(tmp_path / "x.npy", iso_x)
    np.save(tmp_path / "y.npy", iso_y)
    assert main(["compute", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "(exact," in out and "auto chose exact: " in out and "high intrinsic dimension" in out
    monkeypatch.undo()
    for name, value in middle_sizes:
        monkeypatch.setattr(kstar_module, name, value)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: False)  # the graph's path on any CPU
    narrow = compute_kstar(iso_x[:, :16], iso_y, method="auto", n_jobs=1, audit_size=200)
    assert narrow.params["candidate_dims"] == 16 and "auto_exact_reason" not in narrow.params  # ANN ran as it is
    assert narrow.audit is not None and narrow.audit["size"] > 0
    x, y = _low_rank_classes()
    low = compute_kstar(x, y, method="auto", n_neighbors=10, n_jobs=1, audit_size=300)
    assert low.method == "ann" and low.params["candidate_dims"] in (8, 16) and "auto_exact_reason" not in low.params
    assert low.audit["fraction_identical"] >= 0.99


def test_auto_falls_back_to_exact_when_the_audit_fails(monkeypatch):
    """Isotropic high-dimensional classes with a tiny graph and no sampled rows: the audit fails, so 'auto' returns exact k*."""
    import kstar_utils.kstar as kstar_module
    from kstar_utils.kstar import ANNAccuracyWarning
    from kstar_utils.synthetic import gaussian_classes

    x, y = gaussian_classes(1500, 64, 5, separation=0.3, seed=4)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: False)  # the graph's path, not the int8 scan
    monkeypatch.setattr(kstar_module, "AUTO_EXACT_MAX_WORK", 0.0)
    monkeypatch.setattr(kstar_module, "SAMPLE_BATCH", 0)  # the graph alone: no sampled candidates
    monkeypatch.setattr(kstar_module, "SAMPLE_MAX_FRACTION", 0.0)
    with pytest.warns(ANNAccuracyWarning, match="computing exact k\\* instead"):
        auto = compute_kstar(x, y, method="auto", n_neighbors=2, n_jobs=1, audit_size=200)
    assert auto.method == "exact" and auto.params["ann_fallback"] is True
    assert auto.audit["fraction_identical"] < 0.99
    # the gate stopped the ANN work after the first class: its audit rows alone already failed it
    assert auto.audit["stopped_after_classes"] == 1 and auto.audit["classes"] == 5
    assert 0 < auto.audit["size"] < 200 and auto.params["stopped_early"] is True
    assert auto.audit["max_abs_difference"] > 0 and auto.audit["mean_abs_difference"] > 0
    np.testing.assert_array_equal(auto.kstar, compute_kstar(x, y, method="exact").kstar)
    with pytest.warns(ANNAccuracyWarning, match="hard for the neighbour graph"):
        ann = compute_kstar(x, y, method="ann", n_neighbors=2, n_jobs=1, audit_size=200)
    assert ann.method == "ann"


def _two_blob_classes(n_per_blob: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Each of three classes is two tight blobs far apart (a fractured concept in space): cells must split them."""
    rng = np.random.default_rng(11)
    centres = np.array([[0, 0], [0, 40], [8, 0], [8, 40], [16, 0], [16, 40]], dtype=float)
    blob = np.repeat(np.arange(6), n_per_blob)
    x = np.hstack([centres[blob], np.zeros((len(blob), 2))]) + rng.normal(size=(len(blob), 4))
    return x, blob // 2


def test_class_cells_split_a_class_by_region_and_small_classes_keep_one_cell(monkeypatch):
    import kstar_utils.kstar as kstar_module
    from kstar_utils.neighbours import resolve_device, sort_by_class

    x, y = _two_blob_classes()
    data = sort_by_class(x, y, resolve_device("cpu"))
    s, e = int(data.starts[0]), int(data.ends[0])
    cells, centroids = kstar_module._class_cells(data, s, e, np.random.default_rng(0))
    assert cells.shape == (e - s,) and centroids.shape == (1, 4)  # 600 rows < CELL_MIN_ROWS: one cell
    assert int(cells.max()) == 0
    monkeypatch.setattr(kstar_module, "CELL_MIN_ROWS", 100)
    monkeypatch.setattr(kstar_module, "SAMPLE_CELLS", 4)
    cells, centroids = kstar_module._class_cells(data, s, e, np.random.default_rng(0))
    assert centroids.shape == (4, 4) and int(cells.min()) >= 0 and int(cells.max()) < 4
    upper = data.exact[s:e, 1].numpy() > 20  # which blob each row is in
    for c in np.unique(cells.numpy()):  # no cell mixes the two blobs
        assert len(np.unique(upper[cells.numpy() == c])) == 1


def test_candidate_lists_go_to_their_rows_cell_and_to_the_candidates_nearest_cells(monkeypatch):
    import torch

    import kstar_utils.kstar as kstar_module
    from kstar_utils.neighbours import resolve_device, sort_by_class

    monkeypatch.setattr(kstar_module, "CELL_LISTS", 1)
    x = np.array([[0.0, 0], [10, 0], [0, 10], [9, 1], [1, 9]])
    data = sort_by_class(x, np.array([0, 0, 0, 1, 1]), resolve_device("cpu"))  # already in class order
    centroids = data.left[0:3, :2].clone()  # cells around (0, 0), (10, 0) and (0, 10)
    sets = [torch.zeros(0, dtype=torch.int64) for _ in range(3)]
    kstar_module._add_lists(data, sets, torch.tensor([[3, 4]]), torch.tensor([0]), centroids)
    assert sets[0].tolist() == [3, 4]  # the sampled row's own cell takes its whole list
    assert sets[1].tolist() == [3] and sets[2].tolist() == [4]  # each candidate its nearest cell
    kstar_module._add_lists(data, sets, torch.tensor([[4]]), torch.tensor([1]), centroids)
    assert sets[1].tolist() == [3, 4] and sets[2].tolist() == [4]  # sets stay unique and sorted


def test_cells_shrink_the_dense_product_and_keep_k_star_exact(monkeypatch):
    """Fractured classes with cells on: each blob's rows take their own cell's candidates only; k* stays exact."""
    import kstar_utils.kstar as kstar_module

    monkeypatch.setattr(kstar_module, "CELL_MIN_ROWS", 100)
    monkeypatch.setattr(kstar_module, "SAMPLE_CELLS", 4)
    monkeypatch.setattr(kstar_module, "SAMPLE_MAX_FRACTION", 0.5)
    x, y = _two_blob_classes()
    ann = compute_kstar(x, y, method="ann", n_neighbors=5, n_jobs=1, audit_size=100)
    np.testing.assert_array_equal(ann.kstar, compute_kstar(x, y, method="exact").kstar)
    rows = ann.params["rows_given_sampled_candidates"]
    assert 0 < ann.params["sampled_candidate_pairs"] < rows * ann.params["sampled_candidates"] / 3


def test_a_class_at_the_sample_cap_gives_every_row_all_of_its_candidates(monkeypatch):
    """When sampling runs out before a covered batch, cells are not trusted: each row takes the whole class's set."""
    import torch

    import kstar_utils.kstar as kstar_module
    from kstar_utils.neighbours import resolve_device, sort_by_class

    monkeypatch.setattr(kstar_module, "CELL_MIN_ROWS", 100)
    monkeypatch.setattr(kstar_module, "SAMPLE_CELLS", 4)
    x, y = _two_blob_classes()
    data = sort_by_class(x, y, resolve_device("cpu"))
    lists = {}
    real_top = kstar_module.foreign_top

    def recording_top(d, rows, *a):
        values, indices = real_top(d, rows, *a)
        code = int(d.codes[int(rows[0])])
        lists[code] = torch.unique(torch.cat([lists.get(code, indices.flatten()), indices.flatten()]))
        return values, indices

    monkeypatch.setattr(kstar_module, "foreign_top", recording_top)
    radius = np.full(data.n, np.inf)
    # the default cap (5% of 600 rows, at least one batch) stops every class after its first batch: capped
    info = kstar_module._sampled_candidates(data, radius, np.zeros(data.n, dtype=bool), np.random.default_rng(0),
                                            np.empty(0, dtype=np.int64), None)
    assert info["classes_at_sample_cap"] == 3
    assert info["rows_given_sampled_candidates"] == data.n
    sizes = data.ends - data.starts
    assert info["sampled_candidate_pairs"] == sum(int(sizes[c]) * lists[c].numel() for c in range(3))
    assert np.isfinite(radius).all()


def test_auto_keeps_the_ann_result_when_every_class_passes_the_audit_gate(monkeypatch):
    import kstar_utils.kstar as kstar_module

    monkeypatch.setattr(kstar_module, "AUTO_EXACT_MAX_WORK", 0.0)
    x, y = _far_apart_clusters()
    auto = compute_kstar(x, y, method="auto", n_neighbors=5, n_jobs=1, audit_size=100)
    assert auto.method == "ann" and auto.params["stopped_early"] is False
    assert auto.audit["size"] == 100 and auto.audit["fraction_identical"] == 1.0
    np.testing.assert_array_equal(auto.kstar, compute_kstar(x, y, method="exact").kstar)


def test_cli_reports_the_audit_of_a_fallback_that_stopped_early(tmp_path, monkeypatch, capsys):
    """`kstar compute --method auto` on data where ANN fails: the audit line names the audited samples and the
    largest difference, even though the audit stopped after the first class."""
    import kstar_utils.kstar as kstar_module
    from kstar_utils.cli import main
    from kstar_utils.synthetic import gaussian_classes

    x, y = gaussian_classes(1500, 64, 5, separation=0.3, seed=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: False)  # the graph's path, not the int8 scan
    monkeypatch.setattr(kstar_module, "AUTO_EXACT_MAX_WORK", 0.0)
    monkeypatch.setattr(kstar_module, "SAMPLE_BATCH", 0)
    monkeypatch.setattr(kstar_module, "SAMPLE_MAX_FRACTION", 0.0)
    with pytest.warns(kstar_module.ANNAccuracyWarning, match="where the ANN work stopped"):
        assert main(["compute", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--out", str(tmp_path / "out"),
                     "--n-neighbors", "2", "--audit-size", "200", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "(exact," in out and "ANN audit:" in out and "largest difference" in out


def _low_rank_classes():
    from kstar_utils.synthetic import gaussian_classes

    return gaussian_classes(3000, 64, 5, separation=1.0, seed=1, latent=8)  # 8 directions of 64, plus noise 0.1


def test_candidate_space_takes_the_fewest_axes_that_rank_the_nearest_foreign_sample_near_the_top(monkeypatch):
    """Low-rank features get a projection of few axes; isotropic ones (no axes holding 90% of the variance), narrow
    ones (D < 16) and small problems (N^2 * D below PROJECTION_MIN_WORK) keep the full space."""
    import kstar_utils.kstar as kstar_module
    from kstar_utils.neighbours import resolve_device, sort_by_class
    from kstar_utils.synthetic import gaussian_classes

    cpu, none = resolve_device("cpu"), np.empty(0, dtype=np.int64)
    x, y = _low_rank_classes()
    data = sort_by_class(x, y, cpu)
    assert kstar_module._candidate_space(data, np.random.default_rng(0), none) == (None, 64)  # 3000^2 * 64 < 1e12
    monkeypatch.setattr(kstar_module, "PROJECTION_MIN_WORK", 0.0)
    projected, dims = kstar_module._candidate_space(data, np.random.default_rng(0), none)
    assert dims in (8, 16) and projected.exact.shape == (3000, dims + 1)
    iso_x, iso_y = gaussian_classes(3000, 64, 5, separation=0.35, seed=1)
    assert kstar_module._candidate_space(sort_by_class(iso_x, iso_y, cpu), np.random.default_rng(0), none) == (None,
                                                                                                                64)
    assert kstar_module._candidate_space(sort_by_class(x[:, :12], y, cpu), np.random.default_rng(0), none) == (None,
                                                                                                                12)


def test_a_large_problem_searches_its_candidates_in_the_projection(monkeypatch):
    """Above PROJECTION_MIN_WORK the sampled rows, the recall checks and the dense pass run in the projection (the
    graph stays in the full space); k* never falls below exact and stays as close as without."""
    import kstar_utils.kstar as kstar_module

    x, y = _low_rank_classes()
    exact = compute_kstar(x, y, method="exact")
    plain = compute_kstar(x, y, method="ann", n_neighbors=10, n_jobs=1, audit_size=300, candidates="graph")
    assert plain.params["candidate_dims"] == 64  # a small problem: the full space (the graph's, not the int8 scan)
    searched = []
    real = kstar_module.foreign_top_projected
    monkeypatch.setattr(kstar_module, "foreign_top_projected", lambda *a: searched.append(1) or real(*a))
    monkeypatch.setattr(kstar_module, "PROJECTION_MIN_WORK", 0.0)
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: False)  # the graph's path, not the int8 scan
    ann = compute_kstar(x, y, method="ann", n_neighbors=10, n_jobs=1, audit_size=300)
    assert ann.params["candidate_dims"] in (8, 16) and len(searched) >= 5  # every class's sampled rows
    assert np.all(ann.kstar >= exact.kstar)
    assert np.mean(ann.kstar == exact.kstar) >= min(0.99, np.mean(plain.kstar == exact.kstar))
    assert ann.audit["fraction_identical"] >= 0.98


@pytest.mark.parametrize("native", [True, False])
def test_a_large_problem_without_a_projection_ranks_in_bfloat16_where_the_cpu_multiplies_it(monkeypatch, native):
    """Isotropic features above PROJECTION_MIN_WORK have no projection: on a CPU with native bfloat16 the sampled
    rows, the recall checks and the dense pass rank in bfloat16 and take exact distances of the first few (k* never
    below exact, as close as float32 ranking); elsewhere they rank in float32. The result says which."""
    import kstar_utils.kstar as kstar_module
    from kstar_utils.synthetic import gaussian_classes

    x, y = gaussian_classes(3000, 64, 5, separation=0.35, seed=1)
    exact = compute_kstar(x, y, method="exact")
    monkeypatch.setattr(kstar_module, "native_int8", lambda device: False)  # bfloat16 is the fallback of the int8 scan
    plain = compute_kstar(x, y, method="ann", n_neighbors=10, n_jobs=1, audit_size=300)
    assert plain.params["candidate_precision"] == "float32"  # a small problem
    ranked = []
    real = kstar_module.bfloat16_ranking_features
    monkeypatch.setattr(kstar_module, "bfloat16_ranking_features", lambda data: ranked.append(1) or real(data))
    monkeypatch.setattr(kstar_module, "native_bfloat16", lambda device: native)
    monkeypatch.setattr(kstar_module, "PROJECTION_MIN_WORK", 0.0)
    ann = compute_kstar(x, y, method="ann", n_neighbors=10, n_jobs=1, audit_size=300)
    assert ann.params["candidate_dims"] == 64 and len(ranked) == int(native)
    assert ann.params["candidate_precision"] == ("bfloat16" if native else "float32")
    assert np.all(ann.kstar >= exact.kstar)
    assert np.mean(ann.kstar == exact.kstar) >= np.mean(plain.kstar == exact.kstar) - 0.005
