"""OpenCLIP encoders built as their pretrained config says (QuickGELU), image tower only, process-independent keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_data import tiny_openclip

from kstar_utils.sources import load_source
from kstar_utils.sources.openclip import drop_text_tower, tag_quick_gelu, uses_quick_gelu

TESTS = Path(__file__).resolve().parent


def _tagged(monkeypatch, tmp_path, quick_gelu: bool) -> tuple[str, Path]:
    """Register the tiny architecture with a pretrained tag whose config sets quick_gelu (weights: a local file)."""
    import open_clip

    name, weights = tiny_openclip(tmp_path)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name,
                        {"tinytag": {"file": str(weights), "quick_gelu": quick_gelu}})
    return name, weights


@pytest.mark.parametrize("flag", [True, False])
def test_the_tags_quick_gelu_decides_the_activation(monkeypatch, tmp_path, flag):
    name, _ = _tagged(monkeypatch, tmp_path, flag)
    assert tag_quick_gelu(name, "tinytag") is flag
    model = load_source("openclip", name, pretrained="tinytag")
    activations = {type(m).__name__ for m in model.module.modules()} & {"QuickGELU", "GELU"}
    assert activations == ({"QuickGELU"} if flag else {"GELU"})  # the modules really used
    assert model.identity["quick_gelu"] is flag and model.identity["activation"] == ("QuickGELU" if flag else "GELU")


def test_quick_gelu_changes_the_features_and_the_cache_identity(monkeypatch, tmp_path):
    name, weights = _tagged(monkeypatch, tmp_path, True)
    quick = load_source("openclip", name, pretrained="tinytag")
    plain = load_source("openclip", name, pretrained="tinytag", quick_gelu=False)
    forced = load_source("openclip", name, pretrained=str(weights), quick_gelu=True)  # a local file: asked for
    assert uses_quick_gelu(forced.module) and not uses_quick_gelu(plain.module)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert not torch.allclose(quick.features(x), plain.features(x))
        torch.testing.assert_close(quick.features(x), forced.features(x))
    assert quick.identity != plain.identity


def test_the_paper_openai_tags_need_quick_gelu():
    """open_clip's own pretrained config (no download): the OpenAI weights were trained with QuickGELU."""
    for arch in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50x16", "RN50x64"):
        assert tag_quick_gelu(arch, "openai"), arch
    for arch, tag in (("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-H-14", "laion2b_s32b_b79k"),
                      ("convnext_base_w", "laion2b_s13b_b82k")):
        assert not tag_quick_gelu(arch, tag), (arch, tag)


def test_only_the_image_tower_is_kept_and_moved(tmp_path):
    import open_clip

    name, weights = tiny_openclip(tmp_path)
    full = open_clip.create_model(name, pretrained=str(weights)).eval()
    model = load_source("openclip", name, pretrained=str(weights))
    assert model.module is not full.visual and type(model.module) is type(full.visual)
    assert sum(p.numel() for p in model.module.parameters()) == sum(p.numel() for p in full.visual.parameters())
    assert sum(p.numel() for p in model.module.parameters()) < sum(p.numel() for p in full.parameters()) / 2
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model.features(x), full.encode_image(x))
    moved = []
    model.module.to = lambda device: moved.append(device)  # FeatureModel.to moves this module, nothing else
    model.to(torch.device("cpu"))
    assert moved == [torch.device("cpu")]
    stripped = drop_text_tower(open_clip.create_model(name))
    assert [n for n, _ in stripped.named_children()] == ["visual"]
    assert {n for n, _ in stripped.named_parameters() if not n.startswith("visual.")} <= {"logit_scale", "logit_bias"}


KEY_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np, torch
from torchvision import transforms
from kstar_utils.datasets import open_dataset
from kstar_utils.extract import extraction_spec
from kstar_utils.plumbing import stable_hash
from kstar_utils.sources import load_source
from kstar_utils.sources.base import FeatureModel, stable_repr
import open_clip
open_clip.add_model_config({config!r})
clip = load_source("openclip", "kstar-tiny-vit", pretrained={weights!r})

def to_rgb(image):  # a function in a transform: its repr holds a memory address
    return image.convert("RGB")

transform = transforms.Compose([transforms.Lambda(to_rgb), to_rgb, transforms.ToTensor()])
custom = FeatureModel("test", "m", torch.nn.Identity(), transform, "logits", {{"transform": repr(transform)}})
data = open_dataset("digits", split="test")
idx = np.arange(10)
keys = [stable_hash(extraction_spec(m, data, idx, None, 0, 64, torch.device("cpu"))) for m in (clip, custom)]
print(json.dumps({{"keys": keys, "spec": json.dumps(extraction_spec(custom, data, idx, None, 0, 64,
                                                                      torch.device("cpu")), default=str)}}))
"""


def test_cache_keys_are_equal_across_processes(tmp_path):
    """Issue 10 item 7: nothing process-specific (a function's memory address) reaches the cache key."""
    tiny_openclip(tmp_path)
    script = KEY_SCRIPT.format(tests=str(TESTS), config=str(tmp_path / "kstar-tiny-vit.json"),
                               weights=str(tmp_path / "tiny_clip.pt"))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=300,
                             env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0]["keys"] == runs[1]["keys"]
    assert " at 0x" not in runs[0]["spec"] and "<function to_rgb>" in runs[0]["spec"]

