"""OpenCLIP image encoders: ``open_clip.create_model_and_transforms(arch, pretrained=TAG_OR_LOCAL_PATH)``.

Built exactly as the pretrained tag's config says: where open_clip's ``get_pretrained_cfg(arch, tag)`` sets
``quick_gelu`` (the OpenAI ViT weights, among others), the model is built with ``force_quick_gelu=True``. From
open_clip 2.29 on, ``ViT-B-32`` with the ``openai`` tag is otherwise built with nn.GELU and open_clip only warns
(open_clip issue #1109: ViT-B-16/openai falls from 0.683 to 0.644 ImageNet accuracy). The activation actually used
(found by looking for QuickGELU modules) is recorded in the cache identity.

Features are ``encode_image`` outputs (layer ``embedding``, optionally L2-normalised), computed with the model's own
validation preprocessing. Only the image tower is kept: the text tower is dropped after loading, so it neither moves
to the GPU nor stays in memory. ``require_pretrained=True`` is always passed, so a missing checkpoint is an error
rather than a randomly initialised model. A tag whose weights are not in the Hugging Face cache fails at once when
offline (HF_HUB_OFFLINE=1) with a message naming the fix: run once with network access, or pass a local file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import import_open_clip
from ..datasets import offline
from ..errors import KStarError, KStarInputError
from .base import (
    FeatureModel,
    WeightsNotFoundError,
    check_weights_file,
    file_sha256,
    register_source,
    stable_repr,
    weights_only_loads,
)


def tag_quick_gelu(model: str, pretrained: str) -> bool:
    """Whether open_clip's pretrained config for (``model``, ``pretrained`` tag) asks for QuickGELU."""
    open_clip = import_open_clip()
    return bool(open_clip.get_pretrained_cfg(model, pretrained).get("quick_gelu", False))


def uses_quick_gelu(module: nn.Module) -> bool:
    """Whether ``module`` computes QuickGELU anywhere (open_clip's ``QuickGELU`` class)."""
    return any(type(m).__name__ == "QuickGELU" for m in module.modules())


def drop_text_tower(net: nn.Module) -> nn.Module:
    """Remove everything but the image tower (``visual``) and the logit scale from a CLIP model, in place.

    ``encode_image`` reads only ``visual``; the text tower of ViT-bigG-14 alone is about 2.8 GB of float32 weights.
    """
    for name, _ in list(net.named_children()):
        if name != "visual":
            setattr(net, name, None)
    for name, _ in list(net.named_parameters(recurse=False)):
        if name not in ("logit_scale", "logit_bias"):
            setattr(net, name, None)
    for name, _ in list(net.named_buffers(recurse=False)):
        setattr(net, name, None)
    return net


@register_source("openclip")
def load(
    model: str,
    pretrained: str | None = None,
    layer: str | None = "embedding",
    normalize: bool = False,
    cache_dir: str | os.PathLike | None = None,
    model_config: str | os.PathLike | None = None,
    quick_gelu: bool | None = None,
    **_: object,
) -> FeatureModel:
    """Load OpenCLIP ``model`` (an architecture such as ViT-B-32) with weights ``pretrained`` (a tag or a file).

    ``model_config``: a JSON architecture file (or folder of them) for models open_clip does not know, registered
    with ``open_clip.add_model_config`` (the model name is the file's stem). ``quick_gelu``: None (default) takes it
    from the tag's pretrained config (a local file: from the architecture config); True/False forces it.
    """
    open_clip = import_open_clip()
    if model_config:
        if not Path(model_config).exists():
            raise WeightsNotFoundError(f"OpenCLIP model config {model_config} does not exist; pass an existing JSON "
                                       "file or folder as model_config.")
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
        force = bool(quick_gelu)
    else:
        known = [tag for arch, tag in open_clip.list_pretrained() if arch == model]
        if pretrained not in known:
            raise KStarInputError(f"OpenCLIP has no pretrained tag {pretrained!r} for {model}; known tags: {known}.")
        weights = {"pretrained_tag": pretrained}
        force = tag_quick_gelu(model, pretrained) if quick_gelu is None else bool(quick_gelu)
    try:
        with weights_only_loads(f"OpenCLIP {model}/{pretrained}"):
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=str(local) if is_file else pretrained, require_pretrained=True,
                force_quick_gelu=force, cache_dir=str(cache_dir) if cache_dir else None,
            )
    except KStarError:
        raise
    except Exception as err:
        if is_file:
            raise
        mode = "downloads are off (HF_HUB_OFFLINE=1)" if offline() else "the download failed"
        raise WeightsNotFoundError(
            f"OpenCLIP weights {model}/{pretrained} are not in the Hugging Face cache and {mode} "
            f"({type(err).__name__}); run once with network access, or pass --pretrained /path/to/weights file."
        ) from err
    if quick_gelu is False and uses_quick_gelu(net.visual):
        raise KStarInputError(f"OpenCLIP {model}: its architecture config sets quick_gelu, so quick_gelu=False "
                              "cannot be honoured; leave quick_gelu unset.")
    net = drop_text_tower(net).eval()
    visual = net.visual
    activation = "QuickGELU" if uses_quick_gelu(visual) else \
        "GELU" if any(isinstance(m, nn.GELU) for m in visual.modules()) else "other"  # ModifiedResNet: ReLU

    def embed(batch: torch.Tensor) -> torch.Tensor:
        out = visual(batch)
        if isinstance(out, (tuple, list)):  # CoCa-style towers return (pooled, tokens)
            out = out[0]
        return F.normalize(out, dim=-1) if normalize else out

    return FeatureModel(
        source="openclip",
        name=model,
        module=visual,
        transform=preprocess,
        layer="embedding",
        identity={**weights, "architecture": model, "normalize": normalize, "activation": activation,
                  "quick_gelu": force or activation == "QuickGELU", "transform": stable_repr(preprocess),
                  **({"model_config_sha256": file_sha256(model_config)} if model_config and Path(model_config).is_file()
                     else {})},
        info={"pretrained": pretrained, "normalize": normalize, "activation": activation},
        embed=embed,
    )
