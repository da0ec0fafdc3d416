"""The built-in zoo as a feature source, like RobustBench: ``load_source("builtin", "pgd-linf-0.1-s0")``.

A model is named by its id within a profile's ``zoo:`` section (``study``, default ``default``); the pipeline passes
the training spec itself (``spec=``), so a name never resolves to another profile's model. The model is trained first
if the zoo cache does not hold it yet. Features: the penultimate layer (the input of the classifier) by default, or
logits.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import transforms

from ..errors import KStarInputError
from ..sources.base import FeatureModel, file_sha256, register_source
from .study import ensure_trained, zoo_models
from .train import ZooModelSpec


def find_spec(name: str, study: str = "default") -> ZooModelSpec:
    """The training spec of model ``name`` in the zoo section of profile ``study``."""
    from ..pipeline.profiles import load_profile

    profile = load_profile(study)
    if profile.zoo is None:
        raise KStarInputError(f"profile {study!r} has no zoo section; use --study with a built-in study profile.")
    models = {m.id: m.spec for m in zoo_models(profile.zoo)}
    if name not in models:
        raise KStarInputError(f"unknown built-in model {name!r} in profile {study!r}; choose from "
                              f"{', '.join(sorted(models))}.")
    return models[name]


@register_source("builtin")
def load(model: str, layer: str | None = "penultimate", zoo_dir: str | Path | None = None, data_root: str | None = None,
         progress: bool = True, spec: dict | ZooModelSpec | None = None, study: str = "default",
         **_: object) -> FeatureModel:
    """A zoo model ready for extraction (trained first if needed)."""
    layer = layer or "penultimate"
    if spec is None:
        spec = find_spec(model, study)
    elif isinstance(spec, dict):
        spec = ZooModelSpec(**spec)
    net, folder, _ = ensure_trained(spec, zoo_dir, data_root, progress)
    transform = transforms.ToTensor()
    return FeatureModel(source="builtin", name=model, module=net, transform=transform, layer=layer,
                        identity={"weights_sha256": file_sha256(folder / "model.safetensors"), "spec_key": spec.key(),
                                  "layer": layer, "transform": "ToTensor()"},
                        info={"training": spec.label, "folder": str(folder)})
