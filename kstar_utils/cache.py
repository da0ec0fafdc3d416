"""A content-keyed cache of extracted features, with atomic writes and resumable batches.

An entry is a folder ``CACHE/<key>/`` named by the SHA-256 of everything that changes the numbers (source, model,
weights identity, layer, data set, split, subset, transform, dtype and precision, batch size, device type, library
versions). It holds ``arrays.safetensors`` (features, labels) and ``meta.json`` (written last: an entry without it is
unfinished). While extraction runs, each finished batch is saved as ``partial/batch_NNNNNN.safetensors``; a restarted
extraction loads those and carries on from the first missing batch. ``meta.json`` records the SHA-256 of the arrays
file: an entry whose file does not match (truncated, edited, from another key) is reported and recomputed, never
reused. No pickles anywhere: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from .errors import CacheCorruptionWarning
from .plumbing import atomic_path, atomic_write_text, default_feature_cache_dir, sha256_file, stable_hash

ARRAYS = "arrays.safetensors"
META = "meta.json"


def _atomic_save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


class FeatureCache:
    """Folder-per-entry feature cache. ``entry(spec)`` gives the handle for one extraction."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_feature_cache_dir()

    def entry(self, spec: dict) -> CacheEntry:
        return CacheEntry(self.root / stable_hash(spec), spec)


class CacheEntry:
    """One extraction's cache folder: the finished arrays, or the batches finished so far."""

    def __init__(self, folder: Path, spec: dict):
        self.folder = folder
        self.spec = spec

    @property
    def partial(self) -> Path:
        return self.folder / "partial"

    def load(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """The finished entry (arrays, meta), or None when absent; a corrupt or mismatched entry is discarded."""
        meta_path, arrays_path = self.folder / META, self.folder / ARRAYS
        if self.folder.exists() and not self.folder.is_dir():
            warnings.warn(f"feature cache entry {self.folder} is a file, not a cache folder; replacing it.",
                          CacheCorruptionWarning, stacklevel=2)
            self.discard()
            return None
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            problem = None
            if meta.get("spec") != json.loads(json.dumps(self.spec, default=str)):
                problem = "its key fields do not match this request"
            elif not arrays_path.exists():
                problem = f"{ARRAYS} is missing"
            elif sha256_file(arrays_path) != meta.get("arrays_sha256"):
                problem = f"{ARRAYS} does not match its recorded checksum"
            if problem is None:
                arrays = _load_arrays(arrays_path)
                return arrays, meta
        except (OSError, ValueError, KeyError) as err:  # unreadable JSON or safetensors header
            problem = f"it cannot be read ({type(err).__name__}: {err})"
        warnings.warn(f"cache entry {self.folder} is unusable ({problem}); recomputing it.", CacheCorruptionWarning,
                      stacklevel=2)
        self.discard()
        return None

    def save(self, arrays: dict[str, np.ndarray], meta: dict) -> dict:
        """Write the finished arrays, then meta.json (the commit mark), then drop the partial batches."""
        arrays_path = self.folder / ARRAYS
        _atomic_save_arrays(arrays_path, arrays)
        meta = {**meta, "spec": self.spec, "arrays_sha256": sha256_file(arrays_path)}
        atomic_write_text(self.folder / META, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        shutil.rmtree(self.partial, ignore_errors=True)
        return meta

    def batch_path(self, index: int) -> Path:
        return self.partial / f"batch_{index:06d}.safetensors"

    def save_batch(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        _atomic_save_arrays(self.batch_path(index), arrays)

    def load_batch(self, index: int, expected_rows: int) -> dict[str, np.ndarray] | None:
        """A finished batch from an interrupted run, or None (absent, unreadable or the wrong size)."""
        path = self.batch_path(index)
        if not path.exists():
            return None
        try:
            arrays = _load_arrays(path)
        except Exception:  # noqa: BLE001  (a torn or foreign file, whatever safetensors raises: recompute it)
            path.unlink(missing_ok=True)
            return None
        if any(len(v) != expected_rows for v in arrays.values()):
            path.unlink(missing_ok=True)
            return None
        return arrays

    def discard(self) -> None:
        if self.folder.is_dir() and not self.folder.is_symlink():
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            self.folder.unlink(missing_ok=True)
