"""Training the built-in zoo: standard and PGD adversarial training, seeded, cached and resumable.

A model is described by a :class:`ZooModelSpec`; its SHA-256 (with ``TRAINING_CODE_VERSION``) names its folder in the
zoo cache. The folder holds ``model.safetensors`` and ``meta.json`` (spec, accuracies, AutoAttack results, time) once
training has finished, and ``resume.pt`` (tensors and numbers only, read with ``weights_only=True``) after every epoch
while it runs, so an interrupted run continues from its last finished epoch and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..plumbing import atomic_write_text, default_zoo_dir  # noqa: F401  (re-exported for the zoo)
from .attacks import pgd
from .models import SmallCNN, build_model

TRAINING_CODE_VERSION = 2  # 2: fourth convolution for inputs >= 16 pixels


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


def _save_resume(path: Path, model: SmallCNN, optimizer, scheduler, epoch: int, generator: torch.Generator) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "generator": generator.get_state()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_model(spec: ZooModelSpec, x_train: torch.Tensor, y_train: torch.Tensor, folder: Path,
                progress: bool = True, stop_after_epoch: int | None = None) -> SmallCNN:
    """Train ``spec`` on (x_train, y_train) in [0, 1], resuming from ``folder/resume.pt`` if present.

    ``stop_after_epoch`` ends the run early (as an interruption would), for tests of the resume path.
    """
    torch.manual_seed(spec.seed)
    subset = torch.from_numpy(train_subset(len(x_train), spec.train_fraction, spec.seed, spec.train_limit))
    x, y = x_train[subset], y_train[subset]
    model = build_model(spec.width, spec.latent, in_channels=x.shape[1], image_size=x.shape[-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, nesterov=True,
                                weight_decay=spec.weight_decay)
    steps_per_epoch = (len(x) + spec.batch_size - 1) // spec.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, epochs=spec.epochs,
                                                    steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(spec.seed)
    resume = folder / "resume.pt"
    start_epoch = 0
    if resume.exists():
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch = int(state["epoch"]) + 1
    folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(start_epoch, spec.epochs), desc=f"train {spec.name}", unit="epoch", disable=not progress,
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
        _save_resume(resume, model, optimizer, scheduler, epoch, generator)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (stop_after_epoch)")
    model.eval()
    return model


def save_trained(folder: Path, model: SmallCNN, spec: ZooModelSpec, meta: dict) -> None:
    """model.safetensors, then meta.json (the mark of a finished model), then drop resume.pt."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / "model.safetensors")
    atomic_write_text(folder / "meta.json", json.dumps({"spec": asdict(spec), "key": spec.key(), **meta},
                                                       indent=2, default=str) + "\n")
    (folder / "resume.pt").unlink(missing_ok=True)


def load_trained(folder: Path) -> tuple[SmallCNN, dict] | None:
    """A finished model and its meta.json, or None if the folder holds none."""
    from safetensors.torch import load_file

    meta_path, weights = folder / "meta.json", folder / "model.safetensors"
    if not (meta_path.exists() and weights.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    spec = ZooModelSpec(**meta["spec"])
    state = load_file(str(weights))
    in_channels = state["body.0.weight"].shape[1]
    model = SmallCNN(in_channels=in_channels, width=spec.width, latent=spec.latent,
                     extra_stage="body.11.weight" in state)  # the fourth convolution's weights
    model.load_state_dict(state)
    model.eval()
    return model, meta
