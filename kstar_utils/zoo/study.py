"""The built-in study's catalogue: which small CNNs a profile's ``zoo:`` section trains, and how each is evaluated.

Two families, each configuration trained with every seed of the section:

* **robustness** (the offline analogue of the paper's Figure 3): a standard model and PGD adversarially trained
  models at each Linf and L2 budget. Each robust model is evaluated under its *own* threat model only, with
  AutoAttack as RobustBench does; the standard model is evaluated under each threat model (it stands on both of
  RobustBench's leaderboards), so it is one point in each per-threat-model comparison and never pooled twice.
* **generalisation** (the analogue of Figure 4): standard models of different capacity (width) and training-set size,
  evaluated on the clean test split and on deterministic shifts of it (:mod:`kstar_utils.zoo.shifts`).

Training is cached in the zoo folder and guarded by a file lock, so two runs (or two Dask workers) asking for the same
model train it once. The pipeline (:mod:`kstar_utils.pipeline.tasks`) turns these models into tasks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ProfileError
from ..pipeline.profiles import ZooSection
from ..plumbing import cpu_rounding, default_zoo_dir, sha256_array
from .data import load_tensors
from .train import ZooModelSpec, load_trained, save_trained, train_model


@dataclass(frozen=True)
class ZooModel:
    """One trained model of the study: its id in the report, its training spec and how it is evaluated."""

    id: str  # e.g. "pgd-linf-0.1-s2": configuration and seed
    config: str  # e.g. "pgd-linf-0.1" (the same for every seed)
    seed: int
    spec: ZooModelSpec
    family: str  # robustness | generalisation
    threat_models: tuple[str, ...]  # evaluated under these (robustness family)

    @property
    def label(self) -> str:
        return f"{self.spec.label}, seed {self.seed}" if self.family == "robustness" else \
            f"{self.config}, seed {self.seed}"


def zoo_models(zoo: ZooSection) -> list[ZooModel]:
    """Every model of the section, robustness family first; ids are unique within the section."""
    common = dict(dataset=zoo.dataset, latent=zoo.latent, batch_size=zoo.batch_size, pgd_steps=zoo.pgd_steps,
                  train_limit=zoo.train_limit, lr=zoo.lr)
    models: list[ZooModel] = []
    for seed in zoo.seeds:
        base = dict(common, seed=seed)
        models.append(ZooModel(f"standard-s{seed}", "standard", seed,
                               ZooModelSpec(name=f"{zoo.dataset}-standard-s{seed}", width=zoo.base_width,
                                            epochs=zoo.epochs, **base),
                               "robustness", tuple(zoo.eval_eps)))
        for norm, budgets in (("Linf", zoo.linf_budgets), ("L2", zoo.l2_budgets)):
            if norm not in zoo.eval_eps:
                continue
            for eps in budgets:
                config = f"pgd-{norm.lower()}-{_short(eps)}"
                models.append(ZooModel(f"{config}-s{seed}", config, seed,
                                       ZooModelSpec(name=f"{zoo.dataset}-{config}-s{seed}", training="pgd", norm=norm,
                                                    eps=eps, width=zoo.base_width, epochs=zoo.robust_epochs, **base),
                                       "robustness", (norm,)))
    for seed in zoo.seeds:
        base = dict(common, seed=seed, epochs=zoo.epochs)
        for width in zoo.widths:
            config = f"width{width}"
            models.append(ZooModel(f"{config}-s{seed}", config, seed,
                                   ZooModelSpec(name=f"{zoo.dataset}-{config}-s{seed}", width=width, **base),
                                   "generalisation", ()))
        for fraction in zoo.fractions:
            config = f"data{_short(fraction * 100)}pct"
            models.append(ZooModel(f"{config}-s{seed}", config, seed,
                                   ZooModelSpec(name=f"{zoo.dataset}-{config}-s{seed}", width=zoo.base_width,
                                                train_fraction=fraction, **base),
                                   "generalisation", ()))
    ids = [m.id for m in models]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:  # two budgets or fractions equal to 10 significant digits: one id would name two models
        raise ProfileError(f"the zoo's budgets or fractions name two models {repeated[0]!r}; give values that differ "
                           "within their first 10 significant digits.")
    return models


def _short(value: float) -> str:
    """A budget or a percentage in a model id: as short as written (0.1, 12.5, 25), exact to 10 significant digits,
    so that 0.12 and 0.125 (12 and 12.5 percent) do not share an id."""
    return f"{value:.10g}"


def generalisation_models(zoo: ZooSection) -> list[ZooModel]:
    """The models evaluated on the shifted sets: the standard models (the reference capacity) plus the capacity and
    training-size variants."""
    return [m for m in zoo_models(zoo) if m.family == "generalisation" or m.config == "standard"]


def model_folder(spec: ZooModelSpec, zoo_dir: str | Path | None = None) -> Path:
    """Where ``spec``'s trained weights live: one folder per spec key."""
    return Path(zoo_dir or default_zoo_dir()) / f"{spec.dataset}-{spec.key()}"


def ensure_trained(spec: ZooModelSpec, zoo_dir: str | Path | None = None, data_root: str | None = None,
                   progress: bool = False) -> tuple[torch.nn.Module, Path, dict]:
    """The cached model of ``spec``, training (or resuming) it first if needed. Returns (model, folder, meta).

    A file lock beside the folder makes concurrent callers (Dask workers, two runs on one cache) train it once: the
    second waits and then loads what the first saved.
    """
    from filelock import FileLock

    folder = model_folder(spec, zoo_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    found = load_trained(folder)
    if found is not None:
        return found[0], folder, found[1]
    with FileLock(str(folder) + ".lock"):
        found = load_trained(folder)
        if found is not None:
            return found[0], folder, found[1]
        x, y = load_tensors(spec.dataset, "train", data_root)
        start = time.perf_counter()
        model = train_model(spec, x, y, folder, progress=progress)
        save_trained(folder, model, spec, {"train_seconds": round(time.perf_counter() - start, 2),
                                           "machine": cpu_rounding()})
    return model, folder, json.loads((folder / "meta.json").read_text())


def shifted_images(images, kind: str, seed: int = 0):
    """``images`` (a :class:`~kstar_utils.datasets.LabelledImages`) under the deterministic shift ``kind``, as a new
    labelled image set named ``<name>+<kind>`` whose ``info`` states the shift's parameters (8-bit images, as any
    evaluated data set is)."""
    import numpy as np

    from ..datasets import ArrayImages, LabelledImages
    from .shifts import SHIFTS, apply_shift

    arrays = np.stack([np.asarray(images.image(i)) for i in range(len(images))])
    x = torch.from_numpy(arrays).float().div_(255.0)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    y = apply_shift(x, kind, seed)
    out = (y.clamp(0, 1).mul(255.0).round().to(torch.uint8))
    out = out[:, 0] if out.shape[1] == 1 else out.permute(0, 2, 3, 1)
    spec = SHIFTS[kind]
    pixels = np.ascontiguousarray(out.numpy())
    # the content hash in the name keys the feature cache to these exact images (shift parameters included)
    return LabelledImages(ArrayImages(pixels), images.labels, list(images.classes),
                          f"{images.name}+{kind}#{sha256_array(pixels, 12)}", images.split, images.root,
                          {"shift": kind, "description": spec.description, "seed": seed})
