"""KStarResult round trips, file formats and the `kstar compute` command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kstar_utils import KStarResult, compute_kstar
from kstar_utils.cli import main
from kstar_utils.errors import KStarInputError
from kstar_utils.io import read_features, read_labels, write_result
from kstar_utils.neighbours import brute_force_kstar


@pytest.fixture
def small_problem():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(40, 4)), rng.normal(size=(40, 4)) + 1.5, 200 + rng.normal(size=(5, 4))])
    y = np.array(["cat"] * 40 + ["dog"] * 40 + ["far"] * 5)
    return x, y


def test_result_round_trips_through_dict_and_json(small_problem):
    x, y = small_problem
    res = compute_kstar(x, y)
    assert math.isinf(res.per_class.set_index("label").loc["far", "skew"])  # -inf survives too
    for back in (KStarResult.from_dict(res.to_dict()), KStarResult.from_json(res.to_json())):
        np.testing.assert_array_equal(back.kstar, res.kstar)
        np.testing.assert_array_equal(back.kstar_norm, res.kstar_norm)
        np.testing.assert_array_equal(back.labels, res.labels)
        pd.testing.assert_frame_equal(back.per_class, res.per_class)
        assert back.gamma_true == res.gamma_true and back.gamma_approx == res.gamma_approx
        assert back.method == res.method and back.params == res.params
    int_res = compute_kstar(x, np.repeat([0, 1, 2], [40, 40, 5]))
    assert KStarResult.from_json(int_res.to_json()).labels.dtype.kind == "i"


def test_result_json_is_strict(small_problem):
    x, y = small_problem
    json.loads(compute_kstar(x, y).to_json(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv", "parquet"])
def test_cli_round_trip_in_every_format(tmp_path, small_problem, fmt):
    x, y = small_problem
    fx, fy = tmp_path / f"features.{fmt}", tmp_path / f"labels.{fmt}"
    if fmt == "npy":
        np.save(fx, x), np.save(fy, y)
    elif fmt == "npz":
        np.savez(fx, features=x, other=np.zeros(2)), np.savez(fy, labels=y)
    elif fmt == "csv":
        pd.DataFrame(x, columns=[f"f{i}" for i in range(4)]).to_csv(fx, index=False)
        pd.DataFrame({"label": y}).to_csv(fy, index=False)
    else:
        pd.DataFrame(x, columns=[f"f{i}" for i in range(4)]).to_parquet(fx)
        pd.DataFrame({"label": y}).to_parquet(fy)
    out = tmp_path / "out"
    assert main(["compute", str(fx), str(fy), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    samples = pd.read_csv(out / "samples.csv")
    assert list(samples.columns) == ["index", "label", "kstar", "kstar_norm"]
    np.testing.assert_array_equal(samples["kstar"], brute_force_kstar(x, y))
    assert summary["n_samples"] == 85 and summary["n_classes"] == 3
    assert summary["params"]["metric"] == "euclidean" and "versions" in summary["params"]
    assert [row["label"] for row in summary["per_class"]] == ["cat", "dog", "far"]
    assert summary["per_class"][2]["skew"] == "-inf"


def test_cli_headerless_csv_and_extract_folder(tmp_path, small_problem):
    x, y = small_problem
    np.savetxt(tmp_path / "f.csv", x, delimiter=",")
    np.savetxt(tmp_path / "y.txt", np.repeat([0, 1, 2], [40, 40, 5]), fmt="%d")
    assert read_features(tmp_path / "f.csv").shape == (85, 4)
    assert read_labels(tmp_path / "y.txt").shape == (85,)
    folder = tmp_path / "extract"
    folder.mkdir()
    np.save(folder / "features.npy", x.astype(np.float32))
    np.save(folder / "labels.npy", np.repeat([0, 1, 2], [40, 40, 5]))
    (folder / "classes.json").write_text(json.dumps(["cat", "dog", "far"]))
    assert main(["compute", str(folder), "--out", str(tmp_path / "o"), "--quiet", "--metric", "cosine"]) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["per_class"][0]["label"] == "cat"


def test_cli_result_json_reads_back_as_the_result(tmp_path, small_problem):
    x, y = small_problem
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert main(["compute", str(tmp_path / "f.npy"), str(tmp_path / "y.npy"), "--out", str(tmp_path / "o"),
                 "--quiet", "--method", "exact"]) == 0
    back = KStarResult.from_json((tmp_path / "o" / "result.json").read_text())
    direct = compute_kstar(x, y, method="exact")
    np.testing.assert_array_equal(back.kstar, direct.kstar)
    assert back.gamma_approx == direct.gamma_approx and list(back.labels[:2]) == ["cat", "cat"]
    with pytest.raises(KStarInputError, match=r"open\(path\).read\(\)"):
        KStarResult.from_json(str(tmp_path / "o" / "result.json"))


def test_bool_labels_survive_the_json_round_trip(small_problem):
    x, _ = small_problem
    labels = np.arange(len(x)) % 3 == 0
    res = compute_kstar(x, labels, method="exact")
    back = KStarResult.from_json(res.to_json())
    assert back.labels.dtype == bool and np.array_equal(back.labels, res.labels)
    assert list(back.per_class["label"]) == list(res.per_class["label"]) == [False, True]


def test_pandas_default_csvs_never_turn_an_index_or_header_into_data(tmp_path, small_problem):
    """What pandas writes by default: a named or unnamed header of 0..D-1 is a header; a saved row index is refused
    (with or without a header row), never read as a feature."""
    x, _ = small_problem
    frame = pd.DataFrame(x)
    frame.to_csv(tmp_path / "numbered_header.csv", index=False)  # header "0,1,2,3"
    np.testing.assert_array_equal(read_features(tmp_path / "numbered_header.csv"), x)
    frame.to_csv(tmp_path / "index_and_header.csv")  # ",0,1,2,3" then "0,..."
    pd.DataFrame(x, columns=list("abcd")).to_csv(tmp_path / "index_and_names.csv")  # ",a,b,c,d"
    frame.to_csv(tmp_path / "index_no_header.csv", header=False)  # "0,...", "1,...": the index as column 0
    frame.to_csv(tmp_path / "index_and_header_tabs.txt", sep="\t")  # a leading tab, then "0\t1\t2\t3"
    for name in ("index_and_header.csv", "index_and_names.csv", "index_no_header.csv", "index_and_header_tabs.txt"):
        with pytest.raises(KStarInputError, match="index=False"):
            read_features(tmp_path / name)
    ramp = np.column_stack([np.arange(85) * 0.5, x[:, 1:]])  # a first column that is not 0, 1, ..., N-1 stays
    np.savetxt(tmp_path / "ramp.csv", ramp, delimiter=",")
    np.testing.assert_allclose(read_features(tmp_path / "ramp.csv"), ramp)


def test_a_length_mismatch_of_one_hints_at_a_header_row(tmp_path, small_problem):
    x, y = small_problem
    with pytest.raises(KStarInputError, match="header row the other lacks"):
        compute_kstar(x, np.concatenate([[0], y]))
    with pytest.raises(KStarInputError) as err:
        compute_kstar(x, y[:-5])
    assert "header" not in str(err.value)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (np.save(d / "f.npy", np.full((4, 2), np.nan)), np.save(d / "y.npy", [0, 1, 0, 1])), "NaN or inf"),
        (lambda d: (np.save(d / "f.npy", np.ones((4, 2))), np.save(d / "y.npy", [0, 1, 0])), "4 rows but labels have 3"),
        (lambda d: (np.save(d / "f.npy", np.ones((4, 2))), np.save(d / "y.npy", [1, 1, 1, 1])), "two classes"),
        (lambda d: (np.save(d / "f.npy", np.ones(4)), np.save(d / "y.npy", [0, 1, 0, 1])), "2-D array"),
        (lambda d: np.save(d / "y.npy", [0, 1]), "does not exist"),
    ],
)
def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path, capsys, setup, message):
    setup(tmp_path)
    code = main(["compute", str(tmp_path / "f.npy"), str(tmp_path / "y.npy"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("kstar: error:") and message in err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_console_script_help_documents_options():
    top = subprocess.run([sys.executable, "-m", "kstar_utils.cli", "--help"], capture_output=True, text=True)
    sub = subprocess.run([sys.executable, "-m", "kstar_utils.cli", "compute", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "compute" in top.stdout
    for option in ("--metric", "--method", "--threshold", "--device", "--block-size", "--out", "--audit-size"):
        assert option in sub.stdout


def test_write_result_is_atomic_and_complete(tmp_path, small_problem):
    x, y = small_problem
    paths = write_result(compute_kstar(x, y), tmp_path, inputs={"features": "x"})
    assert paths["summary"].exists() and paths["samples"].exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_labels_file_of_words_without_header_keeps_every_label(tmp_path):
    (tmp_path / "y.txt").write_text("cat\ndog\ncat\n")
    (tmp_path / "z.csv").write_text("label,other\ncat,1\ndog,2\n")
    assert read_labels(tmp_path / "y.txt").tolist() == ["cat", "dog", "cat"]
    assert read_labels(tmp_path / "z.csv").tolist() == ["cat", "dog"]


def test_cli_prints_warnings_as_one_kstar_line(tmp_path):
    """In a real process (pytest records warnings itself): one line with the class, no file, line or source line."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "f.npy", rng.normal(size=(42, 3)))
    np.save(tmp_path / "y.npy", np.array([0] * 20 + [1] * 20 + [2] * 2))  # a class of 2: SmallClassWarning
    run = subprocess.run([sys.executable, "-m", "kstar_utils.cli", "compute", str(tmp_path / "f.npy"),
                          str(tmp_path / "y.npy"), "--out", str(tmp_path / "o"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "kstar: warning: SmallClassWarning: " in run.stderr
    assert "cli.py" not in run.stderr and "result = compute_kstar" not in run.stderr


def test_cli_unknown_source_is_one_line_naming_the_sources(tmp_path, capsys):
    assert main(["extract", "--source", "nope", "--model", "x", "--dataset", "digits", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kstar: error: unknown feature source 'nope'") and "torchvision" in err


@pytest.mark.parametrize(("option", "value"), [("--block-size", "0"), ("--bootstrap", "-5"), ("--n-neighbors", "1"),
                                               ("--audit-size", "-1"), ("--threads", "0")])
def test_cli_names_a_bad_option_as_typed(tmp_path, capsys, small_problem, option, value):
    x, y = small_problem
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert main(["compute", str(tmp_path / "f.npy"), str(tmp_path / "y.npy"), "--out", str(tmp_path / "o"),
                 option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kstar: error: {option} must be an integer >=") and "None" not in err


def test_cli_help_shows_defaults_only_where_they_say_something(capsys):
    from kstar_utils.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["compute", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 15)" in text and "(default: None)" not in text
    assert "all this process may use) (default" not in text  # its help names its default already
