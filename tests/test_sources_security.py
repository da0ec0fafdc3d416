"""No weights path unpickles code: RobustBench checkpoints, torchvision's hub cache, and any torch.load on the way."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import pyautoattack_resnet18

from kstar_utils.errors import KStarError, UnsafeCheckpointError, WeightsNotFoundError
from kstar_utils.plumbing import sha256_file
from kstar_utils.sources import load_source
from kstar_utils.sources.base import check_hub_hash, safe_torch_load, weights_only_loads

ZOO_RN18 = "Addepalli2021Towards_RN18"


class Marker:
    """An object whose unpickling would create a marker file (a stand-in for arbitrary code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _malicious(path: Path, marker: Path, extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": Marker(marker), **(extra or {})}, path)
    assert not marker.exists()
    return path


def test_safe_torch_load_refuses_code_and_names_the_file_and_the_type(tmp_path):
    marker = tmp_path / "ran"
    evil = _malicious(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt holds objects that only an unsafe pickle load could "
                       r"restore \(Unsupported global: GLOBAL getattr was not an allowed global by default\); kstar never "
                       r"unpickles"):
        safe_torch_load(evil)
    assert not marker.exists()


def test_allow_list_loads_numpy_scalars_arrays_and_namespaces(tmp_path):
    path = tmp_path / "legit.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "best_acc": np.float64(0.93), "epoch": np.int64(200),
                "mask": np.arange(4), "args": argparse.Namespace(lr=0.1, arch="wrn")}, path)
    state = safe_torch_load(path)
    assert state["best_acc"] == 0.93 and state["args"].arch == "wrn" and state["mask"].tolist() == [0, 1, 2, 3]


def test_a_truncated_checkpoint_is_a_missing_one(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(WeightsNotFoundError, match="not a readable checkpoint .* truncated download"):
        safe_torch_load(path)


def test_third_party_torch_load_is_forced_weights_only(tmp_path):
    marker = tmp_path / "ran"
    evil = _malicious(tmp_path / "evil.pt", marker)
    with weights_only_loads("test"), pytest.raises(UnsafeCheckpointError):
        torch.load(evil, weights_only=False)  # what torch hub and older RobustBench do
    with weights_only_loads("test"), pytest.raises(UnsafeCheckpointError), evil.open("rb") as handle:
        torch.load(handle, weights_only=False)  # a file object, not a path
    assert not marker.exists()
    from kstar_utils.sources import base

    assert torch.load is base._ORIGINAL_TORCH_LOAD  # restored afterwards


def test_robustbench_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    _malicious(tmp_path / "cifar10" / "Linf" / f"{ZOO_RN18}.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"RobustBench {ZOO_RN18} \(cifar10/Linf\): .*{ZOO_RN18}\.pt "
                       "holds objects"):
        load_source("robustbench", ZOO_RN18, dataset="cifar10", threat_model="Linf", model_dir=tmp_path)
    assert not marker.exists()


def test_robustbench_checkpoint_with_numpy_metadata_loads(tmp_path):
    """A legitimate checkpoint holding numpy scalars (as training scripts save them) passes the allow-list."""
    state = torch.load(pyautoattack_resnet18(), map_location="cpu", weights_only=True)
    target = tmp_path / "cifar10" / "Linf" / f"{ZOO_RN18}.pt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "best_acc": np.float64(0.95), "args": argparse.Namespace(epochs=200)}, target)
    model = load_source("robustbench", ZOO_RN18, dataset="cifar10", threat_model="Linf", model_dir=tmp_path)
    assert model.identity["weights_kind"] == "checkpoint"
    with torch.inference_mode():
        assert model.features(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_torchvision_hub_cache_pickle_does_not_run(tmp_path, monkeypatch):
    """Issue 11 item 1: a pickle placed as $TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth never runs."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    marker = tmp_path / "ran"
    evil = _malicious(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth", marker)
    assert Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth" == evil
    with pytest.raises(KStarError, match=r"resnet18-f37072fd\.pth does not match the SHA-256 prefix f37072fd"):
        load_source("torchvision", "resnet18", pretrained="IMAGENET1K_V1")
    assert not marker.exists()


def test_torchvision_named_weights_load_weights_only_after_the_hash_check(tmp_path, monkeypatch):
    """A hub file whose hash matches its name loads (weights only); one that also holds code is still refused."""
    from torchvision.models import resnet18

    from kstar_utils.sources import torchvision_models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    reference = resnet18()
    plain = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), plain)
    named = hub / f"resnet18-{sha256_file(plain)[:8]}.pth"
    plain.rename(named)
    monkeypatch.setattr(tvm, "hub_file", lambda weights: named)
    model = load_source("torchvision", "resnet18", pretrained="IMAGENET1K_V1")
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.module(x), reference.eval()(x))
    assert model.identity["weights"] == "ResNet18_Weights.IMAGENET1K_V1"

    marker = tmp_path / "ran"
    evil = _malicious(tmp_path / "evil.pth", marker)
    named_evil = hub / f"resnet18-{sha256_file(evil)[:8]}.pth"  # a matching hash does not make a pickle safe
    evil.rename(named_evil)
    monkeypatch.setattr(tvm, "hub_file", lambda weights: named_evil)
    with pytest.raises(UnsafeCheckpointError):
        load_source("torchvision", "resnet18", pretrained="IMAGENET1K_V1")
    assert not marker.exists()


def test_check_hub_hash(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"weights")
    good = tmp_path / f"w-{sha256_file(path)[:8]}.pth"
    path.rename(good)
    assert check_hub_hash(good) == good.name.split("-")[1].split(".")[0]
    assert check_hub_hash(tmp_path / "plain.pth") is None  # no prefix in the name: nothing to check
    bad = tmp_path / "w-00000000.pth"
    bad.write_bytes(b"other")
    with pytest.raises(WeightsNotFoundError, match="does not match the SHA-256 prefix 00000000"):
        check_hub_hash(bad)


def test_the_marker_payload_really_runs_under_plain_pickle(tmp_path):
    """Guard for the tests above: the payload is live, so its absence there means it was refused, not inert."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Marker(marker)))
    assert marker.exists()
    os.remove(marker)
