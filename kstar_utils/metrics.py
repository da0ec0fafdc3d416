"""Statistics of k* distributions: per-class skewness and patterns, Gamma and Gamma', and correlations.

Everything follows SPEC: normalised k* = k* / n_c; per class the mean, the population std (ddof = 0) and the biased
Fisher-Pearson skewness (``scipy.stats.skew`` with its defaults); the patterns Fractured / Overlapped / Clustered at a
threshold t; Gamma = skew of the pooled normalised k*; Gamma' = mean of per-class skews with the authors' NaN/inf rule.

Zero variance is decided exactly (all values equal), not by scipy's relative tolerance, so that the SPEC rule
"all equal 1.0 -> -inf, Clustered; otherwise NaN, Overlapped" applies to exactly the classes it names. The same rule
is used for the pooled Gamma (a perfectly separated latent space has Gamma = -inf).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .errors import KStarInputError

FRACTURED = "Fractured"
OVERLAPPED = "Overlapped"
CLUSTERED = "Clustered"
PATTERNS = (FRACTURED, OVERLAPPED, CLUSTERED)
DEFAULT_THRESHOLD = 0.5
REGION_COLOURS = {FRACTURED: "tab:blue", OVERLAPPED: "tab:red", CLUSTERED: "tab:green"}


def kstar_skew(values: np.ndarray) -> float:
    """Skewness of normalised k* values with SPEC's zero-variance rule (all 1.0 -> -inf; other constants -> NaN)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan
    if np.all(v == v[0]):
        return -math.inf if v[0] == 1.0 else math.nan
    return float(stats.skew(v))


def pattern_of(skew: float, threshold: float = DEFAULT_THRESHOLD) -> str:
    """SPEC's pattern of a class from its skew: > t Fractured, < -t Clustered, otherwise (NaN included) Overlapped."""
    if threshold < 0:
        raise KStarInputError(f"the pattern threshold must be non-negative, got {threshold}.")
    if not isinstance(skew, (int, float, np.integer, np.floating)) or isinstance(skew, bool):
        raise KStarInputError(f"a skew is a number, got {skew!r}.")
    if math.isnan(skew):
        return OVERLAPPED
    if skew > threshold:
        return FRACTURED
    if skew < -threshold:
        return CLUSTERED
    return OVERLAPPED


def normalise_kstar(kstar: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """k* / n_c, with n_c the number of samples of the sample's class in the evaluated set."""
    counts = np.bincount(codes)
    return np.asarray(kstar, dtype=np.float64) / counts[codes]


def per_class_table(
    kstar_norm: np.ndarray, codes: np.ndarray, classes: Sequence, threshold: float = DEFAULT_THRESHOLD
) -> pd.DataFrame:
    """One row per class: label, n, mean, std (ddof=0), skew and pattern of its normalised k* distribution."""
    kstar_norm, codes = np.asarray(kstar_norm), np.asarray(codes)
    if kstar_norm.shape != codes.shape:
        raise KStarInputError(f"kstar_norm and codes need one entry per sample: shapes {kstar_norm.shape} and "
                              f"{codes.shape}.")
    empty = [label for code, label in enumerate(classes) if not np.any(codes == code)]
    if empty:
        raise KStarInputError(f"classes {empty!r} have no samples; every class listed needs at least one.")
    rows = []
    for code, label in enumerate(classes):
        v = kstar_norm[codes == code]
        skew = kstar_skew(v)
        rows.append(
            {
                "label": label.item() if hasattr(label, "item") else label,
                "n": int(v.size),
                "mean": float(v.mean()),
                "std": float(v.std(ddof=0)),
                "skew": skew,
                "pattern": pattern_of(skew, threshold),
            }
        )
    return pd.DataFrame(rows, columns=["label", "n", "mean", "std", "skew", "pattern"])


def gamma_true(kstar_norm: np.ndarray) -> float:
    """Gamma_k*: the skewness of the pooled normalised k* of all samples."""
    return kstar_skew(kstar_norm)


def gamma_approx(class_skews: Sequence[float]) -> float:
    """Gamma'_k*: the mean of per-class skews, NaN counted as 0 and +/-inf as the largest/smallest finite skew.

    If no class has a finite skew, infinities stand for themselves (all -inf -> -inf: every class perfectly
    separated) and NaNs count as 0.
    """
    s = np.asarray(class_skews, dtype=np.float64)
    if s.size == 0:
        return math.nan
    finite = s[np.isfinite(s)]
    hi = finite.max() if finite.size else math.inf
    lo = finite.min() if finite.size else -math.inf
    s = np.where(np.isnan(s), 0.0, s)
    s = np.where(s == math.inf, hi, s)
    s = np.where(s == -math.inf, lo, s)
    return float(s.mean())


def pattern_counts(per_class: pd.DataFrame) -> dict[str, int]:
    """Number of fractured, overlapped and clustered classes in a per-class table."""
    counts = per_class["pattern"].value_counts()
    return {p: int(counts.get(p, 0)) for p in PATTERNS}


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson correlation (with p-values) of paired values, NaNs dropped; n is the pairs kept."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise KStarInputError(f"correlation needs two 1-D sequences of paired values, got shapes {a.shape} and "
                              f"{b.shape}.")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    out = {"n": int(a.size), "spearman": math.nan, "spearman_p": math.nan, "pearson": math.nan, "pearson_p": math.nan}
    if a.size >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        sp = stats.spearmanr(a, b)
        pe = stats.pearsonr(a, b)
        out.update(spearman=float(sp.statistic), spearman_p=float(sp.pvalue),
                   pearson=float(pe.statistic), pearson_p=float(pe.pvalue))
    return out


DEFAULT_CONFIDENCE = 0.95
BOOTSTRAP_CHUNK_ELEMENTS = 2**22  # resampled values held at once (replicates x samples): bounded memory
FLOAT32_DRAW_MAX_CLASS = 4096  # see bootstrap_gamma_intervals: above it, float32 draws are not uniform enough


def _skew_from_moments(m2: np.ndarray, m3: np.ndarray, constant: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Skewness m3 / m2^1.5 with SPEC's zero-variance rule: constant and equal to 1.0 -> -inf, other constants NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = m3 / m2**1.5
    return np.where(constant, np.where(value == 1.0, -math.inf, math.nan), skew)


def _replicate_skews(shifted: np.ndarray, values: np.ndarray, pick: np.ndarray, starts: np.ndarray,
                     sizes: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled and per-class skews of resampled replicates (rows of ``pick``, positions into the class-sorted values).

    One pass over the draws: per class, power sums of the values shifted by the class's full-sample mean (so no
    cancellation), and min/max of the draws for SPEC's exact zero-variance test; the pooled moments follow from the
    class moments (the parallel-moments formulas of Chan et al.), without a second pass.
    """
    y = shifted[pick]
    y2 = y * y
    s1 = np.add.reduceat(y, starts, axis=1)
    s2 = np.add.reduceat(y2, starts, axis=1)
    s3 = np.add.reduceat(y2 * y, starts, axis=1)
    lo = np.minimum.reduceat(y, starts, axis=1)
    hi = np.maximum.reduceat(y, starts, axis=1)
    n_c = sizes.astype(np.float64)
    mean = s1 / n_c  # of the shifted values
    big_m2 = np.maximum(s2 - s1 * mean, 0.0)  # sum of squared deviations from the replicate's class mean
    big_m3 = s3 - 3.0 * mean * s2 + 2.0 * n_c * mean**3
    constant = lo == hi
    first = values[pick[:, starts]]  # the value of a constant class
    big_m2 = np.where(constant, 0.0, big_m2)
    big_m3 = np.where(constant, 0.0, big_m3)
    class_skew = _skew_from_moments(big_m2 / n_c, big_m3 / n_c, constant, first)
    class_mean = centre + mean
    total = n_c.sum()
    pooled_mean = (class_mean * n_c).sum(axis=1, keepdims=True) / total
    delta = class_mean - pooled_mean
    pooled_m2 = (big_m2 + n_c * delta**2).sum(axis=1)
    pooled_m3 = (big_m3 + 3.0 * delta * big_m2 + n_c * delta**3).sum(axis=1)
    pooled_constant = constant.all(axis=1) & (first.min(axis=1) == first.max(axis=1))
    pooled = _skew_from_moments(np.where(pooled_constant, 0.0, pooled_m2) / total,
                                np.where(pooled_constant, 0.0, pooled_m3) / total, pooled_constant, first[:, 0])
    return pooled, class_skew


def _gamma_approx_rows(skews: np.ndarray) -> np.ndarray:
    """:func:`gamma_approx` of every row of a (replicates x classes) array of class skews, vectorised."""
    finite = np.isfinite(skews)
    any_finite = finite.any(axis=1)
    hi = np.where(any_finite, np.max(np.where(finite, skews, -math.inf), axis=1), math.inf)
    lo = np.where(any_finite, np.min(np.where(finite, skews, math.inf), axis=1), -math.inf)
    s = np.where(np.isnan(skews), 0.0, skews)
    s = np.where(s == math.inf, hi[:, None], s)
    s = np.where(s == -math.inf, lo[:, None], s)
    with np.errstate(invalid="ignore"):
        return s.mean(axis=1)


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The equal-tailed percentile interval of bootstrap replicates. NaN replicates (an undefined skew) are left out;
    infinite ones are kept (the nearest order statistic is used where interpolating would give inf - inf)."""
    v = values[~np.isnan(values)]
    if v.size == 0:
        return (math.nan, math.nan)
    tail = (1.0 - confidence) / 2.0
    out = []
    for q, fallback in ((tail, "lower"), (1.0 - tail, "higher")):
        with np.errstate(invalid="ignore"):
            value = float(np.quantile(v, q))
        if math.isnan(value):
            value = float(np.quantile(v, q, method=fallback))
        out.append(value)
    return (out[0], out[1])


def bootstrap_gamma_intervals(
    kstar_norm: np.ndarray, labels: Sequence, n_bootstrap: int = 1000, seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict:
    """Bootstrap percentile intervals for Gamma and Gamma' of one latent space.

    What is resampled: the evaluated samples, *within each class*, with replacement; each keeps the normalised k* it
    has in the full set. The neighbour structure is held fixed (k* is not recomputed on the resample): the interval
    says how much Gamma and Gamma' depend on *which* samples of each concept were evaluated, given the latent space.
    Resampling within classes keeps every class size n_c fixed, so the normalisation k* / n_c is unchanged and Gamma'
    keeps its definition (the mean over the same classes of their skews), with SPEC's rule for NaN and +/-inf class
    skews applied in every replicate. Resampling the pooled set instead would let class sizes drift and classes vanish.

    Returns ``{"gamma": (lo, hi), "gamma_prime": (lo, hi), "n_bootstrap": B, "confidence": c, "seed": s}``: the
    equal-tailed percentile interval of each statistic over the B replicates (seeded: the same inputs and seed give
    the same interval). Vectorised: 1,000 replicates of 10,000 samples take a fraction of a second.
    """
    from .validation import check_count, check_fraction

    check_count("n_bootstrap", n_bootstrap, 1)
    check_count("bootstrap_seed", seed, 0)
    check_fraction("confidence", confidence)
    values = np.asarray(kstar_norm, dtype=np.float64)
    labels = np.asarray(labels)
    if values.ndim != 1 or labels.shape != values.shape or values.size == 0:
        raise KStarInputError(
            f"bootstrap needs one label per normalised k* value, got {values.shape} values and {labels.shape} labels."
        )
    _, codes = np.unique(labels, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    sorted_values, sorted_codes = values[order], codes[order]
    sizes = np.bincount(sorted_codes)
    starts = np.cumsum(sizes) - sizes
    n = values.size
    base = starts[sorted_codes]  # for every position of a replicate: its class's first index and size
    span = sizes[sorted_codes]
    centre = np.add.reduceat(sorted_values, starts) / sizes
    shifted = sorted_values - centre[sorted_codes]
    rng = np.random.default_rng(seed)
    # float32 draws have 2^24 levels, so each index of a class of m rows gets 2^24 / m of them, give or take one:
    # uniform to 0.03% below 4,096 rows (and twice as fast); larger classes take float64 draws
    draw_dtype = np.float32 if sizes.max() <= FLOAT32_DRAW_MAX_CLASS else np.float64
    gamma = np.empty(n_bootstrap)
    gamma_prime = np.empty(n_bootstrap)
    chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // n)
    for lo in range(0, n_bootstrap, chunk):
        hi = min(lo + chunk, n_bootstrap)
        offset = (rng.random((hi - lo, n), dtype=draw_dtype) * span).astype(np.int64)  # uniform within each class
        pick = base + np.minimum(offset, span - 1)
        gamma[lo:hi], class_skew = _replicate_skews(shifted, sorted_values, pick, starts, sizes, centre)
        gamma_prime[lo:hi] = _gamma_approx_rows(class_skew)
    return {
        "gamma": _percentile_interval(gamma, confidence),
        "gamma_prime": _percentile_interval(gamma_prime, confidence),
        "n_bootstrap": int(n_bootstrap),
        "confidence": float(confidence),
        "seed": int(seed),
    }
