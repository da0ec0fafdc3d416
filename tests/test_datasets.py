"""Data sets: built-in digits, torchvision sets from their on-disk formats, image folders, subsampling, offline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import require_or_skip
from fixtures_data import write_cifar10, write_mnist_like
from kstar_utils.datasets import (SYSTEM_IDX_FOLDERS, DatasetNotFoundError, dataset_names, open_dataset,
                                  subsample_per_class)


def test_builtin_digits_splits_are_disjoint_and_real():
    train, test = open_dataset("digits", split="train"), open_dataset("digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == 599
    assert test.classes == [str(d) for d in range(10)]
    image = test.image(0)
    assert isinstance(image, Image.Image) and image.size == (8, 8)
    assert set(np.unique(test.labels)) == set(range(10))


def test_registry_lists_every_promised_data_set():
    assert {"cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "stl10", "imagenet", "imagefolder",
            "digits"} <= set(dataset_names())


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, gz):
    write_mnist_like(tmp_path / "raw-files", gz=gz)
    data = open_dataset("mnist", tmp_path / "raw-files", "test")
    assert len(data) == 40 and data.image(3).size == (28, 28)
    np.testing.assert_array_equal(data.labels, np.arange(40) % 10)


def test_cifar10_from_its_python_format(tmp_path, monkeypatch):

    write_cifar10(tmp_path)
    # Our files are in the real format but not the real bytes: skip only torchvision's md5 comparison.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    data = open_dataset("cifar-10", tmp_path, "test")
    assert len(data) == 50 and data.classes[0] == "airplane" and data.image(0).size == (32, 32)


def test_image_folder_and_imagenet_layout(tmp_path):
    for split in ("val",):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((10, 10, 3), 40 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    data = open_dataset("imagenet", tmp_path, "test")
    assert data.classes == ["n01", "n02"] and len(data) == 6
    assert open_dataset("imagefolder", tmp_path / "val", "test").labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_missing_data_offline_names_what_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match=r"CIFAR-10 \(test\) is not in .* place cifar-10-python.tar.gz"):
        open_dataset("cifar10", tmp_path, "test")


def test_missing_data_with_failing_download_is_reported(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("KSTAR_OFFLINE", raising=False)

    def no_network(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", no_network)
    with pytest.raises(DatasetNotFoundError, match="could not be downloaded.*network is unreachable"):
        open_dataset("cifar10", tmp_path, "test")


def test_unknown_data_set():
    with pytest.raises(ValueError, match="unknown data set"):
        open_dataset("cifar11")


def test_per_class_subsample_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(5), [30, 10, 50, 3, 20])
    a = subsample_per_class(labels, 8, seed=1)
    assert np.array_equal(a, subsample_per_class(labels, 8, seed=1))
    assert not np.array_equal(a, subsample_per_class(labels, 8, seed=2))
    assert np.bincount(labels[a]).tolist() == [8, 8, 8, 3, 8]
    assert np.all(np.diff(a) > 0)
    assert len(subsample_per_class(labels, None)) == len(labels)
    with pytest.raises(ValueError):
        subsample_per_class(labels, 0)


def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    require_or_skip(SYSTEM_IDX_FOLDERS["FashionMNIST"].is_dir(), "Debian package dataset-fashion-mnist")
    monkeypatch.setenv("KSTAR_DATA", str(tmp_path))
    data = open_dataset("fashion-mnist", split="test")
    assert len(data) == 10_000 and data.classes[0] == "T-shirt/top"
    assert np.bincount(data.labels).tolist() == [1000] * 10
