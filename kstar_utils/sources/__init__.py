"""Feature sources: one module per model family, each turning (model name, weights) into a :class:`FeatureModel`.

``SOURCES`` maps a source name to its loader; :func:`load_source` dispatches. A new family (the built-in study's
locally trained models, say) plugs in with :func:`register_source`.
"""

from __future__ import annotations

from .base import SOURCES, FeatureModel, LayerNotFoundError, WeightsNotFoundError, load_source, register_source

__all__ = ["FeatureModel", "LayerNotFoundError", "WeightsNotFoundError", "register_source", "SOURCES", "load_source"]
