"""The zoo's data as tensors in [0, 1] (N, C, H, W), built with the same PIL -> ToTensor path the feature source uses."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..datasets import open_dataset


@functools.lru_cache(maxsize=8)
def load_tensors(dataset: str, split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``dataset``/``split`` as float32 [0, 1] and int64 tensors (cached per process)."""
    data = open_dataset(dataset, root, split)
    first = np.asarray(data.image(0))
    images = np.empty((len(data),) + first.shape, dtype=np.uint8)
    for i in range(len(data)):
        images[i] = np.asarray(data.image(i))
    x = torch.from_numpy(images).float().div_(255.0)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.from_numpy(data.labels.copy())


@functools.lru_cache(maxsize=8)
def class_names(dataset: str, root: str | None = None) -> tuple[str, ...]:
    """The class names of ``dataset`` (the same for both splits)."""
    return tuple(open_dataset(dataset, root, "test").classes)
