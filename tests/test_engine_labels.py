"""Labels are read as written (issue 11, item 7): one test per defect of the old reader, each failing on it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kstar_utils import KStarInputError, compute_kstar
from kstar_utils.io import read_labels


def test_na_stays_the_class_na(tmp_path):
    (tmp_path / "y.txt").write_text("NA\ncat\nNA\ndog\n")
    (tmp_path / "y.csv").write_text("NA\nnan\nNone\nNA\n")
    assert read_labels(tmp_path / "y.txt").tolist() == ["NA", "cat", "NA", "dog"]
    assert read_labels(tmp_path / "y.csv").tolist() == ["NA", "nan", "None", "NA"]


def test_leading_zeros_keep_classes_apart(tmp_path):
    (tmp_path / "y.txt").write_text("007\n07\n7\n007\n")
    labels = read_labels(tmp_path / "y.txt")
    assert labels.tolist() == ["007", "07", "7", "007"]
    assert len(np.unique(labels)) == 3
    (tmp_path / "z.csv").write_text("id,label\n1,007\n2,7\n")
    assert read_labels(tmp_path / "z.csv").tolist() == ["007", "7"]


def test_integer_column_is_read_as_integers(tmp_path):
    (tmp_path / "y.txt").write_text("0\n1\n-2\n10\n")
    labels = read_labels(tmp_path / "y.txt")
    assert labels.dtype.kind == "i" and labels.tolist() == [0, 1, -2, 10]
    (tmp_path / "m.txt").write_text("1\n2\ncat\n")  # not all integers: every label stays a string
    assert read_labels(tmp_path / "m.txt").tolist() == ["1", "2", "cat"]


@pytest.mark.parametrize("text", ["cat\n\ndog\n", "cat\n  \ndog\n"])
def test_empty_cell_is_an_error_naming_its_row(tmp_path, text):
    (tmp_path / "y.txt").write_text(text)
    with pytest.raises(KStarInputError, match=r"row 1 \(line 2\)"):
        read_labels(tmp_path / "y.txt")


def test_empty_csv_cell_is_an_error(tmp_path):
    (tmp_path / "y.csv").write_text("label,x\ncat,1\n,2\ndog,3\n")
    with pytest.raises(KStarInputError, match=r"row 1 \(line 3\)"):
        read_labels(tmp_path / "y.csv")


def test_parquet_null_is_an_error_naming_its_row(tmp_path):
    pd.DataFrame({"label": ["cat", None, "dog"]}).to_parquet(tmp_path / "y.parquet")
    with pytest.raises(KStarInputError, match="row 1 is missing"):
        read_labels(tmp_path / "y.parquet")
    pd.DataFrame({"label": [3, 1, 2]}).to_parquet(tmp_path / "i.parquet")
    assert read_labels(tmp_path / "i.parquet").tolist() == [3, 1, 2]


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA, ""])
def test_api_missing_label_is_an_error_naming_its_row(missing):
    x = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(KStarInputError, match="missing .* in rows 3"):
        compute_kstar(x, ["a", "b", "a", missing, "a", "b"])


def test_api_missing_label_in_a_float_array():
    x = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(KStarInputError, match="missing .* in rows 2, 5"):
        compute_kstar(x, np.array([0, 1, np.nan, 1, 0, np.nan]))


def test_header_other_than_label_is_detected_over_integers(tmp_path):
    """The old reader took a header such as 'digit' for a label; a non-integer first row over integers is one."""
    (tmp_path / "y.csv").write_text("digit\n3\n1\n3\n")
    assert read_labels(tmp_path / "y.csv").tolist() == [3, 1, 3]
    (tmp_path / "w.csv").write_text("Target;other\nb;1\na;2\n")
    assert read_labels(tmp_path / "w.csv").tolist() == ["b", "a"]


def test_header_is_not_guessed_from_the_word(tmp_path):
    """A column of words has no header row: a class that happens to be called 'label' or 'y' is kept."""
    (tmp_path / "y.txt").write_text("y\nn\ny\n")
    assert read_labels(tmp_path / "y.txt").tolist() == ["y", "n", "y"]


def test_txt_with_a_space_in_its_first_row(tmp_path):
    (tmp_path / "y.txt").write_text("tabby cat\nsea lion\ntabby cat\n")
    assert read_labels(tmp_path / "y.txt").tolist() == ["tabby cat", "sea lion", "tabby cat"]


def test_multi_column_csv_without_a_label_column_is_refused(tmp_path):
    (tmp_path / "y.csv").write_text("a,b\n1,2\n")
    with pytest.raises(KStarInputError, match="name exactly one label column"):
        read_labels(tmp_path / "y.csv")


def test_extract_folder_classes_json_is_checked(tmp_path):
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2]))
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(KStarInputError, match="classes.json names 2 classes"):
        read_labels(tmp_path)
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(KStarInputError, match="classes.json is not valid JSON"):
        read_labels(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    assert read_labels(tmp_path).tolist() == ["a", "b", "c"]


def test_single_column_csv_with_a_label_header(tmp_path):
    """What pandas writes for one column (to_csv(index=False)); a .txt file has no such header rule."""
    pd.DataFrame({"label": ["cat", "dog", "cat"]}).to_csv(tmp_path / "y.csv", index=False)
    assert read_labels(tmp_path / "y.csv").tolist() == ["cat", "dog", "cat"]
    (tmp_path / "y.txt").write_text("label\ncat\ndog\n")
    assert read_labels(tmp_path / "y.txt").tolist() == ["label", "cat", "dog"]
    (tmp_path / "r.csv").write_text("label\ncat\nlabel\n")  # 'label' recurs: it is a class, not a header
    assert read_labels(tmp_path / "r.csv").tolist() == ["label", "cat", "label"]


@pytest.mark.parametrize("labels, message", [
    ([1e30] * 3 + [2e30] * 3, "beyond the int64 range"),  # astype(int64) would wrap both into one class
    ([1] * 3 + ["1"] * 3, r"labels '1' and 1 print alike, so they would merge into one class"),  # str() merged them
    (np.array([True] * 3 + ["True"] * 3, dtype=object), r"print alike"),
    ([1, 1.0, "a", "a", "b", "b"], r"labels 1.0 and 1 are one value written two ways"),
    (np.array([2**63 + 5] * 3 + [1] * 3, dtype=np.uint64), r"above 2\*\*63 - 1"),
    ([(0, 1)] * 3 + [(1,)] * 3, "class names or integer ids"),
])
def test_labels_that_would_merge_or_wrap_are_refused(labels, message):
    x = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(KStarInputError, match=message):
        compute_kstar(x, labels)


def test_labels_of_one_type_keep_their_classes():
    x = np.random.default_rng(0).normal(size=(8, 2))
    assert compute_kstar(x, [b"a"] * 4 + [b"b"] * 4).per_class["label"].tolist() == ["a", "b"]
    assert compute_kstar(x, np.array([b"a"] * 4 + [b"b"] * 4)).per_class["label"].tolist() == ["a", "b"]
    assert compute_kstar(x, [1] * 4 + [2.0] * 4).per_class["label"].tolist() == [1, 2]
    assert compute_kstar(x, [10**3] * 4 + [7] * 4).per_class["label"].tolist() == [7, 1000]
    assert compute_kstar(x, ["1"] * 4 + ["01"] * 4).per_class["label"].tolist() == ["01", "1"]
    assert compute_kstar(x, ["a"] * 4 + [3] * 4).per_class["label"].tolist() == ["3", "a"]  # distinct as names
