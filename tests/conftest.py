"""Test-wide settings: offline hubs, a numba cache, and helpers shared by the test modules."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "kstar-numba"))
os.environ.setdefault("TQDM_DISABLE", "1")

from kstar_utils.validation import SmallClassWarning  # noqa: E402

REQUIRE_SYSTEM_DEPS = os.environ.get("KSTAR_REQUIRE_SYSTEM_DEPS") == "1"


def require_or_skip(available: bool, what: str) -> None:
    """Skip a test whose system dependency is missing, except in CI, where .ci/run installs it and it must run."""
    if not available:
        if REQUIRE_SYSTEM_DEPS:
            pytest.fail(f"{what} is missing although KSTAR_REQUIRE_SYSTEM_DEPS=1 (.ci/run installs it)")
        pytest.skip(f"{what} is not installed")


@contextmanager
def isolated_kstar_home(root: Path) -> Iterator[Path]:
    """Every kstar cache (zoo, features, results, data) under ``root`` and downloads off, for one module's tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KSTAR_HOME", str(root))
    for variable in ("KSTAR_ZOO", "KSTAR_CACHE", "KSTAR_RESULTS"):
        mp.delenv(variable, raising=False)
    mp.setenv("KSTAR_OFFLINE", "1")
    try:
        yield root
    finally:
        mp.undo()


def torch_threads_after_in_worker(work) -> tuple[int, object]:
    """Run ``work()`` in a fresh thread set to one torch thread (as a Dask worker's task thread is); return the torch
    thread count that thread sees afterwards and what ``work`` returned. The caller's count is restored."""
    import threading

    import torch

    before = torch.get_num_threads()
    seen: list = []

    def task():
        torch.set_num_threads(1)
        value = work()
        seen.append((torch.get_num_threads(), value))

    try:
        worker = threading.Thread(target=task)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(before)
    return seen[0]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _quiet_small_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallClassWarning)
        yield
