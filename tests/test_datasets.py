"""Data sets: built-in digits, torchvision sets from their on-disk formats, image folders, subsampling, offline."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_or_skip
from fixtures_data import write_cifar10, write_mnist_like
from PIL import Image

from kstar_utils.datasets import (
    SYSTEM_IDX_FOLDERS,
    DatasetNotFoundError,
    dataset_names,
    open_dataset,
    subsample_per_class,
)


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


def test_image_folder_and_imagenet_layout(tmp_path, monkeypatch):
    from kstar_utils import datasets

    for split in ("val",):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((10, 10), 40 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    # RobustBench's evaluation list, shortened: the subset in the list's order, labelled by sorted class folder
    monkeypatch.setattr(datasets, "robustbench_imagenet_list", lambda: (["n02/1.png", "n01/0.png", "n01/2.png"], "x"))
    data = open_dataset("imagenet", tmp_path, "test")
    assert data.classes == ["n01", "n02"] and len(data) == 3 and data.labels.tolist() == [1, 0, 0]
    assert data.image(0).mode == "RGB" and data.info["subset_sha256"] == "x"
    assert len(open_dataset("imagenet", tmp_path, "val-all")) == 6
    assert open_dataset("imagefolder", tmp_path / "val", "test").labels.tolist() == [0, 0, 0, 1, 1, 1]
    monkeypatch.setattr(datasets, "robustbench_imagenet_list", lambda: (["n01/0.png", "n03/9.png"], "x"))
    with pytest.raises(DatasetNotFoundError, match=r"1 of RobustBench's 2 ImageNet evaluation images .* n03/9.png"):
        open_dataset("imagenet", tmp_path, "test")


def test_robustbench_imagenet_list_is_the_5000_image_subset():
    from kstar_utils.datasets import robustbench_imagenet_list

    names, sha = robustbench_imagenet_list()
    assert len(names) == len(set(names)) == 5000
    assert all(n.count("/") == 1 and n.startswith("n") and n.endswith(".JPEG") for n in names)
    # the list robustbench 1.1.1 ships, identical to RobustBench's GitHub HEAD 78fcc9e (helper_files)
    assert sha == "d4121626d07722a0126c35b1563042e46a546f1a05ce705f2cdc635896d58574"


def test_missing_data_offline_names_what_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match=r"CIFAR-10 \(test\) is not in .* place cifar-10-python.tar.gz") \
            as found:
        open_dataset("cifar10", tmp_path, "test")
    assert "download=True" not in str(found.value)  # torchvision's advice is not kstar's: it downloads itself


def test_missing_data_with_failing_download_is_reported(tmp_path, monkeypatch):
    import urllib.request

    from kstar_utils.sources import download

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("KSTAR_OFFLINE", raising=False)
    tries = []

    def no_network(request, timeout=None):
        tries.append(request.full_url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    with pytest.raises(DatasetNotFoundError, match=r"downloading https://www.cs.toronto.edu/~kriz/cifar-10-python"
                       r"\.tar\.gz failed \(OSError: network is unreachable\); download it yourself and place it as "
                       r"cifar-10-python.tar.gz in " + str(tmp_path)):
        open_dataset("cifar10", tmp_path, "test")
    assert len(tries) == 3  # retried


def test_downloaded_archive_is_unpacked_by_torchvision(tmp_path, monkeypatch):
    """The archive kstar downloads is the one torchvision's download=True then finds, checks and unpacks."""
    from torchvision.datasets import CIFAR10

    from kstar_utils import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("KSTAR_OFFLINE", raising=False)
    fetched = []

    def fake_download(url, dest, **kwargs):
        fetched.append((url, dest))
        write_cifar10(tmp_path, n_test=20)  # what unpacking the archive gives

    def unpack_only(self):
        assert (tmp_path / "cifar-10-python.tar.gz") in [d for _, d in fetched]

    monkeypatch.setattr(datasets, "download_file", fake_download)
    monkeypatch.setattr(CIFAR10, "download", unpack_only)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    data = open_dataset("cifar10", tmp_path, "test")
    assert len(data) == 20 and fetched == [(CIFAR10.url, tmp_path / "cifar-10-python.tar.gz")]


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
