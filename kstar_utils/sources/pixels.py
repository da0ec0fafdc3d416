"""Raw pixels as features: the baseline latent space (no model at all), handy for data-set sanity checks."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import transforms

from .base import FeatureModel, register_source, stable_repr


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_source("pixels")
def load(model: str = "pixels", layer: str | None = None, **_: object) -> FeatureModel:
    """Pixels in [0, 1], flattened; ``layer`` is ignored (there is only one)."""
    transform = transforms.ToTensor()
    return FeatureModel(source="pixels", name="pixels", module=Flatten(), transform=transform, layer="logits",
                        identity={"transform": stable_repr(transform)})
