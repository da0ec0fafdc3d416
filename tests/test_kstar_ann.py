"""The ANN path (pynndescent + exact verification) against the exact engine. Compiles numba once per process."""

from __future__ import annotations

import numpy as np
import pytest

from kstar_utils import compute_kstar
from kstar_utils.kstar import AUTO_EXACT_MAX_WORK, choose_method

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


def test_ann_is_deterministic_for_a_seed_and_thread_count(overlapping):
    x, y = overlapping
    a = compute_kstar(x, y, method="ann", n_neighbors=10, seed=3, n_jobs=1, audit_size=50)
    b = compute_kstar(x, y, method="ann", n_neighbors=10, seed=3, n_jobs=1, audit_size=50)
    np.testing.assert_array_equal(a.kstar, b.kstar)
    assert a.audit == b.audit


def test_samples_without_foreign_candidates_get_the_exact_search():
    """Far-apart clusters: no graph neighbour is foreign, so every sample goes through the exact search."""
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 200)
    x = rng.normal(size=(600, 5)) + 50.0 * y[:, None]
    ann = compute_kstar(x, y, method="ann", n_neighbors=5, n_jobs=1, audit_size=100)
    exact = compute_kstar(x, y, method="exact")
    np.testing.assert_array_equal(ann.kstar, exact.kstar)
    assert ann.params["exact_search_samples"] == 600
    assert ann.audit["fraction_identical"] == 1.0


def test_auto_picks_exact_for_small_and_ann_for_large_problems():
    assert choose_method(1000, 64) == "exact"
    big = int(np.sqrt(AUTO_EXACT_MAX_WORK / 128)) + 1000
    assert choose_method(big, 128) == "ann"
    assert choose_method(big, 128, "exact") == "exact"


def test_auto_falls_back_to_exact_when_the_audit_fails(monkeypatch):
    """Isotropic high-dimensional classes with a tiny graph: the audit fails, so 'auto' returns exact k*."""
    import kstar_utils.kstar as kstar_module
    from kstar_utils.kstar import ANNAccuracyWarning
    from kstar_utils.synthetic import gaussian_classes

    x, y = gaussian_classes(1500, 64, 5, separation=0.3, seed=4)
    monkeypatch.setattr(kstar_module, "AUTO_EXACT_MAX_WORK", 0.0)
    with pytest.warns(ANNAccuracyWarning, match="computing exact k\\* instead"):
        auto = compute_kstar(x, y, method="auto", n_neighbors=2, n_jobs=1, audit_size=200)
    assert auto.method == "exact" and auto.params["ann_fallback"] is True
    assert auto.audit["fraction_identical"] < 0.99
    np.testing.assert_array_equal(auto.kstar, compute_kstar(x, y, method="exact").kstar)
    with pytest.warns(ANNAccuracyWarning, match="hard for the neighbour graph"):
        ann = compute_kstar(x, y, method="ann", n_neighbors=2, n_jobs=1, audit_size=200)
    assert ann.method == "ann"
