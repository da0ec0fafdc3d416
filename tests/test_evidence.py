"""Statistics behind the report's claims: Wilson intervals, correlation evidence, partial correlations, verdicts and
their wording, and the k* / 1-NN identity."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from kstar_utils import compute_kstar, evidence
from kstar_utils.errors import KStarInputError
from kstar_utils.evidence import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    VERDICT_RULE,
    Evidence,
    accuracy_interval,
    add_accuracy_intervals,
    claim_sentence,
    correlation_evidence,
    correlations_by,
    latent_1nn_accuracy,
    partial_correlation,
    verdict,
    wilson_interval,
)
from kstar_utils.synthetic import correlated_table


# ------------------------------------------------------------------------------------------------------------ Wilson
def test_wilson_matches_known_values():
    # 8 of 10 at 95%: the textbook Wilson interval is (0.4902, 0.9433).
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # Edge cases stay inside [0, 1] and are not degenerate (unlike the Wald interval).
    lo0, hi0 = wilson_interval(0, 150)
    assert lo0 == 0.0 and 0.0 < hi0 < 0.04
    lo1, hi1 = wilson_interval(150, 150)
    assert hi1 == pytest.approx(1.0) and 0.96 < lo1 < 1.0


def test_wilson_is_vectorised_and_narrows_with_n():
    lo, hi = wilson_interval(np.array([15, 150, 1500]), np.array([30, 300, 3000]))
    widths = hi - lo
    assert widths.shape == (3,) and np.all(np.diff(widths) < 0)
    assert np.all(lo < 0.5) and np.all(hi > 0.5)
    # 150 attacked images at 50%: about +-8 points, as the issue says ("good to about +-7 points").
    assert 0.07 < (hi[1] - lo[1]) / 2 * np.sqrt(300 / 150) < 0.09


def test_wilson_coverage_is_near_nominal():
    rng = np.random.default_rng(0)
    p, n = 0.9, 60
    k = rng.binomial(n, p, size=4000)
    lo, hi = wilson_interval(k, np.full_like(k, n))
    coverage = np.mean((lo <= p) & (p <= hi))
    assert 0.92 < coverage < 0.98


def test_wilson_rejects_percentages_and_impossible_counts():
    with pytest.raises(KStarInputError):
        wilson_interval(11, 10)
    with pytest.raises(KStarInputError):
        accuracy_interval(87.0, 150)


def test_add_accuracy_intervals_adds_columns_and_keeps_nans():
    import pandas as pd

    frame = pd.DataFrame({"acc": [0.5, np.nan, 0.9], "n": [100, 100, 0]})
    out = add_accuracy_intervals(frame, "acc", "n")
    assert list(out.columns[-2:]) == ["acc_lo", "acc_hi"]
    assert out["acc_lo"][0] < 0.5 < out["acc_hi"][0]
    assert np.isnan(out["acc_lo"][1]) and np.isnan(out["acc_lo"][2])
    assert "acc_lo" not in frame  # the input is not modified


# ----------------------------------------------------------------------------------------------------- correlations
def test_correlation_evidence_matches_scipy_and_reports_units():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = -0.7 * x + 0.5 * rng.normal(size=40)
    ev = correlation_evidence(x, y, units="models", n_boot=1000, n_perm=2000, seed=3)
    assert ev.rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert ev.pearson == pytest.approx(stats.pearsonr(x, y).statistic)
    assert ev.n == 40 and ev.units == "models"
    assert ev.ci[0] < ev.rho < ev.ci[1] < 0
    assert ev.p_value == pytest.approx(1 / 2001)  # no permutation reaches a strong correlation
    assert ev.excludes_zero
    again = correlation_evidence(x, y, units="models", n_boot=1000, n_perm=2000, seed=3)
    assert again.ci == ev.ci and again.p_value == ev.p_value  # seeded


def test_correlation_evidence_null_interval_contains_zero_and_p_is_uniformish():
    rng = np.random.default_rng(2)
    ps = []
    for _ in range(30):
        x, y = rng.normal(size=25), rng.normal(size=25)
        ps.append(correlation_evidence(x, y, n_boot=300, n_perm=300, seed=0).p_value)
    # Under the null, p < 0.05 about 5% of the time: allow up to 5 of 30.
    assert sum(p < 0.05 for p in ps) <= 5
    ev = correlation_evidence(rng.normal(size=25), rng.normal(size=25), n_boot=500, seed=0)
    assert ev.ci[0] < 0 < ev.ci[1] or abs(ev.rho) > 0.35


def test_correlation_evidence_exact_permutation_for_small_n():
    x = np.arange(6.0)
    y = -x  # perfect negative: exactly 2 of 720 permutations reach |rho| = 1
    ev = correlation_evidence(x, y, n_boot=200, n_perm=1000, seed=0)
    assert ev.exact_permutation and ev.p_value == pytest.approx(2 / 720)


def test_correlation_evidence_drops_nans_and_handles_degenerate_input():
    ev = correlation_evidence([1, 2, np.nan, 4, 5], [5, 4, 3, np.inf, 1], n_boot=100)
    assert ev.n == 3
    flat = correlation_evidence([1, 2, 3, 4], [1, 1, 1, 1], n_boot=100)
    assert math.isnan(flat.rho) and math.isnan(flat.ci[0]) and verdict(flat) == INCONCLUSIVE
    with pytest.raises(KStarInputError):
        correlation_evidence([1, 2, 3], [1, 2])


def test_cluster_bootstrap_is_wider_than_treating_seeds_as_independent():
    # 8 configurations x 5 seeds, seeds nearly identical: 40 pairs but only 8 independent units.
    table = correlated_table(8, rho=-0.6, seed=4, n_seeds=5)
    naive = correlation_evidence(table["accuracy"], table["gamma_prime"], units="model-seed pairs", seed=0)
    clustered = correlation_evidence(table["accuracy"], table["gamma_prime"], units="model-seed pairs",
                                     groups=table["config"], seed=0)
    assert clustered.n == naive.n == 40 and clustered.n_groups == 8
    assert (clustered.ci[1] - clustered.ci[0]) > (naive.ci[1] - naive.ci[0])
    assert clustered.p_value > naive.p_value  # group means: 8 units, not 40
    assert "in 8 groups" in evidence.evidence_numbers(clustered)
    lo, hi = clustered.ci  # the short form of a panel title: rho, interval, p and nothing else
    assert evidence.evidence_brief(clustered) == (f"rho = {evidence.format_number(clustered.rho)} "
                                                  f"[{evidence.format_number(lo)}, {evidence.format_number(hi)}], "
                                                  f"p {'' if evidence.format_p(clustered.p_value).startswith('<') else '= '}"
                                                  f"{evidence.format_p(clustered.p_value)}")
    # p tests the group means, not the pairs' rho: the text says so and gives the means' rho beside it
    means_rho = evidence.format_number(clustered.extra["group_mean_rho"])
    assert f"on the means of the 8 groups (rho of the means = {means_rho})" in evidence.evidence_numbers(clustered)


def test_correlations_by_gives_one_row_per_group():
    import pandas as pd

    a = correlated_table(12, rho=-0.8, seed=1).assign(data="clean")
    b = correlated_table(12, rho=0.0, seed=2).assign(data="noise")
    rows = correlations_by(pd.concat([a, b]), "accuracy", "gamma_prime", by="data", n_boot=300, n_perm=300)
    assert list(rows["by"]) == ["clean", "noise"] and list(rows["n"]) == [12, 12]
    assert rows["rho"][0] < -0.4


# ------------------------------------------------------------------------------------------------ partial correlation
def test_partial_correlation_removes_a_shared_cause():
    rng = np.random.default_rng(5)
    z = rng.normal(size=200)
    x = z + 0.3 * rng.normal(size=200)
    y = -z + 0.3 * rng.normal(size=200)  # x and y related only through z
    raw = correlation_evidence(x, y, n_boot=300, n_perm=300)
    part = partial_correlation(x, y, {"clean accuracy": z}, n_boot=500, n_perm=500, seed=0)
    assert raw.rho < -0.8
    assert abs(part.rho) < 0.15 and part.ci[0] < 0 < part.ci[1]
    assert part.controls == ("clean accuracy",)


def test_partial_correlation_keeps_a_direct_relation_and_matches_residual_formula():
    rng = np.random.default_rng(6)
    z1, z2 = rng.normal(size=(2, 120))
    x = z1 + rng.normal(size=120)
    y = -x + z2 + 0.5 * rng.normal(size=120)
    part = partial_correlation(x, y, np.column_stack([z1, z2]), method="pearson", n_boot=300, n_perm=300)
    # Reference: residuals of ordinary least squares with an intercept.
    design = np.column_stack([np.ones(120), z1, z2])
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert part.rho == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert part.ci[1] < 0 and verdict(part) == REPRODUCED
    with pytest.raises(KStarInputError):
        partial_correlation(x, y, z1[:10])


def test_partial_correlation_with_groups_resamples_configurations():
    table = correlated_table(12, rho=-0.7, seed=8, n_seeds=3)
    controls = {"clean accuracy": table["clean_accuracy"]}
    plain = partial_correlation(table["accuracy"], table["gamma_prime"], controls, n_boot=400, n_perm=400,
                                units="model-seed pairs")
    grouped = partial_correlation(table["accuracy"], table["gamma_prime"], controls, n_boot=400, n_perm=400,
                                  units="model-seed pairs", groups=table["config"])
    assert grouped.rho == pytest.approx(plain.rho)  # the estimate is the same; only the uncertainty changes
    assert grouped.n_groups == 12 and grouped.n == 36
    assert (grouped.ci[1] - grouped.ci[0]) > (plain.ci[1] - plain.ci[0])
    assert np.isfinite(grouped.p_value) and "group_mean_rho" in grouped.extra


# ------------------------------------------------------------------------------------------------ verdict and words
def _ev(rho: float, lo: float, hi: float, n: int = 24) -> Evidence:
    return Evidence(rho=rho, ci=(lo, hi), p_value=0.01, n=n, units="models", x_name="robust accuracy",
                    y_name="Gamma'")


def test_verdict_rule_cases():
    assert verdict(_ev(-0.6, -0.8, -0.3)) == REPRODUCED
    assert verdict(_ev(0.6, 0.3, 0.8)) == NOT_REPRODUCED
    assert verdict(_ev(0.01, -0.08, 0.09)) == NOT_REPRODUCED  # reliably negligible
    assert verdict(_ev(-0.2, -0.5, 0.2)) == INCONCLUSIVE
    assert verdict(_ev(-0.05, -0.09, -0.01)) == NOT_REPRODUCED  # excludes zero, but too weak to matter
    assert verdict(_ev(-0.9, -0.99, -0.5, n=4)) == INCONCLUSIVE  # too few units
    assert verdict(_ev(0.6, 0.3, 0.8), expected_sign=1) == REPRODUCED
    disagree = _ev(-0.6, -0.8, -0.3)
    disagree.p_value = 0.2  # bootstrap interval excludes zero, the permutation test does not confirm
    assert verdict(disagree) == INCONCLUSIVE and not evidence.decisive(disagree)
    text = claim_sentence("Robustness", disagree)
    assert " falls " not in text and " rises " not in text and "does not confirm" in text
    for phrase in ("within +-0.1", "inconclusive", "below zero", "permutation p-value is below 0.05"):
        assert phrase in VERDICT_RULE


@pytest.mark.parametrize("rho, expected", [(-0.8, REPRODUCED), (0.0, INCONCLUSIVE), (0.8, NOT_REPRODUCED)])
def test_claim_sentence_follows_the_interval_on_synthetic_tables(rho, expected):
    table = correlated_table(24, rho=rho, seed=11)
    ev = correlation_evidence(table["accuracy"], table["gamma_prime"], units="models", seed=0,
                              x_name="robust accuracy", y_name="Gamma'")
    text = claim_sentence("Robustness (Linf)", ev)
    assert verdict(ev) == expected
    assert text.startswith(f"Robustness (Linf): {expected};")
    # The numbers are always there.
    for piece in (f"{ev.rho:.2f}", f"[{ev.ci[0]:.2f}, {ev.ci[1]:.2f}]", "n = 24 models"):
        assert piece in text
    assert re.search(r"permutation p (= [01]\.\d{3}|< 0\.001)", text)
    has_direction = " falls " in text or " rises " in text
    assert has_direction == evidence.decisive(ev)
    if not ev.excludes_zero:
        assert not has_direction
    if expected == REPRODUCED:
        assert "Gamma' falls as robust accuracy increases" in text
    if expected == NOT_REPRODUCED:
        assert "rises" in text and "opposite" in text
    if expected == INCONCLUSIVE:
        assert "contains zero" in text


def test_claim_sentence_for_negligible_and_partial_evidence():
    text = claim_sentence("Generalisation", _ev(0.0, -0.05, 0.06))
    assert "not reproduced" in text and " falls " not in text and " rises " not in text and "within +-0.1" in text
    part = _ev(-0.5, -0.7, -0.2)
    part.controls = ("clean accuracy", "latent 1-NN accuracy")
    text = claim_sentence("Robustness beyond accuracy", part)
    assert "controlling for clean accuracy and latent 1-NN accuracy" in text and "partial Spearman rho" in text


# --------------------------------------------------------------------------------------------------- 1-NN identity
def test_latent_1nn_accuracy_equals_leave_one_out_knn_on_tie_free_data():
    from sklearn.model_selection import LeaveOneOut, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(7)
    x = rng.normal(size=(90, 5)) + np.repeat(np.eye(5)[:3] * 1.2, 30, axis=0)
    y = np.repeat([0, 1, 2], 30)
    result = compute_kstar(x, y, method="exact", device="cpu")
    knn = cross_val_score(KNeighborsClassifier(n_neighbors=1), x, y, cv=LeaveOneOut()).mean()
    acc = latent_1nn_accuracy(result)
    assert 0.3 < acc < 0.99  # a non-trivial case
    assert acc == pytest.approx(knn)
    assert latent_1nn_accuracy(result.kstar) == acc
    with pytest.raises(KStarInputError):
        latent_1nn_accuracy(np.array([]))


def _simpson_table(seed: int = 0) -> tuple[list, list, list]:
    """6 configurations x 3 seeds: the configuration means rise together, the seeds within each fall steeply."""
    rng = np.random.default_rng(seed)
    x, y, g = [], [], []
    for c in range(6):
        for s in range(3):
            spread = (s - 1) * 10.0
            x.append(c + spread + rng.normal(0, 0.01))
            y.append(c - spread + rng.normal(0, 0.01))
            g.append(c)
    return x, y, g


def test_a_direction_needs_the_group_means_to_share_the_intervals_sign():
    """Simpson's paradox: the pairs' interval lies below zero and the permutation test on the means is significant,
    but the means correlate positively. No direction, and the sentence says the two disagree."""
    x, y, g = _simpson_table()
    ev = correlation_evidence(x, y, units="model-seed pairs", groups=g, group_units="configurations",
                              x_name="accuracy", y_name="Gamma'", seed=0)
    assert ev.ci[1] < 0 and ev.p_value < 0.05 and ev.extra["group_mean_rho"] > 0
    assert not evidence.decisive(ev) and verdict(ev) == INCONCLUSIVE
    text = claim_sentence("Demo", ev)
    assert " falls " not in text and " rises " not in text
    assert "the means of the 6 configurations correlate the other way" in text
    assert "disagree in significance or in sign" in VERDICT_RULE


def test_significant_means_under_an_interval_holding_zero_are_named():
    ev = _ev(-0.1, -0.6, 0.3)
    ev.p_value, ev.n_groups, ev.group_units = 0.03, 8, "configurations"
    ev.extra["group_mean_rho"] = 0.89
    text = claim_sentence("Generalisation", ev)
    assert verdict(ev) == INCONCLUSIVE
    assert "the interval contains zero; the means of the 8 configurations alone do correlate (positively)" in text


def test_holm_adjustment_matches_the_step_down_rule_and_leaves_nan_out():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    adjusted = evidence.holm_adjusted(p)
    # four tests: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> 0.06 (never below an earlier step)
    assert np.allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02]) and np.isnan(adjusted[4])
    assert np.allclose(evidence.holm_adjusted([0.6, 0.9]), [1.0, 1.0])  # capped at 1
    assert evidence.holm_adjusted([]).shape == (0,)


def test_a_partial_test_whose_controls_explain_everything_is_not_made():
    """Six configuration means ordered alike by x and by the control: what is left of x is rounding noise (about
    1e-15), whose correlation with y had come out as rho 0.89, p 0.033. No test is made, and the sentence says why."""
    rng = np.random.default_rng(2)
    config = np.repeat(np.arange(6), 3)

    def around(step):  # seeds spread around their configuration's mean, which rises with the configuration
        noise = rng.normal(0, 0.03, 18)
        return config * step + noise - np.repeat(noise.reshape(6, 3).mean(axis=1), 3)

    x, control = around(0.1), around(0.05)  # ordered alike over the means, not within them
    y = -x + rng.normal(0, 0.05, 18)
    ev_ = evidence.partial_correlation(x, y, {"clean accuracy": control}, groups=config, units="model-seed pairs",
                                       group_units="configurations", n_boot=300, n_perm=500, x_name="accuracy",
                                       y_name="Gamma'")
    assert ev_.extra["explained"] == "means" and ev_.extra["explained_variable"] == "accuracy"
    assert np.isnan(ev_.p_value) and "group_mean_rho" not in ev_.extra
    assert evidence.verdict(ev_) == evidence.INCONCLUSIVE
    sentence = evidence.claim_sentence("Generalisation", ev_)
    assert "not testable over the means of the 6 configurations: there clean accuracy puts them in the same order " \
           "as accuracy" in sentence and "no permutation test" in sentence
    same = evidence.partial_correlation(x, y, {"a copy of x": 2 * x + 1}, n_boot=100, n_perm=100)
    assert same.extra["explained"] == "units" and np.isnan(same.rho)  # nothing of x left at all
    assert np.isnan(evidence.holm_adjusted([0.01, ev_.p_value])[1])  # left out of Holm's family
