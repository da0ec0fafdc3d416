"""Reading feature and label files and writing k* results, for the command line and the notebooks.

Formats: ``.npy``; ``.npz`` (the array named ``features`` / ``labels``, or the only array); ``.csv`` / ``.txt``
(features: numeric columns, a header row is detected); ``.parquet`` (all columns, or the label column). A directory
written by ``kstar extract`` (features.npy, labels.npy, classes.json) can stand for both. Result files are written
atomically (temporary file, then rename), so an interrupted run never leaves a half-written summary that looks
complete.

Label files are read without guessing (see :func:`read_labels`): labels are strings unless every one is written as a
plain integer, nothing is read as "not available", and a missing label is an error naming its row.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import KStarInputError
from .plumbing import atomic_write_text, to_json

FEATURE_FORMATS = (".npy", ".npz", ".csv", ".txt", ".parquet")


LABEL_COLUMNS = ("label", "labels", "class", "y", "target")
_PLAIN_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")  # the one way of writing each integer: no sign, no leading zeros
_INTEGER_LIKE = re.compile(r"[+-]?[0-9]+")  # an integer however written ("+1", "007")


def _read_table(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV/whitespace or parquet feature table: parquet as stored; a text table as its cells, strings
    still (``attrs``: ``lines``, the file line of each row, ``decimal`` and ``header``), converted by
    :func:`_table_numbers` once the label columns are out.

    Text tables are split and checked here, never guessed past (:func:`_split_table`): every row must have the first
    row's number of cells; beside tabs or semicolons, decimal commas ("1,5;2,25", anywhere in the table) are read as
    decimal points. The first row is a header when every cell of it is a word, or when it is exactly ``0, 1, ...,
    D-1`` (what ``pandas.DataFrame(X).to_csv(index=False)`` writes), or words beside such a run of column numbers
    ("label,0,1,2"); a first row mixing words and other numbers, or looking like numbers with thousands separators
    ("1 000", "1.234,5"), is refused, not taken as a header or as a sample.
    """
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise KStarInputError(f"reading {path} needs pyarrow: pip install pyarrow (or save as .npy).") from err
    rows, sep = _split_table(path, "features")
    lines = [number for number, _ in rows]
    cells = [row for _, row in rows]
    width = len(cells[0])
    decimal = "," if sep in ("\t", ";") and any(
        _DECIMAL_COMMA.fullmatch(c) for row in cells if "," in "\x1f".join(row) for c in row) else "."
    first = cells[0]
    if len(first) > 1 and first[0] == "" and all(first[1:]):
        raise KStarInputError(
            f"features file {path}: the first cell of its first row is empty, as pandas writes the header of its row "
            "index (DataFrame.to_csv without index=False); read as a feature it would change every distance. Save with "
            "index=False, or remove that column (or fill that missing value).")
    words = [c for c in first if c and _number(c, decimal) is None]
    unnamed = [str(i) for i in range(width)]
    if words and all(_NUMBER_LIKE.fullmatch(c) for c in first if c):
        raise KStarInputError(
            f"features file {path}: line {lines[0]} looks like numbers, but {words[0]!r} is not one (a thousands "
            "separator?); remove thousands separators, or give the table a header row.")
    numbers = [c for c in first if c and c not in words]
    pandas_names = len(numbers) > 1 and all(_PLAIN_INTEGER.fullmatch(c) for c in numbers) \
        and [int(c) for c in numbers] == list(range(int(numbers[0]), int(numbers[0]) + len(numbers)))
    if words and numbers and not pandas_names:  # "label,0,1,2" (pandas' integer column names) is a header
        raise KStarInputError(
            f"features file {path}: line {lines[0]} mixes words ({words[0]!r}) and numbers: a header names every "
            "column, and a sample has a number in every cell; fix that line.")
    if width == 1 and first == ["0"] and len(cells) > 1:
        raise KStarInputError(
            f"features file {path}: its first line is 0, which pandas writes as the header of one unnamed column "
            "(DataFrame.to_csv(index=False)); remove that line if it is a header, or write the sample as 0.0.")
    header = bool(words) or (width > 1 and first == unnamed)
    body = cells[1:] if header else cells
    if not body:
        raise KStarInputError(f"features file {path} holds a header and no sample; write one sample per line.")
    table = pd.DataFrame(body, columns=first if header else range(width), dtype=object)
    table.attrs.update(lines=lines[1 if header else 0:], decimal=decimal, header=header)
    return table


_QUOTED = re.compile(r'"[^"]*"')  # a quoted cell: a separator inside it does not split
_BLANKS = re.compile(r"[ \t]+")  # ASCII blanks only: a no-break space is a thousands separator, not a separator
_INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060"  # byte-order marks and zero-width characters a re-saved file may carry
_SPACES = " \u00a0\u202f\u2009'\u2019"  # thousands separators: blank, no-break, narrow no-break, thin, apostrophes
_NUMBER_LIKE = re.compile(rf"[+\-\u2212]?[0-9][0-9.,{_SPACES}]*(?:[eE][+-]?[0-9]+)?")
_DECIMAL_COMMA = re.compile(r"[+-]?[0-9]*,[0-9]+(?:[eE][+-]?[0-9]+)?")  # "1,5", "-0,25", ",5", "1,5e-3"


def _split_table(path: Path, what: str) -> tuple[list[tuple[int, list[str]]], str | None]:
    """The non-blank rows of a text table, each with its file line, as stripped cells, and the separator: the first
    of tab, semicolon and comma in the first line (outside quotes), else runs of ASCII blanks. Quoted cells are
    unquoted (a separator or a line break inside one stays in the cell); every row must have the first row's number
    of cells (a separator at the end of every line is dropped first)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first cell
    except UnicodeDecodeError:
        raise KStarInputError(f"{what} file {path} is not a UTF-8 text table (a binary file named {path.suffix}?); "
                              f"save the {what} as .npy, or as a UTF-8 CSV.") from None
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    if not first_line:
        raise KStarInputError(f"{what} file {path} is empty; write one sample per line.")
    sep = _separator(_QUOTED.sub("", first_line))
    rows: list[tuple[int, list[str]]] = []
    if sep is None and _BLANKS.search(first_line.strip()):
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rows.append((number, [_clean_cell(c, quotes=True) for c in _BLANKS.split(line.strip())]))
    else:
        reader = csv.reader(_io.StringIO(text), delimiter=sep or ",", strict=True)
        # str.strip is all _clean_cell does when the text holds no invisible character (the common case: 3x faster)
        clean = _clean_cell if any(c in text for c in _INVISIBLE) else str.strip
        try:
            start = 1
            for row in reader:
                if "".join(row).strip():  # not a blank line
                    rows.append((start, list(map(clean, row))))
                start = reader.line_num + 1
        except csv.Error as err:
            raise KStarInputError(f"{what} file {path}: line {reader.line_num}: {err}; fix the quotes there.") from None
    if not rows:  # only separators or empty quotes ("," or '""'): no cell holds anything
        raise KStarInputError(f"{what} file {path} holds no values, only separators or empty cells; write one sample "
                              "per line.")
    if len(rows) > 1 and all(len(row) > 1 and row[-1] == "" for _, row in rows):
        rows = [(number, row[:-1]) for number, row in rows]  # a separator at the end of every line
    width = len(rows[0][1])
    for number, row in rows:
        if len(row) != width:
            raise KStarInputError(
                f"{what} file {path}: line {number} has {len(row)} cells, the first row {width}; a missing, extra "
                "or trailing separator would shift every column after it. Give every row the same cells.")
    return rows, sep


def _clean_cell(cell: str, quotes: bool = False) -> str:
    """A cell without surrounding blanks and invisible characters (and, split on blanks, without its quotes)."""
    cell = cell.strip().strip(_INVISIBLE).strip()
    if quotes and len(cell) > 1 and cell[0] == cell[-1] and cell[0] in "\"'":
        cell = cell[1:-1]
    return cell


def _number(cell: str, decimal: str) -> float | None:
    """``cell`` as a number, commas read as decimal points in a decimal-comma table and a Unicode minus as a minus
    (None when it is not one)."""
    cell = cell.replace("\u2212", "-")
    if decimal == ",":
        if "." in cell:
            return None
        cell = cell.replace(",", ".")
    try:
        return float(cell)
    except ValueError:
        return None


def _label_column(names: list[str], path: Path, what: str = "labels") -> int:
    """Which of a header's columns holds the labels: the one named label, labels, class, target or y (in any case);
    "y" only when no other label name is there and no "x" beside it ("x, y" are coordinates)."""
    lowered = [str(n).strip().lower() for n in names]
    found = [i for i, name in enumerate(lowered) if name in LABEL_COLUMNS]
    if len(found) > 1 and [i for i in found if lowered[i] != "y"]:  # "x, y, label": y is a coordinate there
        found = [i for i in found if lowered[i] != "y"]
    if len(found) == 1 and lowered[found[0]] == "y" and "x" in lowered:
        found = []  # "x, y, category": no label column, not the y coordinate read as labels
    if len(found) != 1:
        several = f" (it names {' and '.join(repr(names[i]) for i in found)}: rename all but one)" if found else ""
        raise KStarInputError(
            f"{what} file {path} has {len(names)} columns; its first row must name exactly one label column "
            f"({', '.join(LABEL_COLUMNS)}){several}, or give the labels alone, one per line.")
    return found[0]


def _table_numbers(table: pd.DataFrame, path: Path) -> np.ndarray:
    """The feature matrix of a table from :func:`_read_table`: every cell a number, or an error naming the first
    cell that is not (its line, its column and what to do)."""
    if "decimal" not in table.attrs:  # parquet: typed columns
        non_numeric = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
        if non_numeric:
            raise KStarInputError(f"features file {path} has non-numeric columns {non_numeric[:5]}; keep only the "
                                  "feature columns (put labels in their own file).")
        return table.to_numpy(dtype=np.float64)
    decimal, lines = table.attrs["decimal"], table.attrs["lines"]
    cells = table.to_numpy(dtype=object)
    if decimal == ".":  # every cell as Python's float reads it (as numpy's string conversion does), in one pass:
        try:  # about 3x faster than a conversion per column; anything else takes the path below and its messages
            return np.fromiter(map(float, cells.ravel().tolist()), dtype=np.float64,
                               count=cells.size).reshape(cells.shape)
        except ValueError:
            pass
    values = np.empty(cells.shape, dtype=np.float64)
    for j in range(cells.shape[1]):
        column = np.char.replace(cells[:, j].astype(str), "\u2212", "-")  # a Unicode minus is a minus
        if decimal == ",":
            points = np.flatnonzero(np.char.find(column, ".") >= 0)
            if points.size:
                i = int(points[0])
                raise KStarInputError(
                    f"features file {path}: line {lines[i]}, column {table.columns[j]!r} holds {str(column[i])!r}, "
                    "a point in a table with decimal commas (a thousands separator?); remove thousands separators.")
            column = np.char.replace(column, ",", ".")
        try:
            values[:, j] = column.astype(np.float64)
        except ValueError:
            i = next(i for i, c in enumerate(column) if _number(c, ".") is None)
            what = "an empty cell" if not column[i] else f"{cells[i, j]!r}, not a number"
            raise KStarInputError(
                f"features file {path}: line {lines[i]}, column {table.columns[j]!r} holds {what}; every feature "
                "cell must be a number (labels go in a column named label, or in their own file).") from None
    return values


def _separator(first_line: str) -> str | None:
    """A table's cell separator: the first of tab, semicolon and comma in its first line (None: one column). A
    semicolon or tab beside commas is a separator beside decimal commas ("1,5;2,25", as spreadsheets in many locales
    save), so it wins over the comma; feature and label tables are split alike."""
    return next((c for c in ("\t", ";", ",") if c in first_line), None)


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


def _read_error(p: Path, err: BaseException) -> str:
    """What went wrong reading ``p``, in words: an empty file (an interrupted save) is said as such, and numpy's
    "Object arrays cannot be loaded when allow_pickle=False" (whose remedy, unpickling, kstar never takes) as what the
    file holds."""
    try:
        if p.stat().st_size == 0:
            return "the file is empty (0 bytes: an interrupted save?); write it again"
    except OSError:
        pass
    if "allow_pickle" in str(err):
        return "it holds Python objects (a pickled object array), and kstar never loads pickled objects"
    return (str(err) or type(err).__name__).rstrip(".")


def _check_path(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise KStarInputError(f"{what} file {p} does not exist; check the path.")
    if p.is_file() and p.suffix.lower() not in FEATURE_FORMATS:
        raise KStarInputError(f"{what} file {p} has an unsupported format; use one of {', '.join(FEATURE_FORMATS)}.")
    return p


def read_features(path: str | os.PathLike, labels_in_file: bool = False) -> np.ndarray:
    """Read an (N, D) feature matrix from .npy, .npz, .csv/.txt or .parquet (or an extract directory).

    A table column named as a label column (``label``, ``labels``, ``class``, ``target``; see :func:`read_labels`)
    is never read as a feature: with ``labels_in_file`` (the same file gives the labels) it is left out, otherwise it
    is refused. An integer class id read as a feature would separate the classes by itself. (``y`` alone is read as
    a feature: it names a coordinate as often as a label.)"""
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
    except (ValueError, OSError, EOFError) as err:
        if isinstance(err, KStarInputError):
            raise
        advice = "; save plain numbers (np.save(path, np.asarray(features, dtype=np.float32)))" \
            if "allow_pickle" in str(err) else ""
        raise KStarInputError(f"cannot read features from {p}: {_read_error(p, err)}{advice}.") from None
    text_header = bool(table.attrs.get("header"))
    if labels_in_file:  # one table gives both: the column read_labels takes (the same rule) is left out
        if "decimal" in table.attrs and not text_header:
            raise KStarInputError(f"features file {p} is given as LABELS too but has no header; name its columns in a "
                                  "first row, the label column label (or give the labels in their own file).")
        table = table.drop(columns=table.columns[_label_column(list(table.columns), p, "features")])
        if table.shape[1] == 0:
            raise KStarInputError(f"features file {p} holds only its label column; add the feature columns, or give "
                                  "the features in their own file.")
    named = [c for c in table.columns if str(c).strip().lower() in LABEL_COLUMNS]  # " label" is a label column too
    if not labels_in_file and [c for c in named if str(c).strip().lower() != "y"]:
        label = next(c for c in named if str(c).strip().lower() != "y")
        raise KStarInputError(
            f"features file {p} has a column named {str(label).strip()!r}, which kstar reads as labels, not as a "
            "feature; give this file as LABELS too (the column is then left out of the features), or save the "
            "features without it.")
    features = _table_numbers(table, p)
    first_name = str(table.columns[0]).strip().lower() if text_header else ""
    index_like = not text_header or first_name in ("", "index", "id") or first_name.startswith("unnamed")
    if "decimal" in table.attrs and index_like and len(features) > 2 and features.shape[1] > 1 \
            and np.array_equal(features[:, 0], np.arange(len(features))):
        raise KStarInputError(
            f"features file {p}: its first column holds exactly 0, 1, ..., {len(features) - 1}, a saved row index "
            "(DataFrame.to_csv writes one unless index=False); read as a feature it would change every distance. "
            "Save with index=False, or remove that column.")
    return features


def read_labels(path: str | os.PathLike, table: bool = False) -> np.ndarray:
    """Read N labels from .npy, .npz, .txt, .csv or .parquet (or an extract directory), exactly as written.

    Rules (deterministic; nothing is guessed from what a word looks like):

    * ``.txt``: one label per line, the whole line (spaces inside a label are kept; surrounding blanks are not).
    * ``.csv``: cells separated by the first of tab, semicolon or comma found in the first line (none: one column).
      With two or more columns the first row is a header and must name the label column (``label``, ``labels``,
      ``class``, ``y`` or ``target``, in any case). With one column, the first row is a header when it is one of
      those names and does not occur again below it (what ``pandas.DataFrame.to_csv(index=False)`` writes).
    * In both, a first row that is not a plain integer above rows that all are is a header (``digit`` over
      ``3, 1, 3``). Nothing else is a header: a ``.txt`` column of words has none.
    * Labels are integers only when *every* label is a plain integer (``-?(0|[1-9][0-9]*)``) within int64; otherwise
      all are kept as the strings written, so ``007``, ``07`` and ``7`` stay three classes and ``NA`` is the class
      ``NA``. Surrounding blanks and zero-width characters are not part of a label.
    * An empty cell (or a blank line, a parquet null, a NaN) is a missing label: KStarInputError naming its row.
    * ``table=True`` (the same file gives the features): a ``.txt`` is read as a table too, like a ``.csv``.
    * In an extract directory, integer labels are mapped to the class names of ``classes.json`` when it exists.
    """
    p = _check_path(path, "labels")
    if p.is_dir():
        return _read_extract_labels(p)
    suffix = p.suffix.lower()
    if suffix in (".npy", ".npz"):
        try:
            labels = np.load(p, allow_pickle=False) if suffix == ".npy" else _read_npz(p, ("labels", "y"))
        except KStarInputError:
            raise
        except (ValueError, OSError, EOFError) as err:
            raise KStarInputError(f"cannot read labels from {p}: {_read_error(p, err)}; save the labels as an int or "
                                  "str array (np.save(path, np.asarray(labels, dtype=str))).") from None
    elif suffix == ".parquet":
        labels = _read_parquet_labels(p)
    elif table:
        labels = _read_table_labels(p)
    else:
        labels = _read_text_labels(p, one_per_line=suffix == ".txt")
    _check_no_missing(np.asarray(labels), p)
    return labels


def _read_table_labels(p: Path) -> np.ndarray:
    """The labels of a table that gives the features too: split exactly as :func:`read_features` splits it
    (:func:`_split_table`), from the column its header names as labels."""
    rows, _ = _split_table(p, "labels")
    names = rows[0][1]
    if len(names) < 2:
        raise KStarInputError(f"labels file {p} has one column; a file that gives both features and labels needs a "
                              "header naming its columns, the label column label.")
    column = _label_column(names, p)
    cells = [row[column] for _, row in rows[1:]]
    empty = [i for i, c in enumerate(cells) if not c]
    if empty:
        raise KStarInputError(f"labels file {p}: the label on line {rows[1 + empty[0]][0]} is empty; give every "
                              "sample a label or remove it.")
    return _typed_labels(cells)


def _check_no_missing(labels: np.ndarray, p: Path) -> None:
    """A missing label (NaN, None, empty) is an error naming its rows, never a class of its own."""
    if labels.dtype.kind == "f":
        missing = np.flatnonzero(np.isnan(labels))
    elif labels.dtype.kind in "USO":
        missing = np.flatnonzero([v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == ""
                                  for v in labels.ravel()])
    else:
        return
    if missing.size:
        rows = ", ".join(str(int(r)) for r in missing[:10]) + (f", ... ({missing.size} in all)" if missing.size > 10
                                                              else "")
        raise KStarInputError(f"labels file {p}: the label of row {rows} is missing (rows count from 0, after any "
                              "header); give every sample a label or remove it from both files.")


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _typed_labels(cells: list[str]) -> np.ndarray:
    """int64 when every cell is a plain integer that int64 holds, otherwise the strings as written."""
    if cells and all(_PLAIN_INTEGER.fullmatch(c) for c in cells):
        values = [int(c) for c in cells]
        if all(_INT64_MIN <= v <= _INT64_MAX for v in values):  # else kept as written: ids longer than int64
            return np.asarray(values, dtype=np.int64)
    return np.asarray(cells, dtype=str)


def _read_text_labels(p: Path, one_per_line: bool) -> np.ndarray:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise KStarInputError(f"cannot read labels from {p}: {err}") from err
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # the end of the file, not a missing label
        lines.pop()
    if not lines:
        raise KStarInputError(f"labels file {p} is empty; write one label per line.")
    first = lines[0]
    sep = None if one_per_line else _separator(_QUOTED.sub("", first))
    if one_per_line:
        rows = [[_clean_cell(line)] for line in lines]  # invisible characters go, as from a .csv's cells
    else:  # a one-column .csv is unquoted too ('"label"' is the header label)
        rows = [[_clean_cell(cell) for cell in row] or [""]
                for row in csv.reader(_io.StringIO("\n".join(lines)), delimiter=sep or "\x1f")]  # one column
    width = len(rows[0])
    if width > 1:
        column = _label_column(rows[0], p)
        cells = []
        for number, row in enumerate(rows[1:]):
            if not any(row):
                raise KStarInputError(f"labels file {p}: row {number} (line {number + 2}) is blank, a sample without "
                                      "a label; give every sample a label or remove it from both files.")
            if len(row) != width:
                raise KStarInputError(f"labels file {p}: row {number} (line {number + 2}) has {len(row)} cells, the "
                                      f"header has {width}; fix that line.")
            cells.append(row[column])
        header = 1
    else:
        cells = [row[0] if row else "" for row in rows]
        # a blank first line is a missing label, not a header; "+1" or "07" above integers is a label too
        over_integers = (cells[0] != "" and not _INTEGER_LIKE.fullmatch(cells[0])
                         and all(_PLAIN_INTEGER.fullmatch(c) for c in cells[1:]))
        column_name = (not one_per_line and cells[0].lower() in LABEL_COLUMNS and cells[0] not in cells[1:])
        header = int(len(cells) > 1 and (over_integers or column_name))
        cells = cells[header:]
    empty = [i for i, c in enumerate(cells) if not c]
    if empty:
        raise KStarInputError(f"labels file {p}: the label of row {empty[0]} (line {empty[0] + 1 + header}) is "
                              f"empty{f' ({len(empty)} rows in all)' if len(empty) > 1 else ''}; give every sample a "
                              "label or remove it from both files.")
    return _typed_labels(cells)


def _read_parquet_labels(p: Path) -> np.ndarray:
    try:
        table = pd.read_parquet(p)
    except ImportError as err:
        raise KStarInputError(f"reading {p} needs pyarrow: pip install pyarrow (or save as .npy).") from err
    except (OSError, ValueError) as err:
        raise KStarInputError(f"cannot read labels from {p}: {err}") from err
    column = table.iloc[:, 0] if table.shape[1] == 1 else table.iloc[:, _label_column(list(table.columns), p)]
    missing = np.flatnonzero(column.isna().to_numpy())
    if missing.size:
        raise KStarInputError(f"labels file {p}: the label of row {int(missing[0])} is missing (null)"
                              f"{f' ({missing.size} rows in all)' if missing.size > 1 else ''}; give every sample a "
                              "label or remove it from both files.")
    if pd.api.types.is_integer_dtype(column) or pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        if np.all(values == np.round(values)):
            return values.astype(np.int64)
        raise KStarInputError(f"labels file {p} holds fractional numbers; labels are class ids or names.")
    return np.asarray([str(v) for v in column.to_numpy()], dtype=str)


def _read_extract_labels(p: Path) -> np.ndarray:
    labels = read_labels(p / "labels.npy")
    names = p / "classes.json"
    if not names.exists():
        return labels
    try:
        classes = json.loads(names.read_text())
    except (OSError, ValueError) as err:
        raise KStarInputError(f"{names} is not valid JSON ({err}); it should be a list of class names.") from err
    if not isinstance(classes, list) or not all(isinstance(c, (str, int)) for c in classes):
        raise KStarInputError(f"{names} must be a JSON list of class names, got {type(classes).__name__}.")
    if labels.dtype.kind not in "iu":
        raise KStarInputError(f"{p / 'labels.npy'} must hold integer class ids to be named by {names}.")
    shown = [str(c) for c in classes]
    twice = sorted({c for c in shown if shown.count(c) > 1})
    if twice:  # two class ids named alike would be merged into one class
        raise KStarInputError(f"{names} names several classes {twice[0]!r}; class names must differ (rename them, "
                              "or regenerate the folder with kstar extract).")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise KStarInputError(f"{names} names {len(classes)} classes but {p / 'labels.npy'} holds class id "
                              f"{int(labels.max() if labels.max() >= len(classes) else labels.min())}; "
                              "regenerate the folder with kstar extract.")
    return np.asarray([str(c) for c in classes], dtype=str)[labels]


RESULT_FILES = ("summary.json", "samples.csv", "result.json")  # what write_result writes


def write_result(result, out_dir: str | os.PathLike, inputs: dict | None = None) -> dict[str, Path]:
    """Write ``summary.json`` (scalars, per-class table, parameters, versions), ``samples.csv`` (one row per sample)
    and ``result.json`` (everything, for ``KStarResult.from_json(open(path).read())``: the figures take a result)
    into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    if inputs:
        summary["inputs"] = inputs
    paths = {"summary": out / "summary.json", "samples": out / "samples.csv", "result": out / "result.json"}
    # every file is made in memory first: a failure (an unserialisable value) leaves no partial output behind
    texts = {"samples": result.samples_frame().to_csv(index=False), "result": result.to_json(),
             "summary": to_json(summary) + "\n"}
    for name, text in texts.items():
        atomic_write_text(paths[name], text)
    return paths
