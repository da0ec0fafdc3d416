"""torchvision classification models: ``torchvision.models.get_model(name, weights=ENUM)`` or a local weights file.

Weights are a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``) or a local state-dict file (loaded with
``weights_only=True``). Features default to the penultimate layer (input of the last nn.Linear). Preprocessing is the
weights' own ``transforms()``; a local file gets the standard ImageNet evaluation transform.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import models, transforms

from ..datasets import offline, short_socket_timeout
from ..errors import KStarInputError
from .base import FeatureModel, WeightsNotFoundError, check_weights_file, file_sha256, load_state_dict

IMAGENET_EVAL = transforms.Compose([
    transforms.Lambda(lambda im: im.convert("RGB")),
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
])


def load(model: str, pretrained: str | None = "DEFAULT", layer: str | None = "penultimate",
         num_classes: int | None = None, **_: object) -> FeatureModel:
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
        weights = models.get_model_weights(model).DEFAULT if pretrained in (None, "DEFAULT") else \
            models.get_weight(f"{models.get_model_weights(model).__name__}.{pretrained}")
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.exists() and offline():
            raise WeightsNotFoundError(
                f"torchvision weights {weights} are missing and downloads are off; place {Path(weights.url).name} in "
                f"{cached.parent} or pass --pretrained /path/to/state_dict.pth."
            )
        try:
            with short_socket_timeout():
                net = models.get_model(model, weights=weights)
        except Exception as err:
            if cached.exists():
                raise
            raise WeightsNotFoundError(
                f"torchvision weights {weights} could not be downloaded ({type(err).__name__}); place "
                f"{Path(weights.url).name} in {cached.parent}."
            ) from err
        transform, identity = weights.transforms(), {"weights": str(weights)}
    net.eval()
    return FeatureModel(source="torchvision", name=model, module=net, transform=transform, layer=layer,
                        identity={**identity, "layer": layer, "transform": repr(transform)},
                        info={"architecture": model})


def _classes_in(state: dict) -> int | None:
    """Number of classes of a state dict's final layer (the last 2-D weight), so local fine-tunes load."""
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(weights[-1].shape[0]) if weights else None
