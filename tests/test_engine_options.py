"""Every numeric option of compute_kstar is validated (issue 11, item 6), and cosine is scale-safe."""

from __future__ import annotations

import numpy as np
import pytest

from kstar_utils import KStarInputError, compute_kstar
from kstar_utils.neighbours import brute_force_kstar
from kstar_utils.validation import check_count, check_fraction, check_number


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    return rng.normal(size=(90, 4)) + y[:, None], y


def test_negative_block_size_raises_instead_of_kstar_one(problem):
    """block_size=-1 used to give k* = 1 for every sample, silently."""
    x, y = problem
    with pytest.raises(KStarInputError, match=r"block_size must be an integer >= 1"):
        compute_kstar(x, y, block_size=-1)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("block_size", 0, "block_size must be an integer >= 1"),
        ("block_size", 2.5, "block_size must be an integer >= 1"),
        ("block_size", True, "block_size must be an integer >= 1"),
        ("n_neighbors", 1, "n_neighbors must be an integer >= 2"),
        ("n_neighbors", 0, "n_neighbors must be an integer >= 2"),
        ("audit_size", -1, "audit_size must be an integer >= 0"),
        ("n_jobs", 0, "n_jobs must be an integer >= 1"),
        ("n_jobs", -1, "n_jobs must be an integer >= 1"),
        ("seed", -3, "seed must be an integer from 0 to 4294967295"),
        ("threshold", -0.1, "threshold must be a finite number >= 0"),
        ("threshold", float("inf"), "threshold must be a finite number >= 0"),
        ("threshold", "0.5", "threshold must be a finite number >= 0"),
        ("bootstrap", -5, "bootstrap must be an integer >= 0"),
        ("bootstrap_seed", -1, "bootstrap_seed must be an integer from 0 to 4294967295"),
        ("confidence", 1.5, "confidence must be a number strictly between 0 and 1"),
        ("device", "gpu", "unknown device"),
        ("device", "mps", "MPS lacks"),
        ("method", "fast", "unknown method"),
    ],
)
def test_bad_numeric_options_name_the_option(problem, option, value, message):
    x, y = problem
    with pytest.raises(KStarInputError, match=message):
        compute_kstar(x, y, **{option: value})


def test_valid_edge_values_are_accepted(problem):
    x, y = problem
    ref = brute_force_kstar(x, y)
    for kwargs in ({"block_size": 1}, {"block_size": None}, {"block_size": np.int64(7)}, {"n_jobs": None},
                   {"threshold": 0}, {"audit_size": 0, "method": "exact"}, {"device": "cpu"}, {"device": "auto"}):
        np.testing.assert_array_equal(compute_kstar(x, y, **kwargs).kstar, ref)


def test_check_helpers_for_the_command_line():
    assert check_count("--threads", 4, 1) == 4
    assert check_count("--threads", None, 1, allow_none=True) is None
    with pytest.raises(KStarInputError, match="--threads must be an integer >= 1, got -1"):
        check_count("--threads", -1, 1)
    with pytest.raises(KStarInputError, match="--threads"):
        check_count("--threads", None, 1)
    assert check_number("threshold", 1) == 1.0
    with pytest.raises(KStarInputError, match="threshold"):
        check_number("threshold", float("nan"))
    assert check_fraction("confidence", 0.9) == 0.9
    with pytest.raises(KStarInputError, match="confidence"):
        check_fraction("confidence", 0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("factor", [1e160, 1e-300, 1e300, 2.0**-1000])
def test_extreme_scales_give_the_same_kstar(metric, factor):
    """Cosine used to return k* = 1 everywhere at 1e160 (norms overflowed) and raise a false 'zero vectors' error at
    1e-300 (norms underflowed)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    x = rng.normal(size=(200, 16)) + y[:, None] * 0.3
    reference = compute_kstar(x, y, metric=metric).kstar
    np.testing.assert_array_equal(compute_kstar(x * factor, y, metric=metric).kstar, reference)


def test_cosine_zero_rows_are_still_named():
    x = np.random.default_rng(0).normal(size=(6, 3)) * 1e-300
    x[4] = 0.0
    with pytest.raises(KStarInputError, match="rows 4 are zero vectors"):
        compute_kstar(x, [0, 1] * 3, metric="cosine")


def test_unit_rows_is_scale_safe_and_exact_in_direction():
    from kstar_utils.validation import unit_rows

    x = np.array([[3.0, 4.0], [1e-310, 0.0], [1e300, 1e300]])
    out = unit_rows(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [1.0, 0.0], [2**-0.5, 2**-0.5]], rtol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-15)
