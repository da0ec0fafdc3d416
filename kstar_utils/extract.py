"""(model, data set) -> labelled feature matrix, batched, cached and resumable.

:func:`extract_features` runs a :class:`~kstar_utils.sources.FeatureModel` over a deterministic per-class subset of a
:class:`~kstar_utils.datasets.LabelledImages` under ``torch.inference_mode()``, on the best device available (CUDA,
then MPS, then CPU) unless told otherwise, in full precision by default or under bf16 / fp16 autocast (the precision,
the compute dtype and the stored feature dtype are recorded in the metadata and the cache key). Batches are saved as
they finish (see :mod:`kstar_utils.cache`), so an interrupted run resumes where it stopped.
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
from .errors import KStarInputError
from .plumbing import atomic_path, atomic_write_text, pick_device, sha256_array, write_json
from .sources.base import FeatureModel, strip_addresses

#: ``amp=True`` (the older switch) means this autocast dtype per device type.
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16, "mps": torch.float16}
#: Precision names -> autocast dtype (None: no autocast, float32 throughout).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_PRECISION_ALIASES = {"float32": "fp32", "32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
                      "16": "fp16"}
#: Features are always stored as float32 (k* needs no more, and autocast outputs are widened losslessly).
FEATURE_DTYPE = "float32"


def resolve_precision(precision: str | None = "fp32", amp: bool | None = None,
                      device: torch.device | None = None) -> str:
    """The precision name (fp32, bf16, fp16) from ``precision`` and the older ``amp`` switch.

    ``amp=True`` with the default precision means the device's usual autocast dtype (fp16 on CUDA and MPS, bf16 on
    CPU), as before; ``amp=True`` with an explicit precision other than fp32 keeps that precision.
    """
    name = "fp32" if precision is None else _PRECISION_ALIASES.get(str(precision).lower(), str(precision).lower())
    if name not in PRECISIONS:
        raise KStarInputError(f"unknown precision {precision!r}; use fp32 (default), bf16 or fp16.")
    if amp and name == "fp32":
        dtype = AMP_DTYPES.get(device.type if device is not None else "cpu", torch.float16)
        name = "bf16" if dtype == torch.bfloat16 else "fp16"
    return name


EXTRACT_FILES = ("features.npy", "labels.npy", "classes.json", "meta.json")  # what ExtractedFeatures.save writes


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
            with atomic_path(out / name) as tmp, tmp.open("wb") as handle:  # a temporary name per writer
                np.save(handle, array, allow_pickle=False)
        atomic_write_text(out / "classes.json", json.dumps(list(self.classes)) + "\n")
        write_json(out / "meta.json", self.meta)
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ExtractedFeatures:
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


def _without_addresses(value: Any) -> Any:
    """Nested identity data with every string freed of memory addresses (``<function f at 0x...>``)."""
    if isinstance(value, dict):
        return {k: _without_addresses(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_addresses(v) for v in value]
    if isinstance(value, str):
        return strip_addresses(value)
    return value


def extraction_spec(model: FeatureModel, data: LabelledImages, indices: np.ndarray, per_class: int | None, seed: int,
                    batch_size: int, device: torch.device, amp: bool | str | None = None,
                    precision: str | None = None) -> dict:
    """Everything that changes the extracted numbers: the cache key is its hash.

    ``precision`` (fp32, bf16, fp16) or the older ``amp`` switch; see :func:`resolve_precision`. No value in it
    depends on the process (memory addresses are stripped), so the key is the same in every run.
    """
    if isinstance(amp, str) and precision is None:  # extraction_spec(..., "bf16") positionally
        amp, precision = None, amp
    name = resolve_precision(precision, bool(amp), device)
    compute = PRECISIONS[name]
    return {
        "source": model.source,
        "model": model.name,
        "identity": _without_addresses(model.identity),
        "layer": model.layer,
        "dataset": data.name,
        "split": data.split,
        "dataset_size": len(data),
        "labels_sha": sha256_array(data.labels),
        "per_class": per_class,
        "seed": seed,
        "indices_sha": sha256_array(indices.astype(np.int64)),
        "dtype": FEATURE_DTYPE,
        "precision": name,
        "compute_dtype": str(compute or torch.float32).replace("torch.", ""),
        "amp": str(compute) if compute is not None else None,
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
    precision: str = "fp32",
) -> ExtractedFeatures:
    """Features of ``model`` on ``data`` (``per_class`` items of each class, drawn with ``seed``), cached.

    ``batch_size`` images per forward pass; ``device`` (None/"auto": CUDA, MPS, CPU); ``num_workers`` DataLoader
    processes decoding images; ``precision`` "fp32" (default), "bf16" or "fp16" (autocast; features are stored as
    float32 either way, and the precision is part of the cache key); ``amp=True`` is the older switch for the
    device's usual autocast dtype. ``cache``: a FeatureCache or folder (default: ``$KSTAR_CACHE`` or
    ~/.cache/kstar/features); False disables it.
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise KStarInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(num_workers, (int, np.integer)) or isinstance(num_workers, bool) or num_workers < 0:
        raise KStarInputError(f"num_workers must be an integer >= 0, got {num_workers!r}.")
    device = pick_device(device)
    precision = resolve_precision(precision, amp, device)
    indices = subsample_per_class(data.labels, per_class, seed)
    labels = data.labels[indices]
    spec = extraction_spec(model, data, indices, per_class, seed, batch_size, device, precision=precision)
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
    compute = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=compute or torch.float32, enabled=compute is not None)
    start = time.perf_counter()
    bar = tqdm(total=len(starts), initial=len(done), unit="batch", disable=not progress,
               desc=f"features {model.source}:{model.name} on {data.name}")
    with torch.inference_mode(), autocast:
        for b, batch in zip(todo, loader):
            out = model.features(batch.to(device, non_blocking=True)).float().cpu().numpy()
            if not np.all(np.isfinite(out)):
                raise FloatingPointError(
                    f"{model.source}:{model.name} produced NaN/inf features in batch {b}"
                    + (f" ({precision} overflow? run with precision fp32)" if precision != "fp32" else "")
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
        "n_samples": len(indices),
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
            per_class: int | None = None, seed: int = 0, *, batch_size: int = 128,
            device: str | torch.device | None = None, num_workers: int = 0, precision: str = "fp32",
            amp: bool = False, cache: FeatureCache | str | os.PathLike | None | bool = None, progress: bool = True,
            **options: Any) -> ExtractedFeatures:
    """One call from names to features: load the source's model and the data set, then :func:`extract_features`.

    ``batch_size``, ``device``, ``num_workers``, ``precision`` ("fp32", "bf16", "fp16"), ``amp``, ``cache`` and
    ``progress`` go to :func:`extract_features`; every other keyword (``pretrained``, ``threat_model``,
    ``model_dir``, ``layer``, ``normalize``, ``model_config``...) goes to the source's loader.
    """
    from .datasets import open_dataset
    from .sources import load_source

    if source == "robustbench":
        options.setdefault("dataset", dataset)
    options.setdefault("progress", progress)
    feature_model = load_source(source, model, **options)
    data = open_dataset(dataset, data_root, split)
    return extract_features(feature_model, data, per_class=per_class, seed=seed, batch_size=batch_size, device=device,
                            amp=amp, num_workers=num_workers, cache=cache, progress=progress, precision=precision)
