"""Published accuracies for the other axis of the paper's figures, shipped as CSV files with a source on every row.

Both files are written by ``scripts/generate_accuracy.py`` from upstream's own files, never by hand;
``accuracy_sources()`` says which upstream commits they were read at.

* ``robustbench_accuracy()``: clean, AutoAttack and leaderboard robust accuracy (%) of every RobustBench model of the
  CIFAR-10 Linf and L2, CIFAR-100 Linf and ImageNet Linf leaderboards, from the RobustBench repository's
  ``model_info/<dataset>/<threat model>/<model>.json`` files (the robustbench wheel does not ship them).
* ``openclip_zeroshot()``: OpenCLIP zero-shot accuracy (fraction) per data set and the 38-data-set average, for every
  (architecture, pretrained tag) of open_clip's ``docs/openclip_results.csv``.
* ``loadable_models(dataset, threat_model)``: the CSV's models that the installed RobustBench can load (the
  ``robustbench-*`` profiles run these).
"""

from __future__ import annotations

import json
from importlib import resources

import pandas as pd

from .errors import KStarInputError

DATASETS = {"cifar10": "cifar10", "cifar-10": "cifar10", "cifar100": "cifar100", "cifar-100": "cifar100",
            "imagenet": "imagenet"}


def _data(name: str):
    return resources.files("kstar_utils").joinpath("data", name)


def _read(name: str) -> pd.DataFrame:
    with _data(name).open() as handle:
        return pd.read_csv(handle)


def robustbench_accuracy() -> pd.DataFrame:
    """dataset, threat_model, model, eps, clean_accuracy, autoattack_accuracy, external_accuracy, robust_accuracy
    (RobustBench's ranking number: ``external`` where a stronger attack was reported, else AutoAttack), architecture,
    additional_data, unreliable, venue, name, source, source_commit, read_commit. Accuracies in percent."""
    return _read("robustbench_accuracy.csv")


def openclip_zeroshot() -> pd.DataFrame:
    """model, pretrained, params_m, flops_b, zeroshot_avg38, one column per data set of open_clip's table
    (imagenet1k, cifar10, cifar100, mnist, stl10, svhn, ...: header lower-cased, letters and digits only), source,
    source_commit, read_commit. Accuracies as fractions."""
    return _read("openclip_zeroshot.csv")


def accuracy_sources() -> dict:
    """The upstream repositories and commits the CSV files were generated from (``accuracy_sources.json``)."""
    return json.loads(_data("accuracy_sources.json").read_text())


def loadable_models(dataset: str, threat_model: str) -> list[str]:
    """Models of ``robustbench_accuracy()`` for ``dataset``/``threat_model`` that the installed RobustBench can load.

    A model qualifies when it is in robustbench's ``model_zoo`` for that leaderboard and RobustBench has weights for
    it (a checkpoint, an ensemble of checkpoints, a timm model or torchvision's ResNet-50). Order: the CSV's.
    """
    ds = DATASETS.get(str(dataset).lower())
    if ds is None:
        raise KStarInputError(f"RobustBench covers cifar10, cifar100 and imagenet, not {dataset!r}.")
    from .sources.robustbench import weights_kind, zoo_entry

    table = robustbench_accuracy()
    names = table[(table["dataset"] == ds) & (table["threat_model"] == threat_model)]["model"].tolist()
    if not names:
        raise KStarInputError(f"the accuracy table has no {ds}/{threat_model} models; use Linf or L2 for cifar10, "
                              "Linf for cifar100 and imagenet.")
    loadable = []
    for name in names:
        try:
            zoo_entry(name, ds, threat_model)
            weights_kind(name, ds, threat_model)
        except KStarInputError:
            continue
        loadable.append(name)
    return loadable
