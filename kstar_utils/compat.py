"""The one small place that makes robustbench 1.1.1 (as published on PyPI) importable next to current libraries.

Three known packaging problems, each handled here and nowhere else (scripts/install.sh is the install-time half):

1. robustbench imports ``pkg_resources``, which setuptools 81 removed: pyproject.toml asks for ``setuptools<81``;
   :func:`import_robustbench` names that fix if it is missing.
2. robustbench imports ``autoattack`` (``from autoattack import AutoAttack``, ``autoattack.state``), but its PyPI
   dependency ``pyautoattack`` installs the same code as the module ``pyautoattack``. :func:`alias_autoattack`
   registers ``pyautoattack`` and its sub-modules under the name ``autoattack`` when the real one is absent.
3. robustbench pins ``timm==1.0.9``, which open_clip_torch >= 3 rejects: robustbench is installed with
   ``--no-deps`` by scripts/install.sh; it runs with the newer timm.

Also here: the Hugging Face hub's network timeouts (:func:`configure_hf_hub`). ``huggingface_hub`` reads
``HF_HUB_ETAG_TIMEOUT`` and ``HF_HUB_DOWNLOAD_TIMEOUT`` once, when it is first imported (by open_clip or timm), so they
are set when this module is imported, before any of those, and patched into ``huggingface_hub.constants`` should it
have been imported already.

``python -m kstar_utils.compat --check`` imports everything once and prints the versions (the install script runs it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import warnings
from types import ModuleType

from .errors import MissingDependencyError

#: Hugging Face hub timeouts (seconds) kstar sets unless the user set them: a metadata request gives up after 10 s
#: instead of hanging offline; a download gives up after 60 s without data (the hub resumes partial files itself).
HF_HUB_TIMEOUTS = {"HF_HUB_ETAG_TIMEOUT": "10", "HF_HUB_DOWNLOAD_TIMEOUT": "60"}


def configure_hf_hub() -> dict[str, int]:
    """Set the Hugging Face hub's timeouts (unless set by the user) so that they take effect; returns them.

    Environment variables are set first (they count only before ``huggingface_hub`` is imported); if it was imported
    already, its module constants are updated too, as long as they still hold huggingface_hub's defaults.
    """
    import sys

    for name, value in HF_HUB_TIMEOUTS.items():
        os.environ.setdefault(name, value)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        defaults = {"HF_HUB_ETAG_TIMEOUT": getattr(constants, "DEFAULT_ETAG_TIMEOUT", None),
                    "HF_HUB_DOWNLOAD_TIMEOUT": getattr(constants, "DEFAULT_DOWNLOAD_TIMEOUT", None)}
        for name in HF_HUB_TIMEOUTS:
            if getattr(constants, name, None) == defaults[name]:
                setattr(constants, name, int(os.environ[name]))
    return {name: int(os.environ[name]) for name in HF_HUB_TIMEOUTS}


configure_hf_hub()  # at import: kstar's sources import this module before open_clip, timm or robustbench


def alias_autoattack() -> ModuleType:
    """Make ``import autoattack`` work, using ``pyautoattack`` when the original package is not installed."""
    if "autoattack" in sys.modules:
        return sys.modules["autoattack"]
    if importlib.util.find_spec("autoattack") is not None:
        return importlib.import_module("autoattack")
    if importlib.util.find_spec("pyautoattack") is None:
        raise MissingDependencyError(
            "AutoAttack is not installed: pip install pyautoattack (or run scripts/install.sh)."
        )
    package = importlib.import_module("pyautoattack")
    sys.modules["autoattack"] = package
    for info in pkgutil.iter_modules(package.__path__):
        if info.name == "examples" or info.name.endswith("_tf") or info.name.startswith("utils_tf"):
            continue  # examples and the TensorFlow adapters are not needed (and import tensorflow)
        sys.modules[f"autoattack.{info.name}"] = importlib.import_module(f"pyautoattack.{info.name}")
    return package


def import_robustbench() -> ModuleType:
    """Import robustbench with the shims above, or raise an error that says how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pkg_resources is deprecated": known, handled here
            import pkg_resources  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            "robustbench needs pkg_resources, removed in setuptools 81: pip install 'setuptools<81'."
        ) from err
    alias_autoattack()
    configure_hf_hub()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # robustbench imports timm's deprecated module paths
            import robustbench
            import robustbench.utils
    except ImportError as err:
        raise MissingDependencyError(
            f"robustbench is not importable ({err}); run scripts/install.sh, which installs robustbench==1.1.1 "
            "with --no-deps after its runtime dependencies."
        ) from err
    return robustbench


def import_open_clip() -> ModuleType:
    """Import open_clip, or raise an error that says how to install it."""
    configure_hf_hub()
    try:
        import open_clip
    except ImportError as err:
        raise MissingDependencyError(
            f"open_clip is not importable ({err}): pip install open_clip_torch (or run scripts/install.sh)."
        ) from err
    return open_clip


def check() -> dict[str, str]:
    """Import every model source once and return their versions."""
    from importlib.metadata import version

    import_robustbench()
    import_open_clip()
    import autoattack  # noqa: F401  (through the alias)

    return {name: version(name) for name in ("robustbench", "open_clip_torch", "timm", "pyautoattack", "torch",
                                            "torchvision", "setuptools")}


if __name__ == "__main__":  # pragma: no cover - exercised by scripts/install.sh
    if "--check" in sys.argv:
        print("kstar: model sources import: " + ", ".join(f"{k} {v}" for k, v in check().items()))
