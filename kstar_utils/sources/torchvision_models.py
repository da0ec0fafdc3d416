"""torchvision classification models: a named torchvision weights set (``IMAGENET1K_V1``, ``DEFAULT``) or a local file.

Named weights are *not* loaded through torchvision's own path (``torch.hub.load_state_dict_from_url``, which unpickles
whatever file sits in the hub cache with ``weights_only=False``). This module locates the file in torch hub's cache
(``$TORCH_HOME/hub/checkpoints/<name>-<sha256 prefix>.pth``) or downloads it there with :func:`download_file`, checks
its SHA-256 against the prefix torchvision publishes in the file name, loads it with ``weights_only=True``, and only
then lets torchvision's builder put the model together (so builder options tied to the weights, such as Inception's
``transform_input``, stay as torchvision sets them). A local state-dict file is loaded with ``weights_only=True`` too.
Features default to the penultimate layer (input of the last nn.Linear). Preprocessing is the weights' own
``transforms()`` (a local file gets the standard ImageNet evaluation transform), after converting any image to RGB.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torchvision import models, transforms

from ..datasets import offline
from ..errors import KStarInputError
from .base import (
    FeatureModel,
    WeightsNotFoundError,
    check_hub_hash,
    check_weights_file,
    file_sha256,
    load_state_dict,
    register_source,
    safe_torch_load,
    stable_repr,
    weights_only_loads,
)
from .download import download_file


class ToRGB:
    """Convert any PIL image (grayscale, palette, RGBA) to 3-channel RGB, as ImageNet models expect."""

    def __call__(self, image):
        return image if getattr(image, "mode", "RGB") == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


IMAGENET_EVAL = transforms.Compose([
    ToRGB(),
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
])


def hub_file(weights: Any) -> Path:
    """Where torch hub keeps (and torchvision would download) this weights set's file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def named_state_dict(weights: Any, progress: bool = False) -> dict:
    """The state dict of torchvision weights set ``weights``: found in (or downloaded into) the hub cache, checked
    against the SHA-256 prefix in its file name, and loaded with ``weights_only=True``."""
    path = hub_file(weights)
    if not path.exists():
        if offline():
            raise WeightsNotFoundError(
                f"torchvision weights {weights} are missing and downloads are off; place {path.name} (from "
                f"{weights.url}) in {path.parent} or pass --pretrained /path/to/state_dict.pth."
            )
        match = re.search(r"-([a-f0-9]{6,})\.", path.name)
        download_file(weights.url, path, sha256_prefix=match.group(1) if match else None, progress=progress,
                      what=f"torchvision weights {weights}")
    check_weights_file(path, f"torchvision {weights}")
    if check_hub_hash(path, f"torchvision {weights}") is None:
        raise WeightsNotFoundError(f"torchvision weights {weights}: the file name {path.name} carries no SHA-256 "
                                   "prefix to check it against; pass the file with --pretrained instead.")
    return safe_torch_load(path, what=f"torchvision {weights}")


@contextmanager
def _serve(weights: Any, state: dict) -> Iterator[None]:
    """Make torchvision's builder take ``state`` (already checked and safely loaded) for ``weights``."""
    from torchvision.models._api import WeightsEnum

    original = WeightsEnum.get_state_dict

    def get_state_dict(self, *args: Any, **kwargs: Any) -> dict:
        if self is weights:
            return state
        raise KStarInputError(f"torchvision asked for weights {self} while building {weights}; refused.")

    WeightsEnum.get_state_dict = get_state_dict
    try:
        with weights_only_loads(f"torchvision {weights}"):  # any other torch.load on the way: weights only
            yield
    finally:
        WeightsEnum.get_state_dict = original


def resolve_weights(model: str, pretrained: str | None) -> Any:
    """The torchvision weights enum member named ``pretrained`` (``DEFAULT``, ``IMAGENET1K_V1``...) for ``model``."""
    enum = models.get_model_weights(model)
    if pretrained in (None, "DEFAULT"):
        return enum.DEFAULT
    try:
        return models.get_weight(f"{enum.__name__}.{pretrained}")
    except (KeyError, ValueError) as err:
        raise KStarInputError(f"torchvision has no weights {pretrained!r} for {model}; known: "
                              f"{[w.name for w in enum]}, or pass a local state-dict file.") from err


@register_source("torchvision")
def load(model: str, pretrained: str | None = "DEFAULT", layer: str | None = "penultimate",
         num_classes: int | None = None, progress: bool = False, **_: object) -> FeatureModel:
    """Load torchvision model ``model`` with weights ``pretrained`` (weights name or local file)."""
    layer = layer or "penultimate"
    if model not in models.list_models():
        raise KStarInputError(f"unknown torchvision model {model!r}; see torchvision.models.list_models().")
    local = Path(pretrained) if pretrained else None
    if local is not None and (local.exists() or local.suffix in (".pt", ".pth", ".safetensors")):
        check_weights_file(local, f"torchvision {model}")
        state = load_state_dict(local)
        classes = num_classes or _classes_in(state)
        net = models.get_model(model, weights=None, **({"num_classes": classes} if classes else {}))
        net.load_state_dict(state)
        transform, identity = IMAGENET_EVAL, {"weights_sha256": file_sha256(local)}
    else:
        weights = resolve_weights(model, pretrained)
        state = named_state_dict(weights, progress=progress)
        with _serve(weights, state):
            net = models.get_model(model, weights=weights)
        transform = transforms.Compose([ToRGB(), weights.transforms()])
        identity = {"weights": str(weights), "weights_file": Path(weights.url).name}
    net.eval()
    return FeatureModel(source="torchvision", name=model, module=net, transform=transform, layer=layer,
                        identity={**identity, "layer": layer, "transform": stable_repr(transform)},
                        info={"architecture": model})


def _classes_in(state: dict) -> int | None:
    """Number of classes of a state dict's final layer (the last 2-D weight), so local fine-tunes load."""
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(weights[-1].shape[0]) if weights else None
