"""What `kstar compute` / `kstar extract` may replace in --out, links in a report folder, a label column in a feature
table, and a few inputs that used to end in a traceback (found by a hostile-input review)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kstar_utils import compute_kstar
from kstar_utils.cli import main
from kstar_utils.errors import KStarInputError, ProfileError, ReportFolderError
from kstar_utils.io import RESULT_FILES, read_features, read_labels
from kstar_utils.kstar import KStarResult
from kstar_utils.plumbing import OUTPUTS_MANIFEST, check_own_outputs, record_own_outputs


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return tmp_path, x, y


def _compute(folder, out, *extra) -> int:
    return main(["compute", str(folder / "x.npy"), str(folder / "y.npy"), "--out", str(out), "--method", "exact",
                 "--quiet", *extra])


def test_compute_replaces_only_its_own_outputs(data, capsys):
    folder, _, _ = data
    out = folder / "out"
    assert _compute(folder, out) == 0 and _compute(folder, out) == 0  # a rerun replaces its own files
    assert set(json.loads((out / OUTPUTS_MANIFEST).read_text())["files"]) == set(RESULT_FILES)
    (out / "summary.json").write_text('{"my": "notes"}')  # edited by the user: not kstar's any more
    capsys.readouterr()
    assert _compute(folder, out) == 2
    assert "holds summary.json, which kstar did not write" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text()) == {"my": "notes"}
    assert _compute(folder, out, "--force") == 0 and "gamma_true" in json.loads((out / "summary.json").read_text())


def test_compute_never_replaces_its_input_or_writes_through_a_link(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.savetxt(tmp_path / "samples.csv", rng.normal(size=(30, 4)), delimiter=",")
    np.savetxt(tmp_path / "labels.txt", rng.integers(0, 3, 30), fmt="%d")
    before = (tmp_path / "samples.csv").read_bytes()
    argv = ["compute", str(tmp_path / "samples.csv"), str(tmp_path / "labels.txt"), "--out", str(tmp_path),
            "--method", "exact", "--quiet", "--force"]
    assert main(argv) == 2  # --out . would replace the features file itself, even with --force
    assert "would replace an input of this command" in capsys.readouterr().err
    assert (tmp_path / "samples.csv").read_bytes() == before
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere.json").write_text("mine")
    (out / "summary.json").symlink_to(tmp_path / "elsewhere.json")
    argv[4] = str(out)
    assert main(argv) == 2 and "is a link" in capsys.readouterr().err
    assert (tmp_path / "elsewhere.json").read_text() == "mine"


def test_own_outputs_record_survives_a_damaged_list(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    record_own_outputs(tmp_path, ("a.txt",))
    check_own_outputs(tmp_path, ("a.txt", "b.txt"))  # its own file, and one not there yet
    (tmp_path / OUTPUTS_MANIFEST).write_text("not json")
    with pytest.raises(KStarInputError, match="holds a.txt, which kstar did not write"):
        check_own_outputs(tmp_path, ("a.txt",))
    check_own_outputs(tmp_path, ("a.txt",), force=True)


def test_a_link_in_a_report_folder_is_refused_even_with_force(tmp_path):
    from kstar_utils.report import ReportFolder

    out, precious = tmp_path / "out", tmp_path / "precious"
    out.mkdir()
    precious.mkdir()
    (precious / "summary.json").write_text("my data")
    (out / "results").symlink_to(precious)
    assert ReportFolder(out).foreign_files() == ["results"]
    for force in (False, True):
        with pytest.raises(ReportFolderError, match="holds links \\(results\\)"):
            ReportFolder(out, force=force).check()
    assert (precious / "summary.json").read_text() == "my data"


def test_a_label_column_is_never_read_as_a_feature(tmp_path, capsys):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    both = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)]).assign(label=y)
    both.to_csv(tmp_path / "both.csv", index=False)
    with pytest.raises(KStarInputError, match="has a column named 'label', which kstar reads as labels"):
        read_features(tmp_path / "both.csv")
    assert np.allclose(read_features(tmp_path / "both.csv", labels_in_file=True), x)
    pd.DataFrame(x[:, :2], columns=["x", "y"]).to_csv(tmp_path / "points.csv", index=False)
    assert read_features(tmp_path / "points.csv").shape == (30, 2)  # "y" alone names a coordinate as often
    assert main(["compute", str(tmp_path / "both.csv"), str(tmp_path / "both.csv"), "--out", str(tmp_path / "o"),
                 "--method", "exact", "--quiet"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["gamma_true"] == pytest.approx(compute_kstar(x, y, method="exact").gamma_true)


def test_an_empty_npy_is_named_as_empty(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(KStarInputError, match="the file is empty"):
        read_features(tmp_path / "empty.npy")
    with pytest.raises(KStarInputError, match="the file is empty"):
        read_labels(tmp_path / "empty.npy")
    np.save(tmp_path / "objects.npy", np.array([[1, "a"], [2, "b"]], dtype=object), allow_pickle=True)
    for read in (read_features, read_labels):  # numpy's remedy (allow_pickle) is never passed on
        with pytest.raises(KStarInputError, match="holds Python objects .* never loads pickled objects") as found:
            read(tmp_path / "objects.npy")
        assert "allow_pickle" not in str(found.value)


def test_seeds_beyond_32_bits_are_refused_before_any_work(data, capsys):
    folder, x, y = data
    with pytest.raises(KStarInputError, match="seed must be an integer from 0 to 4294967295"):
        compute_kstar(x, y, method="ann", seed=2**32)
    assert _compute(folder, folder / "o", "--seed", str(2**32)) == 2
    assert "--seed must be an integer from 0 to 4294967295" in capsys.readouterr().err


def test_an_ann_result_without_audit_round_trips_through_json():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, 60)
    result = KStarResult.from_json(KStarResult(
        kstar=np.ones(60, dtype=np.int64), kstar_norm=np.full(60, 1 / 30), labels=y,
        per_class=compute_kstar(x, y, method="exact").per_class, gamma_true=0.1, gamma_approx=0.2, method="ann",
        audit={"size": 0, "fraction_identical": float("nan"), "max_abs_difference": 0, "mean_abs_difference": 0.0,
               "seed": 0}).to_json())
    assert result.audit["size"] == 0 and np.isnan(result.audit["fraction_identical"])


def test_a_profile_names_a_bad_device_when_it_is_read(tmp_path):
    from kstar_utils.pipeline.profiles import load_profile

    bad = tmp_path / "p.yaml"
    bad.write_text("extends: smoke\ncompute:\n  device: gpu\n")
    with pytest.raises(ProfileError, match="compute.device is 'gpu'; allowed: auto, cpu, mps, cuda or cuda:N"):
        load_profile(bad)
    good = tmp_path / "q.yaml"
    good.write_text("extends: smoke\ncompute:\n  device: cuda:1\n")  # written for another machine: allowed here
    assert load_profile(good).compute.device == "cuda:1"


def test_a_byte_order_mark_is_not_a_header_and_class_names_must_differ(tmp_path):
    x = np.arange(12, dtype=float).reshape(4, 3) / 7
    (tmp_path / "bom.csv").write_bytes("\ufeff".encode() + "\n".join(",".join(str(float(v)) for v in r) for r in x).encode())
    assert np.allclose(read_features(tmp_path / "bom.csv"), x)  # all four samples, the first one too
    folder = tmp_path / "extract"
    folder.mkdir()
    np.save(folder / "features.npy", x)
    np.save(folder / "labels.npy", np.array([0, 1, 0, 1]))
    (folder / "classes.json").write_text('["cat", "cat"]')
    with pytest.raises(KStarInputError, match="names several classes 'cat'; class names must differ"):
        read_labels(folder)


def test_a_compute_that_fails_on_its_input_leaves_no_out_folder(data, capsys):
    folder, _, _ = data
    np.save(folder / "y.npy", np.array([0, 1]))  # 2 labels for 30 samples
    assert _compute(folder, folder / "new" / "out") == 2
    assert "labels" in capsys.readouterr().err
    assert not (folder / "new").exists()


def test_out_refuses_a_link_a_folder_or_a_pipe_named_as_an_output(data, capsys):
    import os

    folder, _, _ = data
    (folder / "real").mkdir()
    (folder / "link").symlink_to(folder / "real", target_is_directory=True)
    assert _compute(folder, folder / "link") == 2
    assert "is a link; kstar does not write through links" in capsys.readouterr().err
    (folder / "f4" / "result.json").mkdir(parents=True)
    assert _compute(folder, folder / "f4", "--force") == 2
    assert "result.json there is not a file" in capsys.readouterr().err
    (folder / "f5").mkdir()
    os.mkfifo(folder / "f5" / "summary.json")
    assert _compute(folder, folder / "f5") == 2  # refused at once, not a wait on the pipe
    assert not list((folder / "real").iterdir())


def test_labels_of_no_usable_type_are_refused_before_any_output(data, capsys):
    folder, _, _ = data
    np.save(folder / "y.npy", np.array([1j, 2] * 15))
    assert _compute(folder, folder / "out") == 2
    assert "labels are of type complex128" in capsys.readouterr().err
    assert not (folder / "out").exists()
