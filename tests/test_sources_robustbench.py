"""RobustBench entries without a .pt file (timm XCiT, ImageNet Standard_R50) and per-model ImageNet preprocessing."""

from __future__ import annotations

import pytest
import torch

from kstar_utils.errors import WeightsNotFoundError
from kstar_utils.plumbing import sha256_file
from kstar_utils.sources import load_source
from kstar_utils.sources import robustbench as rb


def test_weights_kind_of_each_kind_of_entry():
    assert rb.weights_kind("Addepalli2021Towards_RN18", "cifar10", "Linf") == "checkpoint"
    assert rb.weights_kind("Debenedetti2022Light_XCiT-S12", "cifar10", "Linf") == "timm"
    assert rb.weights_kind("Chen2020Adversarial", "cifar10", "Linf") == "ensemble"
    assert rb.weights_kind("Standard_R50", "imagenet", "Linf") == "torchvision"
    assert rb.timm_name("Debenedetti2022Light_XCiT-S12", "cifar10", "Linf") == "debenedetti2022light_xcit_s12_cifar10_linf"
    paths = rb.checkpoint_paths("Chen2020Adversarial", "cifar10", "Linf", "/m")
    assert [p.name for p in paths] == [f"Chen2020Adversarial.pt_m{i}.pt" for i in range(len(paths))]


def test_imagenet_preprocessing_is_robustbenchs_per_model():
    from PIL import Image
    from robustbench.data import PREPROCESSINGS

    bicubic = rb.input_transform("imagenet", "Singh2023Revisiting_ViT-B-ConvStem")
    assert "bicubic" in repr(bicubic) and repr(PREPROCESSINGS["BicubicRes256Crop224"].transforms[0]) in repr(bicubic)
    crop = rb.input_transform("imagenet", "Standard_R50")
    assert "bicubic" not in repr(crop) and "Resize(size=256" in repr(crop)
    assert crop(Image.new("L", (300, 280))).shape == (3, 224, 224)  # grayscale converted, as RobustBench loads RGB
    assert rb.input_transform("cifar10", "Standard")(Image.new("L", (32, 32))).shape == (3, 32, 32)


def test_timm_hosted_model_offline_names_the_hub_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"timm weights .* are not in the Hugging Face cache and downloads "
                       "are off"):
        load_source("robustbench", "Debenedetti2022Light_XCiT-S12", dataset="cifar10", threat_model="Linf",
                    model_dir=tmp_path / "models")
    assert not (tmp_path / "models" / "cifar10" / "Linf" / "Debenedetti2022Light_XCiT-S12.pt").exists()


def test_standard_r50_loads_through_robustbench_with_checked_torchvision_weights(monkeypatch, tmp_path):
    from torchvision.models import resnet50

    from kstar_utils.sources import torchvision_models as tvm

    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    torch.manual_seed(0)
    reference = resnet50().eval()
    plain = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), plain)
    named = tmp_path / f"resnet50-{sha256_file(plain)[:8]}.pth"
    plain.rename(named)
    monkeypatch.setattr(tvm, "hub_file", lambda weights: named)
    model = load_source("robustbench", "Standard_R50", dataset="imagenet", threat_model="Linf", model_dir=tmp_path)
    assert model.identity["weights_kind"] == "torchvision" and model.info["checkpoint"] == []
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():  # RobustBench's wrapper: normalisation, then the torchvision ResNet-50
        torch.testing.assert_close(model.module(x), reference((x - mean) / std), rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(tvm, "hub_file", lambda weights: tmp_path / "resnet50-0676ba61.pth")
    with pytest.raises(WeightsNotFoundError, match=r"place resnet50-0676ba61\.pth"):
        load_source("robustbench", "Standard_R50", dataset="imagenet", threat_model="Linf", model_dir=tmp_path)
