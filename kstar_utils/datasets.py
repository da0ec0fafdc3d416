"""Data sets as (images, labels, class names): torchvision sets, ImageFolder trees and the built-in digits.

A data set is opened by name through :func:`open_dataset`; each name maps to a loader in ``DATASETS`` (a registry:
add one with :func:`register_dataset`). Loaders return a :class:`LabelledImages`: a torch Dataset of PIL images
(transforms are the model's business, applied later), the integer label of every item, and the class names.

Offline behaviour: a loader first looks for the files on disk; only when they are missing and downloads are allowed
(not under ``KSTAR_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) does it download the archive torchvision would fetch, with
kstar's own downloader (timeouts sized to the file, retries, resume: STL-10's archive is 2.6 GB), and let torchvision
check and unpack it; if that fails it raises :class:`DatasetNotFoundError` naming the URL, the file and the folder.

ImageNet (``imagenet``) is RobustBench's evaluation subset: the 5,000 validation images listed in robustbench's
``helper_files/imagenet_test_image_ids.txt``, labelled as RobustBench labels them (the index of the class folder in
sorted order), so that the published RobustBench accuracies refer to the same images. Split ``val-all`` gives all
50,000 validation images.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetNotFoundError, KStarInputError
from .plumbing import atomic_path, default_data_dir
from .sources.download import download_file

DOWNLOAD_TIMEOUT_S = 15.0


@dataclass
class LabelledImages:
    """Images and their labels: ``dataset[i]`` is a PIL image, ``labels[i]`` its class index into ``classes``."""

    dataset: Dataset
    labels: np.ndarray
    classes: list[str]
    name: str
    split: str
    root: str | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        item = self.dataset[index]
        return item[0] if isinstance(item, tuple) else item


def offline() -> bool:
    """True when this process must not reach the network (KSTAR_OFFLINE=1 or HF_HUB_OFFLINE=1)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("KSTAR_OFFLINE", "HF_HUB_OFFLINE"))


@contextlib.contextmanager
def short_socket_timeout(seconds: float = DOWNLOAD_TIMEOUT_S) -> Iterator[None]:
    """Make a download with no network fail in seconds rather than after minutes of retries."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


SYSTEM_IDX_FOLDERS = {"FashionMNIST": Path("/usr/share/datasets/fashion-mnist"),  # Debian: dataset-fashion-mnist
                      "MNIST": Path("/usr/share/datasets/mnist")}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def unpack_idx_folder(source: Path, root: Path, class_name: str) -> bool:
    """Copy MNIST-format idx files (gzipped or not, e.g. Debian's) into torchvision's ROOT/<class_name>/raw/ layout.

    Returns True when all four files are in place afterwards. Writes are atomic (temporary file, then rename).
    """
    import gzip
    import shutil

    raw = root / class_name / "raw"
    if all((raw / f).exists() for f in IDX_FILES):
        return True
    if not all((source / f).exists() or (source / f"{f}.gz").exists() for f in IDX_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        target = raw / f
        if target.exists():
            continue
        opener = gzip.open if (source / f"{f}.gz").exists() else open
        # a temporary name of its own: Dask workers preparing the same data set at once must not share one
        with atomic_path(target) as tmp, opener(source / (f"{f}.gz" if opener is gzip.open else f), "rb") as src, \
                tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return True


def _without_download_advice(err: BaseException) -> str:
    """torchvision's own reason a data set is missing, less its advice "You can use download=True": kstar downloads
    itself when online, and offline the remedy is placing the files."""
    text = re.sub(r"\s*You can use download=True to download it\.?", "", str(err)).strip().rstrip(".")
    return text or type(err).__name__


def _torchvision(name: str, factory: Callable[..., Dataset], split_kw: Callable[[str], dict], files: str,
                 classes_of: Callable[[Dataset], Sequence[str]], labels_of: Callable[[Dataset], Sequence[int]]):
    """A loader for one torchvision data set: on-disk first, then (if allowed) a fast-failing download.

    MNIST-format sets are also found as plain or gzipped idx files directly in ``root`` (or, with no root, in the
    folder a system package installs them to) and unpacked into torchvision's layout under the data root.
    """

    def load(root: str | os.PathLike | None, split: str) -> LabelledImages:
        root_path = Path(root) if root else default_data_dir()
        class_name = getattr(factory, "__name__", "")
        if class_name in SYSTEM_IDX_FOLDERS:
            source = Path(root) if root else SYSTEM_IDX_FOLDERS[class_name]
            target = root_path if os.access(root_path if root_path.exists() else root_path.parent, os.W_OK) \
                else default_data_dir()
            if source.is_dir() and unpack_idx_folder(source, target, class_name):
                root_path = target
        kwargs = split_kw(split)
        try:
            ds = factory(root=str(root_path), download=False, **kwargs)
        except (RuntimeError, FileNotFoundError) as missing:
            if offline():
                raise DatasetNotFoundError(
                    f"{name} ({split}) is not in {root_path} ({_without_download_advice(missing)}) and downloads "
                    f"are off (offline); place "
                    f"{files} in {root_path} (or pass --data-root DIR where they are)."
                ) from missing
            for url, dest in archives(factory, root_path, split):
                if not dest.exists():
                    download_file(url, dest, what=f"{name} ({split})", error=DatasetNotFoundError)
            try:
                with short_socket_timeout():  # torchvision checks the archive's MD5 and unpacks it
                    ds = factory(root=str(root_path), download=True, **kwargs)
            except Exception as err:  # network errors come in many types (URLError, OSError, HTTPError, ...)
                raise DatasetNotFoundError(
                    f"{name} ({split}) is not in {root_path} and could not be downloaded or unpacked "
                    f"({type(err).__name__}: {err}); place {files} in {root_path}."
                ) from err
        return LabelledImages(ds, np.asarray(labels_of(ds), dtype=np.int64), list(classes_of(ds)), name, split,
                              str(root_path))

    return load


def archives(factory: Callable[..., Dataset], root: Path, split: str) -> list[tuple[str, Path]]:
    """The (URL, destination) of each file torchvision's ``download=True`` would fetch for this data set and split,
    read from the data-set class (CIFAR, STL-10: ``url``/``filename``; SVHN: ``split_list``; MNIST-format sets:
    ``mirrors``/``resources``). Unknown classes give [] (torchvision downloads those itself)."""
    if hasattr(factory, "url") and hasattr(factory, "filename"):
        return [(factory.url, root / factory.filename)]
    if hasattr(factory, "split_list") and split in factory.split_list:
        url, filename, _md5 = factory.split_list[split]
        return [(url, root / filename)]
    if hasattr(factory, "mirrors") and hasattr(factory, "resources"):
        raw = root / factory.__name__ / "raw"
        return [(f"{factory.mirrors[0]}{filename}", raw / filename) for filename, _md5 in factory.resources]
    return []


def _train_flag(split: str) -> dict:
    if split not in ("train", "test"):
        raise KStarInputError(f"unknown split {split!r}; use 'train' or 'test'.")
    return {"train": split == "train"}


def _split_arg(split: str) -> dict:
    return {"split": split}


def _load_digits(root: str | os.PathLike | None, split: str) -> LabelledImages:
    """scikit-learn's bundled 8x8 digits (1,797 real images), split 2:1 deterministically into train and test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    test = index % 3 == 2
    chosen = index[test] if split == "test" else index[~test] if split == "train" else None
    if chosen is None:
        raise KStarInputError(f"unknown split {split!r}; use 'train' or 'test'.")
    return LabelledImages(ArrayImages(images[chosen]), labels[chosen], [str(d) for d in range(10)], "digits", split,
                          None, {"source": "sklearn.datasets.load_digits"})


class ArrayImages(Dataset):
    """A uint8 array of images (N, H, W) or (N, H, W, C) served as PIL images."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


def _load_image_folder(root: str | os.PathLike | None, split: str) -> LabelledImages:
    """Any one-folder-per-class image tree (ImageNet validation arranged by class included): ROOT/SPLIT/CLASS/*.jpg
    or ROOT/CLASS/*.jpg."""
    from torchvision.datasets import ImageFolder

    if root is None:
        raise DatasetNotFoundError("an image folder needs --data-root DIR (one sub-folder of images per class).")
    base = Path(root)
    folder = base / split if (base / split).is_dir() else base
    if not folder.is_dir():
        raise DatasetNotFoundError(f"image folder {folder} does not exist; pass --data-root DIR.")
    try:
        ds = ImageFolder(str(folder))
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"no class folders with images in {folder}: {err}") from err
    return LabelledImages(ds, np.asarray(ds.targets, dtype=np.int64), list(ds.classes), "imagefolder", split,
                          str(folder))


IMAGENET_LIST = "imagenet_test_image_ids.txt"


def robustbench_imagenet_list() -> tuple[list[str], str]:
    """RobustBench's 5,000 ImageNet evaluation images (``<wnid>/<file>.JPEG``) and the SHA-256 of the list file.

    Read from the installed robustbench package's ``helper_files`` without importing robustbench.
    """
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError("ImageNet's evaluation subset is RobustBench's list of 5,000 images, which ships "
                                   "with robustbench: run scripts/install.sh (robustbench==1.1.1).")
    path = Path(next(iter(spec.submodule_search_locations))) / "helper_files" / IMAGENET_LIST
    text = path.read_text()
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return names, hashlib.sha256(text.encode()).hexdigest()


class FileImages(Dataset):
    """Image files served as RGB PIL images (RobustBench's loader converts to RGB too)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")


def _imagenet(root: str | os.PathLike | None, split: str) -> LabelledImages:
    """ImageNet validation as RobustBench evaluates it: ROOT/val/<wnid>/*.JPEG, the 5,000 images of RobustBench's list
    (split ``test`` or ``val``), or all of the folder (``val-all``); ``train`` reads ROOT/train the same way."""
    if root is None:
        raise DatasetNotFoundError(
            "ImageNet cannot be downloaded automatically; arrange the validation set as DIR/val/<wnid>/*.JPEG "
            "and pass --data-root DIR."
        )
    if split in ("val-all", "train"):
        data = _load_image_folder(root, "val" if split == "val-all" else "train")
        data.name, data.split = "imagenet", split
        return data
    if split not in ("test", "val"):
        raise KStarInputError(f"unknown ImageNet split {split!r}; use test (RobustBench's 5,000 images), val-all or "
                              "train.")
    base = Path(root)
    folder = base / "val" if (base / "val").is_dir() else base
    if not folder.is_dir():
        raise DatasetNotFoundError(f"ImageNet validation folder {folder} does not exist; arrange the validation set "
                                   "as DIR/val/<wnid>/*.JPEG and pass --data-root DIR.")
    classes = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    names, list_sha = robustbench_imagenet_list()
    paths = [folder / n for n in names]
    missing = [n for n, p in zip(names, paths) if n.split("/")[0] not in index or not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of RobustBench's {len(names)} ImageNet evaluation images are not in {folder} (first: "
            f"{missing[0]}); place the ImageNet validation set there as <wnid>/<file>.JPEG."
        )
    labels = np.asarray([index[n.split("/")[0]] for n in names], dtype=np.int64)
    return LabelledImages(FileImages(paths), labels, classes, "imagenet", split, str(folder),
                          {"subset": f"robustbench helper_files/{IMAGENET_LIST}", "subset_sha256": list_sha,
                           "n_images": len(names)})


def _make_torchvision_registry() -> dict[str, Callable[[str | None, str], LabelledImages]]:
    from torchvision import datasets as tv

    def targets(ds):
        return ds.targets

    def svhn_classes(ds):
        return [str(d) for d in range(10)]

    return {
        "cifar10": _torchvision("CIFAR-10", tv.CIFAR10, _train_flag, "cifar-10-python.tar.gz (or its extracted "
                                "cifar-10-batches-py/)", lambda d: d.classes, targets),
        "cifar100": _torchvision("CIFAR-100", tv.CIFAR100, _train_flag, "cifar-100-python.tar.gz (or its extracted "
                                 "cifar-100-python/)", lambda d: d.classes, targets),
        "mnist": _torchvision("MNIST", tv.MNIST, _train_flag, "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                              lambda d: d.classes, lambda d: d.targets.tolist()),
        "fashion-mnist": _torchvision("Fashion-MNIST", tv.FashionMNIST, _train_flag,
                                      "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz)",
                                      lambda d: d.classes, lambda d: d.targets.tolist()),
        "svhn": _torchvision("SVHN", tv.SVHN, _split_arg, "{train,test}_32x32.mat", svhn_classes,
                             lambda d: d.labels.tolist()),
        "stl10": _torchvision("STL-10", tv.STL10, _split_arg, "stl10_binary/ (from stl10_binary.tar.gz)",
                              lambda d: d.classes, lambda d: d.labels.tolist()),
    }


DATASETS: dict[str, Callable[[str | None, str], LabelledImages]] = {
    "digits": _load_digits,
    "imagefolder": _load_image_folder,
    "imagenet": _imagenet,
}
_ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashionmnist": "fashion-mnist",
            "fashion_mnist": "fashion-mnist", "stl-10": "stl10"}


def register_dataset(name: str, loader: Callable[[str | None, str], LabelledImages]) -> None:
    """Add a data set: ``loader(root, split) -> LabelledImages``."""
    DATASETS[name] = loader


def dataset_names() -> list[str]:
    _ensure_torchvision()
    return sorted(DATASETS)


def _ensure_torchvision() -> None:
    if "cifar10" not in DATASETS:
        DATASETS.update(_make_torchvision_registry())


def canonical_dataset_name(name: str) -> str | None:
    """The registered name ``name`` stands for ("CIFAR-10" -> "cifar10"), or None when no data set has it."""
    _ensure_torchvision()
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    return key if key in DATASETS else None


def open_dataset(name: str, root: str | os.PathLike | None = None, split: str = "test") -> LabelledImages:
    """Open data set ``name`` (see :func:`dataset_names`) from ``root`` for ``split`` ('train' or 'test')."""
    key = canonical_dataset_name(name)
    if key is None:
        raise KStarInputError(f"unknown data set {name!r}; choose from {', '.join(sorted(DATASETS))}.")
    return DATASETS[key](root, split)


def subsample_per_class(labels: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``per_class`` items of every class, drawn without replacement with ``seed``, sorted.

    Deterministic: the same labels, ``per_class`` and seed always give the same indices, whatever the platform.
    """
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    if per_class < 1:
        raise KStarInputError(f"per_class must be at least 1, got {per_class}.")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(per_class, len(members))
        chosen.append(np.sort(rng.choice(members, size=take, replace=False)))
    return np.sort(np.concatenate(chosen))
