"""Small CNNs for the built-in study: one family, scaled by width, for 8 x 8 digits and 28 x 28 Fashion-MNIST.

The architecture ends in global average pooling, a ``features`` linear layer and a ``classifier`` linear layer, so
the penultimate layer (the input of the last nn.Linear called) is a low-dimensional latent space, as in the paper's
models.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(w) -> conv(2w) -> pool -> conv(4w) -> global average pool -> linear(latent) -> ReLU -> linear(classes)."""

    def __init__(self, in_channels: int = 1, width: int = 16, latent: int = 64, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(4 * width, latent), nn.ReLU())
        self.classifier = nn.Linear(latent, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.body(x)))


def build_model(width: int, latent: int, in_channels: int = 1, num_classes: int = 10) -> SmallCNN:
    return SmallCNN(in_channels=in_channels, width=width, latent=latent, num_classes=num_classes)
