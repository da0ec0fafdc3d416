"""Deterministic distribution shifts of the test images, for the generalisation half of the built-in study.

Each shift is a fixed, stated transformation of images in [0, 1] (N, C, H, W), so a report can say exactly what the
models were evaluated on. The parameters are module constants; :data:`SHIFTS` describes each one in words for the
report, and :func:`apply_shift` applies it. The numerics are those of the study since its first version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import KStarInputError

NOISE_SIGMA = 0.2  # standard deviation of the additive Gaussian noise, in units of the [0, 1] pixel range
BLUR_KERNEL_1D = (0.25, 0.5, 0.25)  # the 3x3 binomial kernel is its outer product with itself
ROTATION_DEGREES = 20.0  # counter-clockwise in image coordinates, about the image centre, zeros filled in
CONTRAST_FACTOR = 0.35  # deviations from each image's mean pixel value are multiplied by this


def _noise(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + NOISE_SIGMA * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _blur(x: torch.Tensor, seed: int) -> torch.Tensor:
    k = torch.tensor(BLUR_KERNEL_1D)
    kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


def _rotation(x: torch.Tensor, seed: int) -> torch.Tensor:
    angle = math.radians(ROTATION_DEGREES)
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _contrast(x: torch.Tensor, seed: int) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + CONTRAST_FACTOR * (x - mean)).clamp(0, 1)


@dataclass(frozen=True)
class ShiftSpec:
    """One shift: its name, a description with its parameters (for the report), the parameters themselves, and
    whether ``seed`` changes it (only the noise is random)."""

    name: str
    description: str
    parameters: dict = field(hash=False)
    seeded: bool
    function: Callable[[torch.Tensor, int], torch.Tensor] = field(repr=False, compare=False, hash=False)


SHIFTS: dict[str, ShiftSpec] = {
    "noise": ShiftSpec("noise", f"additive Gaussian noise, sigma = {NOISE_SIGMA:g} (pixels in [0, 1]), clipped to "
                       "[0, 1]; seeded", {"sigma": NOISE_SIGMA}, True, _noise),
    "blur": ShiftSpec("blur", "3x3 binomial blur (kernel [1, 2, 1] x [1, 2, 1] / 16), edges replicated",
                      {"kernel_1d": list(BLUR_KERNEL_1D)}, False, _blur),
    "rotation": ShiftSpec("rotation", f"rotation by {ROTATION_DEGREES:g} degrees about the centre (bilinear), "
                          "corners filled with black", {"degrees": ROTATION_DEGREES}, False, _rotation),
    "contrast": ShiftSpec("contrast", f"contrast x{CONTRAST_FACTOR:g} about each image's mean, clipped to [0, 1]",
                          {"factor": CONTRAST_FACTOR}, False, _contrast),
}


def apply_shift(x: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """``x`` (images in [0, 1], N x C x H x W) under shift ``kind`` ("clean" returns ``x`` itself); deterministic:
    the same images, kind and seed always give the same result."""
    if kind == "clean":
        return x
    if kind not in SHIFTS:
        raise KStarInputError(f"unknown shift {kind!r}; use clean or one of {', '.join(SHIFTS)}.")
    if x.dim() != 4:
        raise KStarInputError(f"shifts take images as N x C x H x W, got shape {tuple(x.shape)}.")
    return SHIFTS[kind].function(x, seed)
