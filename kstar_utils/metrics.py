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
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    out = {"n": int(a.size), "spearman": math.nan, "spearman_p": math.nan, "pearson": math.nan, "pearson_p": math.nan}
    if a.size >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        sp = stats.spearmanr(a, b)
        pe = stats.pearsonr(a, b)
        out.update(spearman=float(sp.statistic), spearman_p=float(sp.pvalue),
                   pearson=float(pe.statistic), pearson_p=float(pe.pvalue))
    return out
