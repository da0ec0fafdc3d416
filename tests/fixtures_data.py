"""Small data sets and model files that the extraction tests write to disk in their real formats."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """MNIST's idx format: magic (0, 0, dtype 0x08, ndim), big-endian dimensions, then uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def write_mnist_like(folder: Path, n_train: int = 60, n_test: int = 40, gz: bool = False, seed: int = 0) -> Path:
    """Four idx files of 28 x 28 images whose brightness encodes the label (so classes are separable)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.clip(rng.normal(20 * labels[:, None, None], 5, size=(n, 28, 28)), 0, 255).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), gz)
    return folder


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, n_test: int = 50, seed: int = 0, names: list[str] | None = None) -> Path:
    """CIFAR-10's python format: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (pickled dicts)."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = list(names or CIFAR10_NAMES)
    for name, n in [(f"data_batch_{i}", 10) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = (np.arange(n) % 10).tolist()
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        with (base / name).open("wb") as handle:
            pickle.dump({"data": data, "labels": labels}, handle)  # str keys, as Python 2 wrote them
    with (base / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": names}, handle)
    return root


def pyautoattack_resnet18() -> Path:
    """The real CIFAR-10 ResNet-18 that ships inside pyautoattack (standard training, not adversarial)."""
    import importlib.util

    spec = importlib.util.find_spec("pyautoattack")
    return Path(spec.origin).parent / "examples" / "model_test.pt"


def tiny_openclip(folder: Path) -> tuple[str, Path]:
    """Register a tiny OpenCLIP architecture and save a local checkpoint for it; returns (name, weights path)."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    name = "kstar-tiny-vit"
    (folder / f"{name}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    weights = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return name, weights
