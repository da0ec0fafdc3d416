"""(model, data set) -> labelled feature matrix, batched, cached and resumable.

:func:`extract_features` runs a :class:`~kstar_utils.sources.FeatureModel` over a deterministic per-class subset of a
:class:`~kstar_utils.datasets.LabelledImages` under ``torch.inference_mode()``, on the best device available (CUDA,
then MPS, then CPU) unless told otherwise, optionally in mixed precision (recorded in the metadata and the cache key).
Batches are saved as they finish (see :mod:`kstar_utils.cache`), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .cache import FeatureCache
from .datasets import LabelledImages, subsample_per_class
from .plumbing import atomic_write_text, pick_device, sha256_array, write_json
from .sources.base import FeatureModel

AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16, "mps": torch.float16}


@dataclass
class ExtractedFeatures:
    """Features (N, D) float32, integer labels (N,), class names and the metadata of how they were made."""

    features: np.ndarray
    labels: np.ndarray
    classes: list[str]
    meta: dict = field(default_factory=dict)

    def label_names(self) -> np.ndarray:
        return np.asarray(self.classes, dtype=str)[self.labels]

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write features.npy, labels.npy, classes.json and meta.json (what ``kstar compute`` reads)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, array in (("features.npy", self.features), ("labels.npy", self.labels)):
            tmp = out / f".{name}.tmp.npy"
            np.save(tmp, array, allow_pickle=False)
            os.replace(tmp, out / name)
        atomic_write_text(out / "classes.json", json.dumps(list(self.classes)) + "\n")
        write_json(out / "meta.json", self.meta)
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ExtractedFeatures":
        f = Path(folder)
        return cls(np.load(f / "features.npy", allow_pickle=False), np.load(f / "labels.npy", allow_pickle=False),
                   json.loads((f / "classes.json").read_text()), json.loads((f / "meta.json").read_text()))


class _TransformedSubset(Dataset):
    """The chosen items of a data set, as model inputs."""

    def __init__(self, data: LabelledImages, indices: np.ndarray, transform):
        self.data, self.indices, self.transform = data, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.transform(self.data.image(int(self.indices[position])))


def library_versions() -> dict:
    """Versions of the libraries that extracted numbers depend on (from package metadata)."""
    from .kstar import versions

    return versions(("torch", "torchvision", "open_clip_torch", "robustbench", "timm", "kstar_utils"))


def extraction_spec(model: FeatureModel, data: LabelledImages, indices: np.ndarray, per_class: int | None, seed: int,
                    batch_size: int, device: torch.device, amp: bool) -> dict:
    """Everything that changes the extracted numbers: the cache key is its hash."""
    return {
        "source": model.source,
        "model": model.name,
        "identity": model.identity,
        "layer": model.layer,
        "dataset": data.name,
        "split": data.split,
        "dataset_size": len(data),
        "labels_sha": sha256_array(data.labels),
        "per_class": per_class,
        "seed": seed,
        "indices_sha": sha256_array(indices.astype(np.int64)),
        "dtype": "float32",
        "amp": str(AMP_DTYPES[device.type]) if amp and device.type in AMP_DTYPES else None,
        "batch_size": batch_size,
        "device_type": device.type,
        "versions": {k: v for k, v in library_versions().items() if k != "python"},
    }


def extract_features(
    model: FeatureModel,
    data: LabelledImages,
    per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    amp: bool = False,
    num_workers: int = 0,
    cache: FeatureCache | str | os.PathLike | None | bool = None,
    progress: bool = True,
) -> ExtractedFeatures:
    """Features of ``model`` on ``data`` (``per_class`` items of each class, drawn with ``seed``), cached.

    ``cache``: a FeatureCache or folder (default: ``$KSTAR_CACHE`` or ~/.cache/kstar/features); False disables it.
    """
    device = pick_device(device)
    indices = subsample_per_class(data.labels, per_class, seed)
    labels = data.labels[indices]
    spec = extraction_spec(model, data, indices, per_class, seed, batch_size, device, amp)
    entry = None
    if cache is not False:
        store = cache if isinstance(cache, FeatureCache) else FeatureCache(cache if cache not in (None, True) else None)
        entry = store.entry(spec)
        hit = entry.load()
        if hit is not None:
            arrays, meta = hit
            return ExtractedFeatures(arrays["features"], arrays["labels"], meta["classes"], {**meta, "cache": "hit"})
    starts = list(range(0, len(indices), batch_size))
    done: dict[int, np.ndarray] = {}
    if entry is not None:
        for b, lo in enumerate(starts):
            arrays = entry.load_batch(b, min(batch_size, len(indices) - lo))
            if arrays is not None:
                done[b] = arrays["features"]
    todo = [b for b in range(len(starts)) if b not in done]
    dataset = _TransformedSubset(data, indices, model.transform)
    loader = DataLoader(dataset, batch_sampler=[list(range(starts[b], min(starts[b] + batch_size, len(indices))))
                                                for b in todo],
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    model.to(device)
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES.get(device.type, torch.float16), enabled=amp)
    start = time.perf_counter()
    bar = tqdm(total=len(starts), initial=len(done), unit="batch", disable=not progress,
               desc=f"features {model.source}:{model.name} on {data.name}")
    with torch.inference_mode(), autocast:
        for b, batch in zip(todo, loader):
            out = model.features(batch.to(device, non_blocking=True)).float().cpu().numpy()
            if not np.all(np.isfinite(out)):
                raise FloatingPointError(
                    f"{model.source}:{model.name} produced NaN/inf features in batch {b}"
                    + (" (mixed precision overflow? run without --amp)" if amp else "")
                )
            done[b] = out
            if entry is not None:
                entry.save_batch(b, {"features": out})
            bar.update(1)
    bar.close()
    features = np.concatenate([done[b] for b in range(len(starts))]) if starts else np.zeros((0, 0), np.float32)
    meta = {
        **spec,
        "classes": list(data.classes),
        "n_samples": int(len(indices)),
        "n_features": int(features.shape[1]) if features.ndim == 2 else 0,
        "device": str(device),
        "num_workers": num_workers,
        "info": model.info,
        "seconds": round(time.perf_counter() - start, 3),
        "resumed_batches": len(starts) - len(todo),
        "indices": indices.tolist(),
    }
    if entry is not None:
        meta = entry.save({"features": features.astype(np.float32), "labels": labels.astype(np.int64)}, meta)
        meta["cache"] = "miss"
    return ExtractedFeatures(features.astype(np.float32), labels.astype(np.int64), list(data.classes), meta)


def extract(source: str, model: str, dataset: str, split: str = "test", data_root: str | None = None,
            per_class: int | None = None, seed: int = 0, **options: Any) -> ExtractedFeatures:
    """One call from names to features: load the source's model and the data set, then :func:`extract_features`."""
    from .datasets import open_dataset
    from .sources import load_source

    extract_keys = {"batch_size", "device", "amp", "num_workers", "cache", "progress"}
    run = {k: options.pop(k) for k in list(options) if k in extract_keys}
    if source == "robustbench":
        options.setdefault("dataset", dataset)
    feature_model = load_source(source, model, **options)
    data = open_dataset(dataset, data_root, split)
    return extract_features(feature_model, data, per_class=per_class, seed=seed, **run)
