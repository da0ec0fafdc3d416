"""The built-in zoo as a feature source, like RobustBench: ``load_source("builtin", "digits-pgd-linf-0.1")``.

The model is looked up by name in the study profiles (see :mod:`kstar_utils.zoo.study`) and trained first if the zoo
cache does not hold it yet. Features: the penultimate layer (the input of the classifier) by default, or logits.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import transforms

from ..errors import KStarInputError
from ..sources.base import FeatureModel, file_sha256


def find_spec(name: str):
    from .study import PROFILES, generalisation_specs, robustness_specs

    for profile in ("digits", "fashion", "smoke"):
        for spec in robustness_specs(PROFILES[profile]) + generalisation_specs(PROFILES[profile]):
            if spec.name == name:
                return spec
    names = sorted({s.name for p in PROFILES.values() for s in robustness_specs(p) + generalisation_specs(p)})
    raise KStarInputError(f"unknown built-in model {name!r}; choose from {', '.join(names)}.")


def load(model: str, layer: str | None = "penultimate", zoo_dir: str | Path | None = None, data_root: str | None = None,
         progress: bool = True, **_: object) -> FeatureModel:
    from .data import load_tensors
    from .study import ensure_trained
    from .train import default_zoo_dir

    layer = layer or "penultimate"
    spec = find_spec(model)
    x, y = load_tensors(spec.dataset, "train", data_root)
    net, folder, meta = ensure_trained(spec, Path(zoo_dir) if zoo_dir else default_zoo_dir(), x, y, progress)
    transform = transforms.ToTensor()
    return FeatureModel(source="builtin", name=model, module=net, transform=transform, layer=layer,
                        identity={"weights_sha256": file_sha256(folder / "model.safetensors"), "spec_key": spec.key(),
                                  "layer": layer, "transform": repr(transform)},
                        info={"training": spec.label, "evaluation": meta.get("evaluation", {}), "folder": str(folder)})
