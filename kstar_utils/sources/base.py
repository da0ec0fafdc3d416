"""What every feature source shares: the FeatureModel it returns, layer hooks, weights identity and offline errors."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import KStarInputError, LayerNotFoundError, WeightsNotFoundError

LAYERS = ("penultimate", "logits", "embedding")
HTML_MARKERS = (b"<!doctype html", b"<html", b"<!DOCTYPE html", b"<HTML")


@dataclass
class FeatureModel:
    """A model ready for extraction.

    ``module`` maps a batch of preprocessed images to the model output; :meth:`features` returns the requested layer
    (``penultimate``: the input of the last nn.Linear the forward pass calls; ``logits``: the output;
    ``embedding``: the source's own embedding, e.g. CLIP's ``encode_image``). ``transform`` turns one PIL image into
    the model's input tensor. ``identity`` is what identifies the numbers (weights hash or tag, layer, transform...)
    and goes into the cache key.
    """

    source: str
    name: str
    module: nn.Module
    transform: Callable[[Any], torch.Tensor]
    layer: str
    identity: dict
    info: dict = field(default_factory=dict)
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None
    _penultimate: "PenultimateHook | None" = None

    def to(self, device: torch.device) -> "FeatureModel":
        self.module.to(device)
        return self

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        if self.layer == "logits":
            return self.module(batch)
        if self.layer == "embedding":
            if self.embed is None:
                raise LayerNotFoundError(f"{self.source} models have no 'embedding' layer; use 'penultimate' or 'logits'.")
            return self.embed(batch)
        if self._penultimate is None:
            self._penultimate = PenultimateHook(self.module)
        return self._penultimate(batch)


class PenultimateHook:
    """Penultimate features: the input of the last nn.Linear the forward pass calls, found by watching one batch.

    The first call records the order in which nn.Linear modules run; the last one is taken as the classifier, and the
    model's output must be that layer's output (otherwise the "input of the final classifier" is not well defined for
    this model, e.g. an ensemble or a model with a non-linear head: LayerNotFoundError says to use 'logits').
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.classifier: nn.Linear | None = None
        self.classifier_name: str | None = None

    def _discover(self, batch: torch.Tensor) -> torch.Tensor:
        calls: list[tuple[str, nn.Module, torch.Tensor]] = []
        handles = [
            m.register_forward_hook(lambda mod, inp, out, name=name: calls.append((name, mod, out)))
            for name, m in self.module.named_modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            output = self.module(batch)
        finally:
            for h in handles:
                h.remove()
        if not calls:
            raise LayerNotFoundError(
                f"{type(self.module).__name__} calls no nn.Linear layer in its forward pass, so its penultimate layer "
                "cannot be found generically; use layer='logits' (or 'embedding' where the source has one)."
            )
        name, layer, last_out = calls[-1]
        if not (isinstance(output, torch.Tensor) and output.shape == last_out.shape and torch.equal(output, last_out)):
            raise LayerNotFoundError(
                f"the output of {type(self.module).__name__} is not the output of its last nn.Linear ({name}), so the "
                "input of the final classifier is not its penultimate layer (an ensemble or a non-linear head?); "
                "use layer='logits'."
            )
        self.classifier, self.classifier_name = layer, name
        return output

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            self._discover(batch[:1])
        captured: list[torch.Tensor] = []
        handle = self.classifier.register_forward_pre_hook(lambda mod, inp: captured.append(inp[0]))
        try:
            self.module(batch)
        finally:
            handle.remove()
        return captured[-1].flatten(1)


def file_sha256(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """SHA-256 of a weights file, remembered beside it (keyed by size and mtime) so large files hash once."""
    p = Path(path)
    stat = p.stat()
    memo = p.with_name(f".{p.name}.sha256.json")
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp:
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with p.open("rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        memo.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    except OSError:
        pass  # a read-only weights folder: hash again next time
    return value


def check_weights_file(path: str | os.PathLike, what: str) -> Path:
    """The weights file must exist and be a checkpoint, not an HTML page saved by a failed download."""
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"{what}: weights file {p} does not exist; place the checkpoint there.")
    with p.open("rb") as handle:
        head = handle.read(512).lstrip()
    if any(head.startswith(m) or head[:64].lower().startswith(m.lower()) for m in HTML_MARKERS):
        raise WeightsNotFoundError(
            f"{what}: {p} is an HTML page, not a checkpoint (a failed download, e.g. a Google Drive quota or "
            "confirmation page); delete it and download the checkpoint again, or place the real file there."
        )
    return p


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a checkpoint's tensors safely: safetensors, or torch.load(weights_only=True) (no pickled code)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


SOURCES: dict[str, str | Callable[..., FeatureModel]] = {
    "robustbench": "kstar_utils.sources.robustbench:load",
    "openclip": "kstar_utils.sources.openclip:load",
    "torchvision": "kstar_utils.sources.torchvision_models:load",
    "pixels": "kstar_utils.sources.pixels:load",
    "builtin": "kstar_utils.zoo.source:load",
}


def register_source(name: str, loader: str | Callable[..., FeatureModel]) -> None:
    """Register a feature source: a loader ``(model, **options) -> FeatureModel`` or its "module:function" path."""
    SOURCES[name] = loader


def load_source(source: str, model: str, **options: Any) -> FeatureModel:
    """Load ``model`` from feature source ``source`` (robustbench, openclip, torchvision, pixels, builtin, ...)."""
    if source not in SOURCES:
        raise KStarInputError(f"unknown feature source {source!r}; choose from {', '.join(sorted(SOURCES))}.")
    loader = SOURCES[source]
    if isinstance(loader, str):
        module_name, func = loader.split(":")
        loader = getattr(importlib.import_module(module_name), func)
    layer = options.get("layer")
    if layer is not None and layer not in LAYERS:
        raise KStarInputError(f"unknown layer {layer!r}; use one of {', '.join(LAYERS)}.")
    return loader(model, **options)
