"""Deterministic distribution shifts of the test images, for the generalisation half of the built-in study.

Each shift is a fixed, stated transformation of images in [0, 1] (N, C, H, W), so a report can say exactly what the
models were evaluated on. The parameters are module constants; :data:`SHIFTS` describes each one in words for the
report, and :func:`apply_shift` applies it.

The strengths were set (deliberately, once, and not toward any k* result) so that the small CNNs of the built-in zoo
are hurt but not reduced to chance: with the first version's values (3x3 binomial blur, rotation by 20 degrees,
contrast x0.35) the median accuracy of the digits zoo's standard models was 0.12 under the contrast shift and about 0.3
under the blur, which leaves nothing to correlate. Measured on the twelve digits models of the default design (widths
2 to 16, three seeds, clean accuracy 0.72 to 0.97), the values below give accuracies of about 0.3 to 0.96 per shift.
The noise is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import KStarInputError

NOISE_SIGMA = 0.2  # standard deviation of the additive Gaussian noise, in units of the [0, 1] pixel range
BLUR_KERNEL_1D = (0.15, 0.7, 0.15)  # the 3x3 kernel is its outer product with itself (first version: 1-2-1 / 4)
ROTATION_DEGREES = 12.0  # counter-clockwise in image coordinates, about the image centre, zeros filled in (was 20)
CONTRAST_FACTOR = 0.65  # deviations from each image's mean pixel value are multiplied by this (was 0.35)


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
    "blur": ShiftSpec("blur", f"3x3 blur, kernel {list(BLUR_KERNEL_1D)} x {list(BLUR_KERNEL_1D)} (centre weight "
                      f"{BLUR_KERNEL_1D[1] ** 2:.2f}), edges replicated", {"kernel_1d": list(BLUR_KERNEL_1D)}, False,
                      _blur),
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
