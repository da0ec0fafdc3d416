"""Feature sources through their real upstream loaders, on local weights the tests place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_data import pyautoattack_resnet18, tiny_openclip
from torch import nn

from kstar_utils.sources import LayerNotFoundError, WeightsNotFoundError, load_source
from kstar_utils.sources.base import PenultimateHook, check_weights_file, file_sha256

ZOO_RN18 = "Addepalli2021Towards_RN18"  # a RobustBench CIFAR-10 entry whose architecture is this ResNet-18


@pytest.fixture(scope="module")
def rb_model_dir(tmp_path_factory):
    """A RobustBench model_dir holding pyautoattack's standard-trained ResNet-18 under the RN18 zoo entry."""
    root = tmp_path_factory.mktemp("robustbench")
    target = root / "cifar10" / "Linf" / f"{ZOO_RN18}.pt"
    target.parent.mkdir(parents=True)
    target.symlink_to(pyautoattack_resnet18())
    return root


def test_robustbench_loader_reads_the_real_standard_resnet18(rb_model_dir):
    model = load_source("robustbench", ZOO_RN18, dataset="cifar10", threat_model="Linf", model_dir=rb_model_dir)
    assert model.info["architecture"] == "ResNet"
    assert model.identity["weights_sha256"] == [file_sha256(pyautoattack_resnet18())]
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        penultimate = model.features(x)
        logits = model.module(x)
        # the penultimate layer is what the final linear classifier reads
        torch.testing.assert_close(model.module.linear(penultimate), logits)
    assert penultimate.shape == (4, 512)
    model.layer = "logits"
    assert model.features(x).shape == (4, 10)


def test_robustbench_missing_checkpoint_offline_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=rf"{tmp_path}/cifar10/Linf/{ZOO_RN18}.pt is missing"):
        load_source("robustbench", ZOO_RN18, dataset="cifar10", threat_model="Linf", model_dir=tmp_path)


def test_robustbench_html_checkpoint_is_reported_as_html(tmp_path):
    target = tmp_path / "cifar10" / "Linf" / f"{ZOO_RN18}.pt"
    target.parent.mkdir(parents=True)
    target.write_text("<!DOCTYPE html><html><title>Google Drive - Virus scan warning</title></html>")
    with pytest.raises(WeightsNotFoundError, match="is an HTML page, not a checkpoint"):
        load_source("robustbench", ZOO_RN18, dataset="cifar10", threat_model="Linf", model_dir=tmp_path)


def test_robustbench_unknown_model_suggests_names():
    with pytest.raises(ValueError, match="did you mean"):
        load_source("robustbench", "Addepalli2021Towards_RN19", dataset="cifar10", threat_model="Linf")


def test_openclip_tiny_model_from_a_local_checkpoint(tmp_path):
    name, weights = tiny_openclip(tmp_path)
    model = load_source("openclip", name, pretrained=str(weights))
    assert model.identity["weights_sha256"] == file_sha256(weights)
    image = model.transform(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (50, 40), (200, 10, 10)))
    assert image.shape == (3, 32, 32)  # the model's own preprocessing
    with torch.inference_mode():
        emb = model.features(image[None])
    assert emb.shape == (1, 16)
    normalised = load_source("openclip", name, pretrained=str(weights), normalize=True)
    with torch.inference_mode():
        assert torch.linalg.vector_norm(normalised.features(image[None])).item() == pytest.approx(1.0, abs=1e-5)


def test_openclip_tag_offline_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty Hugging Face cache
    with pytest.raises(WeightsNotFoundError, match="not in the Hugging Face cache and downloads are off"):
        load_source("openclip", "ViT-B-32", pretrained="laion2b_s34b_b79k")


def test_openclip_unknown_tag():
    with pytest.raises(ValueError, match="no pretrained tag"):
        load_source("openclip", "ViT-B-32", pretrained="not-a-tag")


def test_torchvision_model_from_a_local_state_dict(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path / "resnet18_10.pth"
    torch.save(resnet18(num_classes=10).state_dict(), path)
    model = load_source("torchvision", "resnet18", pretrained=str(path))
    with torch.inference_mode():
        assert model.features(torch.rand(2, 3, 64, 64)).shape == (2, 512)


def test_torchvision_weights_missing_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"downloads are off; place resnet18-f37072fd\.pth \(from "
                       r"https://download.pytorch.org/models/resnet18-f37072fd.pth\) in " + str(tmp_path)):
        load_source("torchvision", "resnet18", pretrained="IMAGENET1K_V1")


def test_torchvision_transform_converts_grayscale_to_rgb(tmp_path):
    from PIL import Image
    from torchvision.models import resnet18

    from kstar_utils.sources.torchvision_models import ToRGB, resolve_weights

    path = tmp_path / "r18.pth"
    torch.save(resnet18(num_classes=3).state_dict(), path)
    model = load_source("torchvision", "resnet18", pretrained=str(path))
    for mode in ("L", "LA", "P", "RGBA", "CMYK"):
        assert model.transform(Image.new(mode, (300, 260))).shape == (3, 224, 224), mode
    assert ToRGB()(Image.new("L", (4, 4))).mode == "RGB"
    with pytest.raises(ValueError, match="no weights 'IMAGENET9K'"):
        resolve_weights("resnet18", "IMAGENET9K")


class NoLinear(nn.Module):
    def forward(self, x):
        return x.flatten(1)


class Ensemble(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return (self.a(x) + self.b(x)) / 2


def test_penultimate_hook_fails_clearly_where_it_does_not_hold():
    with pytest.raises(LayerNotFoundError, match="calls no nn.Linear"):
        PenultimateHook(NoLinear())(torch.rand(2, 4))
    with pytest.raises(LayerNotFoundError, match="not the output of its last nn.Linear"):
        PenultimateHook(Ensemble())(torch.rand(2, 4))


def test_penultimate_hook_takes_the_last_called_linear_not_the_last_defined():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(5, 2)  # defined first, called last
            self.body = nn.Linear(3, 5)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    net = Odd()
    x = torch.rand(4, 3)
    np.testing.assert_allclose(PenultimateHook(net)(x).detach(), torch.relu(net.body(x)).detach())


def test_weights_file_checks(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        check_weights_file(tmp_path / "nope.pt", "test")
    (tmp_path / "w.pt").write_bytes(b"\x80\x02real bytes")
    assert check_weights_file(tmp_path / "w.pt", "test") == tmp_path / "w.pt"
    assert file_sha256(tmp_path / "w.pt") == file_sha256(tmp_path / "w.pt")  # memoised path agrees


def test_unknown_source_and_layer():
    with pytest.raises(ValueError, match="unknown feature source"):
        load_source("keras", "x")
    with pytest.raises(ValueError, match="unknown layer"):
        load_source("pixels", "pixels", layer="conv3")
