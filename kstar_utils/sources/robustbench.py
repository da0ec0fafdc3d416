"""RobustBench robust classifiers, loaded through robustbench's own ``load_model``, safely.

Three kinds of zoo entries, each loaded the way RobustBench 1.1.1 loads it:

* a checkpoint file (``gdrive_id``): ``MODEL_DIR/<dataset>/<threat model>/<model name>.pt`` (an ensemble: ``..._m0.pt``,
  ``..._m1.pt``...). When it is missing this module downloads it with :func:`~.download.download_file` (timeouts
  sized to the file, retries, resume) instead of RobustBench's gdown call; offline, the error names the path to
  place it at. The file is checked (an HTML page saved by a failed Google Drive download is named as such) and
  loaded with ``weights_only=True`` and the :data:`~.base.SAFE_GLOBALS` allow-list before RobustBench sees it; a
  checkpoint that needs anything else is refused with :class:`UnsafeCheckpointError` naming the file and the type.
* a timm-hosted model (the XCiT models): RobustBench creates it with ``timm.create_model(pretrained=True)``, which
  fetches the weights from the Hugging Face hub; there is no ``.pt`` file to check.
* ImageNet ``Standard_R50``: torchvision's ResNet-50 weights, located, hash-checked and loaded safely by
  :mod:`.torchvision_models`.

All of it runs inside :func:`~.base.weights_only_loads`, so no ``torch.load`` on the way unpickles code. Inputs are
[0, 1] tensors, as RobustBench models expect (their normalisation is inside the model): CIFAR models get 32 x 32
images; ImageNet models get RobustBench's own ``get_preprocessing`` for that model (``Res256Crop224``,
``BicubicRes256Crop224``, ``Crop288``, ``Res224`` or the timm model's configuration).
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any

from torchvision import transforms

from ..datasets import offline
from ..errors import KStarError, KStarInputError
from ..plumbing import default_robustbench_dir
from .base import (
    FeatureModel,
    WeightsNotFoundError,
    check_weights_file,
    file_sha256,
    register_source,
    safe_torch_load,
    stable_repr,
    weights_only_loads,
)
from .download import download_file, gdrive_url
from .torchvision_models import ToRGB

DATASETS = {"cifar10": "cifar10", "cifar-10": "cifar10", "cifar100": "cifar100", "cifar-100": "cifar100",
            "imagenet": "imagenet"}


class ResizeIfNeeded:
    """Resize to ``size`` x ``size`` only when the image is not that size already (CIFAR images pass untouched)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image):
        return image if image.size == (self.size, self.size) else image.resize((self.size, self.size))

    def __repr__(self) -> str:
        return f"ResizeIfNeeded({self.size})"


def input_transform(dataset: str, model: str | None = None, threat_model: str = "Linf"):
    """RobustBench's test-time preprocessing, after converting to RGB: ToTensor (32 x 32) for CIFAR, and for
    ImageNet RobustBench's ``get_preprocessing`` for ``model`` (``Res256Crop224`` when no model is named)."""
    if dataset != "imagenet":
        return transforms.Compose([ToRGB(), ResizeIfNeeded(32), transforms.ToTensor()])
    if model is None:
        return transforms.Compose([ToRGB(), transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    _import()
    from robustbench.data import get_preprocessing
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep = get_preprocessing(BenchmarkDataset(dataset), ThreatModel(threat_model), model, None)
    return transforms.Compose([ToRGB(), *getattr(prep, "transforms", [prep])])


def _import() -> None:
    from ..compat import import_robustbench

    import_robustbench()


def zoo_entry(model: str, dataset: str, threat_model: str) -> dict:
    """The RobustBench model-zoo entry, or a KStarInputError listing the closest names."""
    _import()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        entries = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    except (ValueError, KeyError) as err:
        raise KStarInputError(f"RobustBench has no {dataset}/{threat_model} leaderboard ({err}).") from err
    if model not in entries:
        close = difflib.get_close_matches(model, list(entries), n=5)
        raise KStarInputError(
            f"{model!r} is not a RobustBench {dataset}/{threat_model} model" + (f"; did you mean {close}?" if close else ".")
        )
    return entries[model]


def timm_name(model: str, dataset: str, threat_model: str) -> str | None:
    """The timm model RobustBench creates for this entry (XCiT models), or None when it has a checkpoint file."""
    _import()
    import timm

    name = f"{model.lower().replace('-', '_')}_{dataset.lower()}_{threat_model.lower()}"
    return name if timm.is_model(name) else None


def weights_kind(model: str, dataset: str, threat_model: str) -> str:
    """How RobustBench 1.1.1 gets this model's weights: 'checkpoint', 'ensemble', 'timm' or 'torchvision'."""
    entry = zoo_entry(model, dataset, threat_model)
    if timm_name(model, dataset, threat_model):
        return "timm"
    gdrive = entry.get("gdrive_id")
    if isinstance(gdrive, list):
        return "ensemble"
    if dataset == "imagenet" and "Standard" in model:
        return "torchvision"
    if not gdrive:
        raise KStarInputError(f"RobustBench {model} ({dataset}/{threat_model}) has neither a checkpoint nor a timm "
                              "model; RobustBench itself cannot load it.")
    return "checkpoint"


def checkpoint_path(model: str, dataset: str, threat_model: str, model_dir: str | os.PathLike | None) -> Path:
    """Where RobustBench's loader reads (and downloads) this model's checkpoint."""
    return Path(model_dir or default_robustbench_dir()) / dataset / threat_model / f"{model}.pt"


def checkpoint_paths(model: str, dataset: str, threat_model: str, model_dir: str | os.PathLike | None) -> list[Path]:
    """Every checkpoint file of the entry: one, or one per member of an ensemble (``<model>.pt_m<i>.pt``)."""
    path = checkpoint_path(model, dataset, threat_model, model_dir)
    gdrive = zoo_entry(model, dataset, threat_model).get("gdrive_id")
    if isinstance(gdrive, list):
        return [path.with_name(f"{path.name}_m{i}.pt") for i in range(len(gdrive))]
    return [path]


def _fetch(paths: list[Path], ids: list[str], model: str, ds: str, threat_model: str, progress: bool) -> None:
    """Make sure every checkpoint file is present: download the missing ones (or say where to place them)."""
    for path, gid in zip(paths, ids):
        if path.exists():
            continue
        if offline():
            raise WeightsNotFoundError(
                f"RobustBench checkpoint {path} is missing and downloads are off (offline); place the file there "
                f"(RobustBench model {model}, {ds}/{threat_model}; Google Drive id {gid})."
            )
        download_file(gdrive_url(gid), path, progress=progress,
                      what=f"RobustBench {model} ({ds}/{threat_model}) checkpoint")


@register_source("robustbench")
def load(
    model: str,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike | None = None,
    layer: str | None = "penultimate",
    pretrained: str | None = None,
    progress: bool = False,
    **_: object,
) -> FeatureModel:
    """Load RobustBench model ``model`` for ``dataset`` / ``threat_model`` (Linf, L2, corruptions).

    Checkpoints are read from ``model_dir/<dataset>/<threat_model>/<model>.pt`` (downloaded there when missing and
    the network is available). ``pretrained`` is not used: RobustBench names its weights by model.
    """
    if pretrained:
        raise KStarInputError("RobustBench models take no --pretrained; put the checkpoint under --model-dir as "
                              f"MODEL_DIR/<dataset>/<threat model>/{model}.pt.")
    layer = layer or "penultimate"
    ds = DATASETS.get(dataset.lower())
    if ds is None:
        raise KStarInputError(f"RobustBench covers cifar10, cifar100 and imagenet, not {dataset!r}.")
    entry = zoo_entry(model, ds, threat_model)
    kind = weights_kind(model, ds, threat_model)
    model_dir = Path(model_dir or default_robustbench_dir())
    what = f"RobustBench {model} ({ds}/{threat_model})"
    preloaded: dict[Path, Any] = {}
    paths: list[Path] = []
    if kind in ("checkpoint", "ensemble"):
        paths = checkpoint_paths(model, ds, threat_model, model_dir)
        gdrive = entry["gdrive_id"]
        _fetch(paths, gdrive if isinstance(gdrive, list) else [gdrive], model, ds, threat_model, progress)
        for p in paths:
            check_weights_file(p, what)
            preloaded[p] = safe_torch_load(p, what=what)  # refused here, before RobustBench sees it, if unsafe
        identity: dict = {"weights_sha256": [file_sha256(p) for p in paths]}
    elif kind == "timm":
        import timm

        name = timm_name(model, ds, threat_model)
        cfg = timm.models.get_pretrained_cfg(name)
        identity = {"timm_model": name, "weights": getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)}
    else:
        from torchvision.models import ResNet50_Weights

        identity = {"weights": str(ResNet50_Weights.IMAGENET1K_V1)}
    from robustbench.utils import load_model

    from . import torchvision_models

    try:
        with weights_only_loads(what, preloaded):
            if kind == "torchvision":
                weights = ResNet50_Weights.IMAGENET1K_V1
                with torchvision_models._serve(weights, torchvision_models.named_state_dict(weights, progress)):
                    net = load_model(model_name=model, model_dir=str(model_dir), dataset=ds, threat_model=threat_model)
            else:
                net = load_model(model_name=model, model_dir=str(model_dir), dataset=ds, threat_model=threat_model)
    except KStarError:
        raise
    except Exception as err:
        if kind == "timm":
            mode = "downloads are off (offline)" if offline() else "the download failed"
            raise WeightsNotFoundError(
                f"{what}: timm weights {identity['weights']} are not in the Hugging Face cache and {mode} "
                f"({type(err).__name__}); run once with network access (timm fetches them from the hub)."
            ) from err
        raise
    net.eval()
    transform = input_transform(ds, model, threat_model)
    identity.update({"dataset": ds, "threat_model": threat_model, "weights_kind": kind})
    return FeatureModel(
        source="robustbench",
        name=model,
        module=net,
        transform=transform,
        layer=layer,
        identity={**identity, "layer": layer, "transform": stable_repr(transform)},
        info={"architecture": type(net).__name__, "model_dir": str(model_dir), "checkpoint": [str(p) for p in paths],
              "weights_kind": kind},
    )
