"""What every feature source shares: the FeatureModel it returns, layer hooks, weights identity, safe checkpoint
loading and the source registry.

Safe loading: every checkpoint kstar reads goes through :func:`safe_torch_load` (``torch.load(weights_only=True)``
with a small allow-list of harmless types, :data:`SAFE_GLOBALS`) or safetensors. Third-party loaders that call
``torch.load`` themselves (RobustBench, torchvision's hub, timm) run inside :func:`weights_only_loads`, which forces
``weights_only=True`` on every ``torch.load`` for its duration and checks the SHA-256 prefix that torch hub file names
carry (``resnet18-f37072fd.pth``). A checkpoint that needs anything else is refused with
:class:`~kstar_utils.errors.UnsafeCheckpointError`; nothing is ever unpickled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import KStarInputError, LayerNotFoundError, UnsafeCheckpointError, WeightsNotFoundError

LAYERS = ("penultimate", "logits", "embedding")
HTML_MARKERS = (b"<!doctype html", b"<html", b"<!DOCTYPE html", b"<HTML")


@dataclass
class FeatureModel:
    """A model ready for extraction.

    ``module`` maps a batch of preprocessed images to the model output; :meth:`features` returns the requested layer
    (``penultimate``: the input of the last nn.Linear the forward pass calls; ``logits``: the output;
    ``embedding``: the source's own embedding, e.g. CLIP's ``encode_image``). ``transform`` turns one PIL image into
    the model's input tensor. ``identity`` is what identifies the numbers (weights hash or tag, layer, transform...)
    and goes into the cache key.
    """

    source: str
    name: str
    module: nn.Module
    transform: Callable[[Any], torch.Tensor]
    layer: str
    identity: dict
    info: dict = field(default_factory=dict)
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None
    _penultimate: PenultimateHook | None = None

    def to(self, device: torch.device) -> FeatureModel:
        """Move the module that computes the features (for OpenCLIP: the image tower only) to ``device``."""
        self.module.to(device)
        return self

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        if self.layer == "logits":
            return self.module(batch)
        if self.layer == "embedding":
            if self.embed is None:
                raise LayerNotFoundError(f"{self.source} models have no 'embedding' layer; use 'penultimate' or 'logits'.")
            return self.embed(batch)
        if self._penultimate is None:
            self._penultimate = PenultimateHook(self.module)
        return self._penultimate(batch)


class PenultimateHook:
    """Penultimate features: the input of the last nn.Linear the forward pass calls, found by watching one batch.

    The first call records the order in which nn.Linear modules run; the last one is taken as the classifier, and the
    model's output must be that layer's output (otherwise the "input of the final classifier" is not well defined for
    this model, e.g. an ensemble or a model with a non-linear head: LayerNotFoundError says to use 'logits').
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.classifier: nn.Linear | None = None
        self.classifier_name: str | None = None

    def _discover(self, batch: torch.Tensor) -> torch.Tensor:
        calls: list[tuple[str, nn.Module, torch.Tensor]] = []
        handles = [
            m.register_forward_hook(lambda mod, inp, out, name=name: calls.append((name, mod, out)))
            for name, m in self.module.named_modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            output = self.module(batch)
        finally:
            for h in handles:
                h.remove()
        if not calls:
            raise LayerNotFoundError(
                f"{type(self.module).__name__} calls no nn.Linear layer in its forward pass, so its penultimate layer "
                "cannot be found generically; use layer='logits' (or 'embedding' where the source has one)."
            )
        name, layer, last_out = calls[-1]
        if not (isinstance(output, torch.Tensor) and output.shape == last_out.shape and torch.equal(output, last_out)):
            raise LayerNotFoundError(
                f"the output of {type(self.module).__name__} is not the output of its last nn.Linear ({name}), so the "
                "input of the final classifier is not its penultimate layer (an ensemble or a non-linear head?); "
                "use layer='logits'."
            )
        self.classifier, self.classifier_name = layer, name
        return output

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            self._discover(batch[:1])
        captured: list[torch.Tensor] = []
        handle = self.classifier.register_forward_pre_hook(lambda mod, inp: captured.append(inp[0]))
        try:
            self.module(batch)
        finally:
            handle.remove()
        return captured[-1].flatten(1)


def file_sha256(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """SHA-256 of a weights file, remembered beside it (keyed by size and mtime) so large files hash once."""
    p = Path(path)
    stat = p.stat()
    memo = p.with_name(f".{p.name}.sha256.json")
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp:
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with p.open("rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        memo.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    except OSError:
        pass  # a read-only weights folder: hash again next time
    return value


def check_weights_file(path: str | os.PathLike, what: str) -> Path:
    """The weights file must exist and be a checkpoint, not an HTML page saved by a failed download."""
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"{what}: weights file {p} does not exist; place the checkpoint there.")
    with p.open("rb") as handle:
        head = handle.read(512).lstrip()
    if any(head.startswith(m) or head[:64].lower().startswith(m.lower()) for m in HTML_MARKERS):
        raise WeightsNotFoundError(
            f"{what}: {p} is an HTML page, not a checkpoint (a failed download, e.g. a Google Drive quota or "
            "confirmation page); delete it and download the checkpoint again, or place the real file there."
        )
    return p


def _numpy_safe_globals() -> list:
    """numpy scalars, dtypes and arrays as checkpoints store them (training scripts save ``best_acc`` as a numpy
    float, say), under numpy 2's module names and numpy 1's (``numpy.core``)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    safe: list = [np.dtype, np.ndarray, scalar, reconstruct,
                  (scalar, "numpy.core.multiarray.scalar"), (reconstruct, "numpy.core.multiarray._reconstruct"),
                  (scalar, "numpy._core.multiarray.scalar"), (reconstruct, "numpy._core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        safe += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return safe


#: Types a weights-only load may restore besides tensors and containers: numpy scalars, dtypes and arrays, and
#: ``argparse.Namespace`` (training arguments). None of them runs code when it is restored.
SAFE_GLOBALS: list = [*_numpy_safe_globals(), argparse.Namespace]

_HUB_HASH = re.compile(r"-([a-f0-9]{6,})\.")


def _unpickling_cause(err: BaseException) -> str:
    """The informative line of torch's weights-only error (which global was refused), without its boilerplate."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation",
                                                        "Please file an issue", "(1) ", "(2) "))]
    cause = useful[0] if useful else (lines[0] if lines else type(err).__name__)
    cause = re.split(r"\.? Please use `torch\.serialization|\.? Check the documentation", cause)[0]
    return cause.replace("WeightsUnpickler error: ", "")[:300]


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed; anything else is refused.

    A checkpoint holding other objects (a pickled class, a function, an object whose ``__reduce__`` runs code) raises
    :class:`UnsafeCheckpointError` naming the file and the refused type, without running any of it. A file that is
    not a checkpoint at all (truncated download) raises :class:`WeightsNotFoundError`.
    """
    p = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return _ORIGINAL_TORCH_LOAD(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{what}: {p} holds objects that only an unsafe pickle load could restore ({_unpickling_cause(err)}); "
            "kstar never unpickles those: re-save it as a state dict of tensors (torch.save(model.state_dict())) or "
            "as safetensors, or delete it and download the original again."
        ) from None
    except (RuntimeError, EOFError) as err:
        text = str(err)
        if isinstance(err, EOFError) or "PytorchStreamReader" in text or "zip archive" in text:
            raise WeightsNotFoundError(
                f"{what}: {p} is not a readable checkpoint ({type(err).__name__}: {text.splitlines()[0][:120]}); "
                "it is probably a truncated download: delete it and download it again, or place the real file there."
            ) from err
        raise


def check_hub_hash(path: str | os.PathLike, what: str = "checkpoint") -> str | None:
    """Check a file whose name carries a SHA-256 prefix (torch hub's ``name-<hash>.ext`` convention).

    Returns the prefix checked (None when the name carries none). A mismatch raises :class:`WeightsNotFoundError`:
    the file is not the published one (a broken download, or a file someone put there).
    """
    from ..plumbing import sha256_file

    p = Path(path)
    match = _HUB_HASH.search(p.name)
    if match is None:
        return None
    prefix = match.group(1)
    actual = sha256_file(p)
    if not actual.startswith(prefix):
        raise WeightsNotFoundError(
            f"{what}: {p} does not match the SHA-256 prefix {prefix} in its name (its SHA-256 is {actual[:16]}...); "
            "it is not the published file: delete it and download it again."
        )
    return prefix


_ORIGINAL_TORCH_LOAD = torch.load
_PATCH_LOCK = threading.RLock()


def _as_path(f: Any) -> Path | None:
    return Path(f) if isinstance(f, (str, os.PathLike)) else None


@contextmanager
def weights_only_loads(what: str = "checkpoint", preloaded: dict[Path, Any] | None = None) -> Iterator[None]:
    """Run third-party loading code (RobustBench, torchvision hub, timm) with every ``torch.load`` made safe.

    For the duration, ``torch.load`` ignores ``weights_only=False`` and loads through :func:`safe_torch_load`;
    a file in torch hub's checkpoint folder whose name carries a hash prefix is checked against it first.
    ``preloaded`` maps resolved paths to checkpoints already loaded safely, so a large file is read once.
    """
    hub = (Path(torch.hub.get_dir()) / "checkpoints").resolve()
    done = {Path(k).resolve(): v for k, v in (preloaded or {}).items()}

    def guarded(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Any = None,
                mmap: Any = None, **kwargs: Any) -> Any:
        path = _as_path(f)
        if path is None:  # a file object or buffer: still weights-only
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                try:
                    return _ORIGINAL_TORCH_LOAD(f, map_location=map_location, weights_only=True, mmap=mmap, **kwargs)
                except pickle.UnpicklingError as err:
                    raise UnsafeCheckpointError(
                        f"{what}: a checkpoint stream holds objects that only an unsafe pickle load could restore "
                        f"({_unpickling_cause(err)}); kstar refuses it."
                    ) from None
        resolved = path.resolve()
        if resolved in done:
            return done[resolved]
        if resolved.parent == hub:
            check_hub_hash(resolved, what)
        return safe_torch_load(path, map_location=map_location, what=what)

    with _PATCH_LOCK:
        previous = torch.load
        torch.load = guarded
        try:
            yield
        finally:
            torch.load = previous


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a checkpoint's tensors safely: safetensors, or :func:`safe_torch_load` (no pickled code)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = safe_torch_load(p, what="state dict")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def strip_addresses(text: str) -> str:
    """``text`` without memory addresses (``<function f at 0x7f...>`` becomes ``<function f>``)."""
    return _ADDRESS.sub("", text)


def stable_repr(obj: Any) -> str:
    """``repr(obj)`` without memory addresses, so that what goes into a cache key is the same in every process
    (open_clip < 3.3 puts a function, with its address, in its preprocessing's repr)."""
    return strip_addresses(repr(obj))


# ---------------------------------------------------------------------------------------------------------- registry
SOURCES: dict[str, Callable[..., FeatureModel]] = {}
_BUILTINS_LOADED = False


def register_source(name: str, loader: Callable[..., FeatureModel] | None = None) -> Callable:
    """Register a feature source ``loader(model, **options) -> FeatureModel`` under ``name``.

    Used as a decorator (``@register_source("mine")`` above the loader) or called directly
    (``register_source("mine", load)``). Returns the loader, so the decorated function stays usable.
    """
    if loader is not None:
        if not callable(loader):
            raise KStarInputError(f"source {name!r}: the loader must be a function, got {type(loader).__name__}.")
        SOURCES[name] = loader
        return loader

    def decorate(function: Callable[..., FeatureModel]) -> Callable[..., FeatureModel]:
        return register_source(name, function)

    return decorate


def _import_builtin_sources() -> None:
    """Import the built-in source modules once; each registers its loader with ``@register_source``."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    from ..zoo import source  # noqa: F401  (@register_source("builtin"))
    from . import openclip, pixels, robustbench, torchvision_models  # noqa: F401  (they register themselves)

    _BUILTINS_LOADED = True


def source_names() -> list[str]:
    """Every registered feature source, the built-in ones included."""
    _import_builtin_sources()
    return sorted(SOURCES)


def load_source(source: str, model: str, **options: Any) -> FeatureModel:
    """Load ``model`` from feature source ``source`` (robustbench, openclip, torchvision, pixels, builtin, ...)."""
    _import_builtin_sources()
    if source not in SOURCES:
        raise KStarInputError(f"unknown feature source {source!r}; choose from {', '.join(sorted(SOURCES))}.")
    layer = options.get("layer")
    if layer is not None and layer not in LAYERS:
        raise KStarInputError(f"unknown layer {layer!r}; use one of {', '.join(LAYERS)}.")
    return SOURCES[source](model, **options)
