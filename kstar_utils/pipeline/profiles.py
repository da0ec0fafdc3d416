"""Profiles: what a report or a study computes, parsed from YAML into typed, validated objects.

A profile is one YAML mapping (the built-in ones live in ``kstar_utils/profiles/``; a user passes a path). Every
section is a frozen dataclass below; :func:`load_profile` checks the YAML against them and refuses unknown keys, wrong
types and missing fields with a :class:`~kstar_utils.errors.ProfileError` that names the key, the file and what is
allowed. ``extends: NAME`` starts from another profile (a built-in name or a path) and overrides it key by key.

The built-in offline study is a profile like any other: its ``zoo:`` section says which small CNNs to train and how
to evaluate them; ``robustbench:`` and ``openclip:`` sections name published models instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import ProfileError
from ..plumbing import stable_hash

PRECISIONS = ("fp32", "bf16", "fp16")
THREAT_MODELS = ("Linf", "L2", "corruptions")
SPLITS = ("train", "test", "val", "val-all", "extra")  # what the data sets' loaders accept (imagenet: val; svhn: extra)
PROFILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 ._+-]{0,63}")  # it names a folder of the results store


def profiles_dir() -> Path:
    """The built-in profiles shipped with the package."""
    return Path(__file__).resolve().parent.parent / "profiles"


def profile_names() -> list[str]:
    """Names of the built-in profiles (``--profile NAME``)."""
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


# ----------------------------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class ComputeOptions:
    """How features and k* are computed: device, batching, precision, bootstrap."""

    device: str = "auto"  # auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N
    batch_size: int = 128
    workers: int = 0  # DataLoader worker processes per extraction
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast (recorded with the features)
    bootstrap: int = 1000  # bootstrap replicates of Gamma and Gamma' (0: no intervals)
    seed: int = 0  # seed of per-class subsets and of the bootstrap

    def __post_init__(self) -> None:
        _choice("compute.precision", self.precision, PRECISIONS)
        if not isinstance(self.device, str) or not DEVICE_NAME.fullmatch(self.device):
            raise ProfileError(f"compute.device is {self.device!r}; allowed: auto, cpu, mps, cuda or cuda:N "
                               "(checked when the profile is read, not after its models are trained).")
        _at_least("compute.batch_size", self.batch_size, 1)
        _at_least("compute.workers", self.workers, 0)
        _at_least("compute.bootstrap", self.bootstrap, 0)
        _at_least("compute.seed", self.seed, 0)
        from ..validation import MAX_SEED

        if self.seed > MAX_SEED:
            raise ProfileError(f"compute.seed is {self.seed}; seeds are 32-bit, at most {MAX_SEED}.")


@dataclass(frozen=True)
class ZooSection:
    """The built-in study: small CNNs trained here, standard and PGD-robust, evaluated with AutoAttack and on shifts."""

    dataset: str  # digits | fashion-mnist
    epochs: int
    robust_epochs: int
    linf_budgets: tuple[float, ...]
    l2_budgets: tuple[float, ...]
    eval_eps: dict[str, float]  # evaluation epsilon per threat model, e.g. {Linf: 0.1, L2: 0.5}
    attack_samples: int  # test images attacked per model (AutoAttack)
    attack_version: str = "standard"  # AutoAttack version: standard, or a custom list such as apgd-ce+apgd-t
    seeds: tuple[int, ...] = (0,)
    widths: tuple[int, ...] = ()  # generalisation family: widths of standard models
    fractions: tuple[float, ...] = ()  # generalisation family: fractions of the training set
    base_width: int = 16
    latent: int = 64
    batch_size: int = 64
    lr: float = 0.05
    pgd_steps: int = 5
    train_limit: int | None = None  # at most this many training images (a seeded subset)
    kstar_split: str = "test"  # the evaluated split
    kstar_per_class: int | None = None  # evaluated samples per class (None: all of the split)
    shifts: tuple[str, ...] = ("noise", "blur", "rotation", "contrast")
    data_root: str | None = None

    def __post_init__(self) -> None:
        for norm in self.eval_eps:
            _choice("zoo.eval_eps key", norm, ("Linf", "L2"))
        if not self.seeds:
            raise ProfileError("zoo.seeds is empty: give at least one seed, e.g. seeds: [0, 1, 2].")
        _at_least("zoo.attack_samples", self.attack_samples, 1)
        _choice("zoo.kstar_split", self.kstar_split, ("train", "test"))
        for key in ("epochs", "robust_epochs", "base_width", "latent", "batch_size", "pgd_steps"):
            _at_least(f"zoo.{key}", getattr(self, key), 1)
        for key in ("train_limit", "kstar_per_class"):
            if getattr(self, key) is not None:
                _at_least(f"zoo.{key}", getattr(self, key), 1)
        for i, seed in enumerate(self.seeds):
            _at_least(f"zoo.seeds[{i}]", seed, 0)
        _distinct("zoo.seeds", self.seeds)
        for i, width in enumerate(self.widths):
            _at_least(f"zoo.widths[{i}]", width, 1)
        _positive("zoo.lr", self.lr)
        for key in ("linf_budgets", "l2_budgets"):
            for i, eps in enumerate(getattr(self, key)):
                _positive(f"zoo.{key}[{i}]", eps)
        for norm, eps in self.eval_eps.items():
            _positive(f"zoo.eval_eps.{norm}", eps)
        for i, fraction in enumerate(self.fractions):
            if not (0 < fraction <= 1):
                raise ProfileError(f"zoo.fractions[{i}] is {fraction!r}; a fraction of the training set lies in "
                                   "(0, 1], e.g. 0.25.")
        from ..zoo.shifts import SHIFTS

        for shift in self.shifts:
            _choice("zoo.shifts[]", shift, tuple(SHIFTS))
        for key in ("shifts", "widths", "fractions"):  # a repeat would make one model's tasks twice
            _distinct(f"zoo.{key}", getattr(self, key), "a repeat would make the same tasks twice")
        _known_dataset("zoo.dataset", self.dataset)
        from ..zoo.attacks import STANDARD_ATTACKS

        parts = self.attack_version.split("+")
        if self.attack_version not in ("standard", "plus", "rand") and not set(parts) <= set(STANDARD_ATTACKS):
            raise ProfileError(f"zoo.attack_version is {self.attack_version!r}; use standard, plus, rand, or attacks of "
                               f"the standard version joined by '+' ({', '.join(STANDARD_ATTACKS)}; e.g. "
                               "apgd-ce+apgd-t). Checked now, not after the zoo is trained.")


@dataclass(frozen=True)
class RobustBenchModel:
    """One RobustBench model under one threat model; accuracies default to RobustBench's published ones."""

    name: str
    threat_model: str
    label: str | None = None
    clean_accuracy: float | None = None  # the model's own numbers, for a user's checkpoint in a zoo slot
    robust_accuracy: float | None = None

    def __post_init__(self) -> None:
        _choice("robustbench.models[].threat_model", self.threat_model, THREAT_MODELS)
        for key in ("clean_accuracy", "robust_accuracy"):
            value = getattr(self, key)
            if value is not None and not (0 <= value <= 1):
                raise ProfileError(f"robustbench.models[].{key} of {self.name} is {value!r}; accuracies are "
                                   "fractions in [0, 1] (divide a percentage by 100).")


@dataclass(frozen=True)
class RobustBenchSection:
    """RobustBench models on one data set (Figure 3)."""

    models: tuple[RobustBenchModel, ...]
    dataset: str = "cifar10"
    split: str = "test"
    per_class: int | None = None
    data_root: str | None = None
    model_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ProfileError("robustbench.models is empty: list at least one model, or drop the section.")
        from ..sources.robustbench import DATASETS as ROBUSTBENCH_DATASETS  # checked now, not as 100 failed tasks

        if self.dataset.lower() not in ROBUSTBENCH_DATASETS:
            *others, last = sorted(set(ROBUSTBENCH_DATASETS.values()))
            raise ProfileError(f"robustbench.dataset is {self.dataset!r}; RobustBench's data sets are "
                               f"{', '.join(others)} and {last}.")
        # kept by its one name: "CIFAR-10" found no published accuracy (RobustBench's table says cifar10)
        object.__setattr__(self, "dataset", ROBUSTBENCH_DATASETS[self.dataset.lower()])
        _choice("robustbench.split", self.split, SPLITS)
        if self.per_class is not None:
            _at_least("robustbench.per_class", self.per_class, 1)


@dataclass(frozen=True)
class OpenCLIPModel:
    """One OpenCLIP image encoder: architecture and pretrained tag (or a local weights file)."""

    name: str
    pretrained: str
    label: str | None = None
    model_config: str | None = None


@dataclass(frozen=True)
class OpenCLIPSection:
    """OpenCLIP encoders on several data sets (Figure 4)."""

    models: tuple[OpenCLIPModel, ...]
    datasets: tuple[str, ...]
    split: str = "test"
    per_class: int | None = None
    data_root: str | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise ProfileError("openclip.models is empty: list at least one model, or drop the section.")
        if not self.datasets:
            raise ProfileError("openclip.datasets is empty: list at least one data set, or drop the section.")
        canonical = tuple(_known_dataset(f"openclip.datasets[{i}]", d) for i, d in enumerate(self.datasets))
        _distinct("openclip.datasets", canonical, "cifar10, CIFAR-10 and cifar-10 name one data set, which would be "
                  "computed twice")
        object.__setattr__(self, "datasets", canonical)  # one name per data set, as the accuracy tables use
        _choice("openclip.split", self.split, SPLITS)
        if self.per_class is not None:
            _at_least("openclip.per_class", self.per_class, 1)


@dataclass(frozen=True)
class Profile:
    """A whole report: its title, the model sections, Figure 2's pair, and how to compute."""

    name: str
    title: str = ""
    description: str = ""
    zoo: ZooSection | None = None
    robustbench: RobustBenchSection | None = None
    openclip: OpenCLIPSection | None = None
    compare: tuple[str, ...] = ()  # Figure 2: two model ids
    compute: ComputeOptions = field(default_factory=ComputeOptions)
    origin: str = "built-in"  # where the profile came from (set by load_profile, not a YAML key)

    def __post_init__(self) -> None:
        if not PROFILE_NAME.fullmatch(self.name or ""):
            raise ProfileError(f"profile name {self.name!r} cannot name a folder: use letters, digits, spaces and . _ + - "
                               "only (at most 64, starting with a letter, digit or _); it names the results folder.")
        if not (self.zoo or self.robustbench or self.openclip):
            raise ProfileError(f"profile {self.name!r} names no models: give a 'zoo', 'robustbench' "
                               "or 'openclip' section.")
        if not self.title:
            object.__setattr__(self, "title", f"k* report: {self.name}")

    def digest(self) -> str:
        """Hash of everything the profile says (its origin aside): a results folder made for another digest is stale."""
        data = dataclasses.asdict(self)
        data.pop("origin")
        return stable_hash(data)[:16]

    def replace(self, **changes: Any) -> Profile:
        return dataclasses.replace(self, **changes)

    def with_compute(self, **changes: Any) -> Profile:
        """The same profile with some compute options changed (e.g. from the command line); None keeps a value."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, compute=dataclasses.replace(self.compute, **changes)) if changes else self


DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")  # the names kstar's --device takes (availability is checked
# where the work runs: a profile may be written on one machine for another)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ProfileError(f"{key} is {value!r}; allowed: {', '.join(map(str, allowed))}.")


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ProfileError(f"{key} is {value}; it must be at least {minimum}.")


# ------------------------------------------------------------------------------------------------------- validation
def _positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ProfileError(f"{key} is {value!r}; it must be a finite number above 0.")


def _known_dataset(key: str, name: str) -> str:
    """The registered name of data set ``name``, or a ProfileError naming the key and the known ones."""
    from ..datasets import canonical_dataset_name, dataset_names

    found = canonical_dataset_name(name)
    if found is None:
        raise ProfileError(f"{key} is {name!r}, not a data set kstar knows; choose from {', '.join(dataset_names())} "
                           "(or register your own with kstar_utils.datasets.register_dataset before loading the "
                           "profile).")
    return found


def _distinct(key: str, values: tuple, why: str = "a repeat would train the same model twice") -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ProfileError(f"{key} repeats {repeated}; each value once ({why}).")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in _yaml_fields(tp))}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _yaml_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name != "origin"]


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` (parsed YAML) as type ``tp``, or a ProfileError naming ``where`` and what is allowed."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ProfileError:
                if len([a for a in args if a is not type(None)]) == 1:
                    raise
        raise ProfileError(f"{where} is {value!r}; expected {_type_name(tp)}.")
    if origin is tuple:
        if not isinstance(value, list):
            raise ProfileError(f"{where} is {value!r}; expected {_type_name(tp)} (in YAML: [a, b] or one '- item' "
                               "per line).")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ProfileError(f"{where} is {value!r}; expected a mapping.")
        return {_convert(k, key_type, f"{where} key"): _convert(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ProfileError(f"{where} is {value!r}; expected {_type_name(tp)}.")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ProfileError(f"{where or 'the profile'} is {type(data).__name__} {data!r:.60}; expected "
                           f"{_type_name(cls)}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in _yaml_fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ProfileError(f"unknown key {(where + '.' if where else '') + str(unknown[0])!r}; allowed "
                           f"{'in ' + where if where else 'at the top level'}: {', '.join(fields)}.")
    values = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            values[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProfileError(f"missing key {key!r} ({_type_name(hints[name])}).")
    try:
        return cls(**values)
    except ProfileError:
        raise
    except (TypeError, ValueError) as err:  # pragma: no cover - a field check that is not a ProfileError
        raise ProfileError(f"{where or 'profile'}: {err}") from None


# ----------------------------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ProfileError(f"profile {path}: invalid YAML{at}: {problem}.") from None
    except OSError as err:
        raise ProfileError(f"profile {path} cannot be read: {err.strerror or err}.") from None
    except UnicodeDecodeError as err:
        raise ProfileError(f"profile {path} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
    if data is None:
        raise ProfileError(f"profile {path} is empty; see the built-in profiles in {profiles_dir()}.")
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path} is a YAML {type(data).__name__}; it must be a mapping (key: value lines).")
    return data


def _resolve(ref: str | os.PathLike) -> Path:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist.")
        return path
    builtin = profiles_dir() / f"{ref}.yaml"
    if not builtin.exists():
        raise ProfileError(f"unknown profile {str(ref)!r}; use one of {', '.join(profile_names())} or a YAML file.")
    return builtin


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise ProfileError(f"profile {path}: 'extends' loops back to itself.")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ProfileError(f"profile {path}: extends is {parent!r}; expected a profile name or a YAML path.")
    beside = path.parent / parent  # a relative YAML path is read beside the profile that names it
    ref = beside if not Path(parent).is_absolute() and (beside.exists() or beside.suffix in (".yaml", ".yml")) \
        else parent
    try:
        resolved = _resolve(ref)
    except ProfileError as err:
        raise ProfileError(f"profile {path}: extends: {err}") from None
    base = _raw(resolved, seen + (path.resolve(),))
    base.pop("name", None)
    return _merge(base, data)


def load_profile(profile: str | os.PathLike | Profile | Mapping[str, Any]) -> Profile:
    """A typed :class:`Profile` from a built-in name (``profile_names()``), a YAML path, a mapping, or a Profile."""
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        data, origin = dict(profile), "a mapping"
    else:
        path = _resolve(profile)
        data, origin = _raw(path), ("built-in" if path.parent == profiles_dir() else str(path))
        data.setdefault("name", path.stem)
    try:
        built = _build(Profile, data, "")
    except ProfileError as err:
        where = "built-in profile" if origin == "built-in" else "profile"
        raise ProfileError(f"{where} {data.get('name', origin)!s} ({origin}): {err}") from None
    return dataclasses.replace(built, origin=origin)
