"""Every input check of the k* engine in one place.

Each check raises :class:`KStarInputError` with one line that names the problem and the fix, so that the command
line can print it as it is and a notebook user knows what to change. Nothing here silently repairs data: a NaN in a
feature row is an error, not a row to drop, because a dropped row changes every other sample's k*.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

METRICS = ("euclidean", "cosine")
METHODS = ("auto", "exact", "ann")
MIN_CLASS_SIZE_WITHOUT_WARNING = 3


from .errors import KStarInputError, SmallClassWarning  # noqa: F401  (re-exported: validation raises them)


@dataclass(frozen=True)
class CheckedInput:
    """Validated inputs: float64 features (N, D), integer class codes (N,) and the sorted class labels."""

    features: np.ndarray
    codes: np.ndarray
    classes: np.ndarray


def _row_list(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} rows in all)" if len(rows) > limit else "")


def to_numpy_features(features: Any) -> np.ndarray:
    """Return ``features`` as a float64 numpy array, accepting numpy arrays, torch tensors and nested lists."""
    if hasattr(features, "detach") and hasattr(features, "cpu"):  # a torch tensor, on any device
        features = features.detach().cpu()
        if str(features.dtype) in ("torch.bfloat16", "torch.float16"):
            features = features.float()  # numpy has no bfloat16; float32 holds both exactly
        features = features.numpy()
    try:
        array = np.asarray(features)
    except ValueError:  # rows of different lengths
        raise KStarInputError("features are ragged (rows of different lengths); every sample needs the same number "
                              "of dimensions.") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise KStarInputError(
            f"features must be numeric, got dtype {array.dtype}; convert them to a float array "
            "(e.g. np.asarray(x, dtype=np.float32)) before computing k*."
        )
    if np.issubdtype(array.dtype, np.complexfloating):
        raise KStarInputError("features are complex numbers; k* needs real features (take .real or the modulus).")
    return array.astype(np.float64, copy=False)


def _is_missing(value: Any) -> bool:
    """None, NaN, pandas' NA or an empty (or blank) string: a label that is not there."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return type(value).__name__ in ("NAType", "NaTType")


def to_numpy_labels(labels: Any) -> np.ndarray:
    """Return labels as a 1-D numpy array of ints or strings.

    A missing label (None, NaN, pandas NA, an empty string) is an error naming its rows: it is never turned into a
    class of its own (the string ``"None"`` or ``"nan"``), which would silently change every other sample's k*.
    """
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    if hasattr(labels, "to_numpy") and not isinstance(labels, np.ndarray):  # pandas Series / arrays
        labels = labels.to_numpy(dtype=object) if getattr(labels, "hasnans", False) else labels.to_numpy()
    if isinstance(labels, (list, tuple)):  # numbers stay numbers; anything else is kept as objects and checked
        try:  # label by label, since np.asarray would print [1, "1"] to one string class
            plain = np.asarray(labels)
        except ValueError:  # ragged nested lists
            plain = None
        labels = plain if plain is not None and plain.dtype.kind in "biuf" else np.asarray(labels, dtype=object)
    array = np.asarray(labels)
    if array.dtype == object or array.dtype.kind in "US":
        flat = array.ravel()
        missing = np.flatnonzero([_is_missing(v) for v in flat])
        if missing.size:
            raise KStarInputError(
                f"labels are missing (None, NaN or empty) in rows {_row_list(missing)}; give every sample a label "
                "or remove those samples (and their feature rows)."
            )
    if array.dtype == object:
        array = _object_labels(array)
    if array.dtype.kind == "S":  # bytes: their text, as class names
        array = array.astype(str)
    if array.dtype.kind in "cmMV":  # complex numbers, dates, raw records: not class ids a result can be written with
        raise KStarInputError(f"labels are of type {array.dtype} (e.g. {array.ravel()[0]!r}); pass integer class ids "
                              "or class names.")
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise KStarInputError("labels hold integer ids above 2**63 - 1; renumber the classes (e.g. with "
                              "np.unique(labels, return_inverse=True)[1]) or pass class names.")
    if np.issubdtype(array.dtype, np.floating):
        missing = np.flatnonzero(np.isnan(array.ravel()))
        if missing.size:
            raise KStarInputError(
                f"labels are missing (NaN) in rows {_row_list(missing)}; give every sample a label "
                "or remove those samples (and their feature rows)."
            )
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise KStarInputError(
                "labels are floats that are not whole numbers (or inf); pass integer class ids or class names."
            )
        if array.size and np.abs(array).max() >= 2.0**63:  # astype(int64) would wrap them into one class
            raise KStarInputError("labels are whole-number floats beyond the int64 range (e.g. 1e30); pass class "
                                  "names or smaller integer ids.")
        array = array.astype(np.int64)
    return array


def _label_kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, (str, bytes)):
        return "str"
    return type(value).__name__


def _object_labels(array: np.ndarray) -> np.ndarray:
    """Labels of an object array as one type: numbers (checked like numeric labels) when every label is a number,
    else class names (their text).

    Text is only taken when it keeps the classes apart: two different labels that print alike (1 and "1", True and
    "True") or one value printed two ways (1 and 1.0) are refused, never merged or split silently.
    """
    flat = list(array.ravel())
    kinds = sorted({_label_kind(v) for v in flat})
    unknown = [k for k in kinds if k not in ("int", "float", "str", "bool")]
    if unknown:
        example = next(v for v in flat if _label_kind(v) == unknown[0])
        raise KStarInputError(f"labels must be class names or integer ids, got {example!r:.40} ({unknown[0]}); "
                              "pass one label per sample.")
    if set(kinds) <= {"int", "float"}:
        try:
            return np.asarray(flat, dtype=np.float64 if "float" in kinds else np.int64).reshape(array.shape)
        except OverflowError:
            raise KStarInputError("labels hold integer ids beyond the int64 range; renumber the classes or pass "
                                  "class names.") from None
    if kinds == ["bool"]:
        return np.asarray(flat, dtype=bool).reshape(array.shape)
    text, first_of_value, first_of_name = [], {}, {}
    for v in flat:
        kind = _label_kind(v)
        value = ("number", float(v)) if kind in ("int", "float") else (kind, v)
        name = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        seen = first_of_value.setdefault(value, (v, name))
        other = first_of_name.setdefault(name, (v, value))
        if other[1] != value:
            raise KStarInputError(f"labels {v!r} and {other[0]!r} print alike, so they would merge into one class; "
                                  "give every label the same type (all class names, or all integer ids).")
        if seen[1] != name:
            raise KStarInputError(f"labels {v!r} and {seen[0]!r} are one value written two ways, so they would split "
                                  "into two classes; give every label the same type.")
        text.append(name)
    return np.asarray(text).reshape(array.shape)


def check_inputs(features: Any, labels: Any, metric: str = "euclidean") -> CheckedInput:
    """Validate features and labels for k* and return them in the engine's form.

    Raises KStarInputError for: non-numeric, 1-D, empty or non-finite features (naming the rows), a length mismatch,
    fewer than two classes, an unknown metric, and zero vectors under the cosine metric. Warns (SmallClassWarning)
    for classes with fewer than three samples.
    """
    if metric not in METRICS:
        raise KStarInputError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}.")
    x = to_numpy_features(features)
    if x.ndim != 2:
        swapped = x.ndim == 1 and getattr(labels, "ndim", None) == 2  # arrays, tensors and frames have ndim
        raise KStarInputError(
            f"features must be a 2-D array (N samples x D dimensions), got shape {x.shape}; "
            + ("the labels are 2-D: are features and labels swapped?" if swapped else
               "reshape with x.reshape(len(x), -1) if each sample is an image or a 1-D vector per sample.")
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise KStarInputError(f"features are empty (shape {x.shape}); pass at least two samples with one dimension.")
    bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad_rows.size:
        raise KStarInputError(
            f"features hold NaN or inf in rows {_row_list(bad_rows)}; fix or remove those samples "
            "(and their labels) before computing k*."
        )
    y = to_numpy_labels(labels)
    if y.ndim != 1:
        raise KStarInputError(f"labels must be 1-D (one label per sample), got shape {y.shape}.")
    if len(y) != len(x):
        hint = (" One apart: does one file have a header row the other lacks (pandas' Series.to_csv(index=False) "
                "writes the header '0')?" if abs(len(y) - len(x)) == 1 else "")
        raise KStarInputError(
            f"features have {len(x)} rows but labels have {len(y)} entries; pass one label per feature row.{hint}"
        )
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise KStarInputError(
            f"k* needs at least two classes, got only {classes.tolist()!r}; "
            "a sample's k* is the rank of its nearest neighbour from another class."
        )
    counts = np.bincount(codes, minlength=len(classes))
    small = classes[counts < MIN_CLASS_SIZE_WITHOUT_WARNING]
    if len(small):
        warnings.warn(
            f"classes {small.tolist()!r} have fewer than {MIN_CLASS_SIZE_WITHOUT_WARNING} samples; "
            "their k* skewness is not meaningful (evaluate more samples per class).",
            SmallClassWarning,
            stacklevel=3,
        )
    if metric == "cosine":
        x = unit_rows(x)
    return CheckedInput(features=x, codes=codes.astype(np.int64), classes=classes)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; raise a KStarInputError naming the options otherwise."""
    if value not in choices:
        raise KStarInputError(f"unknown {name} {value!r}; use one of {', '.join(choices)}.")
    return value


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, safely at any magnitude (the cosine metric's normalisation).

    Each row is first divided by a power of two near its largest absolute value (exact in binary floating point), so
    that squaring can neither overflow (features times 1e160) nor underflow to zero (features times 1e-300); only then
    is the norm taken. Zero rows have no direction: KStarInputError naming them.
    """
    peak = np.max(np.abs(x), axis=1)
    zero = np.flatnonzero(peak == 0)
    if zero.size:
        raise KStarInputError(
            f"rows {_row_list(zero)} are zero vectors, which have no direction under the cosine metric; "
            "remove them or use metric='euclidean'."
        )
    _, exponent = np.frexp(peak)
    scaled = np.ldexp(x, -exponent[:, None])  # every row's peak now in [0.5, 1)
    return scaled / np.linalg.norm(scaled, axis=1, keepdims=True)


MAX_SEED = 2**32 - 1  # numpy's and pynndescent's seeds are 32-bit


def check_count(name: str, value: Any, minimum: int, allow_none: bool = False,
                maximum: int | None = None) -> int | None:
    """Return ``value`` as an int if it is an integer >= ``minimum`` (and <= ``maximum``, if given; or None when
    allowed); otherwise raise a KStarInputError naming the option and what it accepts. For options such as
    block_size, threads, audit size, seeds."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum \
            or (maximum is not None and value > maximum):
        allowed = (f"an integer from {minimum} to {maximum}" if maximum is not None else f"an integer >= {minimum}") \
            + (" (or None for the default)" if allow_none else "")
        raise KStarInputError(f"{name} must be {allowed}, got {value!r}.")
    return int(value)


def check_number(name: str, value: Any, minimum: float = 0.0) -> float:
    """Return ``value`` as a float if it is a finite real number >= ``minimum``; otherwise a KStarInputError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < minimum:
        raise KStarInputError(f"{name} must be a finite number >= {minimum:g}, got {value!r}.")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    """Return ``value`` as a float if it lies strictly between 0 and 1 (a confidence level); else KStarInputError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 < value < 1.0:
        raise KStarInputError(f"{name} must be a number strictly between 0 and 1 (e.g. 0.95), got {value!r}.")
    return float(value)
