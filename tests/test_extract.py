"""Extraction: deterministic features, the cache (hit, miss, corruption), resume after interruption, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_data import pyautoattack_resnet18, write_cifar10
from torch import nn

from kstar_utils.cache import CacheCorruptionWarning, FeatureCache
from kstar_utils.cli import main
from kstar_utils.datasets import open_dataset
from kstar_utils.extract import ExtractedFeatures, extract_features, pick_device
from kstar_utils.sources.base import FeatureModel


def _tiny_model(fail_after: int | None = None) -> FeatureModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    calls = {"n": 0}

    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            calls["n"] += 1
            if fail_after is not None and calls["n"] > fail_after:
                raise KeyboardInterrupt("simulated interruption")
            return self.net(x)

    from torchvision import transforms

    return FeatureModel("test", "tiny-mlp", Flaky(), transforms.ToTensor(), "penultimate", {"weights": "seed0"})


def test_features_are_deterministic_and_labelled(tmp_path):
    data = open_dataset("digits", split="test")
    a = extract_features(_tiny_model(), data, per_class=7, batch_size=16, cache=False, progress=False)
    b = extract_features(_tiny_model(), data, per_class=7, batch_size=16, cache=False, progress=False)
    assert a.features.shape == (70, 12) and a.features.dtype == np.float32
    np.testing.assert_array_equal(a.features, b.features)
    assert np.bincount(a.labels).tolist() == [7] * 10
    assert a.meta["device"] == "cpu" and a.meta["layer"] == "penultimate" and a.meta["amp"] is None


def test_cache_hit_and_miss(tmp_path):
    data = open_dataset("digits", split="test")
    cache = FeatureCache(tmp_path)
    first = extract_features(_tiny_model(), data, per_class=5, batch_size=8, cache=cache, progress=False)
    second = extract_features(_tiny_model(), data, per_class=5, batch_size=8, cache=cache, progress=False)
    assert first.meta["cache"] == "miss" and second.meta["cache"] == "hit"
    np.testing.assert_array_equal(first.features, second.features)
    other = extract_features(_tiny_model(), data, per_class=6, batch_size=8, cache=cache, progress=False)
    assert other.meta["cache"] == "miss"  # a different subset is a different key
    assert len(list(tmp_path.iterdir())) == 2
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))


def test_corrupt_cache_entry_is_detected_and_recomputed(tmp_path):
    data = open_dataset("digits", split="test")
    cache = FeatureCache(tmp_path)
    good = extract_features(_tiny_model(), data, per_class=5, batch_size=8, cache=cache, progress=False)
    arrays = next(tmp_path.rglob("arrays.safetensors"))
    raw = bytearray(arrays.read_bytes())
    raw[-8:] = b"\x00" * 8
    arrays.write_bytes(bytes(raw))
    with pytest.warns(CacheCorruptionWarning, match="checksum"):
        again = extract_features(_tiny_model(), data, per_class=5, batch_size=8, cache=cache, progress=False)
    assert again.meta["cache"] == "miss"
    np.testing.assert_array_equal(again.features, good.features)
    meta = next(tmp_path.rglob("meta.json"))
    meta.write_text("{not json")
    with pytest.warns(CacheCorruptionWarning, match="cannot be read"):
        extract_features(_tiny_model(), data, per_class=5, batch_size=8, cache=cache, progress=False)


def test_interrupted_extraction_resumes_from_the_last_finished_batch(tmp_path):
    data = open_dataset("digits", split="test")
    cache = FeatureCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        extract_features(_tiny_model(fail_after=4), data, per_class=10, batch_size=8, cache=cache, progress=False)
    partial = list(tmp_path.rglob("partial/batch_*.safetensors"))
    assert len(partial) == 3  # the first forward is the layer discovery; batches 0-2 finished
    resumed = extract_features(_tiny_model(), data, per_class=10, batch_size=8, cache=cache, progress=False)
    assert resumed.meta["resumed_batches"] == 3
    fresh = extract_features(_tiny_model(), data, per_class=10, batch_size=8, cache=False, progress=False)
    np.testing.assert_array_equal(resumed.features, fresh.features)
    assert not list(tmp_path.rglob("partial/*"))


def test_saved_folder_round_trip(tmp_path):
    data = open_dataset("digits", split="test")
    res = extract_features(_tiny_model(), data, per_class=3, cache=False, progress=False)
    back = ExtractedFeatures.load(res.save(tmp_path / "out"))
    np.testing.assert_array_equal(back.features, res.features)
    assert back.classes == res.classes
    assert back.label_names().tolist() == [res.classes[i] for i in res.labels]


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type in ("cpu", "cuda", "mps")


def test_cli_extract_then_compute_with_the_real_robustbench_resnet18(tmp_path, monkeypatch):
    """pyautoattack's standard-trained ResNet-18 through RobustBench's loader, on CIFAR-10-format files, then k*."""

    model_dir = tmp_path / "models"
    (model_dir / "cifar10" / "Linf").mkdir(parents=True)
    (model_dir / "cifar10" / "Linf" / "Addepalli2021Towards_RN18.pt").symlink_to(pyautoattack_resnet18())
    write_cifar10(tmp_path / "cifar", n_test=30)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)  # real format, not the real bytes
    out = tmp_path / "features"
    args = ["extract", "--source", "robustbench", "--model", "Addepalli2021Towards_RN18", "--threat-model", "Linf",
            "--model-dir", str(model_dir), "--dataset", "cifar10", "--data-root", str(tmp_path / "cifar"),
            "--per-class", "3", "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
            "--quiet"]
    assert main(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert np.load(out / "features.npy").shape == (30, 512)
    assert meta["source"] == "robustbench" and meta["identity"]["weights_sha256"]
    assert main(["compute", str(out), "--out", str(tmp_path / "k"), "--quiet"]) == 0
    assert json.loads((tmp_path / "k" / "summary.json").read_text())["n_samples"] == 30


def test_cli_extract_reports_missing_weights_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    code = main(["extract", "--source", "robustbench", "--model", "Addepalli2021Towards_RN18", "--model-dir",
                 str(tmp_path), "--dataset", "cifar10", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is missing" in err


def test_precision_is_applied_recorded_and_keyed(tmp_path):
    data = open_dataset("digits", split="test")
    cache = FeatureCache(tmp_path)
    full = extract_features(_tiny_model(), data, per_class=4, batch_size=8, cache=cache, progress=False)
    half = extract_features(_tiny_model(), data, per_class=4, batch_size=8, cache=cache, progress=False,
                            precision="bf16")
    assert half.meta["cache"] == "miss"  # another precision is another cache entry
    assert (full.meta["precision"], full.meta["compute_dtype"], full.meta["dtype"]) == ("fp32", "float32", "float32")
    assert (half.meta["precision"], half.meta["compute_dtype"], half.meta["dtype"]) == ("bf16", "bfloat16", "float32")
    assert half.features.dtype == np.float32 and not np.array_equal(half.features, full.features)
    np.testing.assert_allclose(half.features, full.features, atol=0.05 * np.abs(full.features).max())
    legacy = extract_features(_tiny_model(), data, per_class=4, batch_size=8, cache=cache, progress=False, amp=True)
    assert legacy.meta["precision"] == "bf16" and legacy.meta["cache"] == "hit"  # amp=True on CPU is bf16


def test_bad_run_options_are_refused():
    data = open_dataset("digits", split="test")
    for kwargs, message in (({"precision": "fp8"}, "unknown precision"), ({"batch_size": 0}, "batch_size"),
                            ({"num_workers": -1}, "num_workers")):
        with pytest.raises(ValueError, match=message):
            extract_features(_tiny_model(), data, per_class=2, cache=False, progress=False, **kwargs)


def test_extract_passes_run_options_to_the_extraction():
    from kstar_utils.extract import extract

    res = extract("pixels", "pixels", "digits", per_class=2, batch_size=5, device="cpu", num_workers=0,
                  precision="bfloat16", cache=False, progress=False)
    assert res.features.shape == (20, 64)
    assert (res.meta["batch_size"], res.meta["device"], res.meta["num_workers"], res.meta["precision"]) == \
        (5, "cpu", 0, "bf16")
