"""Training the built-in zoo: standard and PGD adversarial training, seeded, cached and resumable.

A model is described by a :class:`ZooModelSpec`; its SHA-256 (with ``TRAINING_CODE_VERSION``) names its folder in the
zoo cache. The folder holds ``model.safetensors`` and ``meta.json`` (spec, the weights' SHA-256, accuracies, time) once
training has finished, and ``resume.pt`` (tensors and numbers only, read with ``weights_only=True``) with its SHA-256
in ``resume.sha256`` after every epoch while it runs, so an interrupted run continues from its last finished epoch and
ends with the same weights.

Integrity, as the feature cache: a cached model is used only if ``meta.json`` parses, names a valid spec whose key it
records, and the SHA-256 of ``model.safetensors`` equals the one ``meta.json`` records. Anything else (flipped bits, a
truncated file, a malformed ``meta.json``) raises a :class:`~kstar_utils.errors.CacheCorruptionWarning` naming the
folder, removes the files the zoo wrote there (nothing else) and lets the caller retrain. A ``resume.pt`` that does not
verify or load is likewise warned about and removed, and training starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import CacheCorruptionWarning
from ..plumbing import atomic_write_text, default_zoo_dir, sha256_file  # noqa: F401  (default_zoo_dir re-exported)
from .attacks import pgd
from .models import SmallCNN, build_model

TRAINING_CODE_VERSION = 4  # 2: fourth convolution for inputs >= 16 pixels; 3: checksummed entries (meta.json
# records the weights' SHA-256; version-2 entries, which have none, are simply not looked up rather than reported
# corrupt); 4: data-fraction models train for epochs / train_fraction passes (ZooModelSpec.passes)


@dataclass(frozen=True)
class ZooModelSpec:
    """Everything that determines a trained zoo model."""

    name: str
    dataset: str = "digits"
    training: str = "standard"  # standard | pgd
    norm: str | None = None  # Linf | L2 for pgd
    eps: float = 0.0  # training budget
    width: int = 16
    latent: int = 64
    train_fraction: float = 1.0
    train_limit: int | None = None  # at most this many training images (a seeded subset), before train_fraction
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    pgd_steps: int = 5
    seed: int = 0

    def passes(self) -> int:
        """Passes over the model's own training subset. ``epochs`` counts passes over the whole pool (the training
        split, capped at ``train_limit``); a model trained on a fraction f of it makes epochs / f passes, so every
        model of a profile takes about the same number of optimizer steps and differs only in how many distinct
        images it saw (without this, a 25% model would get a quarter of the steps and stay near chance)."""
        return max(1, round(self.epochs / self.train_fraction))

    def key(self) -> str:
        """Hash of every field but the name; optional fields left at None are omitted, so adding one keeps the
        keys (and the cached models) of existing specs."""
        fields = {k: v for k, v in asdict(self).items() if k != "name" and not (k == "train_limit" and v is None)}
        text = json.dumps({**fields, "code": TRAINING_CODE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        if self.training == "standard":
            return "standard"
        return f"PGD {self.norm} eps={self.eps:g}"


def train_subset(n: int, fraction: float, seed: int, limit: int | None = None) -> np.ndarray:
    """The first ``fraction`` of ``min(n, limit)`` items of a seeded permutation of the training set (nested: a
    10% subset is inside the 30% one)."""
    order = np.random.default_rng(seed + 7919).permutation(n)
    pool = min(n, limit) if limit else n
    return np.sort(order[: max(1, int(round(fraction * pool)))])


# Every file name the zoo writes in a model's folder (and only these are removed when an entry is found corrupt).
ZOO_FILES = ("model.safetensors", "meta.json", "resume.pt", "resume.sha256", ".model.safetensors.tmp", "resume.pt.tmp")


def _save_resume(path: Path, model: SmallCNN, optimizer, scheduler, epoch: int, generator: torch.Generator,
                 key: str) -> None:
    """resume.pt through a temporary file; its SHA-256 is written to resume.sha256 first, so a crash between the two
    leaves a mismatch (detected: training restarts) rather than an unchecked file."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "generator": generator.get_state(), "key": key}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    atomic_write_text(path.with_name("resume.sha256"), sha256_file(tmp) + "\n")
    os.replace(tmp, path)


def _remove_zoo_files(folder: Path, names: tuple[str, ...] = ZOO_FILES) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _corrupt(folder: Path, what: str, names: tuple[str, ...] = ZOO_FILES) -> None:
    warnings.warn(f"zoo cache entry {folder} is corrupt ({what}); removing the files the zoo wrote there and "
                  "training the model again.", CacheCorruptionWarning, stacklevel=3)
    _remove_zoo_files(folder, names)


def _load_resume(folder: Path, key: str) -> dict | None:
    """The verified state of ``folder/resume.pt`` for the spec with ``key``, or None (absent, or corrupt or another
    spec's: warned about and removed)."""
    resume = folder / "resume.pt"
    if not resume.exists():
        return None
    try:
        recorded = (folder / "resume.sha256").read_text().strip()
    except (OSError, UnicodeDecodeError):
        recorded = ""
    if not recorded or sha256_file(resume) != recorded:
        _corrupt(folder, "resume.pt does not match its SHA-256 in resume.sha256", ("resume.pt", "resume.sha256"))
        return None
    try:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "epoch", "generator"} <= set(state):
            raise ValueError("missing entries")
        if state.get("key") != key:
            raise ValueError(f"written for spec {state.get('key')}, not {key}")
    except Exception as err:  # noqa: BLE001 - any unreadable resume file means: start afresh
        _corrupt(folder, f"resume.pt does not load: {type(err).__name__}: {err}".splitlines()[0],
                 ("resume.pt", "resume.sha256"))
        return None
    return state


def train_model(spec: ZooModelSpec, x_train: torch.Tensor, y_train: torch.Tensor, folder: Path,
                progress: bool = True, stop_after_epoch: int | None = None) -> SmallCNN:
    """Train ``spec`` on (x_train, y_train) in [0, 1], resuming from ``folder/resume.pt`` if present.

    ``stop_after_epoch`` ends the run early (as an interruption would), for tests of the resume path.
    """
    subset = torch.from_numpy(train_subset(len(x_train), spec.train_fraction, spec.seed, spec.train_limit))
    x, y = x_train[subset], y_train[subset]
    steps_per_epoch = (len(x) + spec.batch_size - 1) // spec.batch_size
    epochs = spec.passes()

    def fresh():
        torch.manual_seed(spec.seed)
        net = build_model(spec.width, spec.latent, in_channels=x.shape[1], image_size=x.shape[-1])
        opt = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=0.9, nesterov=True,
                              weight_decay=spec.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, epochs=epochs,
                                                    steps_per_epoch=steps_per_epoch)
        return net, opt, sched, torch.Generator().manual_seed(spec.seed)

    model, optimizer, scheduler, generator = fresh()
    resume = folder / "resume.pt"
    start_epoch = 0
    state = _load_resume(folder, spec.key())
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            start_epoch = int(state["epoch"]) + 1
        except Exception as err:  # noqa: BLE001 - a state that does not fit this spec: start afresh, cleanly
            _corrupt(folder, f"resume.pt does not fit this model: {type(err).__name__}",
                     ("resume.pt", "resume.sha256"))
            model, optimizer, scheduler, generator = fresh()
            start_epoch = 0
    folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(start_epoch, epochs), desc=f"train {spec.name}", unit="epoch", disable=not progress,
               leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for lo in range(0, len(x), spec.batch_size):
            idx = order[lo:lo + spec.batch_size]
            xb, yb = x[idx], y[idx]
            if spec.training == "pgd":
                model.eval()  # attack the model as it is evaluated (batch-norm statistics frozen)
                xb = pgd(model, xb, yb, spec.norm, spec.eps, steps=spec.pgd_steps, generator=generator)
                model.train()
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        _save_resume(resume, model, optimizer, scheduler, epoch, generator, spec.key())
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (stop_after_epoch)")
    model.eval()
    return model


def save_trained(folder: Path, model: SmallCNN, spec: ZooModelSpec, meta: dict) -> None:
    """model.safetensors, then meta.json (the mark of a finished model, with the weights' SHA-256), then drop the
    resume files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.chmod(tmp, 0o644)
    digest = sha256_file(tmp)
    os.replace(tmp, folder / "model.safetensors")
    atomic_write_text(folder / "meta.json", json.dumps({**meta, "spec": asdict(spec), "key": spec.key(),
                                                        "weights_sha256": digest}, indent=2, default=str) + "\n")
    _remove_zoo_files(folder, ("resume.pt", "resume.sha256"))


_SPEC_FIELDS = {f.name for f in fields(ZooModelSpec)}


def load_trained(folder: Path) -> tuple[SmallCNN, dict] | None:
    """A finished, verified model and its meta.json; None if the folder holds none, or holds a corrupt one (then
    a CacheCorruptionWarning names the folder and the zoo's files there are removed, so the caller retrains)."""
    from safetensors.torch import load_file

    meta_path, weights = folder / "meta.json", folder / "model.safetensors"
    if not (meta_path.exists() and weights.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
            raise TypeError("no spec")
        if not set(meta["spec"]) <= _SPEC_FIELDS:
            raise ValueError("unknown spec fields")
        spec = ZooModelSpec(**meta["spec"])
        if meta.get("key") != spec.key():
            raise ValueError("key does not match spec")
        recorded = meta.get("weights_sha256")
        if not isinstance(recorded, str):
            raise TypeError("no weights_sha256")
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        _corrupt(folder, f"meta.json is unreadable or malformed: {err}".splitlines()[0])
        return None
    if sha256_file(weights) != recorded:
        _corrupt(folder, "model.safetensors does not match the SHA-256 in meta.json")
        return None
    try:
        state = load_file(str(weights))
        in_channels = state["body.0.weight"].shape[1]
        model = SmallCNN(in_channels=in_channels, width=spec.width, latent=spec.latent,
                         extra_stage="body.11.weight" in state)  # the fourth convolution's weights
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - verified bytes that still do not load: treat as corrupt
        _corrupt(folder, f"model.safetensors does not load: {type(err).__name__}")
        return None
    model.eval()
    return model, meta
