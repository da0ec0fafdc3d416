"""Direct tests of the public helpers that the end-to-end tests only reach indirectly."""

from __future__ import annotations

import gzip
import json
import os
import socket
import stat
import sys
import warnings

import numpy as np
import pytest
import torch

from kstar_utils import cache, neighbours, plumbing, validation
from kstar_utils.compat import MissingDependencyError, alias_autoattack, import_open_clip, import_robustbench
from kstar_utils.datasets import (
    ArrayImages,
    LabelledImages,
    open_dataset,
    register_dataset,
    short_socket_timeout,
    unpack_idx_folder,
)


# ---------------------------------------------------------------------------------------------------------- neighbours
def test_resolve_device():
    assert neighbours.resolve_device(None).type in ("cpu", "cuda")
    assert neighbours.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises((RuntimeError, ValueError), match="MPS lacks"):  # KStarInputError since the engine rework
        neighbours.resolve_device("mps")


def test_reduced_precision_settings_are_overridden_and_restored():
    """A user's "medium" precision (TF32 on CUDA, bf16 on CPU via oneDNN) must not reach the exact kernel."""
    from kstar_utils import compute_kstar

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 32)), rng.integers(0, 4, 400)
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        with neighbours.full_float32_precision():
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision) == \
            ("tf32", "bf16")
        np.testing.assert_array_equal(compute_kstar(x, y, method="exact").kstar, neighbours.brute_force_kstar(x, y))
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = before


def test_default_block_size_bounds_memory():
    assert neighbours.default_block_size(10) == 10
    assert neighbours.default_block_size(20_000) * 20_000 * 4 <= 2 * neighbours.DEFAULT_BLOCK_BYTES
    assert neighbours.default_block_size(10_000_000) == neighbours.MIN_BLOCK_ROWS


def test_exact_pair_distances_is_the_direct_form():
    """Equal to numpy's direct form to the bit where the sums are exact (integer data: every tie that occurs in
    practice), and within an ulp otherwise (the summation order is not part of the definition)."""
    rng = np.random.default_rng(0)
    rows, cols = torch.tensor([0, 3, 49, 7]), torch.tensor([1, 3, 0, 20])
    for x in (rng.integers(0, 256, size=(50, 784)).astype(np.float64), rng.normal(size=(50, 7))):
        expected = np.sqrt(((x[rows] - x[cols]) ** 2).sum(axis=1))
        got = neighbours.exact_pair_distances(torch.from_numpy(x), rows, cols).numpy()
        if np.all(x == np.round(x)):
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(got, expected, rtol=4e-16, atol=0)


def test_sorted_features_and_kernel_stats():
    x = np.arange(12, dtype=float).reshape(6, 2)
    data = neighbours.sort_by_class(x, np.array([1, 0, 1, 0, 2, 2]), torch.device("cpu"))
    assert isinstance(data, neighbours.ClassSortedFeatures)
    assert data.order.tolist() == [1, 3, 0, 2, 4, 5] and data.starts.tolist() == [0, 2, 4]
    count, stats = neighbours.exact_counts(data)
    assert isinstance(stats, neighbours.KernelStats) and stats.rows == 6 and len(count) == 6


@pytest.mark.slow
def test_ann_neighbour_graph_is_seeded():
    x = np.random.default_rng(1).normal(size=(300, 5)).astype(np.float32)
    a = neighbours.ann_neighbour_graph(x, 8, seed=2, n_jobs=1)
    b = neighbours.ann_neighbour_graph(x, 8, seed=2, n_jobs=1)
    assert a.shape == (300, 8) and np.array_equal(a, b)
    assert np.mean(a[:, 0] == np.arange(300)) > 0.95  # each point is its own nearest neighbour


# ---------------------------------------------------------------------------------------------------------- validation
def test_validation_helpers():
    assert validation.to_numpy_features(torch.ones(2, 3, dtype=torch.bfloat16)).dtype == np.float64
    assert validation.to_numpy_labels(torch.tensor([1, 2])).tolist() == [1, 2]
    assert validation.to_numpy_labels(np.array([1.0, 2.0])).dtype.kind == "i"
    assert validation.to_numpy_labels(np.array(["a", 3], dtype=object)).tolist() == ["a", "3"]
    checked = validation.check_inputs(np.ones((3, 2)) * [[1], [2], [3]], ["b", "a", "b"])
    assert isinstance(checked, validation.CheckedInput)
    assert checked.classes.tolist() == ["a", "b"] and checked.codes.tolist() == [1, 0, 1]
    assert validation.check_choice("metric", "cosine", validation.METRICS) == "cosine"
    with pytest.raises(validation.KStarInputError, match="unknown method"):
        validation.check_choice("method", "magic", validation.METHODS)


# ------------------------------------------------------------------------------------------------------------ io/cache
def test_json_helpers_and_atomic_writes(tmp_path):
    assert plumbing.json_safe({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": np.int64(3)}) == \
        {"a": None, "b": ["inf", "-inf"], "c": 3}
    plumbing.write_json(tmp_path / "x.json", {"v": np.float32(1.5), "p": tmp_path})
    assert json.loads((tmp_path / "x.json").read_text())["v"] == 1.5
    plumbing.atomic_write_text(tmp_path / "sub" / "t.txt", "hello")
    path = tmp_path / "sub" / "t.txt"
    assert path.read_text() == "hello" and stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others
    assert not list((tmp_path / "sub").glob(".*tmp"))


def test_cache_key_and_entries(tmp_path, monkeypatch):
    assert plumbing.stable_hash({"a": 1, "b": [2, 3]}) == plumbing.stable_hash({"b": [2, 3], "a": 1})
    assert plumbing.stable_hash({"a": 1}) != plumbing.stable_hash({"a": 2})
    monkeypatch.setenv("KSTAR_CACHE", str(tmp_path / "c"))
    assert plumbing.default_feature_cache_dir() == tmp_path / "c"
    entry = cache.FeatureCache().entry({"model": "m"})
    assert isinstance(entry, cache.CacheEntry) and entry.load() is None
    entry.save_batch(0, {"features": np.ones((2, 3), np.float32)})
    assert entry.load_batch(0, 2)["features"].shape == (2, 3)
    assert entry.load_batch(0, 5) is None  # wrong size: discarded
    meta = entry.save({"features": np.zeros((2, 3), np.float32), "labels": np.arange(2)}, {"classes": ["a", "b"]})
    arrays, loaded = entry.load()
    assert loaded["arrays_sha256"] == meta["arrays_sha256"] and arrays["labels"].tolist() == [0, 1]
    mismatched = cache.CacheEntry(entry.folder, {"model": "other"})
    with pytest.warns(cache.CacheCorruptionWarning, match="do not match"):
        assert mismatched.load() is None


# ------------------------------------------------------------------------------------------------------------- compat
def test_autoattack_alias_and_imports(monkeypatch):
    module = alias_autoattack()
    assert sys.modules["autoattack"] is module and "autoattack.state" in sys.modules
    from autoattack import AutoAttack  # the import robustbench makes

    assert AutoAttack.__module__.startswith(("pyautoattack", "autoattack"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the known deprecation noise is absorbed in compat
        assert import_robustbench().__name__ == "robustbench"
    assert import_open_clip().__name__ == "open_clip"
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match="pip install open_clip_torch"):
        import_open_clip()


# ----------------------------------------------------------------------------------------------------------- datasets
def test_dataset_helpers(tmp_path, monkeypatch):
    monkeypatch.setenv("KSTAR_DATA", str(tmp_path / "data"))
    assert plumbing.default_data_dir() == tmp_path / "data"
    with short_socket_timeout(3.0):
        assert socket.getdefaulttimeout() == 3.0
    assert socket.getdefaulttimeout() is None
    images = ArrayImages(np.zeros((2, 4, 4), np.uint8))
    assert len(images) == 2 and images[1].size == (4, 4)
    register_dataset("tiny", lambda root, split: LabelledImages(images, np.array([0, 1]), ["x", "y"], "tiny", split))
    assert open_dataset("tiny").classes == ["x", "y"]


def test_unpack_idx_folder_copies_gzip_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(src / f"{name}.gz", "wb") as handle:
            handle.write(name.encode())
    assert unpack_idx_folder(src, tmp_path / "root", "FashionMNIST")
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == b"t10k-labels-idx1-ubyte"
    assert not unpack_idx_folder(tmp_path / "empty", tmp_path / "other", "FashionMNIST")


def test_two_workers_unpacking_the_same_idx_files_at_once_both_succeed(tmp_path, monkeypatch):
    """Two Dask workers preparing Fashion-MNIST at the same moment (this failed a fashion run: they shared one
    temporary name, so the second rename found its file gone). Each copy is held until both are inside it."""
    import shutil
    import threading

    src = tmp_path / "src"
    src.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (src / name).write_bytes(name.encode())
    barrier, copy = threading.Barrier(2, timeout=10), shutil.copyfileobj

    def copy_together(source, target, *args):
        copy(source, target, *args)
        barrier.wait()  # both writers have written their temporary file; now both rename

    monkeypatch.setattr(shutil, "copyfileobj", copy_together)
    errors: list[BaseException] = []

    def unpack() -> None:
        try:
            assert unpack_idx_folder(src, tmp_path / "root", "FashionMNIST")
        except BaseException as err:  # noqa: BLE001  (collected for the main thread)
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=unpack) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    assert (raw / "t10k-images-idx3-ubyte").read_bytes() == b"t10k-images-idx3-ubyte"


# ------------------------------------------------------------------------------------------------------------ sources
def test_robustbench_helpers(tmp_path):
    from PIL import Image

    from kstar_utils.sources import robustbench as rb

    assert rb.checkpoint_path("M", "cifar10", "L2", tmp_path) == tmp_path / "cifar10" / "L2" / "M.pt"
    assert plumbing.default_robustbench_dir().name == "robustbench" or "KSTAR_ROBUSTBENCH_DIR" in os.environ
    assert "model" in rb.zoo_entry("Standard", "cifar10", "Linf")
    assert rb.ResizeIfNeeded(32)(Image.new("RGB", (40, 20))).size == (32, 32)
    assert rb.input_transform("cifar10")(Image.new("L", (32, 32))).shape == (3, 32, 32)
    assert rb.input_transform("imagenet")(Image.new("RGB", (300, 260))).shape == (3, 224, 224)


def test_state_dicts_load_safely_and_sources_register(tmp_path):
    from safetensors.torch import save_file

    from kstar_utils.errors import KStarInputError, UnsafeCheckpointError
    from kstar_utils.sources import SOURCES, load_source, register_source, source_names
    from kstar_utils.sources.base import load_state_dict

    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "a.pt")
    save_file({"w": torch.zeros(3)}, str(tmp_path / "b.safetensors"))
    assert load_state_dict(tmp_path / "a.pt")["w"].shape == (2,)
    assert load_state_dict(tmp_path / "b.safetensors")["w"].shape == (3,)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pt holds objects .*GLOBAL posix.system"):
        load_state_dict(tmp_path / "evil.pt")  # weights_only=True refuses pickled code

    @register_source("mine")
    def mine(model, **options):
        return ("mine", model)

    assert SOURCES["mine"] is mine and load_source("mine", "m") == ("mine", "m")
    register_source("mine2", mine)
    assert SOURCES["mine2"] is mine
    with pytest.raises(KStarInputError, match="must be a function"):
        register_source("bad", "kstar_utils.sources.pixels:load")
    assert {"robustbench", "openclip", "torchvision", "pixels", "builtin"} <= set(source_names())


# ------------------------------------------------------------------------------------------------------------ extract
def test_extraction_key_covers_what_changes_the_numbers():
    from kstar_utils.extract import extraction_spec, library_versions
    from kstar_utils.sources import load_source

    model = load_source("pixels", "pixels")
    data = open_dataset("digits", split="test")
    idx = np.arange(10)
    base = extraction_spec(model, data, idx, None, 0, 64, torch.device("cpu"), False)
    assert plumbing.stable_hash(base) != plumbing.stable_hash(extraction_spec(model, data, idx, None, 0, 32,
                                                                   torch.device("cpu"), False))
    assert plumbing.stable_hash(base) != plumbing.stable_hash(extraction_spec(model, data, idx[:5], None, 0, 64,
                                                                   torch.device("cpu"), False))
    assert extraction_spec(model, data, idx, None, 0, 64, torch.device("cpu"), True)["amp"] == "torch.bfloat16"
    fp16 = extraction_spec(model, data, idx, None, 0, 64, torch.device("cpu"), precision="fp16")
    assert (fp16["precision"], fp16["compute_dtype"], fp16["dtype"]) == ("fp16", "float16", "float32")
    assert plumbing.stable_hash(fp16) != plumbing.stable_hash(base) and base["precision"] == "fp32"
    assert "torch" in library_versions()


# ---------------------------------------------------------------------------------------------------------------- zoo
def test_zoo_helpers(tmp_path, monkeypatch):
    from kstar_utils.zoo.data import class_names
    from kstar_utils.zoo.models import SmallCNN, build_model
    from kstar_utils.pipeline import load_profile
    from kstar_utils.zoo.study import generalisation_models, model_folder, zoo_models
    from kstar_utils.zoo.train import ZooModelSpec, default_zoo_dir, load_trained, save_trained, train_subset

    monkeypatch.setenv("KSTAR_ZOO", str(tmp_path / "zoo"))
    assert default_zoo_dir() == tmp_path / "zoo"
    small, big = train_subset(100, 0.1, 0), train_subset(100, 0.3, 0)
    assert len(small) == 10 and set(small) <= set(big) and len(train_subset(100, 1.0, 0, limit=40)) == 40
    model = build_model(8, 16)
    assert isinstance(model, SmallCNN) and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    spec = ZooModelSpec(name="x", width=8, latent=16)
    save_trained(tmp_path / "m", model, spec, {"train_seconds": 1.0})
    loaded, meta = load_trained(tmp_path / "m")
    assert torch.equal(loaded.classifier.weight, model.classifier.weight) and meta["key"] == spec.key()
    wide = build_model(8, 16, image_size=28)  # the fourth convolution for 28 x 28 inputs
    save_trained(tmp_path / "w", wide, spec, {})
    back, _ = load_trained(tmp_path / "w")
    x28 = torch.rand(2, 1, 28, 28)
    assert len(back.body) == len(wide.body) > len(model.body) and torch.equal(back.eval()(x28), wide.eval()(x28))
    assert class_names("digits")[3] == "3"
    zoo = load_profile("default").zoo
    models = zoo_models(zoo)
    ids = [m.id for m in models]
    assert len(ids) == len(set(ids)) and {m.seed for m in models} == set(zoo.seeds)
    robust = [m for m in models if m.family == "robustness" and m.config != "standard"]
    assert all(m.threat_models == (m.spec.norm,) for m in robust)  # each robust model under its own threat model
    assert {m.config for m in models if m.config == "standard"} == {"standard"}
    assert {m.spec.train_fraction for m in generalisation_models(zoo)} == {1.0, *zoo.fractions}
    assert model_folder(models[0].spec).parent == tmp_path / "zoo"
