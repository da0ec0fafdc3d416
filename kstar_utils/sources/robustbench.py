"""RobustBench robust classifiers, loaded through robustbench's own ``load_model``.

Checkpoints live where RobustBench puts them: ``MODEL_DIR/<dataset>/<threat model>/<model name>.pt``. Before calling
the loader this module checks that file: when it is missing and downloads are off (or fail), the error names the exact
path to place it at; when it is an HTML page (a known failure of RobustBench's Google Drive downloads) the error says
so. Inputs are [0, 1] tensors, as RobustBench models expect (their normalisation is inside the model): CIFAR models
get 32 x 32 images, ImageNet models RobustBench's ``Res256Crop224`` preprocessing.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from torchvision import transforms

from ..datasets import offline, short_socket_timeout
from ..errors import KStarInputError
from ..plumbing import default_robustbench_dir
from .base import FeatureModel, WeightsNotFoundError, check_weights_file, file_sha256

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


def input_transform(dataset: str):
    """RobustBench's test-time preprocessing: [0, 1] RGB tensors, 32 x 32 for CIFAR, Res256Crop224 for ImageNet."""
    rgb = transforms.Lambda(lambda im: im.convert("RGB"))
    if dataset == "imagenet":
        return transforms.Compose([rgb, transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    return transforms.Compose([rgb, ResizeIfNeeded(32), transforms.ToTensor()])


def zoo_entry(model: str, dataset: str, threat_model: str) -> dict:
    """The RobustBench model-zoo entry, or a ValueError listing the closest names."""
    from ..compat import import_robustbench

    import_robustbench()
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


def checkpoint_path(model: str, dataset: str, threat_model: str, model_dir: str | os.PathLike | None) -> Path:
    """Where RobustBench's loader reads (and downloads) this model's checkpoint."""
    return Path(model_dir or default_robustbench_dir()) / dataset / threat_model / f"{model}.pt"


def load(
    model: str,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike | None = None,
    layer: str | None = "penultimate",
    pretrained: str | None = None,
    **_: object,
) -> FeatureModel:
    """Load RobustBench model ``model`` for ``dataset`` / ``threat_model`` (Linf, L2, corruptions).

    The checkpoint is read from ``model_dir/<dataset>/<threat_model>/<model>.pt`` (downloaded there by RobustBench
    when missing and the network is available). ``pretrained`` is not used: RobustBench names its weights by model.
    """
    if pretrained:
        raise KStarInputError("RobustBench models take no --pretrained; put the checkpoint under --model-dir as "
                         f"MODEL_DIR/<dataset>/<threat model>/{model}.pt.")
    layer = layer or "penultimate"
    ds = DATASETS.get(dataset.lower())
    if ds is None:
        raise KStarInputError(f"RobustBench covers cifar10, cifar100 and imagenet, not {dataset!r}.")
    entry = zoo_entry(model, ds, threat_model)
    model_dir = Path(model_dir or default_robustbench_dir())
    path = checkpoint_path(model, ds, threat_model, model_dir)
    gdrive = entry.get("gdrive_id")
    if isinstance(gdrive, list):
        paths = [path.with_name(f"{path.name}_m{i}.pt") for i in range(len(gdrive))]
    else:
        paths = [path]
    missing = [p for p in paths if not p.exists()]
    if missing and offline():
        raise WeightsNotFoundError(
            f"RobustBench checkpoint {missing[0]} is missing and downloads are off (offline); place the file there "
            f"(RobustBench model {model}, {ds}/{threat_model})."
        )
    for p in paths:
        if p.exists():
            check_weights_file(p, f"RobustBench {model}")
    from robustbench.utils import load_model

    try:
        with short_socket_timeout():
            net = load_model(model_name=model, model_dir=str(model_dir), dataset=ds, threat_model=threat_model)
    except WeightsNotFoundError:
        raise
    except Exception as err:
        for p in paths:
            if p.exists():
                check_weights_file(p, f"RobustBench {model}")  # a download that saved an HTML page
        if any(not p.exists() for p in paths):
            raise WeightsNotFoundError(
                f"RobustBench checkpoint {missing[0] if missing else paths[0]} could not be downloaded "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); place the file there."
            ) from err
        raise
    net.eval()
    identity = {"weights_sha256": [file_sha256(p) for p in paths], "dataset": ds, "threat_model": threat_model}
    return FeatureModel(
        source="robustbench",
        name=model,
        module=net,
        transform=input_transform(ds),
        layer=layer,
        identity={**identity, "layer": layer, "transform": repr(input_transform(ds))},
        info={"architecture": type(net).__name__, "model_dir": str(model_dir), "checkpoint": [str(p) for p in paths]},
    )
