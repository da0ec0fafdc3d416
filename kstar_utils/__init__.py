"""kstar_utils: the k* distribution of Kotyan, Chen and Vargas for the latent spaces of vision models.

The public API is re-exported here; heavy modules (feature sources, plots, reports) load on first use so that
``import kstar_utils`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ANNAccuracyWarning, KStarError, KStarInputError, KStarWarning, SmallClassWarning  # noqa: E402
from .kstar import KStarResult, compute_kstar  # noqa: E402
from .metrics import correlation, gamma_approx, gamma_true, kstar_skew, pattern_of, per_class_table  # noqa: E402

__all__ = [
    "__version__",
    "ANNAccuracyWarning",
    "KStarResult",
    "compute_kstar",
    "KStarError",
    "KStarInputError",
    "KStarWarning",
    "SmallClassWarning",
    "correlation",
    "gamma_approx",
    "gamma_true",
    "kstar_skew",
    "pattern_of",
    "per_class_table",
]
