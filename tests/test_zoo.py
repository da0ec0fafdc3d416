"""The built-in study: deterministic training, adversarial training works, caching, resume, the smoke profile."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from kstar_utils.errors import KStarInputError
from kstar_utils.pipeline import load_profile
from kstar_utils.zoo.attacks import accuracy, autoattack_accuracy, pgd
from kstar_utils.zoo.data import load_tensors
from kstar_utils.zoo.shifts import apply_shift
from kstar_utils.zoo.study import ensure_trained, shifted_images, zoo_models
from kstar_utils.zoo.train import ZooModelSpec, train_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits():
    return load_tensors("digits", "train") + load_tensors("digits", "test")


def _spec(**kw):
    base = dict(name="t", dataset="digits", width=8, latent=32, epochs=4, batch_size=64, seed=3)
    return ZooModelSpec(**{**base, **kw})


def test_a_fixed_seed_gives_the_same_model(tmp_path, digits):
    x, y, *_ = digits
    a = train_model(_spec(), x, y, tmp_path / "a", progress=False)
    b = train_model(_spec(), x, y, tmp_path / "b", progress=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = train_model(_spec(seed=4), x, y, tmp_path / "c", progress=False)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_adversarial_training_makes_a_measurably_more_robust_model(tmp_path, digits):
    x, y, xt, yt = digits
    standard = train_model(_spec(epochs=10, width=16), x, y, tmp_path / "s", progress=False)
    robust = train_model(_spec(epochs=10, width=16, training="pgd", norm="Linf", eps=0.1), x, y, tmp_path / "r",
                         progress=False)
    g = torch.Generator().manual_seed(0)
    acc = {}
    for name, model in (("standard", standard), ("robust", robust)):
        model.eval()
        adv = pgd(model, xt, yt, "Linf", 0.1, steps=20, generator=g)
        acc[name] = accuracy(model, adv, yt)
    assert acc["robust"] > acc["standard"] + 0.2, acc
    assert accuracy(robust, xt, yt) > 0.85


def test_autoattack_is_recorded_with_its_attacks(digits):
    _, _, xt, yt = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    out = autoattack_accuracy(model, xt[:40], yt[:40], "L2", 0.5, version="custom", attacks=["apgd-ce"])
    assert out["attacks"] == ["apgd-ce"] and out["n"] == 40 and 0 <= out["robust_accuracy"] <= 1
    assert out["robust_accuracy"] <= accuracy(model, xt[:40], yt[:40])


def test_trained_models_are_cached_and_reused(tmp_path, digits):
    x, y, *_ = digits
    spec = _spec(epochs=2)
    model, folder, meta = ensure_trained(spec, tmp_path, progress=False)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again, folder2, meta2 = ensure_trained(spec, tmp_path, progress=False)
    assert folder2 == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert meta2["train_seconds"] == meta["train_seconds"]
    assert re.search(r", \d+ threads?$", meta["machine"])  # where it was trained: its weights depend on the CPU's rounding
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    assert not (folder / "resume.pt").exists()


def test_interrupted_training_resumes_and_ends_with_the_same_weights(tmp_path, digits):
    x, y, *_ = digits
    spec = _spec(epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train_model(spec, x, y, tmp_path / "i", progress=False, stop_after_epoch=1)
    assert (tmp_path / "i" / "resume.pt").exists()
    resumed = train_model(spec, x, y, tmp_path / "i", progress=False)
    straight = train_model(spec, x, y, tmp_path / "u", progress=False)
    assert torch.equal(resumed.classifier.weight, straight.classifier.weight)


def test_shifts_are_deterministic_and_stay_in_range(digits):
    _, _, xt, _ = digits
    for kind in ("clean", "noise", "blur", "rotation", "contrast"):
        a, b = apply_shift(xt[:50], kind, seed=1), apply_shift(xt[:50], kind, seed=1)
        assert torch.equal(a, b) and a.shape == xt[:50].shape
        assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(apply_shift(xt[:50], "noise", seed=1), xt[:50])
    with pytest.raises(KStarInputError):
        apply_shift(xt, "fog")


def test_shifted_images_are_a_labelled_set_named_by_their_content():
    from kstar_utils.datasets import open_dataset

    clean = open_dataset("digits", split="test")
    noisy = shifted_images(clean, "noise", seed=0)
    assert len(noisy) == len(clean) and np.array_equal(noisy.labels, clean.labels)
    assert noisy.name.startswith("digits+noise#") and noisy.name == shifted_images(clean, "noise", seed=0).name
    assert noisy.name != shifted_images(clean, "noise", seed=1).name  # other pixels, another cache key
    assert "sigma" in noisy.info["description"]


def test_default_profile_has_the_promised_budgets_and_seeds():
    zoo = load_profile("default").zoo
    models = zoo_models(zoo)
    for norm in ("Linf", "L2"):
        robust = [m for m in models if m.spec.norm == norm]
        assert len(robust) >= 20 and len({m.config for m in robust}) * len(zoo.seeds) == len(robust), norm
    assert len(zoo.seeds) >= 3 and sum(m.config == "standard" for m in models) == len(zoo.seeds)


def test_builtin_zoo_is_a_feature_source(tmp_path, monkeypatch):
    from kstar_utils.datasets import open_dataset
    from kstar_utils.extract import extract_features
    from kstar_utils.sources import load_source

    monkeypatch.setenv("KSTAR_ZOO", str(tmp_path / "zoo"))
    model = load_source("builtin", "standard-s0", study="smoke", progress=False)
    feats = extract_features(model, open_dataset("digits", split="test"), per_class=5, cache=False, progress=False)
    assert feats.features.shape == (50, load_profile("smoke").zoo.latent) and model.identity["weights_sha256"]
    with pytest.raises(KStarInputError, match="unknown built-in model"):
        load_source("builtin", "digits-nope", study="smoke")
    assert math.isfinite(float(feats.features.sum()))
