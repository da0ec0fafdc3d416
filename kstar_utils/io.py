"""Reading feature and label files and writing k* results, for the command line and the notebooks.

Formats: ``.npy``; ``.npz`` (the array named ``features`` / ``labels``, or the only array); ``.csv`` / ``.txt``
(features: numeric columns, a header row is detected; labels: one column); ``.parquet`` (all columns, or the column
named ``label``/``labels`` for labels). A directory written by ``kstar extract`` (features.npy, labels.npy,
classes.json) can stand for both. Result files are written atomically (temporary file, then rename), so an
interrupted run never leaves a half-written summary that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import KStarInputError
from .plumbing import atomic_write_text, write_json

FEATURE_FORMATS = (".npy", ".npz", ".csv", ".txt", ".parquet")


LABEL_COLUMNS = ("label", "labels", "class", "y", "target")


def _read_table(path: Path, labels: bool = False) -> pd.DataFrame:
    """Read a CSV/TSV/whitespace or parquet table. Features have a header when a first-row cell is not a number;
    labels (which may be words) only when the first cell is a label column name such as ``label``."""
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise KStarInputError(f"reading {path} needs pyarrow: pip install pyarrow (or save as .npy).") from err
    with path.open() as handle:
        first = handle.readline().strip()
    sep = next((c for c in ("\t", ",", ";") if c in first), r"\s+" if " " in first else ",")
    cells = [c.strip() for c in (first.split() if sep == r"\s+" else first.split(sep))]
    if labels:
        header = bool(cells) and cells[0].lower() in LABEL_COLUMNS
    else:
        header = any(_not_number(c) for c in cells if c)
    return pd.read_csv(path, header=0 if header else None, sep=sep, engine="python")


def _not_number(text: str) -> bool:
    try:
        float(text)
        return False
    except ValueError:
        return True


def _read_npz(path: Path, preferred: tuple[str, ...]) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        for name in preferred:
            if name in archive.files:
                return archive[name]
        if len(archive.files) == 1:
            return archive[archive.files[0]]
        raise KStarInputError(
            f"{path} holds arrays {archive.files}; name the one to use {preferred[0]!r} or save it alone as .npy."
        )


def _check_path(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise KStarInputError(f"{what} file {p} does not exist; check the path.")
    if p.is_file() and p.suffix.lower() not in FEATURE_FORMATS:
        raise KStarInputError(f"{what} file {p} has an unsupported format; use one of {', '.join(FEATURE_FORMATS)}.")
    return p


def read_features(path: str | os.PathLike) -> np.ndarray:
    """Read an (N, D) feature matrix from .npy, .npz, .csv/.txt or .parquet (or an extract directory)."""
    p = _check_path(path, "features")
    if p.is_dir():
        return read_features(p / "features.npy")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if suffix == ".npz":
            return _read_npz(p, ("features", "x", "X"))
        table = _read_table(p)
    except (ValueError, OSError) as err:
        if isinstance(err, KStarInputError):
            raise
        raise KStarInputError(f"cannot read features from {p}: {err}") from err
    non_numeric = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise KStarInputError(
            f"features file {p} has non-numeric columns {non_numeric[:5]}; keep only the feature columns "
            "(put labels in their own file)."
        )
    return table.to_numpy(dtype=np.float64)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read N labels (ints or strings) from .npy, .npz, .csv/.txt (one column) or .parquet (or an extract directory).

    In an extract directory, integer labels are mapped to the class names of ``classes.json`` when it exists.
    """
    p = _check_path(path, "labels")
    if p.is_dir():
        labels = read_labels(p / "labels.npy")
        names = p / "classes.json"
        if names.exists():
            classes = json.loads(names.read_text())
            labels = np.asarray(classes, dtype=str)[labels]
        return labels
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if suffix == ".npz":
        return _read_npz(p, ("labels", "y"))
    table = _read_table(p, labels=True)
    for name in LABEL_COLUMNS:
        if name in table.columns:
            return table[name].to_numpy()
    if table.shape[1] != 1:
        raise KStarInputError(
            f"labels file {p} has {table.shape[1]} columns; give one column, or name the label column 'label'."
        )
    return table.iloc[:, 0].to_numpy()


def write_result(result, out_dir: str | os.PathLike, inputs: dict | None = None) -> dict[str, Path]:
    """Write ``summary.json`` (scalars, per-class table, parameters, versions) and ``samples.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    if inputs:
        summary["inputs"] = inputs
    paths = {"summary": out / "summary.json", "samples": out / "samples.csv"}
    atomic_write_text(paths["samples"], result.samples_frame().to_csv(index=False))
    write_json(paths["summary"], summary)
    return paths
