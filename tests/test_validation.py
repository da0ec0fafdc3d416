"""Every bad input gets a clear KStarInputError naming the problem and the fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kstar_utils import KStarInputError, SmallClassWarning, compute_kstar


def test_nan_and_inf_rows_are_named():
    x = np.ones((6, 2))
    x[2, 0] = np.nan
    x[4, 1] = np.inf
    with pytest.raises(KStarInputError, match=r"NaN or inf in rows 2, 4"):
        compute_kstar(x, [0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("x", [np.ones(5), np.ones((2, 2, 2))])
def test_wrong_dimensionality(x):
    with pytest.raises(KStarInputError, match="2-D array"):
        compute_kstar(x, [0, 1, 0, 1, 0][: len(x)])


def test_empty_features():
    with pytest.raises(KStarInputError, match="empty"):
        compute_kstar(np.ones((0, 3)), [])


def test_length_mismatch():
    with pytest.raises(KStarInputError, match="5 rows but labels have 4"):
        compute_kstar(np.ones((5, 2)), [0, 1, 0, 1])


def test_one_class():
    with pytest.raises(KStarInputError, match="at least two classes"):
        compute_kstar(np.random.default_rng(0).normal(size=(5, 2)), [3] * 5)


def test_non_numeric_features():
    with pytest.raises(KStarInputError, match="must be numeric"):
        compute_kstar(np.array([["a", "b"], ["c", "d"]]), [0, 1])


def test_non_integer_float_labels():
    with pytest.raises(KStarInputError, match="not whole numbers"):
        compute_kstar(np.ones((3, 2)), [0.5, 1.0, 0.0])


def test_unknown_metric_and_method():
    x = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(KStarInputError, match="unknown metric"):
        compute_kstar(x, [0, 1] * 3, metric="manhattan")
    with pytest.raises(KStarInputError, match="unknown method"):
        compute_kstar(x, [0, 1] * 3, method="fast")


def test_zero_vector_under_cosine():
    x = np.random.default_rng(0).normal(size=(6, 2))
    x[1] = 0
    with pytest.raises(KStarInputError, match="rows 1 are zero vectors"):
        compute_kstar(x, [0, 1] * 3, metric="cosine")


def test_small_classes_warn_but_compute():
    x = np.random.default_rng(0).normal(size=(8, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = compute_kstar(x, [0, 0, 0, 0, 0, 0, 1, 1])
    assert any(issubclass(w.category, SmallClassWarning) for w in caught)
    assert len(res.kstar) == 8


def test_zero_variance_class_follows_spec():
    # class 1 is a single tight pair far away (all k*_norm = 1: clustered); class 0 has constant k*_norm = 1/2
    x = np.array([[0.0], [10.0], [0.1], [10.1], [1000.0], [1000.5]])
    y = np.array([0, 2, 0, 2, 1, 1])
    res = compute_kstar(x, y)
    row = res.per_class.set_index("label")
    assert row.loc[1, "skew"] == -np.inf and row.loc[1, "pattern"] == "Clustered"


def test_bad_threshold_and_device():
    x = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(KStarInputError, match="threshold"):
        compute_kstar(x, [0, 1] * 3, threshold=float("nan"))
    if not torch.cuda.is_available():
        with pytest.raises(KStarInputError, match="CUDA is not available"):
            compute_kstar(x, [0, 1] * 3, device="cuda")
    with pytest.raises(KStarInputError, match="MPS lacks"):
        compute_kstar(x, [0, 1] * 3, device="mps")
    with pytest.raises(KStarInputError, match="unknown device"):
        compute_kstar(x, [0, 1] * 3, device="gpu7")


def test_features_whose_squared_distances_overflow_float64_are_refused():
    x = np.random.default_rng(0).normal(size=(20, 3))
    x[19, 0] = 1e300  # once rescaled into range, every other row's distances would underflow to 0
    with pytest.raises(KStarInputError, match=r"too many orders of magnitude.*1e\+300 \(row 19\)"):
        compute_kstar(x, [0] * 10 + [1] * 10)
    x[19, 0] = 1e100  # large but representable: rescaled exactly by a power of two, same k* as unscaled
    from kstar_utils.neighbours import brute_force_kstar

    assert (compute_kstar(x, [0] * 10 + [1] * 10).kstar == brute_force_kstar(x, np.array([0] * 10 + [1] * 10))).all()


def test_careless_api_input_is_a_kstar_error_not_a_numpy_one():
    from kstar_utils import KStarResult
    from kstar_utils.metrics import correlation, pattern_of, per_class_table

    y = [0, 1] * 5
    with pytest.raises(KStarInputError, match="ragged"):
        compute_kstar([[1.0, 2.0], [3.0]] * 5, y)
    for text, message in (("{}", "missing kstar"), ("[1]", "a JSON list"), ("{", "invalid JSON")):
        with pytest.raises(KStarInputError, match=message):
            KStarResult.from_json(text)
    with pytest.raises(KStarInputError, match="one entry per sample"):
        per_class_table(np.ones(3), np.array([0, 1]), ["a", "b"])
    with pytest.raises(KStarInputError, match=r"classes \['c'\] have no samples"):
        per_class_table(np.ones(2), np.array([0, 1]), ["a", "b", "c"])
    with pytest.raises(KStarInputError, match="paired values"):
        correlation([1, 2, 3], [1, 2])
    with pytest.raises(KStarInputError, match="a skew is a number"):
        pattern_of("x")


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    from kstar_utils.plumbing import check_output_folder

    with pytest.raises(KStarInputError, match="cannot be written"):
        check_output_folder("/proc/kstar-out")
    assert check_output_folder(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert not (tmp_path / "new").exists()  # the check made and removed it: a failed run leaves no empty folder
    (tmp_path / "kept").mkdir()
    check_output_folder(tmp_path / "kept" / "a" / "b")
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"] and not list((tmp_path / "kept").iterdir())


def test_swapped_features_and_labels_are_named():
    from kstar_utils import compute_kstar
    from kstar_utils.errors import KStarInputError

    x = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(KStarInputError, match="swapped"):
        compute_kstar(np.arange(30) % 2, x)
