"""The zoo's own modules: cache integrity of trained models (issue 11), the stated shifts, the cheaper-but-stated
AutoAttack, penultimate features and the design's spec fields."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from kstar_utils.errors import CacheCorruptionWarning, KStarInputError
from kstar_utils.zoo.models import build_model, penultimate_features
from kstar_utils.zoo.shifts import SHIFTS, apply_shift
from kstar_utils.zoo.train import ZooModelSpec, load_trained, save_trained, train_model


# ------------------------------------------------------------------------------------------------- cache integrity
def _saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(4, 8)
    spec = ZooModelSpec(name="x", width=4, latent=8)
    folder = tmp_path / "m"
    save_trained(folder, model, spec, {"train_seconds": 1.0})
    return folder, model, spec


def test_a_saved_model_records_its_checksum_and_loads_back_silently(tmp_path):
    from kstar_utils.plumbing import sha256_file

    folder, model, spec = _saved(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["weights_sha256"] == sha256_file(folder / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, meta2 = load_trained(folder)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight) and meta2["key"] == spec.key()


def _expect_corrupt(folder):
    with pytest.warns(CacheCorruptionWarning, match=str(folder)):
        assert load_trained(folder) is None
    assert not (folder / "model.safetensors").exists() and not (folder / "meta.json").exists()


def test_flipped_bits_in_the_weights_are_detected_and_the_entry_removed(tmp_path):
    folder, *_ = _saved(tmp_path)
    (folder / "notes.txt").write_text("the user's own file")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's values: safetensors itself would load this silently
    (folder / "model.safetensors").write_bytes(bytes(data))
    _expect_corrupt(folder)
    assert (folder / "notes.txt").read_text() == "the user's own file"  # only the zoo's files are removed


def test_a_truncated_weights_file_is_detected(tmp_path):
    folder, *_ = _saved(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _expect_corrupt(folder)


@pytest.mark.parametrize("damage", ["truncated", "not an object", "no checksum", "edited spec"])
def test_a_truncated_or_malformed_meta_json_is_detected(tmp_path, damage):
    folder, *_ = _saved(tmp_path)
    text = (folder / "meta.json").read_text()
    meta = json.loads(text)
    if damage == "truncated":
        (folder / "meta.json").write_text(text[: len(text) // 2])
    elif damage == "not an object":
        (folder / "meta.json").write_text("[1, 2]")
    elif damage == "no checksum":
        del meta["weights_sha256"]
        (folder / "meta.json").write_text(json.dumps(meta))
    else:
        meta["spec"]["width"] = 16  # weights of a width-4 model would be read as another spec
        (folder / "meta.json").write_text(json.dumps(meta))
    _expect_corrupt(folder)


@pytest.mark.slow
def test_a_corrupt_resume_file_is_warned_about_and_training_starts_afresh(tmp_path, digits_train):
    x, y = digits_train
    spec = ZooModelSpec(name="r", width=4, latent=8, epochs=3, train_limit=200, seed=1)
    straight = train_model(spec, x, y, tmp_path / "u", progress=False)
    for damage in ("flipped", "truncated"):
        folder = tmp_path / damage
        with pytest.raises(KeyboardInterrupt):
            train_model(spec, x, y, folder, progress=False, stop_after_epoch=0)
        data = bytearray((folder / "resume.pt").read_bytes())
        if damage == "flipped":
            data[len(data) // 2] ^= 0x01
        else:
            data = data[: len(data) // 3]
        (folder / "resume.pt").write_bytes(bytes(data))
        with pytest.warns(CacheCorruptionWarning, match=str(folder)):
            again = train_model(spec, x, y, folder, progress=False)
        assert torch.equal(again.classifier.weight, straight.classifier.weight)  # afresh: same as uninterrupted


@pytest.fixture(scope="module")
def digits_train():
    from kstar_utils.zoo.data import load_tensors

    return load_tensors("digits", "train")


# ---------------------------------------------------------------------------------------------------------- shifts
def test_shifts_state_their_parameters_and_keep_their_numerics():
    assert set(SHIFTS) == {"noise", "blur", "rotation", "contrast"}
    from kstar_utils.zoo import shifts

    assert "sigma = 0.2" in SHIFTS["noise"].description and "3x3" in SHIFTS["blur"].description
    assert "12 degrees" in SHIFTS["rotation"].description and "x0.65" in SHIFTS["contrast"].description
    assert SHIFTS["contrast"].parameters == {"factor": shifts.CONTRAST_FACTOR}
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    blurred = apply_shift(x, "blur")
    assert blurred[0, 0, 2, 2].item() == pytest.approx(0.49) and blurred[0, 0, 1, 1].item() == pytest.approx(0.0225)
    assert blurred.sum().item() == pytest.approx(1.0)
    flat = torch.full((1, 1, 4, 4), 0.5)
    flat[0, 0, 0, 0] = 1.0
    mean = flat.mean()
    assert apply_shift(flat, "contrast")[0, 0, 0, 0].item() == pytest.approx(mean + 0.65 * (1.0 - mean))
    square = torch.zeros(1, 1, 9, 9)
    square[0, 0, 3:6, 0:8] = 1.0  # a horizontal bar turns by ROTATION_DEGREES
    turned = apply_shift(square, "rotation")
    assert turned.sum().item() == pytest.approx(square.sum().item(), rel=0.25) and not torch.equal(turned, square)
    noisy = apply_shift(torch.full((1, 1, 64, 64), 0.5), "noise", seed=3)
    assert (noisy - 0.5).std().item() == pytest.approx(0.2, rel=0.1)


def test_shifts_are_deterministic_in_range_and_only_noise_is_seeded():
    from kstar_utils.zoo.data import load_tensors

    xt = load_tensors("digits", "test")[0][:40]
    for kind in ("clean", *SHIFTS):
        a, b = apply_shift(xt, kind, seed=1), apply_shift(xt, kind, seed=1)
        assert torch.equal(a, b) and a.shape == xt.shape and a.min() >= 0 and a.max() <= 1
        if kind != "clean":
            assert not torch.equal(a, xt)
            assert torch.equal(apply_shift(xt, kind, seed=2), a) != SHIFTS[kind].seeded
    rotated = apply_shift(xt, "rotation")
    assert torch.allclose(apply_shift(rotated, "clean"), rotated)
    with pytest.raises(KStarInputError, match="unknown shift"):
        apply_shift(xt, "fog")
    with pytest.raises(KStarInputError, match="N x C x H x W"):
        apply_shift(xt[0], "blur")


# ------------------------------------------------------------------------------------------------ models, attacks
def test_penultimate_features_are_the_classifier_input():
    torch.manual_seed(0)
    model = build_model(4, 8)
    x = torch.rand(5, 1, 8, 8)
    feats = penultimate_features(model, x, batch_size=2)
    assert feats.shape == (5, 8) and feats.dtype == np.float32 and not model.training
    logits = model(x).detach()
    assert torch.allclose(model.classifier(torch.from_numpy(feats)), logits, atol=1e-5)
    assert penultimate_features(model, x[:0]).shape == (0, 8)


@pytest.mark.slow
def test_a_custom_autoattack_runs_the_standard_settings_in_the_standard_order():
    from kstar_utils.zoo.attacks import CHEAP_ATTACKS, autoattack_accuracy
    from kstar_utils.zoo.data import load_tensors

    torch.manual_seed(0)
    xt, yt = load_tensors("digits", "test")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    out = autoattack_accuracy(model, xt[:20], yt[:20], "Linf", 0.1, version="custom",
                              attacks=list(reversed(CHEAP_ATTACKS)))
    assert out["attacks"] == ["apgd-ce", "apgd-t"]
    assert out["settings"]["apgd_ce_restarts"] == 1 and out["settings"]["apgd_t_target_classes"] == 9
    with pytest.raises(KStarInputError, match="custom AutoAttack"):
        autoattack_accuracy(model, xt[:5], yt[:5], "Linf", 0.1, version="custom", attacks=["pgd"])
    with pytest.raises(KStarInputError, match="unknown norm"):
        autoattack_accuracy(model, xt[:5], yt[:5], "L1", 0.1)


@pytest.mark.slow
def test_a_resume_file_of_another_spec_is_not_resumed_from(tmp_path, digits_train):
    x, y = digits_train
    spec = ZooModelSpec(name="r", width=4, latent=8, epochs=3, train_limit=200, seed=1)
    other = ZooModelSpec(name="r", width=4, latent=8, epochs=3, train_limit=200, seed=1, batch_size=32)
    folder = tmp_path / "f"
    with pytest.raises(KeyboardInterrupt):
        train_model(other, x, y, folder, progress=False, stop_after_epoch=0)
    with pytest.warns(CacheCorruptionWarning, match="written for spec"):
        resumed = train_model(spec, x, y, folder, progress=False)
    straight = train_model(spec, x, y, tmp_path / "u", progress=False)
    assert torch.equal(resumed.classifier.weight, straight.classifier.weight)


def test_data_fraction_models_take_as_many_optimizer_steps_as_the_full_model(tmp_path, digits_train):
    x, y = digits_train
    assert ZooModelSpec(name="a", epochs=30).passes() == 30
    assert ZooModelSpec(name="a", epochs=30, train_fraction=0.25).passes() == 120
    spec = ZooModelSpec(name="q", width=2, latent=4, epochs=2, train_limit=64, train_fraction=0.5, batch_size=32)
    with pytest.raises(KeyboardInterrupt):  # a third pass exists: 2 epochs of the pool = 4 passes over half of it
        train_model(spec, x, y, tmp_path / "q", progress=False, stop_after_epoch=2)
