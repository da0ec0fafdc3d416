"""Per-class statistics, patterns, Gamma, Gamma' and correlations, as SPEC defines them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kstar_utils import correlation, gamma_approx, gamma_true, kstar_skew, pattern_of, per_class_table
from kstar_utils.metrics import normalise_kstar, pattern_counts


def test_skew_is_scipys_biased_fisher_pearson():
    v = np.array([0.1, 0.1, 0.2, 0.9, 0.3])
    assert kstar_skew(v) == pytest.approx(stats.skew(v))
    assert kstar_skew(v) == pytest.approx(np.mean((v - v.mean()) ** 3) / np.var(v) ** 1.5)


def test_zero_variance_rules():
    assert kstar_skew(np.ones(7)) == -math.inf
    assert math.isnan(kstar_skew(np.full(7, 0.25)))
    assert pattern_of(-math.inf) == "Clustered"
    assert pattern_of(math.nan) == "Overlapped"


@pytest.mark.parametrize(
    ("skew", "threshold", "pattern"),
    [(0.51, 0.5, "Fractured"), (0.5, 0.5, "Overlapped"), (-0.5, 0.5, "Overlapped"), (-0.51, 0.5, "Clustered"),
     (0.0, 0.5, "Overlapped"), (0.3, 0.2, "Fractured"), (-0.3, 0.2, "Clustered"), (math.inf, 0.5, "Fractured")],
)
def test_pattern_thresholds(skew, threshold, pattern):
    assert pattern_of(skew, threshold) == pattern


def test_negative_threshold_is_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        pattern_of(0.1, -1)


def test_gamma_approx_nan_and_inf_rule():
    assert gamma_approx([1.0, math.nan, -2.0]) == pytest.approx((1.0 + 0.0 - 2.0) / 3)
    assert gamma_approx([1.0, math.inf, -2.0]) == pytest.approx((1.0 + 1.0 - 2.0) / 3)
    assert gamma_approx([1.0, -math.inf, 3.0]) == pytest.approx((1.0 + 1.0 + 3.0) / 3)
    assert gamma_approx([-math.inf, -math.inf]) == -math.inf
    assert gamma_approx([math.nan, math.nan]) == 0.0


def test_gamma_true_pools_all_samples():
    v = np.array([0.2, 0.4, 1.0, 0.5, 0.5, 0.9])
    assert gamma_true(v) == pytest.approx(stats.skew(v))


def test_normalisation_by_class_size():
    kstar = np.array([1, 2, 3, 1, 1])
    codes = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(normalise_kstar(kstar, codes), [1 / 3, 2 / 3, 1.0, 0.5, 0.5])


def test_per_class_table_columns_and_values():
    kn = np.array([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    codes = np.array([0, 0, 0, 0, 1, 1])
    table = per_class_table(kn, codes, np.array(["a", "b"]))
    assert list(table.columns) == ["label", "n", "mean", "std", "skew", "pattern"]
    assert table.loc[0, "n"] == 4 and table.loc[0, "mean"] == pytest.approx(0.625)
    assert table.loc[0, "std"] == pytest.approx(np.std(kn[:4], ddof=0))
    assert table.loc[1, "skew"] == -math.inf and table.loc[1, "pattern"] == "Clustered"
    assert pattern_counts(table) == {"Fractured": 0, "Overlapped": 1, "Clustered": 1}


def test_correlation_reports_both_coefficients_and_n():
    x = [1, 2, 3, 4, 5, math.nan]
    y = [2, 4, 5, 4, 5, 1]
    out = correlation(x, y)
    assert out["n"] == 5
    assert out["spearman"] == pytest.approx(stats.spearmanr(x[:5], y[:5]).statistic)
    assert out["pearson"] == pytest.approx(stats.pearsonr(x[:5], y[:5]).statistic)
    assert math.isnan(correlation([1, 2], [3, 4])["spearman"])  # too few pairs: no number rather than a wrong one
    assert isinstance(pd.Series(out), pd.Series)
