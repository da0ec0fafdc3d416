"""Direct tests of small public helpers (plumbing, compat, data-set and source helpers, errors) that other tests only
reach indirectly: what each one promises in its docstring, its edge cases and the messages a user sees."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kstar_utils import plumbing
from kstar_utils.compat import HF_HUB_TIMEOUTS, configure_hf_hub
from kstar_utils.datasets import DATASETS, FileImages, archives, canonical_dataset_name
from kstar_utils.errors import (
    ANNAccuracyWarning,
    CacheCorruptionWarning,
    KStarError,
    KStarInputError,
    KStarWarning,
    SmallClassWarning,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from kstar_utils.extract import resolve_precision
from kstar_utils.plumbing import (
    atomic_path,
    atomic_write_bytes,
    cuda_device_count,
    default_results_dir,
    json_float,
    json_safe,
    kstar_home,
    sha256_array,
    to_json,
)
from kstar_utils.sources import torchvision_models
from kstar_utils.sources.base import strip_addresses
from kstar_utils.sources.torchvision_models import named_state_dict
from kstar_utils.tile_kernels import torch_threads_kept


def _leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write could leave behind (``.<name>.*.tmp``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------------------- atomic_path
def test_atomic_path_renames_a_temporary_file_from_the_same_folder(tmp_path):
    """The temporary file lies beside the target (so the rename is atomic), hidden, and becomes the target on
    success; missing parent folders are made."""
    target = tmp_path / "new" / "deeper" / "out.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert tmp.name.startswith(".out.json.") and tmp.name.endswith(".tmp")
        assert not target.exists()  # readers never see the file before it is whole
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert not tmp.exists() and _leftovers(target.parent) == []


def test_atomic_path_failure_keeps_the_old_file_and_leaves_nothing(tmp_path):
    """A write that fails half-way leaves the previous version intact and no temporary file behind."""
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_path_interrupt_creates_no_file(tmp_path):
    """Ctrl-C (a BaseException) cleans up too, and a target that did not exist still does not."""
    target = tmp_path / "never.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", [0o666, 0o640])
def test_atomic_path_gives_the_file_normal_permissions(tmp_path, mode):
    """mkstemp makes 0600 files; a result must be as readable as any other file (mode less the umask)."""
    target = tmp_path / "shared.txt"
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_text("x")
    assert target.stat().st_mode & 0o777 == mode & ~plumbing._UMASK


# ------------------------------------------------------------------------------------------------ atomic_write_bytes
def test_atomic_write_bytes_writes_and_replaces_exact_bytes(tmp_path):
    target = tmp_path / "sub" / "blob.bin"
    atomic_write_bytes(target, b"\x00\xff first")
    assert target.read_bytes() == b"\x00\xff first"
    atomic_write_bytes(target, b"\x80second, not UTF-8 \xfe")
    assert target.read_bytes() == b"\x80second, not UTF-8 \xfe"
    assert _leftovers(target.parent) == []


def test_atomic_write_bytes_failure_keeps_the_old_file(tmp_path):
    """A write that raises (here: text where bytes are due) must not truncate the previous file."""
    target = tmp_path / "blob.bin"
    target.write_bytes(b"previous")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


# -------------------------------------------------------------------------------------------------------- json_float
def test_json_float_reads_back_what_json_safe_wrote():
    """null -> NaN and "inf"/"-inf" -> infinities: strict JSON round-trips every float."""
    values = [float("nan"), float("inf"), float("-inf"), 1.5, np.float32(2.0), 0]
    back = [json_float(v) for v in json.loads(to_json(values))]
    assert json_safe(values) == [None, "inf", "-inf", 1.5, 2.0, 0]
    assert math.isnan(back[0]) and back[1] == math.inf and back[2] == -math.inf
    assert back[3:] == [1.5, 2.0, 0.0] and all(type(v) is float for v in back)


def test_json_float_rejects_what_is_not_a_number():
    with pytest.raises(ValueError):
        json_float("many")


# ------------------------------------------------------------------------------------------------------ sha256_array
def test_sha256_array_is_a_short_sha256_of_the_c_order_bytes():
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    full = hashlib.sha256(a.tobytes()).hexdigest()
    assert sha256_array(a) == full[:16]
    assert sha256_array(a, length=64) == full
    assert sha256_array(a, length=8) == full[:8]


def test_sha256_array_depends_on_values_not_on_memory_layout():
    """A Fortran-ordered copy or a transposed view identifies the same selection as its C-ordered equal."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert sha256_array(np.asfortranarray(a)) == sha256_array(a)
    assert sha256_array(a.T) == sha256_array(np.ascontiguousarray(a.T))
    assert sha256_array(a.T) != sha256_array(a)  # same bytes in memory, other values in C order
    changed = a.copy()
    changed[2, 3] += 1
    assert sha256_array(changed) != sha256_array(a)


# ------------------------------------------------------------------------------------------------- default folders
def test_kstar_home_honours_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("KSTAR_HOME", str(tmp_path / "home"))
    assert kstar_home() == tmp_path / "home"


def test_kstar_home_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("KSTAR_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kstar_home() == tmp_path / ".cache" / "kstar"


def test_an_empty_kstar_home_counts_as_unset(monkeypatch, tmp_path):
    """``KSTAR_HOME= kstar ...`` must not scatter caches into the current folder."""
    monkeypatch.setenv("KSTAR_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kstar_home() == tmp_path / ".cache" / "kstar"


def test_default_results_dir_variable_then_home(monkeypatch, tmp_path):
    """$KSTAR_RESULTS wins; unset or empty, the store is $KSTAR_HOME/results."""
    monkeypatch.setenv("KSTAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KSTAR_RESULTS", str(tmp_path / "store"))
    assert default_results_dir() == tmp_path / "store"
    monkeypatch.setenv("KSTAR_RESULTS", "")
    assert default_results_dir() == tmp_path / "home" / "results"
    monkeypatch.delenv("KSTAR_RESULTS")
    assert default_results_dir() == tmp_path / "home" / "results"


# ------------------------------------------------------------------------------------------------ cuda_device_count
def test_cuda_device_count_counts_available_devices(monkeypatch):
    """One worker per GPU: the count torch reports, but 0 when CUDA is not usable (a driver-less build can report
    devices it cannot use)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_device_count() == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_device_count() == 0


def test_cuda_device_count_without_torch_is_zero(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert cuda_device_count() == 0


# ------------------------------------------------------------------------------------------------- configure_hf_hub
@pytest.fixture
def hf_env(monkeypatch):
    """The two hub variables unset for one test, and restored afterwards (even though the function sets them)."""
    for name in HF_HUB_TIMEOUTS:
        monkeypatch.setenv(name, "0")  # records the original value for undo
        monkeypatch.delenv(name)
    return monkeypatch


def _fake_constants(monkeypatch, etag, download):
    module = types.ModuleType("huggingface_hub.constants")
    module.DEFAULT_ETAG_TIMEOUT, module.DEFAULT_DOWNLOAD_TIMEOUT = 10, 10
    module.HF_HUB_ETAG_TIMEOUT, module.HF_HUB_DOWNLOAD_TIMEOUT = etag, download
    monkeypatch.setitem(sys.modules, "huggingface_hub.constants", module)
    return module


def test_configure_hf_hub_sets_kstar_timeouts_when_unset(hf_env):
    hf_env.delitem(sys.modules, "huggingface_hub.constants", raising=False)
    assert configure_hf_hub() == {"HF_HUB_ETAG_TIMEOUT": 10, "HF_HUB_DOWNLOAD_TIMEOUT": 60}
    assert os.environ["HF_HUB_ETAG_TIMEOUT"] == "10" and os.environ["HF_HUB_DOWNLOAD_TIMEOUT"] == "60"


def test_configure_hf_hub_keeps_the_users_values(hf_env):
    hf_env.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "300")
    constants = _fake_constants(hf_env, etag=10, download=10)
    assert configure_hf_hub() == {"HF_HUB_ETAG_TIMEOUT": 10, "HF_HUB_DOWNLOAD_TIMEOUT": 300}
    assert os.environ["HF_HUB_DOWNLOAD_TIMEOUT"] == "300"
    assert constants.HF_HUB_DOWNLOAD_TIMEOUT == 300  # the already-imported hub sees it too


def test_configure_hf_hub_patches_an_imported_hub_only_where_it_holds_defaults(hf_env):
    """huggingface_hub reads the variables once at import; if it was imported first, its constants are updated,
    unless someone already changed them from the hub's defaults."""
    constants = _fake_constants(hf_env, etag=10, download=10)
    configure_hf_hub()
    assert (constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT) == (10, 60)
    changed = _fake_constants(hf_env, etag=10, download=25)  # a value someone set on purpose
    configure_hf_hub()
    assert changed.HF_HUB_DOWNLOAD_TIMEOUT == 25


# ---------------------------------------------------------------------------------------------------------- archives
def test_archives_reads_urls_and_files_from_torchvision_classes(tmp_path):
    from torchvision import datasets as tv

    assert archives(tv.CIFAR10, tmp_path, "test") == [
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", tmp_path / "cifar-10-python.tar.gz")]
    assert archives(tv.STL10, tmp_path, "train") == [(tv.STL10.url, tmp_path / "stl10_binary.tar.gz")]
    assert archives(tv.SVHN, tmp_path, "test") == [
        ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", tmp_path / "test_32x32.mat")]
    mnist = archives(tv.MNIST, tmp_path, "test")
    assert [dest for _, dest in mnist] == [tmp_path / "MNIST" / "raw" / f"{name}.gz" for name in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    assert all(url == tv.MNIST.mirrors[0] + dest.name for url, dest in mnist)  # the first mirror, one URL per file


def test_archives_of_unknown_classes_or_splits_are_empty(tmp_path):
    """Nothing to fetch ahead: torchvision handles those itself (or reports the bad split)."""
    from torchvision import datasets as tv

    assert archives(tv.SVHN, tmp_path, "validation") == []
    assert archives(tv.ImageFolder, tmp_path, "test") == []


# -------------------------------------------------------------------------------------------------------- FileImages
def test_file_images_serves_every_file_as_rgb(tmp_path):
    """Grey, palette and RGBA files all come out RGB, as RobustBench's loader gives them, in the order given."""
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 6), 200, np.uint8), mode="L").save(grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.tile(np.array([10, 20, 30, 255], np.uint8), (5, 3, 1)), mode="RGBA").save(rgba)
    palette = tmp_path / "palette.gif"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).convert("P").save(palette)
    images = FileImages(iter([grey, rgba, palette]))  # any sequence, even a one-pass iterator
    assert len(images) == 3
    first, second, third = images[0], images[1], images[2]
    assert {first.mode, second.mode, third.mode} == {"RGB"}
    assert first.size == (6, 4) and first.getpixel((0, 0)) == (200, 200, 200)
    assert second.size == (3, 5) and second.getpixel((2, 4)) == (10, 20, 30)
    assert np.asarray(third).shape == (2, 2, 3)


def test_file_images_reports_a_missing_file(tmp_path):
    images = FileImages([tmp_path / "gone.JPEG"])
    with pytest.raises(FileNotFoundError):
        images[0]
    with pytest.raises(IndexError):
        images[1]


# ------------------------------------------------------------------------------------------- canonical_dataset_name
@pytest.mark.parametrize("name, expected", [
    ("CIFAR-10", "cifar10"), ("cifar10", "cifar10"), ("Cifar-100", "cifar100"), ("FashionMNIST", "fashion-mnist"),
    ("fashion_mnist", "fashion-mnist"), ("STL-10", "stl10"), ("digits", "digits"), ("ImageNet", "imagenet"),
    ("nope", None), ("cifar 10", None), ("", None),
])
def test_canonical_dataset_name(name, expected):
    assert canonical_dataset_name(name) == expected


def test_canonical_dataset_name_finds_registered_sets(monkeypatch):
    """A data set added at run time is found under its name (any case); the registry is restored afterwards."""
    monkeypatch.setitem(DATASETS, "mine", lambda root, split: None)
    assert canonical_dataset_name("Mine") == "mine"
    assert canonical_dataset_name(7) is None  # not a string: no data set, no crash


# ------------------------------------------------------------------------------------------------ resolve_precision
@pytest.mark.parametrize("precision, expected", [
    ("fp32", "fp32"), (None, "fp32"), ("float32", "fp32"), ("32", "fp32"), ("BF16", "bf16"), ("bfloat16", "bf16"),
    ("fp16", "fp16"), ("half", "fp16"), ("float16", "fp16"), (16, "fp16"),
])
def test_resolve_precision_names_and_aliases(precision, expected):
    assert resolve_precision(precision) == expected


@pytest.mark.parametrize("device, expected", [(None, "bf16"), ("cpu", "bf16"), ("cuda", "fp16"), ("mps", "fp16")])
def test_resolve_precision_amp_means_the_devices_autocast_dtype(device, expected):
    """The older ``amp=True`` switch: fp16 on CUDA and MPS, bf16 on CPU (no device given: CPU)."""
    assert resolve_precision("fp32", amp=True, device=torch.device(device) if device else None) == expected
    assert resolve_precision("fp32", amp=False, device=torch.device(device) if device else None) == "fp32"


def test_resolve_precision_amp_keeps_an_explicit_reduced_precision():
    assert resolve_precision("fp16", amp=True, device=torch.device("cpu")) == "fp16"
    assert resolve_precision("bf16", amp=True, device=torch.device("cuda")) == "bf16"


def test_resolve_precision_unknown_name_is_a_user_error():
    with pytest.raises(KStarInputError, match=r"unknown precision 'fp8'; use fp32 \(default\), bf16 or fp16"):
        resolve_precision("fp8")
    with pytest.raises(ValueError):  # KStarInputError is a ValueError for Python callers
        resolve_precision("double", amp=True)


# -------------------------------------------------------------------------------------------------- strip_addresses
def test_strip_addresses_removes_every_memory_address():
    text = "Compose(<function f at 0x7f3a2B9c10>, <Lambda at 0xDEADBEEF>)"
    assert strip_addresses(text) == "Compose(<function f>, <Lambda>)"
    assert strip_addresses(repr(test_strip_addresses_removes_every_memory_address)) == \
        "<function test_strip_addresses_removes_every_memory_address>"


def test_strip_addresses_leaves_other_text_alone():
    """Only `` at 0x<hex>``: hex values, hashes and words that merely contain "at" stay as they are."""
    for text in ("Normalize(mean=0.5)", "weights at 0xg1", "flat0x12", "offset=0x10", "seen at  0x12", ""):
        assert strip_addresses(text) == text


# ------------------------------------------------------------------------------------------------- named_state_dict
class _Weights:
    """The two things named_state_dict uses of a torchvision weights enum member: its URL and its name."""

    def __init__(self, filename: str):
        self.url = f"https://download.invalid/models/{filename}"

    def __str__(self) -> str:
        return "TinyNet_Weights.TEST"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """torch hub's folder under tmp_path; downloads fail the test unless a test allows them."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)

    def no_download(*args, **kwargs):
        raise AssertionError(f"named_state_dict tried to download {args}")

    monkeypatch.setattr(torchvision_models, "download_file", no_download)
    return checkpoints


def _hub_checkpoint(folder: Path, state) -> Path:
    """``state`` saved under torch hub's ``<name>-<sha256 prefix>.pth`` convention."""
    raw = folder / "raw.pth"
    torch.save(state, raw)
    path = folder / f"tinynet-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(path)
    return path


def test_named_state_dict_loads_a_checked_hub_file(hub):
    state = {"fc.weight": torch.arange(6.0).reshape(2, 3), "fc.bias": torch.tensor([1.0, -1.0])}
    path = _hub_checkpoint(hub, state)
    loaded = named_state_dict(_Weights(path.name))
    assert sorted(loaded) == ["fc.bias", "fc.weight"]
    assert torch.equal(loaded["fc.weight"], state["fc.weight"]) and torch.equal(loaded["fc.bias"], state["fc.bias"])


def test_named_state_dict_offline_names_the_file_url_and_folder(hub, monkeypatch):
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    weights = _Weights("tinynet-0123abcd.pth")
    with pytest.raises(WeightsNotFoundError) as caught:
        named_state_dict(weights)
    message = str(caught.value)
    assert "TinyNet_Weights.TEST are missing and downloads are off" in message
    assert f"place tinynet-0123abcd.pth (from {weights.url}) in {hub}" in message
    assert "--pretrained" in message


def test_named_state_dict_downloads_with_the_name_s_hash_prefix(hub, monkeypatch):
    """Online, the file is fetched into the hub folder with the prefix to check, then loaded as usual."""
    for variable in ("KSTAR_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    staged = _hub_checkpoint(hub.parent, {"w": torch.ones(2)})
    calls = []

    def fake_download(url, dest, sha256_prefix=None, progress=True, what=""):
        calls.append((url, dest, sha256_prefix, what))
        staged.rename(dest)

    monkeypatch.setattr(torchvision_models, "download_file", fake_download)
    weights = _Weights(staged.name)
    loaded = named_state_dict(weights)
    prefix = staged.name.split("-")[1].split(".")[0]
    assert calls == [(weights.url, hub / staged.name, prefix, "torchvision weights TinyNet_Weights.TEST")]
    assert torch.equal(loaded["w"], torch.ones(2))


def test_named_state_dict_refuses_a_file_that_is_not_the_published_one(hub):
    path = _hub_checkpoint(hub, {"w": torch.zeros(1)})
    other = hub / "tinynet-00000000.pth"
    path.rename(other)
    with pytest.raises(WeightsNotFoundError, match="does not match the SHA-256 prefix 00000000"):
        named_state_dict(_Weights(other.name))


def test_named_state_dict_refuses_a_file_name_without_a_hash(hub):
    plain = hub / "tinynet.pth"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(WeightsNotFoundError, match="carries no SHA-256 prefix to check it against"):
        named_state_dict(_Weights(plain.name))


def test_named_state_dict_refuses_an_html_page(hub):
    page = b"<!DOCTYPE html><html>quota exceeded</html>"
    path = hub / f"tinynet-{hashlib.sha256(page).hexdigest()[:8]}.pth"
    path.write_bytes(page)  # even with a matching hash in its name
    with pytest.raises(WeightsNotFoundError, match="is an HTML page, not a checkpoint"):
        named_state_dict(_Weights(path.name))


def test_named_state_dict_never_unpickles_code(hub):
    """A hub file whose hash matches but that holds a pickled function is refused, not run."""
    path = _hub_checkpoint(hub, {"w": torch.zeros(1), "hook": os.getcwd})
    with pytest.raises(UnsafeCheckpointError, match="kstar never unpickles those"):
        named_state_dict(_Weights(path.name))


# ------------------------------------------------------------------------------------------------ torch_threads_kept
def test_torch_threads_kept_restores_the_count():
    """numba's launch resets torch's thread count in the calling thread; the block puts it back, on error too."""
    before = torch.get_num_threads()
    other = before + 1
    try:
        with torch_threads_kept():
            torch.set_num_threads(other)  # what a parallel numba launch does
            assert torch.get_num_threads() == other
        assert torch.get_num_threads() == before
        with pytest.raises(ValueError):
            with torch_threads_kept():
                torch.set_num_threads(other)
                raise ValueError("kernel failed")
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_torch_threads_kept_does_not_touch_an_unchanged_count(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    with torch_threads_kept():
        pass
    assert calls == []


# ---------------------------------------------------------------------------------------------------------- errors
def test_kstar_warning_is_the_root_of_kstar_s_warnings():
    """One filter on KStarWarning silences (or escalates) every warning kstar gives, and nothing else."""
    import kstar_utils

    assert kstar_utils.KStarWarning is KStarWarning and issubclass(KStarWarning, UserWarning)
    assert all(issubclass(w, KStarWarning) for w in (SmallClassWarning, ANNAccuracyWarning, CacheCorruptionWarning))
    assert not issubclass(KStarWarning, KStarError)


def test_a_kstar_warning_filter_catches_a_real_warning():
    from kstar_utils.validation import check_inputs

    x, y = np.arange(10.0).reshape(5, 2), np.array([0, 0, 0, 1, 1])  # class 1 has two samples
    with warnings.catch_warnings():
        warnings.simplefilter("error", KStarWarning)
        with pytest.raises(KStarWarning, match=r"classes \[1\] have fewer than 3 samples"):
            check_inputs(x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", KStarWarning)
        check_inputs(x, y)
    assert caught == []


def test_usable_cpus_counts_the_cores_this_process_may_run_on(monkeypatch):
    """Containers and taskset narrow the affinity: that, not the host's core count, sizes workers and threads."""
    from kstar_utils import plumbing

    monkeypatch.setattr(plumbing, "cgroup_cpu_quota", lambda: None)  # this machine's own quota, if any, aside
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    assert plumbing.usable_cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS and Windows have no affinity call
    assert plumbing.usable_cpus() == 16
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert plumbing.usable_cpus() == 1


def test_usable_cpus_follows_a_cgroup_cpu_quota(monkeypatch):
    """docker --cpus 1.5 on 16 allowed cores: 2 usable (the quota rounded up); no quota: the affinity alone."""
    from kstar_utils import plumbing

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(plumbing, "cgroup_cpu_quota", lambda: 1.5)
    assert plumbing.usable_cpus() == 2
    monkeypatch.setattr(plumbing, "cgroup_cpu_quota", lambda: 0.2)
    assert plumbing.usable_cpus() == 1
    monkeypatch.setattr(plumbing, "cgroup_cpu_quota", lambda: 64.0)  # a quota above the cores changes nothing
    assert plumbing.usable_cpus() == 16
    monkeypatch.setattr(plumbing, "cgroup_cpu_quota", lambda: None)
    assert plumbing.usable_cpus() == 16


def test_cgroup_cpu_quota_reads_v2_and_v1_files(tmp_path):
    """v2: cpu.max in the process's cgroup or at the root ("max" is no quota); v1: cfs_quota_us / cfs_period_us
    (-1 is no quota); the smallest quota wins; nothing readable gives None."""
    from kstar_utils.plumbing import cgroup_cpu_quota

    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    (root / "kube" / "pod1").mkdir(parents=True)
    proc.write_text("0::/kube/pod1\n")
    (root / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(root, proc) is None
    (root / "kube" / "pod1" / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 2.5
    (root / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 1.5  # the smallest
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "docker" / "abc").mkdir(parents=True)
    proc.write_text("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1, proc) is None
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_quota(v1, proc) == 3.0
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path / "missing-proc") is None
    (v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("garbage\n")
    assert cgroup_cpu_quota(v1, proc) is None
