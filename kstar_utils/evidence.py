"""Statistics behind the report's claims: intervals for accuracies and correlations, partial correlations, and a
verdict per claim decided by a rule stated in words (:data:`VERDICT_RULE`).

Why this module exists: a correlation printed without its uncertainty invites reading a direction into noise. Every
function here returns the estimate *with* its interval, its p-value and the number and kind of units it was computed
over, and :func:`claim_sentence` only uses a direction word ("falls", "rises") where the interval excludes zero.

Conventions
-----------
* Correlations are Spearman's rho (the decision statistic; robust to outliers and monotone transforms of accuracy)
  with Pearson's r alongside. Pairs with a NaN or an infinity in either value are dropped; ``n`` counts the pairs kept.
* Intervals are percentile bootstrap intervals over the *units* (models, or model-seed pairs); with ``groups`` the
  bootstrap resamples whole groups (e.g. all seeds of one configuration), because seeds of one configuration are not
  independent evidence.
* p-values are two-sided permutation p-values, exact (every permutation) when n! <= n_perm.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .errors import KStarInputError

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
# Half-width of the band around zero inside which a correlation is too weak to carry a claim (|rho| < 0.1 is
# "negligible" on every common scale of effect sizes).
NEGLIGIBLE = 0.1
# Below this many units the verdict is "inconclusive": with 4 units no two-sided permutation test can reach p < 0.05
# (the smallest possible p is 2/24), and percentile bootstrap intervals are too narrow on so few points.
MIN_UNITS = 5
CONFIDENCE = 0.95  # of every interval; the tests' level is 1 - CONFIDENCE
# Resamples of the correlations' bootstrap intervals and permutations of their tests (the report states both).
CORRELATION_BOOT = 2000
PERMUTATIONS = 10000


def verdict_rule(expected_sign: int = -1, negligible: float = NEGLIGIBLE, confidence: float = CONFIDENCE) -> str:
    """The verdict rule in words, for the report to print beside the verdicts it decides."""
    side = "below" if expected_sign < 0 else "above"
    other = "above" if expected_sign < 0 else "below"
    pct = f"{confidence:.0%}"
    alpha = f"{1 - confidence:.2g}"
    paper = " (the paper's direction: Gamma' falls as robustness or generalisation rises)" if expected_sign < 0 \
        else " (the expected direction)"
    return (f"Verdict rule: a claim is decided by the {pct} bootstrap interval of Spearman's rho (the partial rank "
            f"correlation for claims stated controlling for other variables) over the stated units, checked by a "
            f"permutation test (where the units are grouped, e.g. the seeds of one configuration, the test permutes "
            f"the group means, the independent units, and their correlation must have the interval's sign). \"Not "
            f"reproduced\" when the whole interval lies within +-{negligible:g} of zero (a relation too weak to "
            f"matter). Otherwise \"reproduced\" when the whole interval lies {side} zero"
            f"{paper} and the permutation p-value is below {alpha}; \"not reproduced\" when the whole interval lies "
            f"{other} zero (the opposite direction) and p is below {alpha}; \"inconclusive\" in every other case "
            f"(the interval contains zero, the two tests disagree in significance or in sign, or there are fewer than "
            f"{MIN_UNITS} units). "
            f"Directions (\"falls\", \"rises\") are only stated for reproduced or opposite results.")


VERDICT_RULE = verdict_rule()


@dataclass
class Evidence:
    """A correlation with its uncertainty: what a claim about a relation needs to be stated honestly."""

    rho: float                      # Spearman's rho (or the partial rank correlation)
    ci: tuple[float, float]         # bootstrap interval of rho
    p_value: float                  # two-sided permutation p-value of rho
    n: int                          # number of units (pairs) used
    units: str                      # what one unit is, e.g. "models" or "model-seed pairs"
    pearson: float = math.nan       # Pearson's r (or the partial linear correlation)
    pearson_ci: tuple[float, float] = (math.nan, math.nan)
    confidence: float = CONFIDENCE
    n_boot: int = 0
    n_perm: int = 0
    exact_permutation: bool = False
    n_groups: int | None = None     # with ``groups``: the number of clusters resampled
    group_units: str = "groups"     # what one cluster is, e.g. "configurations" (its seeds are the units)
    controls: tuple[str, ...] = ()  # partial correlations: what was controlled for
    method: str = "spearman"
    x_name: str = "x"
    y_name: str = "y"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of zero."""
        lo, hi = self.ci
        return bool(np.isfinite(lo) and np.isfinite(hi) and (hi < 0 or lo > 0))

    def to_dict(self) -> dict:
        """Plain types for JSON (use :func:`kstar_utils.plumbing.json_safe` for the NaNs)."""
        out = asdict(self)
        out["ci"] = list(self.ci)
        out["pearson_ci"] = list(self.pearson_ci)
        out["controls"] = list(self.controls)
        return out


# ------------------------------------------------------------------------------------------------------- accuracies
def wilson_interval(successes: Any, n: Any, confidence: float = CONFIDENCE) -> tuple[Any, Any]:
    """Wilson score interval of a binomial proportion (an accuracy of ``successes`` out of ``n``), vectorised.

    Preferred over the normal (Wald) interval because it stays inside [0, 1] and keeps its coverage near 0% and 100%
    accuracy, where robust and clean accuracies of small evaluations often sit. Returns (lo, hi): floats for scalar
    input, arrays otherwise; NaN where n == 0.
    """
    k = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    if not 0 < confidence < 1:
        raise KStarInputError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    if np.any(m < 0) or np.any(k < 0) or np.any(k > m):
        raise KStarInputError("wilson_interval needs 0 <= successes <= n; pass counts, not percentages.")
    z = stats.norm.ppf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        denom = 1 + z ** 2 / m
        centre = (p + z ** 2 / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z ** 2 / (4 * m ** 2)) / denom
        lo = np.where(m > 0, np.clip(centre - half, 0, 1), np.nan)
        hi = np.where(m > 0, np.clip(centre + half, 0, 1), np.nan)
        lo = np.where(k == 0, np.where(m > 0, 0.0, np.nan), lo)  # exact ends, free of rounding
        hi = np.where((k == m) & (m > 0), 1.0, hi)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def accuracy_interval(accuracy: Any, n: Any, confidence: float = CONFIDENCE) -> tuple[Any, Any]:
    """Wilson interval of accuracies given as fractions in [0, 1] over ``n`` evaluated samples each.

    The count of successes is ``round(accuracy * n)`` (accuracies in the results tables are stored as fractions).
    """
    a = np.asarray(accuracy, dtype=np.float64)
    if np.any((a < 0) | (a > 1)):
        raise KStarInputError("accuracies must be fractions in [0, 1]; divide percentages by 100.")
    return wilson_interval(np.rint(a * np.asarray(n, dtype=np.float64)), n, confidence)


def add_accuracy_intervals(frame: pd.DataFrame, accuracy: str, n: str | int,
                           confidence: float = CONFIDENCE) -> pd.DataFrame:
    """A copy of ``frame`` with ``{accuracy}_lo`` and ``{accuracy}_hi`` (Wilson) columns, which the figures draw as
    error bars; ``n`` is a column name or one sample size for every row."""
    out = frame.copy()
    sizes = out[n] if isinstance(n, str) else np.full(len(out), n)
    acc = out[accuracy].to_numpy(dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    lo = np.full(len(out), np.nan)
    hi = np.full(len(out), np.nan)
    ok = np.isfinite(acc) & np.isfinite(sizes) & (sizes > 0)
    if ok.any():
        lo[ok], hi[ok] = accuracy_interval(acc[ok], sizes[ok], confidence)
    out[f"{accuracy}_lo"] = lo
    out[f"{accuracy}_hi"] = hi
    return out


# ----------------------------------------------------------------------------------------------------- correlations
def _rows_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN where a row is constant)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=-1) / den, np.nan)


def _clean_pairs(x: Any, y: Any, *more: Any) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(v, dtype=np.float64) for v in (x, y, *more)]
    n = len(arrays[0])
    for a in arrays:
        if len(a) != n:
            raise KStarInputError(f"paired values must have equal lengths, got {[len(v) for v in arrays]}.")
    keep = np.ones(n, dtype=bool)
    for a in arrays:
        keep &= np.isfinite(a) if a.ndim == 1 else np.isfinite(a).all(axis=1)
    return tuple(a[keep] for a in arrays) + (keep,)


def _boot_indices(n: int, n_boot: int, rng: np.random.Generator, groups: np.ndarray | None) -> list[np.ndarray] | np.ndarray:
    """Bootstrap index sets: i.i.d. over units, or over whole groups (cluster bootstrap). An (n_boot, n) array when
    every resample has the same size (no groups, or groups of equal size such as seeds), else a list of arrays."""
    if groups is None:
        return rng.integers(0, n, size=(n_boot, n))
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    picks = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    sizes = {len(m) for m in members}
    if len(sizes) == 1:
        table = np.stack(members)  # (G, m)
        return table[picks].reshape(n_boot, -1)
    return [np.concatenate([members[g] for g in row]) for row in picks]


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size < 10:
        return (math.nan, math.nan)
    alpha = (1 - confidence) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))


def _permutation_p(a: np.ndarray, b: np.ndarray, observed: float, n_perm: int,
                   rng: np.random.Generator) -> tuple[float, bool]:
    """Two-sided p-value of corr(a, b) by permuting ``b``: exact when n! <= n_perm, else Monte Carlo with the
    (1 + hits) / (1 + n_perm) correction, so that p is never 0."""
    n = len(a)
    if not np.isfinite(observed) or n < 3:
        return math.nan, False
    tol = 1e-12
    if math.factorial(n) <= n_perm:
        perms = np.array(list(itertools.permutations(range(n))))
        r = _rows_corr(np.broadcast_to(a, perms.shape), b[perms])
        return float(np.mean(np.abs(r) >= abs(observed) - tol)), True
    hits = 0
    done = 0
    chunk = max(1, min(n_perm, 2_000_000 // max(n, 1)))
    while done < n_perm:
        m = min(chunk, n_perm - done)
        perms = rng.permuted(np.broadcast_to(np.arange(n), (m, n)), axis=1)
        r = _rows_corr(np.broadcast_to(a, perms.shape), b[perms])
        hits += int(np.sum(np.abs(r) >= abs(observed) - tol))
        done += m
    return (1 + hits) / (1 + n_perm), False


def correlation_evidence(x: Any, y: Any, units: str = "models", n_boot: int = CORRELATION_BOOT,
                         n_perm: int = PERMUTATIONS,
                         seed: int = 0, groups: Any = None, confidence: float = CONFIDENCE,
                         x_name: str = "x", y_name: str = "y", group_units: str = "groups") -> Evidence:
    """Spearman's rho and Pearson's r of paired values, each with a bootstrap interval, and a permutation p-value.

    ``units`` names what one pair is ("models", "model-seed pairs", "(model, data set) pairs"); it is carried into
    every sentence about the result, because a correlation over 8 models and one over 24 model-seed pairs answer
    different questions. With ``groups`` (one label per pair, e.g. the configuration each seed belongs to) the
    bootstrap resamples whole groups, and the permutation test shuffles the group means (the independent units), so
    that several seeds of one configuration are not counted as independent evidence; ``group_units`` names the groups
    in sentences ("configurations"), which say that p comes from the group means and give those means' rho.
    """
    g_in = None if groups is None else np.asarray(groups)
    if g_in is not None and len(g_in) != len(np.asarray(x)):
        raise KStarInputError(f"groups needs one label per pair: {len(g_in)} labels for {len(np.asarray(x))} pairs.")
    a, b, keep = _clean_pairs(x, y)
    g = None if g_in is None else g_in[keep]
    n = len(a)
    ev = Evidence(rho=math.nan, ci=(math.nan, math.nan), p_value=math.nan, n=int(n), units=units,
                  confidence=confidence, n_boot=int(n_boot), n_perm=int(n_perm), x_name=x_name, y_name=y_name,
                  seed=int(seed), n_groups=None if g is None else len(np.unique(g)), group_units=group_units)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return ev
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    ev.rho = float(_rows_corr(ra, rb))
    ev.pearson = float(_rows_corr(a, b))
    rng = np.random.default_rng(seed)
    idx = _boot_indices(n, n_boot, rng, g)
    if isinstance(idx, np.ndarray):
        ba, bb = a[idx], b[idx]
        boot_rho = _rows_corr(stats.rankdata(ba, axis=1), stats.rankdata(bb, axis=1))
        boot_r = _rows_corr(ba, bb)
    else:
        boot_rho = np.array([_rows_corr(stats.rankdata(a[i]), stats.rankdata(b[i])) for i in idx], dtype=float)
        boot_r = np.array([_rows_corr(a[i], b[i]) for i in idx], dtype=float)
    ev.ci = _percentile_ci(boot_rho, confidence)
    ev.pearson_ci = _percentile_ci(boot_r, confidence)
    if g is None:
        ev.p_value, ev.exact_permutation = _permutation_p(ra, rb, ev.rho, n_perm, rng)
    else:
        frame = pd.DataFrame({"g": g, "a": a, "b": b}).groupby("g").mean()
        ga, gb = stats.rankdata(frame["a"].to_numpy()), stats.rankdata(frame["b"].to_numpy())
        observed = float(_rows_corr(ga, gb)) if len(frame) >= 3 else math.nan
        ev.p_value, ev.exact_permutation = _permutation_p(ga, gb, observed, n_perm, rng)
        ev.extra["group_mean_rho"] = observed
    return ev


def _as_controls(controls: Any, n: int) -> tuple[np.ndarray, tuple[str, ...]]:
    if isinstance(controls, Mapping):
        names = tuple(str(k) for k in controls)
        cols = [np.asarray(v, dtype=np.float64) for v in controls.values()]
    elif isinstance(controls, pd.DataFrame):
        names = tuple(str(c) for c in controls.columns)
        cols = [controls[c].to_numpy(dtype=np.float64) for c in controls.columns]
    else:
        arr = np.asarray(controls, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        elif arr.ndim == 2 and arr.shape[0] != n and arr.shape[1] == n:
            arr = arr.T
        names = tuple(f"control {i + 1}" for i in range(arr.shape[1]))
        cols = [arr[:, i] for i in range(arr.shape[1])]
    if not cols or any(len(c) != n for c in cols):
        raise KStarInputError(f"controls need one value per pair ({n}); pass a dict of name -> values.")
    return np.column_stack(cols), names


def _residualise(v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Residuals of v (..., n) after least squares on the columns of z (..., n, k) with an intercept."""
    design = np.concatenate([np.ones(z.shape[:-1] + (1,)), z], axis=-1)
    if design.ndim == 2:
        coef = np.linalg.lstsq(design, v, rcond=None)[0]
        return v - design @ coef
    pinv = np.linalg.pinv(design)  # (..., k+1, n)
    coef = np.einsum("bkn,bn->bk", pinv, v)
    return v - np.einsum("bnk,bk->bn", design, coef)


def _explained(residual: np.ndarray, values: np.ndarray) -> bool:
    """The controls explain ``values`` completely: what is left is rounding noise (about 1e-15 of their spread). Its
    correlation with anything would be a number without meaning, so the test is not made."""
    spread = float(np.linalg.norm(values - np.mean(values)))
    return spread == 0 or float(np.linalg.norm(residual)) <= 1e-9 * spread


def partial_correlation(x: Any, y: Any, controls: Any, method: str = "spearman", units: str = "models",
                        n_boot: int = CORRELATION_BOOT, n_perm: int = PERMUTATIONS, seed: int = 0,
                        confidence: float = CONFIDENCE,
                        x_name: str = "x", y_name: str = "y", groups: Any = None,
                        group_units: str = "groups") -> Evidence:
    """Correlation of x and y after removing what ``controls`` explain linearly (in ranks for ``spearman``).

    Why: Gamma' following robust accuracy may only restate that the model is accurate (the fraction of samples with
    k* >= 2 *is* the latent 1-NN accuracy). The partial correlation answers what Gamma' adds beyond clean accuracy and
    latent 1-NN accuracy. Method: rank-transform x, y and every control (``spearman``) or keep values
    (``pearson``), regress x and y on the controls with an intercept, and correlate the residuals. The interval
    re-ranks and re-fits inside every bootstrap resample; the p-value permutes the residuals of x (an approximate
    test, as usual for partial correlations). ``rho`` holds the partial correlation of the chosen method and
    ``pearson`` the linear partial correlation. ``controls``: a dict name -> values (names go into the sentence),
    a DataFrame, or an array (n,) or (n, k). ``groups`` works as in :func:`correlation_evidence`: whole groups are
    resampled, and the permutation test runs on the group means.
    """
    if method not in ("spearman", "pearson"):
        raise KStarInputError(f"unknown method {method!r}; use 'spearman' or 'pearson'.")
    z_all, names = _as_controls(controls, len(np.asarray(x)))
    g_in = None if groups is None else np.asarray(groups)
    if g_in is not None and len(g_in) != len(np.asarray(x)):
        raise KStarInputError(f"groups needs one label per pair: {len(g_in)} labels for {len(np.asarray(x))} pairs.")
    a, b, z, keep = _clean_pairs(x, y, z_all)
    g = None if g_in is None else g_in[keep]
    n, k = len(a), z.shape[1]
    ev = Evidence(rho=math.nan, ci=(math.nan, math.nan), p_value=math.nan, n=int(n), units=units,
                  confidence=confidence, n_boot=int(n_boot), n_perm=int(n_perm), controls=names, method=method,
                  x_name=x_name, y_name=y_name, seed=int(seed),
                  n_groups=None if g is None else len(np.unique(g)), group_units=group_units)
    if n < k + 4 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return ev

    def transform(v: np.ndarray) -> np.ndarray:
        return stats.rankdata(v, axis=-1) if method == "spearman" else v

    ta, tb, tz = transform(a), transform(b), np.column_stack([transform(z[:, j]) for j in range(k)])
    ea, eb = _residualise(ta, tz), _residualise(tb, tz)
    x_gone, y_gone = _explained(ea, ta), _explained(eb, tb)
    if x_gone or y_gone:  # nothing of x (or y) is left beyond the controls
        ev.extra.update(explained="units", explained_variable=x_name if x_gone else y_name)
        return ev
    ev.rho = float(_rows_corr(ea, eb))
    ev.pearson = float(_rows_corr(_residualise(a, z), _residualise(b, z)))
    rng = np.random.default_rng(seed)
    idx = _boot_indices(n, n_boot, rng, g)
    if isinstance(idx, np.ndarray):
        ba, bb, bz = a[idx], b[idx], z[idx]  # (B, m), (B, m), (B, m, k)
        tbz = np.stack([transform(bz[..., j]) for j in range(k)], axis=-1)
        boot = _rows_corr(_residualise(transform(ba), tbz), _residualise(transform(bb), tbz))
        boot_lin = _rows_corr(_residualise(ba, bz), _residualise(bb, bz))
    else:
        boot, boot_lin = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
        for i, rows in enumerate(idx):
            za = np.column_stack([transform(z[rows, j]) for j in range(k)])
            boot[i] = _rows_corr(_residualise(transform(a[rows]), za), _residualise(transform(b[rows]), za))
            boot_lin[i] = _rows_corr(_residualise(a[rows], z[rows]), _residualise(b[rows], z[rows]))
    ev.ci = _percentile_ci(boot, confidence)
    ev.pearson_ci = _percentile_ci(boot_lin, confidence)
    if g is None:
        ev.p_value, ev.exact_permutation = _permutation_p(ea, eb, ev.rho, n_perm, rng)
    else:
        means = pd.DataFrame(np.column_stack([a, b, z])).groupby(g).mean().to_numpy()
        if len(means) >= k + 4:
            gz = np.column_stack([transform(means[:, 2 + j]) for j in range(k)])
            ma, mb = transform(means[:, 0]), transform(means[:, 1])
            ga, gb = _residualise(ma, gz), _residualise(mb, gz)
            x_gone, y_gone = _explained(ga, ma), _explained(gb, mb)
            if x_gone or y_gone:
                # e.g. 6 configuration means ordered alike by accuracy and by the control: their residuals are
                # rounding noise, and a permutation test of noise (it had given rho 0.89, p 0.033) tests nothing
                ev.extra.update(explained="means", explained_variable=x_name if x_gone else y_name)
            else:
                observed = float(_rows_corr(ga, gb))
                ev.p_value, ev.exact_permutation = _permutation_p(ga, gb, observed, n_perm, rng)
                ev.extra["group_mean_rho"] = observed
    return ev


def correlations_by(frame: pd.DataFrame, x: str, y: str, by: str | None, units: str = "models",
                    group: str | None = None, **kwargs: Any) -> pd.DataFrame:
    """One row of evidence per value of ``by`` (e.g. per data set, or per threat model), plus an "all" row when
    ``by`` is None: columns by, n, units, rho, ci_lo, ci_hi, p_value, pearson, verdict-free. ``group`` names a column
    for the cluster bootstrap (e.g. "config" when rows are model-seed pairs)."""
    parts = [("all", frame)] if by is None else list(frame.groupby(by, sort=False))
    rows = []
    for key, part in parts:
        ev = correlation_evidence(part[x], part[y], units=units, groups=None if group is None else part[group],
                                  x_name=x, y_name=y, **kwargs)
        rows.append({"by": key, "n": ev.n, "units": ev.units, "rho": ev.rho, "ci_lo": ev.ci[0], "ci_hi": ev.ci[1],
                     "p_value": ev.p_value, "pearson": ev.pearson, "n_groups": ev.n_groups})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------- verdict
def verdict(evidence: Evidence, expected_sign: int = -1, negligible: float = NEGLIGIBLE) -> str:
    """"reproduced", "not reproduced" or "inconclusive", decided from the interval by :func:`verdict_rule`.

    ``expected_sign`` is the paper's direction of the correlation between Gamma' and the accuracy on the x axis:
    -1, since Gamma' falls (better clustering) as robustness or generalisation rises.
    """
    if expected_sign not in (-1, 1):
        raise KStarInputError(f"expected_sign must be -1 or +1, got {expected_sign!r}.")
    lo, hi = evidence.ci
    if evidence.n < MIN_UNITS or not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE
    if -negligible <= lo and hi <= negligible:
        return NOT_REPRODUCED
    if not decisive(evidence):
        return INCONCLUSIVE
    side = -1 if hi < 0 else 1  # decisive: the interval lies on one side of zero
    return REPRODUCED if side == expected_sign else NOT_REPRODUCED


def decisive(evidence: Evidence) -> bool:
    """True when the interval excludes zero *and* the permutation test agrees (p below 1 - confidence), with enough
    units: the only case in which a direction may be stated. Both are asked for because percentile bootstrap
    intervals are too narrow on few units, where the exact permutation test is not. Where the test ran on group
    means, their correlation must also have the interval's sign: a two-sided p of means that rise together says
    nothing for pairs that fall within each group (Simpson's paradox), so such a split is not a direction."""
    if not (evidence.excludes_zero and evidence.n >= MIN_UNITS and _test_significant(evidence)):
        return False
    means = evidence.extra.get("group_mean_rho")
    return means is None or not np.isfinite(means) or np.sign(means) == np.sign(evidence.ci[0])


def format_number(v: float, digits: int = 2) -> str:
    """A correlation (or any value) as the report prints it: fixed digits, "n/a" for NaN, never "-0.00"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    s = f"{v:.{digits}f}"
    return s.lstrip("-") if float(s) == 0 else s


def format_p(p: float) -> str:
    """p-values as a reader compares them with 0.05: three decimals, and "< 0.001" below that."""
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def holm_adjusted(p_values: Any) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries are left out of the family and stay NaN).

    Why: the report tests several correlations per claim, each at 0.05; an adjusted p below 0.05 keeps the family's
    chance of any false "reproduced" below 0.05 as well, whatever the dependence between the tests."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    known = np.flatnonzero(np.isfinite(p))
    order = known[np.argsort(p[known], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _p_is(p: float) -> str:
    """ "p = 0.035", or "p < 0.001" below that."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def evidence_brief(evidence: Evidence) -> str:
    """rho, its interval and p in one short line ("rho = -0.88 [-0.93, -0.49], p = 0.003"), for a small panel's
    title; :func:`evidence_numbers` gives n, the units and what p tested."""
    lo, hi = evidence.ci
    return f"rho = {format_number(evidence.rho)} [{format_number(lo)}, {format_number(hi)}], {_p_is(evidence.p_value)}"


def evidence_numbers(evidence: Evidence, short: bool = False) -> str:
    """The numbers of a piece of evidence in one parenthesis: rho, interval, p, n and units (``short``: "p" without
    naming the permutation test, for figure titles).

    With grouped units the interval resamples groups but p permutes the group means, a different statistic: the
    text says so and gives the means' rho beside p, so that a reader never pairs a rho with a p that did not test it.
    """
    name = "partial Spearman rho" if evidence.controls and evidence.method == "spearman" else (
        "partial Pearson r" if evidence.controls else "Spearman rho")
    lo, hi = evidence.ci
    head = (f"{name} = {format_number(evidence.rho)}, {evidence.confidence:.0%} CI "
            f"[{format_number(lo)}, {format_number(hi)}]")
    p = _p_is(evidence.p_value)
    if not evidence.n_groups:
        perm = "" if short else ("exact permutation " if evidence.exact_permutation else "permutation ")
        return f"{head}, {perm}{p}, n = {evidence.n} {evidence.units}"
    unit = f"n = {evidence.n} {evidence.units} in {evidence.n_groups} {evidence.group_units}"
    if evidence.extra.get("explained") == "means":
        return (f"{head}, {unit}; no permutation test: on the means of the {evidence.n_groups} "
                f"{evidence.group_units} the controls leave nothing to test")
    if short:
        return f"{head}, {unit}; {p} (means of the {evidence.n_groups} {evidence.group_units})"
    perm = "exact permutation" if evidence.exact_permutation else "permutation"
    means = evidence.extra.get("group_mean_rho")
    of_means = f" (rho of the means = {format_number(means)})" if means is not None and np.isfinite(means) else ""
    return f"{head}, {unit}; {perm} {p} on the means of the {evidence.n_groups} {evidence.group_units}{of_means}"


def claim_sentence(claim: str, evidence: Evidence, expected_sign: int = -1, negligible: float = NEGLIGIBLE,
                   x_name: str | None = None, y_name: str | None = None) -> str:
    """One sentence for the report: the claim, its verdict, a direction only where the interval excludes zero (and the
    permutation test agrees, see :func:`decisive`), and the numbers (rho, CI, p, n, units) always.

    ``claim`` is a short name ("Robustness (Linf)"); ``x_name`` / ``y_name`` default to the evidence's names, e.g.
    "robust accuracy" and "Gamma'".
    """
    x = x_name or evidence.x_name
    y = y_name or evidence.y_name
    v = verdict(evidence, expected_sign, negligible)
    nums = evidence_numbers(evidence)
    control = f", controlling for {' and '.join(evidence.controls)}" if evidence.controls else ""
    lo, hi = evidence.ci
    explained = evidence.extra.get("explained")
    if explained:
        over = f"over the means of the {_groups(evidence)}" if explained == "means" else f"over the {evidence.units}"
        controls = " and ".join(evidence.controls)
        which = x if evidence.extra.get("explained_variable") == evidence.x_name else y
        body = (f"not testable {over}: there {controls} put{'s' if len(evidence.controls) == 1 else ''} them in "
                f"the same order as {which}, so nothing is left to correlate, and this design cannot separate the "
                "two")
    elif evidence.n < MIN_UNITS or not (np.isfinite(lo) and np.isfinite(hi)):
        body = f"too few units to tell how {y} relates to {x}{control}"
    elif -negligible <= lo and hi <= negligible:
        body = (f"no relation of note between {y} and {x}{control}: the whole interval lies within "
                f"+-{negligible:g} of zero")
    elif decisive(evidence):
        direction = "falls" if hi < 0 else "rises"
        opposite = "" if v == REPRODUCED else " - the opposite of the paper's claim"
        body = f"{y} {direction} as {x} increases{control}{opposite}"
    elif evidence.excludes_zero and _means_significant(evidence):
        body = (f"no direction can be read between {y} and {x}{control}: the interval lies "
                f"{'below' if hi < 0 else 'above'} zero, but the means of the {_groups(evidence)} correlate the other "
                f"way, so the relation within them and the relation between them disagree")
    elif evidence.excludes_zero:
        body = (f"no direction can be read between {y} and {x}{control}: the interval excludes zero but the "
                f"permutation test does not confirm it")
    else:
        body = f"no direction can be read between {y} and {x}{control}: the interval contains zero"
        if _means_significant(evidence):
            body += (f"; the means of the {_groups(evidence)} alone do correlate "
                     f"({'negatively' if evidence.extra['group_mean_rho'] < 0 else 'positively'}), which the "
                     f"interval over all units does not confirm")
    return f"{claim}: {v}; {body} ({nums})."  # no capitalising: the body may start with a variable's name


def _test_significant(evidence: Evidence) -> bool:
    """The permutation p-value is below 1 - confidence."""
    p = evidence.p_value
    return bool(p is not None and np.isfinite(p) and p < significance_level(evidence.confidence))


def significance_level(confidence: float = CONFIDENCE) -> float:
    """The tests' level, 1 - confidence, as the rule prints it (0.05, not 1 - 0.95 = 0.05000000000000004: an exact
    permutation p of 36/720 = 0.05 is not below it)."""
    return round(1 - confidence, 12)


def _means_significant(evidence: Evidence) -> bool:
    """The permutation test ran on group means and is below its level (whatever the interval says)."""
    means = evidence.extra.get("group_mean_rho")
    return bool(means is not None and np.isfinite(means) and _test_significant(evidence))


def _groups(evidence: Evidence) -> str:
    return f"{evidence.n_groups} {evidence.group_units}" if evidence.n_groups else "groups"


# ---------------------------------------------------------------------------------------------- confound control
def latent_1nn_accuracy(kstar: Any) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of the latent space, read off k*: the fraction of samples with
    k* >= 2 (their nearest neighbour, self excluded, is of their own class).

    Exact on data without distance ties (SPEC, "Known properties"); with ties at the nearest-neighbour distance SPEC
    counts the tie against the sample, so this is then the pessimistic 1-NN accuracy. Used as a control variable:
    part of "Gamma' follows accuracy" is built into the metric through this identity. Accepts a KStarResult or an
    array of k* values.
    """
    values = np.asarray(getattr(kstar, "kstar", kstar))
    if values.size == 0:
        raise KStarInputError("latent_1nn_accuracy needs at least one k* value.")
    return float(np.mean(values >= 2))


__all__ = [
    "CONFIDENCE",
    "INCONCLUSIVE",
    "NEGLIGIBLE",
    "NOT_REPRODUCED",
    "REPRODUCED",
    "VERDICTS",
    "VERDICT_RULE",
    "Evidence",
    "accuracy_interval",
    "add_accuracy_intervals",
    "claim_sentence",
    "holm_adjusted",
    "correlation_evidence",
    "correlations_by",
    "evidence_numbers",
    "format_number",
    "format_p",
    "latent_1nn_accuracy",
    "partial_correlation",
    "significance_level",
    "verdict",
    "verdict_rule",
    "wilson_interval",
]
