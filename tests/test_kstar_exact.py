"""The exact engine against SPEC's brute-force definition, and SPEC's invariances."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors

from kstar_utils import compute_kstar
from kstar_utils.neighbours import brute_force_kstar, exact_counts, sort_by_class


def _labels(rng, n, classes):
    y = rng.integers(0, classes, size=n)
    y[:classes] = np.arange(classes)  # every class present
    return y


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_size", [None, 1, 7])
def test_random_data_matches_definition(seed, block_size):
    rng = np.random.default_rng(seed)
    n, d, c = int(rng.integers(20, 250)), int(rng.integers(1, 40)), int(rng.integers(2, 7))
    x = rng.normal(size=(n, d))
    y = _labels(rng, n, c)
    res = compute_kstar(x, y, method="exact", block_size=block_size)
    np.testing.assert_array_equal(res.kstar, brute_force_kstar(x, y))
    assert res.method == "exact"


@pytest.mark.parametrize("seed", range(4))
def test_clustered_data_matches_definition(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(5, 16))
    y = _labels(rng, 400, 5)
    x = centres[y] + rng.normal(size=(400, 16))
    np.testing.assert_array_equal(compute_kstar(x, y, method="exact").kstar, brute_force_kstar(x, y))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(4, 60),
    d=st.integers(1, 4),
    levels=st.integers(1, 3),
    classes=st.integers(2, 4),
)
def test_integer_data_with_many_ties_matches_definition(data, n, d, levels, classes):
    """Integer features in a tiny range: exact distance ties everywhere, duplicates within and across classes."""
    x = np.array(data.draw(st.lists(st.lists(st.integers(0, levels), min_size=d, max_size=d), min_size=n, max_size=n)),
                 dtype=np.float64)
    y = np.array(data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    if len(np.unique(y)) < 2:
        y[0], y[1] = 0, 1
    offset = data.draw(st.sampled_from([0.0, 255.0, 1e6]))  # a common offset defeats naive float32 expansion
    np.testing.assert_array_equal(compute_kstar(x + offset, y, method="exact", block_size=5).kstar,
                                  brute_force_kstar(x + offset, y))


def test_duplicated_rows_across_classes_give_kstar_one():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0], [5.0, 5.0]])
    y = np.array([0, 1, 1, 0, 0])
    res = compute_kstar(x, y, method="exact")
    np.testing.assert_array_equal(res.kstar, brute_force_kstar(x, y))
    assert res.kstar[0] == 1 and res.kstar[1] == 1  # a foreign duplicate: r_p = 0, nothing is nearer


def test_spec_worked_example_two_same_then_foreign():
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array(["a", "a", "a", "b"])
    assert compute_kstar(x, y, method="exact").kstar[0] == 3


def test_tie_at_radius_goes_against_the_sample():
    x = np.array([[0.0], [1.0], [-1.0]])  # same-class and foreign at exactly the same distance
    y = np.array([0, 0, 1])
    assert compute_kstar(x, y, method="exact").kstar[0] == 1


def test_comparisons_below_float32_resolution_are_rechecked_in_float64():
    """Same-class points at r_p (1 -/+ 1e-9): float32 cannot tell them apart, the float64 definition can."""
    rng = np.random.default_rng(0)
    d = 32
    direction = rng.normal(size=(4, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = 3.0
    p = np.full(d, 1000.0)
    x = np.vstack([p, p + radius * direction[0], p + radius * (1 - 1e-9) * direction[1],
                   p + radius * (1 + 1e-9) * direction[2], p + radius * (1 - 2e-9) * direction[3],
                   p + 50.0 + rng.normal(size=(20, d))])
    y = np.array([0, 1, 0, 0, 0] + [1] * 20)
    res = compute_kstar(x, y, method="exact")
    np.testing.assert_array_equal(res.kstar, brute_force_kstar(x, y))
    assert res.kstar[0] == 3  # the two points just inside r_p count, the one just outside does not
    assert res.params["rechecked_rows"] >= 1


def test_float32_and_tensor_inputs_and_string_labels():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    y = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, 120)]
    ref = brute_force_kstar(x.astype(np.float64), y)
    np.testing.assert_array_equal(compute_kstar(torch.from_numpy(x), y.tolist()).kstar, ref)
    np.testing.assert_array_equal(compute_kstar(torch.from_numpy(x).half().float(), y).kstar,
                                  brute_force_kstar(torch.from_numpy(x).half().double().numpy(), y))


def test_cosine_metric_is_euclidean_on_normalised_rows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(150, 10))
    y = rng.integers(0, 3, 150)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(compute_kstar(x, y, metric="cosine").kstar, brute_force_kstar(unit, y))
    # cosine ignores each row's scale
    scales = rng.uniform(0.1, 10, size=(150, 1))
    np.testing.assert_array_equal(compute_kstar(x * scales, y, metric="cosine").kstar,
                                  compute_kstar(x, y, metric="cosine").kstar)


class TestSpecProperties:
    def setup_method(self):
        rng = np.random.default_rng(7)
        self.x = rng.normal(size=(300, 12)) + rng.integers(0, 3, size=(300, 1))
        self.y = rng.integers(0, 4, 300)
        self.k = compute_kstar(self.x, self.y, method="exact").kstar

    def test_permutation_invariance(self):
        perm = np.random.default_rng(1).permutation(300)
        np.testing.assert_array_equal(compute_kstar(self.x[perm], self.y[perm]).kstar, self.k[perm])

    def test_translation_invariance(self):
        np.testing.assert_array_equal(compute_kstar(self.x + 123.25, self.y).kstar, self.k)

    def test_rotation_invariance(self):
        q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 12)))
        np.testing.assert_array_equal(compute_kstar(self.x @ q, self.y).kstar, self.k)

    def test_positive_scaling_invariance(self):
        np.testing.assert_array_equal(compute_kstar(self.x * 0.037, self.y).kstar, self.k)
        np.testing.assert_array_equal(compute_kstar(self.x * 4096.0, self.y).kstar, self.k)
        # magnitudes whose squares overflow or underflow float32 (and, for 1e200, float64)
        for factor in (2.0**80, 2.0**-90, 2.0**700):
            np.testing.assert_array_equal(compute_kstar(self.x * factor, self.y).kstar, self.k)

    def test_leave_one_out_nearest_neighbour_identity(self):
        """On untied data, the fraction of samples with k* >= 2 is the leave-one-out 1-NN accuracy."""
        _, idx = NearestNeighbors(n_neighbors=2).fit(self.x).kneighbors(self.x)
        neighbour = np.where(idx[:, 0] == np.arange(300), idx[:, 1], idx[:, 0])
        loo_accuracy = np.mean(self.y[neighbour] == self.y)
        assert np.mean(self.k >= 2) == pytest.approx(loo_accuracy, abs=0)


def test_perfectly_separated_classes_are_clustered():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 2], 50)
    x = rng.normal(size=(150, 3)) * 0.1 + 100.0 * y[:, None]
    res = compute_kstar(x, y)
    assert np.all(res.kstar_norm == 1.0)
    assert np.all(res.per_class["skew"] == -np.inf)
    assert set(res.per_class["pattern"]) == {"Clustered"}
    assert res.gamma_true == -np.inf and res.gamma_approx == -np.inf


def test_two_classes_from_one_distribution_have_positive_skew():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1200, 6))
    y = np.repeat([0, 1], 600)
    res = compute_kstar(x, y)
    assert (res.per_class["skew"] > 0.5).all()
    assert res.gamma_true > 0.5 and res.gamma_approx > 0.5
    assert set(res.per_class["pattern"]) == {"Fractured"}


def test_kernel_on_a_subset_of_rows_and_given_radius_agrees():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 5))
    y = rng.integers(0, 3, 200)
    data = sort_by_class(x, y, torch.device("cpu"))
    full, _ = exact_counts(data)
    rows = np.array([5, 150, 3, 77, 199])
    sub, _ = exact_counts(data, rows, block_size=2)
    np.testing.assert_array_equal(sub, full[rows])
    xs, ys = x[data.order], y[data.order]
    radius = np.array([np.sqrt(((xs[ys != ys[r]] - xs[r]) ** 2).sum(1)).min() for r in rows])
    given, _ = exact_counts(data, rows, radius=radius)
    np.testing.assert_array_equal(given, full[rows])


def test_memory_grows_as_block_times_n_not_n_squared(tmp_path):
    """N = 20,000: an N x N float32 matrix alone would take 1.6 GB; the engine's peak stays far below."""
    script = textwrap.dedent(
        """
        import resource, numpy as np
        from kstar_utils import compute_kstar
        rng = np.random.default_rng(0)
        x = rng.normal(size=(20000, 16)).astype(np.float32)
        y = rng.integers(0, 10, 20000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        compute_kstar(x, y, method="exact", block_size=256)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 400e6, f"peak memory grew by {growth / 1e6:.0f} MB"


def test_cosine_ties_are_broken_as_the_oracle_breaks_them():
    """Normalised integer rows hold distances equal in exact arithmetic that a sum in another order rounds apart
    (found by a hostile-input review: 33 of 200 small cases differed). Engine and oracle sum in index order."""
    from kstar_utils.neighbours import brute_force_kstar
    from kstar_utils.validation import unit_rows

    rng = np.random.default_rng(0)
    checked = 0
    while checked < 40:
        m, dim = int(rng.integers(5, 120)), int(rng.integers(1, 10))
        x = rng.integers(0, 3, (m, dim)).astype(float)
        y = rng.integers(0, 3, m)
        if len(set(y)) < 2 or (np.abs(x).max(axis=1) == 0).any():
            continue
        checked += 1
        expected = brute_force_kstar(unit_rows(x), y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.array_equal(compute_kstar(x, y, metric="cosine", method="exact").kstar, expected)
