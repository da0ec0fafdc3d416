"""OpenCLIP image encoders: ``open_clip.create_model_and_transforms(arch, pretrained=TAG_OR_LOCAL_PATH)``.

Features are ``encode_image`` outputs (layer ``embedding``, optionally L2-normalised), computed with the model's own
validation preprocessing. ``require_pretrained=True`` is always passed, so a missing checkpoint is an error rather
than a randomly initialised model. A tag whose weights are not in the Hugging Face cache fails at once when offline
(HF_HUB_OFFLINE=1) with a message naming the fix: run once with network access, or pass a local file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..compat import import_open_clip
from ..datasets import offline
from ..errors import KStarInputError
from .base import FeatureModel, WeightsNotFoundError, check_weights_file, file_sha256


def load(
    model: str,
    pretrained: str | None = None,
    layer: str | None = "embedding",
    normalize: bool = False,
    cache_dir: str | os.PathLike | None = None,
    model_config: str | os.PathLike | None = None,
    **_: object,
) -> FeatureModel:
    """Load OpenCLIP ``model`` (an architecture such as ViT-B-32) with weights ``pretrained`` (a tag or a file).

    ``model_config``: a JSON architecture file (or folder of them) for models open_clip does not know, registered
    with ``open_clip.add_model_config`` (the model name is the file's stem).
    """
    open_clip = import_open_clip()
    if model_config:
        if not Path(model_config).exists():
            raise FileNotFoundError(f"OpenCLIP model config {model_config} does not exist.")
        open_clip.add_model_config(model_config)
    layer = layer or "embedding"
    if layer != "embedding":
        raise KStarInputError(f"OpenCLIP encoders give layer 'embedding' (encode_image), not {layer!r}.")
    if not pretrained:
        raise KStarInputError(f"OpenCLIP model {model} needs --pretrained TAG (see open_clip.list_pretrained()) or a file.")
    if model not in open_clip.list_models() and not model.startswith(("hf-hub:", "local-dir:")):
        raise KStarInputError(f"unknown OpenCLIP architecture {model!r}; see open_clip.list_models().")
    local = Path(pretrained)
    is_file = local.suffix in (".bin", ".pt", ".pth", ".safetensors") or local.exists()
    if is_file:
        check_weights_file(local, f"OpenCLIP {model}")
        weights = {"weights_sha256": file_sha256(local)}
    else:
        known = [tag for arch, tag in open_clip.list_pretrained() if arch == model]
        if pretrained not in known:
            raise KStarInputError(f"OpenCLIP has no pretrained tag {pretrained!r} for {model}; known tags: {known}.")
        weights = {"pretrained_tag": pretrained}
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=str(local) if is_file else pretrained, require_pretrained=True,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    except Exception as err:
        if is_file:
            raise
        mode = "downloads are off (HF_HUB_OFFLINE=1)" if offline() else "the download failed"
        raise WeightsNotFoundError(
            f"OpenCLIP weights {model}/{pretrained} are not in the Hugging Face cache and {mode} "
            f"({type(err).__name__}); run once with network access, or pass --pretrained /path/to/weights file."
        ) from err
    net.eval()

    def embed(batch: torch.Tensor) -> torch.Tensor:
        out = net.encode_image(batch)
        return F.normalize(out, dim=-1) if normalize else out

    return FeatureModel(
        source="openclip",
        name=model,
        module=net,
        transform=preprocess,
        layer="embedding",
        identity={**weights, "architecture": model, "normalize": normalize, "transform": repr(preprocess),
                  **({"model_config_sha256": file_sha256(model_config)} if model_config and Path(model_config).is_file()
                     else {})},
        info={"pretrained": pretrained, "normalize": normalize},
        embed=embed,
    )
