"""kstar_utils: the k* distribution of Kotyan, Chen and Vargas for the latent spaces of vision models.

How data flows (one way, no back and forth)::

    profile (YAML -> typed, pipeline/profiles.py)
      -> task grid (pipeline/tasks.py): one task per (model, data set), plus the zoo's train/evaluate tasks
           data set (datasets.py) -> source (sources/, zoo/) -> extract + feature cache (extract.py, cache.py)
           -> k* engine (kstar.py, neighbours.py, metrics.py) -> one result file, written once under a content key
      -> run on Dask (pipeline/run.py): a LocalCluster sized to the machine, a scheduler address, or in-process
      -> results store (pipeline/results.py): done/, failed/, features/
      -> aggregate (pipeline/aggregate.py, claims.py + evidence.py): tables (CSV), summary.json with verdicts
      -> notebooks (notebooks/, papermill, thin) and per-model pages -> figures (plots.py)
      -> render (report/render.py, Jinja2 templates) -> publish the owned folder at once (report/publish.py)

Shared rooms: errors.py (every exception, rooted at KStarError: the CLI prints those as one line), plumbing.py
(atomic writes, strict JSON, hashing, default folders, device choice), validation.py (every input check of the engine).
The public API is re-exported here; heavy modules (the engine, feature sources, plots, reports) load on first use so
that ``import kstar_utils`` and ``kstar --help`` stay fast (0.3 s against about 7 s when the engine loaded with them).
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib  # noqa: E402
from typing import Any  # noqa: E402

from .errors import ANNAccuracyWarning, KStarError, KStarInputError, KStarWarning, SmallClassWarning  # noqa: E402

# The engine and the statistics load on first use (PEP 562): they import torch, scipy and numba (about 5 s), which
# the command line's help and the pipeline's parent process do not need.
_LAZY = {"KStarResult": "kstar", "compute_kstar": "kstar", "correlation": "metrics", "gamma_approx": "metrics",
         "gamma_true": "metrics", "kstar_skew": "metrics", "pattern_of": "metrics", "per_class_table": "metrics"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
