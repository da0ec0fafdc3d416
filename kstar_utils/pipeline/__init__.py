"""The pipeline: a typed profile -> a grid of independent tasks run on Dask -> a results store -> aggregated tables.

See :mod:`kstar_utils` for how data flows through the whole house.
"""

from __future__ import annotations

from .profiles import Profile, load_profile, profile_names

__all__ = ["Profile", "load_profile", "profile_names"]
