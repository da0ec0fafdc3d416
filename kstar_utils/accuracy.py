"""Published accuracies for the other axis of the paper's figures, shipped as CSV files with a source on every row.

* ``robustbench_accuracy()``: clean and AutoAttack robust accuracy (%) of the RobustBench models of the paper profile,
  from the RobustBench repository's ``model_info/<dataset>/<threat model>/<model>.json`` files (the robustbench wheel
  does not ship them).
* ``openclip_zeroshot()``: OpenCLIP zero-shot accuracy (fraction) per data set and the 38-data-set average, from
  open_clip's ``docs/openclip_results.csv``.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd


def _read(name: str) -> pd.DataFrame:
    with resources.files("kstar_utils").joinpath("data", name).open() as handle:
        return pd.read_csv(handle)


def robustbench_accuracy() -> pd.DataFrame:
    """dataset, threat_model, model, eps, clean_accuracy, autoattack_accuracy, architecture, source."""
    return _read("robustbench_accuracy.csv")


def openclip_zeroshot() -> pd.DataFrame:
    """model, pretrained, zeroshot_avg38, imagenet1k, cifar10, cifar100, mnist, stl10, svhn, source."""
    return _read("openclip_zeroshot.csv")
