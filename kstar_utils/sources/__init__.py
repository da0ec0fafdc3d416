"""Feature sources: one module per model family, each turning (model name, weights) into a :class:`FeatureModel`.

Each source module registers its loader with ``@register_source("name")``; :func:`load_source` imports the built-in
source modules (with ordinary import statements) on first use and dispatches. A new family plugs in the same way.
"""

from __future__ import annotations

from .base import (
                   SOURCES,
                   FeatureModel,
                   LayerNotFoundError,
                   WeightsNotFoundError,
                   load_source,
                   register_source,
                   source_names,
)

__all__ = [
                   "SOURCES",
                   "FeatureModel",
                   "LayerNotFoundError",
                   "WeightsNotFoundError",
                   "load_source",
                   "register_source",
                   "source_names",
]
