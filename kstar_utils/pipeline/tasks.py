"""The task grid: a profile as independent tasks, each writing one result file.

A task is a pure function of its description (:class:`Task`): the zoo's ``train`` and ``evaluate`` tasks, and for
every (model, data set) pair a ``kstar`` task (features through :func:`~kstar_utils.extract.extract_features` and the
feature cache, then :func:`~kstar_utils.compute_kstar`). Its key is the hash of everything that determines its result
(the profile entry, the data selection, the compute options, the engine's version), so a result is reused exactly when
it is still right. :func:`run_task` never raises for a failure a task can meet (missing weights, out of memory, a bad
data set): it records the error in the store and returns a status, so the other tasks complete.

Execution (in-process or on Dask) is :mod:`kstar_utils.pipeline.run`; where results live is
:mod:`kstar_utils.pipeline.results`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import ProfileError
from ..plumbing import stable_hash
from .profiles import ComputeOptions, Profile
from .results import ResultStore

PIPELINE_VERSION = 1  # bump when a task records something new or computes it differently


@dataclass(frozen=True)
class ModelEntry:
    """A model of the profile: where it comes from and how the report shows it."""

    id: str  # unique in the profile; names its pages and rows
    source: str  # builtin | robustbench | openclip
    name: str  # the source's model name
    label: str  # what a reader sees
    family: str  # robustness | generalisation
    metric: str = "euclidean"
    options: dict = field(default_factory=dict)  # the source's options (spec, threat model, pretrained tag, ...)
    info: dict = field(default_factory=dict)  # what the tables show: config, seed, eps, width, published accuracies


@dataclass(frozen=True)
class DataEntry:
    """An evaluated data set: which split, which samples, and (built-in study) which shift."""

    id: str  # e.g. "digits/test", "digits/test+noise", "cifar10/test"
    dataset: str
    split: str = "test"
    per_class: int | None = None
    seed: int = 0
    shift: str | None = None
    data_root: str | None = None


@dataclass(frozen=True)
class Task:
    """One unit of work. ``needs``: keys of tasks whose results this one reads (the zoo's trained model)."""

    kind: str  # train | evaluate | kstar
    model: ModelEntry
    data: DataEntry | None = None
    compute: ComputeOptions = field(default_factory=ComputeOptions)
    needs: tuple[str, ...] = ()
    keep_features: bool = False  # Figure 2's models: keep the features beside the result
    evaluation: dict = field(default_factory=dict)  # evaluate: threat models, eps, attack size and version

    @property
    def gpu(self) -> bool:
        """Extraction and training benefit from a GPU; on a cluster with GPUs these tasks need a ``GPU`` resource."""
        return self.kind in ("train", "kstar")

    @property
    def key(self) -> str:
        identity = {"kind": self.kind, "source": self.model.source, "name": self.model.name,
                    "options": self.model.options, "metric": self.model.metric,
                    "data": dataclasses.asdict(self.data) if self.data else None, "evaluation": self.evaluation,
                    "compute": dataclasses.asdict(self.compute) if self.kind == "kstar" else None,
                    "features": self.keep_features, "version": PIPELINE_VERSION}
        return f"{self.kind}-{_slug(self.model.id)}-{stable_hash(identity)[:16]}"

    @property
    def title(self) -> str:
        return f"{self.kind} {self.model.id}" + (f" on {self.data.id}" if self.data else "")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


# ------------------------------------------------------------------------------------------------------------ grid
def build_grid(profile: Profile) -> list[Task]:
    """Every task of ``profile``, dependencies before dependants."""
    tasks: list[Task] = []
    if profile.zoo is not None:
        tasks += _zoo_tasks(profile)
    if profile.robustbench is not None:
        tasks += _robustbench_tasks(profile)
    if profile.openclip is not None:
        tasks += _openclip_tasks(profile)
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):  # pragma: no cover - a profile listing one model twice
        raise ProfileError(f"profile {profile.name} ({profile.origin}) lists a model twice; give each model once.")
    ids = list(dict.fromkeys(t.model.id for t in tasks))
    unknown = [m for m in profile.compare if m not in ids]
    if unknown or len(profile.compare) > 2:  # one model draws no Figure 2, and the page says so
        why = f"names {', '.join(map(repr, unknown))}, not a model of this profile" if unknown else \
            f"lists {len(profile.compare)} models"
        raise ProfileError(f"profile {profile.name} ({profile.origin}): compare {why}; give two model ids for "
                           f"Figure 2, e.g. {', '.join(ids[:4])}" + (" ..." if len(ids) > 4 else "") + ".")
    return tasks


def _zoo_tasks(profile: Profile) -> list[Task]:
    from ..zoo.study import generalisation_models, zoo_models

    zoo, compute = profile.zoo, profile.compute
    clean = DataEntry(f"{zoo.dataset}/{zoo.kstar_split}", zoo.dataset, zoo.kstar_split, zoo.kstar_per_class,
                      compute.seed, None, zoo.data_root)
    shifted = [dataclasses.replace(clean, id=f"{clean.id}+{s}", shift=s) for s in zoo.shifts]
    generalisation_ids = {m.id for m in generalisation_models(zoo)}
    tasks = []
    for m in zoo_models(zoo):
        spec = dataclasses.asdict(m.spec)
        info = {"config": m.config, "seed": m.seed, "training": m.spec.label, "norm": m.spec.norm or "none",
                "eps": m.spec.eps, "width": m.spec.width, "train_fraction": m.spec.train_fraction,
                "threat_models": list(m.threat_models)}
        entry = ModelEntry(m.id, "builtin", m.id, m.label, m.family, "euclidean",
                           {"spec": spec, "data_root": zoo.data_root}, info)
        train = Task("train", entry, compute=compute)
        tasks.append(train)
        if m.family == "robustness":
            evaluation = {"threat_models": {n: zoo.eval_eps[n] for n in m.threat_models},
                          "attack_samples": zoo.attack_samples, "attack_version": zoo.attack_version,
                          "split": "test", "seed": compute.seed}
            tasks.append(Task("evaluate", entry, compute=compute, needs=(train.key,), evaluation=evaluation))
        sets = [clean] + (shifted if m.id in generalisation_ids else [])
        for data in sets:
            tasks.append(Task("kstar", entry, data, compute, needs=(train.key,),
                              keep_features=m.id in profile.compare and data is clean))
    return tasks


def _robustbench_tasks(profile: Profile) -> list[Task]:
    rb = profile.robustbench
    data = DataEntry(f"{rb.dataset}/{rb.split}", rb.dataset, rb.split, rb.per_class, profile.compute.seed, None,
                     rb.data_root)
    tasks = []
    for m in rb.models:
        model_id = f"{m.name}/{m.threat_model}"
        entry = ModelEntry(model_id, "robustbench", m.name, m.label or f"{m.name} ({m.threat_model})", "robustness",
                           "euclidean", {"threat_model": m.threat_model, "model_dir": rb.model_dir,
                                         "dataset": rb.dataset},
                           {"threat_models": [m.threat_model], "clean_accuracy": m.clean_accuracy,
                            "robust_accuracy": m.robust_accuracy})
        tasks.append(Task("kstar", entry, data, profile.compute, keep_features=model_id in profile.compare))
    return tasks


def _openclip_tasks(profile: Profile) -> list[Task]:
    oc = profile.openclip
    tasks = []
    for m in oc.models:
        model_id = f"{m.name}/{m.pretrained}"
        entry = ModelEntry(model_id, "openclip", m.name, m.label or f"{m.name} ({m.pretrained})", "generalisation",
                           "cosine", {"pretrained": m.pretrained, "model_config": m.model_config,
                                      "normalize": oc.normalize}, {"pretrained": m.pretrained})
        for ds in oc.datasets:
            data = DataEntry(f"{ds}/{oc.split}", ds, oc.split, oc.per_class, profile.compute.seed, None, oc.data_root)
            tasks.append(Task("kstar", entry, data, profile.compute,
                              keep_features=model_id in profile.compare and ds == oc.datasets[0]))
    return tasks


# ------------------------------------------------------------------------------------------------------- execution
def run_task(task: Task, store_root: str | os.PathLike, *needed: dict) -> dict:
    """Run ``task`` unless its result is stored; record its result or its error. Returns a small status dict.

    ``needed``: the statuses of the tasks it depends on (so Dask orders them); a failed dependency fails this task
    with a message naming it, without running anything.
    """
    store = ResultStore(store_root)
    if store.has(task.key):
        return {"key": task.key, "status": "done", "cached": True}
    failed = [n for n in needed if n.get("status") != "done"]
    if failed:
        message = f"depends on {failed[0]['key']}, which failed: {failed[0].get('error', '?')}"
        store.write_failure(task, message, "")
        return {"key": task.key, "status": "failed", "error": message}
    start = time.perf_counter()
    try:
        result = _RUNNERS[task.kind](task, store)
    except Exception as err:  # noqa: BLE001 - every failure is recorded; the traceback is kept in the record
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        store.write_failure(task, message, traceback.format_exc())
        return {"key": task.key, "status": "failed", "error": message}
    store.write(task, result, seconds=time.perf_counter() - start, host=platform.node())
    return {"key": task.key, "status": "done", "cached": False}


def _zoo_net(task: Task):
    from ..zoo.study import ensure_trained
    from ..zoo.train import ZooModelSpec

    spec = ZooModelSpec(**task.model.options["spec"])
    return ensure_trained(spec, data_root=task.model.options.get("data_root"), progress=False)


def _run_train(task: Task, store: ResultStore) -> dict:
    _, folder, meta = _zoo_net(task)
    return {"folder": str(folder), "train_seconds": meta.get("train_seconds"), "machine": meta.get("machine")}


def _run_evaluate(task: Task, store: ResultStore) -> dict:
    """Clean accuracy on the whole test split; AutoAttack robust accuracy on a seeded, class-balanced subset."""
    from ..datasets import subsample_per_class
    from ..zoo.attacks import accuracy, autoattack_accuracy
    from ..zoo.data import load_tensors

    net, _, _ = _zoo_net(task)
    ev = task.evaluation
    x, y = load_tensors(task.model.options["spec"]["dataset"], ev["split"], task.model.options.get("data_root"))
    clean = accuracy(net, x, y)
    n_classes = int(y.max()) + 1
    idx = subsample_per_class(y.numpy(), max(1, ev["attack_samples"] // n_classes), ev["seed"] + 1)
    robust = {}
    for norm, eps in ev["threat_models"].items():
        version = ev["attack_version"]
        kwargs = {"version": version} if version in ("standard", "plus", "rand") else \
            {"version": "custom", "attacks": version.split("+")}
        found = autoattack_accuracy(net, x[idx], y[idx], norm, eps, seed=ev["seed"], **kwargs)
        robust[norm] = {"accuracy": found["robust_accuracy"], "n": len(idx), "eps": eps, "version": version,
                        "flags": found.get("autoattack_flags", [])}
    return {"clean_accuracy": clean, "clean_n": len(y), "robust": robust}


def _dataset(data: DataEntry):
    """The evaluated images of ``data``: a registered data set, shifted when the entry says so."""
    from ..datasets import open_dataset

    images = open_dataset(data.dataset, data.data_root, data.split)
    if data.shift is None:
        return images
    from ..zoo.study import shifted_images

    return shifted_images(images, data.shift, data.seed)


def _run_kstar(task: Task, store: ResultStore) -> dict:
    from ..extract import extract_features
    from ..kstar import compute_kstar
    from ..sources import load_source

    compute, data = task.compute, task.data
    images = _dataset(data)
    options = {k: v for k, v in task.model.options.items() if v is not None and k != "dataset"}
    if task.model.source == "robustbench":
        options["dataset"] = task.model.options["dataset"]
    model = load_source(task.model.source, task.model.name, progress=False, **options)
    feats = extract_features(model, images, per_class=data.per_class, seed=data.seed, batch_size=compute.batch_size,
                             device=compute.device, num_workers=compute.workers, progress=False,
                             precision=compute.precision)
    res = compute_kstar(feats.features, feats.label_names(), metric=task.model.metric, progress=False,
                        bootstrap=compute.bootstrap, bootstrap_seed=compute.seed)
    record: dict[str, Any] = {"kstar": res.to_dict(), "n_samples": len(feats.labels),
                              "n_features": int(feats.features.shape[1]),
                              "indices": feats.meta.get("indices"), "classes": list(feats.classes),
                              "feature_cache": feats.meta.get("cache"), "extraction_seconds": feats.meta.get("seconds")}
    record["gallery"] = gallery_partners(feats.features, feats.label_names(), res, task.model.metric)
    if task.model.source == "builtin":
        record.update(_zoo_accuracy(model.module, images))
    if task.keep_features:
        folder = store.features_dir(task.key)
        feats.save(folder)
        record["features"] = folder.name
    return record


GALLERY_PER_CLASS = 6


def gallery_partners(features: np.ndarray, labels: np.ndarray, res, metric: str,
                     per_class: int = GALLERY_PER_CLASS) -> dict[str, int]:
    """For the ``per_class`` samples of each class with the smallest k* (ties by sample order), the index of their
    nearest foreign neighbour: what a model page's gallery shows, found while the features are at hand."""
    from ..neighbours import nearest_foreign_index

    kstar = np.asarray(res.kstar)
    queries = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        queries.extend(members[np.lexsort((members, kstar[members]))][:per_class].tolist())
    found = nearest_foreign_index(features, labels, np.asarray(queries, dtype=np.int64), metric=metric)
    return {str(q): int(f) for q, f in zip(queries, found)}


def _zoo_accuracy(net, images) -> dict:
    """Accuracy of a zoo model on every image of the (possibly shifted) split, with its n for the interval."""
    import torch

    from ..zoo.attacks import accuracy

    x = torch.stack([torch.from_numpy(np.asarray(images.image(i), dtype=np.float32) / 255.0)
                     for i in range(len(images))])
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    y = torch.from_numpy(np.asarray(images.labels, dtype=np.int64))
    return {"accuracy": accuracy(net, x, y), "accuracy_n": len(y)}


_RUNNERS = {"train": _run_train, "evaluate": _run_evaluate, "kstar": _run_kstar}


def engine_versions() -> dict:
    """What a result was computed with (recorded in every result file)."""
    return {"kstar_utils": __version__, "pipeline": PIPELINE_VERSION}


def store_for(profile: Profile, results_dir: str | os.PathLike | None = None) -> Path:
    """The results store of ``profile``: ``results_dir``, else ``$KSTAR_RESULTS/<profile name>``."""
    from ..plumbing import default_results_dir

    return Path(results_dir) if results_dir else default_results_dir() / profile.name
