"""Bootstrap intervals of Gamma and Gamma' (issue 8): coverage, narrowing with N, seeding, the result's JSON."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kstar_utils import KStarInputError, KStarResult, compute_kstar
from kstar_utils.metrics import bootstrap_gamma_intervals, gamma_approx, gamma_true, kstar_skew

# Ten classes with different normalised-k* distributions (Beta(a, b)): fractured, overlapped and clustered shapes.
SHAPES = [(0.6, 3.0), (1.0, 4.0), (2.0, 5.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (4.0, 1.5), (5.0, 1.0), (2.5, 1.2),
          (1.5, 6.0)]


def _sample(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(SHAPES)), n_per_class)
    values = np.concatenate([rng.beta(a, b, n_per_class) for a, b in SHAPES])
    return values, labels


def _beta_skew(a: float, b: float) -> float:
    return 2 * (b - a) * math.sqrt(a + b + 1) / ((a + b + 2) * math.sqrt(a * b))


@pytest.fixture(scope="module")
def population() -> dict:
    """Population values: Gamma' exactly (mean of the Beta skews), Gamma from a very large sample (2 million)."""
    values, _ = _sample(200_000, seed=12345)
    return {"gamma": kstar_skew(values), "gamma_prime": float(np.mean([_beta_skew(a, b) for a, b in SHAPES]))}


def test_intervals_cover_the_population_values(population):
    """Twenty independent samples of N = 5,000: the 95% intervals hold the population values in most of them (a
    binomial(20, 0.95) count falls below 16 with probability under 2%; intervals that ignore the within-class
    resampling or use the wrong quantiles miss far more often)."""
    hits = {"gamma": 0, "gamma_prime": 0}
    for seed in range(20):
        values, labels = _sample(500, seed)
        out = bootstrap_gamma_intervals(values, labels, n_bootstrap=400, seed=seed)
        for key in hits:
            lo, hi = out[key]
            hits[key] += lo <= population[key] <= hi
    assert hits["gamma"] >= 16 and hits["gamma_prime"] >= 16, hits


def test_interval_holds_the_point_estimate_and_narrows_with_n():
    widths = {}
    for n in (200, 2000):
        values, labels = _sample(n, seed=7)
        out = bootstrap_gamma_intervals(values, labels, n_bootstrap=500, seed=1)
        per_class = [kstar_skew(values[labels == c]) for c in range(len(SHAPES))]
        assert out["gamma"][0] <= gamma_true(values) <= out["gamma"][1]
        assert out["gamma_prime"][0] <= gamma_approx(per_class) <= out["gamma_prime"][1]
        widths[n] = {k: out[k][1] - out[k][0] for k in ("gamma", "gamma_prime")}
    for key in ("gamma", "gamma_prime"):  # ten times the samples: about sqrt(10) = 3.2 times narrower
        assert widths[2000][key] < 0.5 * widths[200][key], widths


def test_seeded_reproducibility_and_fields():
    values, labels = _sample(100, seed=3)
    a = bootstrap_gamma_intervals(values, labels, n_bootstrap=300, seed=5, confidence=0.9)
    b = bootstrap_gamma_intervals(values, labels, n_bootstrap=300, seed=5, confidence=0.9)
    c = bootstrap_gamma_intervals(values, labels, n_bootstrap=300, seed=6, confidence=0.9)
    assert a == b and a != c
    assert a["n_bootstrap"] == 300 and a["seed"] == 5 and a["confidence"] == 0.9
    wider = bootstrap_gamma_intervals(values, labels, n_bootstrap=300, seed=5, confidence=0.99)
    assert wider["gamma"][0] <= a["gamma"][0] and wider["gamma"][1] >= a["gamma"][1]


def test_class_sizes_stay_fixed_and_spec_rules_apply_per_replicate():
    """A perfectly separated class (all 1.0) stays -inf in every replicate, so SPEC's rule replaces it by the smallest
    finite class skew; a class of two distinct values is sometimes constant in a replicate (NaN, counted as 0)."""
    values = np.array([1.0] * 5 + [0.25, 0.5, 0.75, 1.0, 0.25, 0.25] + [0.5, 1.0])
    labels = np.array([0] * 5 + [1] * 6 + [2] * 2)
    out = bootstrap_gamma_intervals(values, labels, n_bootstrap=2000, seed=0)
    assert all(math.isfinite(v) for v in out["gamma_prime"])
    everything_clustered = bootstrap_gamma_intervals(np.ones(9), np.repeat([0, 1, 2], 3), n_bootstrap=50)
    assert everything_clustered["gamma"] == (-math.inf, -math.inf)
    assert everything_clustered["gamma_prime"] == (-math.inf, -math.inf)


def test_replicate_statistics_equal_the_definitions():
    """A one-replicate bootstrap that happens to draw each sample once equals the plain statistics: checked through
    the internal function on a hand-made permutation."""
    from kstar_utils.metrics import _gamma_approx_rows, _replicate_skews

    values, labels = _sample(60, seed=9)
    sizes = np.bincount(labels)
    starts = np.cumsum(sizes) - sizes
    centre = np.add.reduceat(values, starts) / sizes
    pick = np.concatenate([np.random.default_rng(0).permutation(np.arange(s, s + k)) for s, k in zip(starts, sizes)])
    pooled, class_skew = _replicate_skews(values - centre[labels], values, pick[None, :], starts, sizes, centre)
    assert pooled[0] == pytest.approx(gamma_true(values), rel=1e-9)
    per_class = [kstar_skew(values[labels == c]) for c in range(len(SHAPES))]
    np.testing.assert_allclose(class_skew[0], per_class, rtol=1e-9)
    assert _gamma_approx_rows(class_skew)[0] == pytest.approx(gamma_approx(per_class), rel=1e-9)


@pytest.mark.parametrize(("kwargs", "name"), [({"n_bootstrap": 0}, "n_bootstrap"), ({"seed": -1}, "bootstrap_seed"),
                                              ({"confidence": 1.0}, "confidence")])
def test_bad_bootstrap_options(kwargs, name):
    values, labels = _sample(10, seed=0)
    with pytest.raises(KStarInputError, match=name):
        bootstrap_gamma_intervals(values, labels, **kwargs)


def test_compute_kstar_bootstrap_in_result_summary_and_json():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    x = rng.normal(size=(400, 5)) + y[:, None] * 0.7
    res = compute_kstar(x, y, bootstrap=200, bootstrap_seed=4)
    iv = res.intervals
    assert set(iv) == {"gamma", "gamma_prime", "n_bootstrap", "confidence", "seed"}
    assert iv["n_bootstrap"] == 200 and iv["seed"] == 4 and iv["confidence"] == 0.95
    assert iv["gamma"][0] <= res.gamma_true <= iv["gamma"][1]
    assert iv["gamma_prime"][0] <= res.gamma_approx <= iv["gamma_prime"][1]
    assert res.summary()["intervals"]["gamma"] == list(iv["gamma"])
    back = KStarResult.from_json(res.to_json())
    assert back.intervals == iv and isinstance(back.intervals["gamma"], tuple)
    assert compute_kstar(x, y).intervals is None and KStarResult.from_json(compute_kstar(x, y).to_json()).intervals \
        is None
    assert compute_kstar(x, y, bootstrap=200, bootstrap_seed=4).intervals == iv  # seeded


def test_infinite_interval_round_trips():
    y = np.repeat([0, 1, 2], 20)
    x = np.random.default_rng(1).normal(size=(60, 2)) * 0.01 + 100.0 * y[:, None]
    res = compute_kstar(x, y, bootstrap=20)
    assert res.intervals["gamma"] == (-math.inf, -math.inf)
    assert KStarResult.from_json(res.to_json()).intervals == res.intervals
