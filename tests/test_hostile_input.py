"""A table of hostile or careless inputs (issue 11, item 12): every case of the issue's "These broke" list, one row each.

Three tables:

* ``CLI_ERRORS``: the command line ends with exit status 2 and one line ``kstar: error: ...`` naming the problem
  (no traceback); some rows also check afterwards that nothing ran or was deleted.
* ``API_ERRORS``: the Python API raises a :class:`~kstar_utils.errors.KStarError` subclass with a one-line message.
* ``SAFE``: inputs that must not be an error but must not be silently rewritten either (labels kept as written,
  cosine k* independent of scale, foreign files kept, a corrupt zoo cache warned about and retrained).

Every case is fast: k* with ``method="exact"`` on 30 samples, no report rendering, the only training a 1-epoch tiny
zoo model (marked slow). All kstar folders are under ``tmp_path``; downloads are off.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from kstar_utils.cli import main
from kstar_utils.errors import (
    CacheCorruptionWarning,
    KStarError,
    KStarInputError,
    ReportFolderError,
)
from kstar_utils.io import read_features, read_labels

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HUB_RESNET18 = "resnet18-f37072fd.pth"  # torchvision's published file name for ResNet18_Weights.IMAGENET1K_V1


# ------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """Every kstar folder under tmp_path, no network, the working directory tmp_path/work."""
    for var, sub in (("KSTAR_HOME", "home"), ("KSTAR_ZOO", "zoo"), ("KSTAR_CACHE", "features"),
                     ("KSTAR_RESULTS", "results"), ("KSTAR_DATA", "data"), ("TORCH_HOME", "torch")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("KSTAR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


class Marker:
    """Unpickling this object creates a file: a stand-in for arbitrary code (``os.system`` in the issue)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": Marker(marker)}, path)
    return path


def _problem(n: int = 30, d: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.normal(size=(n, d)) + 2.0 * y[:, None], y


def _files(tmp: Path) -> tuple[str, str]:
    """features.npy and labels.npy of a 30-sample, 3-class problem, in tmp."""
    x, y = _problem()
    np.save(tmp / "f.npy", x)
    np.save(tmp / "l.npy", y)
    return str(tmp / "f.npy"), str(tmp / "l.npy")


def _compute(tmp: Path, *extra: str, out: str | None = None) -> list[str]:
    f, lab = _files(tmp)
    return ["compute", f, lab, "--out", out or str(tmp / "out"), "--method", "exact", "--quiet", *extra]


def _compute_labels(tmp: Path, labels: Path) -> list[str]:
    """`kstar compute` of the standard features with the label file ``labels``."""
    f, _ = _files(tmp)
    return ["compute", f, str(labels), "--out", str(tmp / "out"), "--method", "exact", "--quiet"]


def _csv_missing_cell(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    rows = "".join(f"{i},{'' if i == 4 else i % 3}\n" for i in range(30))
    (tmp / "l.csv").write_text("id,label\n" + rows)
    return _compute_labels(tmp, tmp / "l.csv")


def _parquet_missing(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    pd.DataFrame({"label": [None if i == 7 else f"c{i % 3}" for i in range(30)]}).to_parquet(tmp / "l.parquet")
    return _compute_labels(tmp, tmp / "l.parquet")


def _extract_folder(tmp: Path, classes_json: str | None) -> str:
    """A `kstar extract` output folder (features.npy, labels.npy with ids 0..2, classes.json as given)."""
    folder = tmp / "extracted"
    folder.mkdir()
    x, y = _problem()
    np.save(folder / "features.npy", x.astype(np.float32))
    np.save(folder / "labels.npy", y.astype(np.int64))
    if classes_json is not None:
        (folder / "classes.json").write_text(classes_json)
    return str(folder)


def _a_file(tmp: Path) -> Path:
    path = tmp / "afile"
    path.write_text("not a folder\n")
    return path


def _read_only(tmp: Path) -> Path:
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _profile(tmp: Path, text: str) -> list[str]:
    path = tmp / "user.yaml"
    path.write_text(text)
    return ["study", "--profile", str(path), "--scheduler", "inprocess", "--results-dir", str(tmp / "store")]


def _foreign_report_folder(tmp: Path) -> Path:
    """The issue's reproduction: mkdir -p s/executed; echo x > s/thesis.html; echo y > s/executed/log.txt."""
    s = tmp / "s"
    (s / "executed").mkdir(parents=True)
    (s / "thesis.html").write_text("x\n")
    (s / "executed" / "log.txt").write_text("y\n")
    return s


def _foreign_files_intact(tmp: Path) -> None:
    assert (tmp / "s" / "thesis.html").read_text() == "x\n"
    assert (tmp / "s" / "executed" / "log.txt").read_text() == "y\n"


def _object_npy(tmp: Path, name: str = "obj.npy") -> str:
    """An object array: loading it needs a pickle load, which kstar refuses."""
    path = tmp / name
    np.save(path, np.array([Marker(tmp / "ran")] * 30, dtype=object), allow_pickle=True)
    return str(path)


def _object_npz(tmp: Path) -> str:
    path = tmp / "obj.npz"
    np.savez(path, labels=np.array([Marker(tmp / "ran")] * 30, dtype=object))
    return str(path)


def _no_marker(tmp: Path) -> None:
    assert not (tmp / "ran").exists(), "a pickle payload ran"


def _hub_pickle(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    """Issue item 1: a pickle placed where the tool's offline message says to put resnet18's weights."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    assert hub == tmp / "torch" / "hub" / "checkpoints"
    _evil_checkpoint(hub / HUB_RESNET18, tmp / "ran")
    return ["extract", "--source", "torchvision", "--model", "resnet18", "--dataset", "digits", "--out",
            str(tmp / "x"), "--device", "cpu", "--quiet", "--no-cache"]


def _hub_pickle_matching_hash(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    """A hub file whose SHA-256 does match the prefix in its name is still loaded weights-only."""
    from kstar_utils.plumbing import sha256_file
    from kstar_utils.sources import torchvision_models as tvm

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    evil = _evil_checkpoint(tmp / "evil.pth", tmp / "ran")
    named = hub / f"resnet18-{sha256_file(evil)[:8]}.pth"
    hub.mkdir(parents=True, exist_ok=True)
    evil.rename(named)
    mp.setattr(tvm, "hub_file", lambda weights: named)
    return ["extract", "--source", "torchvision", "--model", "resnet18", "--dataset", "digits", "--out",
            str(tmp / "x"), "--device", "cpu", "--quiet", "--no-cache"]


def _local_pickle(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    evil = _evil_checkpoint(tmp / "finetuned.pth", tmp / "ran")
    return ["extract", "--source", "torchvision", "--model", "resnet18", "--pretrained", str(evil), "--dataset",
            "digits", "--out", str(tmp / "x"), "--device", "cpu", "--quiet", "--no-cache"]


# ------------------------------------------------------------------------------------------- the command line: exit 2
@dataclass(frozen=True)
class CliCase:
    id: str
    item: str  # the item(s) in "These broke", for the reader
    argv: Callable[[Path, pytest.MonkeyPatch], list[str]]
    message: str  # regex the error line must match
    after: Callable[[Path], None] | None = None  # what must (not) have happened
    skip: str | None = None
    slow: bool = False


CLI_ERRORS = [
    # 1. code execution through torch hub's cache
    CliCase("hub-pickle-wrong-hash", "1", _hub_pickle,
            rf"{HUB_RESNET18} does not match the SHA-256 prefix f37072fd", _no_marker),
    CliCase("hub-pickle-matching-hash", "1", _hub_pickle_matching_hash,
            r"resnet18-[0-9a-f]{8}\.pth holds objects that only an unsafe pickle load could restore", _no_marker),
    CliCase("local-pretrained-pickle", "1", _local_pickle,
            r"finetuned\.pth holds objects that only an unsafe pickle load could restore", _no_marker),
    # 2. the report folder is the tool's own
    CliCase("report-out-with-foreign-files", "2",
            lambda t, mp: (_foreign_report_folder(t),
                           ["report", "--profile", "smoke", "--out", str(t / "s"), "--scheduler", "inprocess"])[1],
            r"holds files kstar did not write \(.*thesis\.html.*\).*--force", _foreign_files_intact),
    CliCase("report-out-is-a-file", "10",
            lambda t, mp: ["report", "--profile", "smoke", "--out", str(_a_file(t)), "--scheduler", "inprocess"],
            r"--out .*afile is a file"),
    CliCase("report-out-read-only", "10",
            lambda t, mp: ["report", "--profile", "smoke", "--out", str(_read_only(t) / "r"), "--scheduler",
                           "inprocess"],
            r"not writable", skip="root can write anywhere" if IS_ROOT else None),
    # 6 / 10. numeric options and the device
    CliCase("block-size--1", "6", lambda t, mp: _compute(t, "--block-size", "-1"),
            r"block.size must be an integer >= 1.*got -1"),
    CliCase("n-neighbors-0", "6,10", lambda t, mp: _compute(t, "--n-neighbors", "0"),
            r"n.neighbors must be an integer >= 2, got 0"),
    CliCase("threads--1", "6,10", lambda t, mp: _compute(t, "--threads", "-1"),
            r"--threads must be an integer >= 1, got -1"),
    CliCase("audit-size--1", "6", lambda t, mp: _compute(t, "--audit-size", "-1"),
            r"audit.size must be an integer >= 0, got -1"),
    CliCase("device-gpu7", "6,10", lambda t, mp: _compute(t, "--device", "gpu7"), r"unknown device 'gpu7'"),
    CliCase("device-cuda99", "6,10", lambda t, mp: _compute(t, "--device", "cuda:99"), r"'cuda:99'"),
    CliCase("extract-device-gpu7", "10",
            lambda t, mp: ["extract", "--source", "pixels", "--model", "pixels", "--dataset", "digits", "--out",
                           str(t / "x"), "--device", "gpu7", "--quiet", "--no-cache"],
            r"unknown device 'gpu7'"),
    # 10. the output folder
    CliCase("compute-out-is-a-file", "10", lambda t, mp: _compute(t, out=str(_a_file(t))), r"afile"),
    CliCase("compute-out-below-a-file", "10", lambda t, mp: _compute(t, out=str(_a_file(t) / "sub")), r"afile"),
    CliCase("extract-out-is-a-file", "10",
            lambda t, mp: ["extract", "--source", "pixels", "--model", "pixels", "--dataset", "digits", "--per-class",
                           "1", "--out", str(_a_file(t)), "--device", "cpu", "--quiet", "--no-cache"],
            r"afile"),
    CliCase("compute-out-read-only", "10", lambda t, mp: _compute(t, out=str(_read_only(t) / "r")), r"ro/r",
            skip="root can write anywhere" if IS_ROOT else None),
    # 7 / 10. labels
    CliCase("labels-missing-cell-csv", "7", _csv_missing_cell, r"l\.csv: the label of row 4 .*(missing|empty)"),
    CliCase("labels-parquet-none", "7", _parquet_missing, r"l\.parquet: the label of row 7 is missing"),
    CliCase("classes-json-shorter-than-labels", "10",
            lambda t, mp: ["compute", _extract_folder(t, '["a", "b"]'), "--out", str(t / "o"), "--method", "exact",
                           "--quiet"],
            r"classes\.json names 2 classes but .*labels\.npy holds class id 2"),
    CliCase("classes-json-malformed", "10",
            lambda t, mp: ["compute", _extract_folder(t, '["a", "b", "c"'), "--out", str(t / "o"), "--method",
                           "exact", "--quiet"],
            r"extracted/classes\.json is not valid JSON"),
    CliCase("classes-json-not-a-list", "10",
            lambda t, mp: ["compute", _extract_folder(t, '{"0": "a"}'), "--out", str(t / "o"), "--method", "exact",
                           "--quiet"],
            r"extracted/classes\.json must be a JSON list of class names"),
    # 10. refused pickles: a one-line error naming the file, never a bare UnpicklingError / ValueError
    CliCase("object-npy-features", "10",
            lambda t, mp: ["compute", _object_npy(t), _files(t)[1], "--out", str(t / "o"), "--method", "exact",
                           "--quiet"],
            r"obj\.npy", _no_marker),
    CliCase("object-npy-labels", "10",
            lambda t, mp: ["compute", _files(t)[0], _object_npy(t), "--out", str(t / "o"), "--method", "exact",
                           "--quiet"],
            r"obj\.npy", _no_marker),
    CliCase("object-npz-labels", "10",
            lambda t, mp: ["compute", _files(t)[0], _object_npz(t), "--out", str(t / "o"), "--method", "exact",
                           "--quiet"],
            r"obj\.npz", _no_marker),
    # 9. user YAML profiles: one line naming the key and the file
    CliCase("profile-unknown-key", "9", lambda t, mp: _profile(t, "extends: smoke\ncompair: [a, b]\n"),
            r"user\.yaml.*unknown key 'compair'"),
    CliCase("profile-torchvision-section", "9",
            lambda t, mp: _profile(t, "extends: smoke\ntorchvision: {models: [resnet18]}\n"),
            r"user\.yaml.*unknown key 'torchvision'"),
    CliCase("profile-top-level-list", "9", lambda t, mp: _profile(t, "- smoke\n- digits\n"),
            r"user\.yaml is a YAML list; it must be a mapping"),
    CliCase("profile-study-list", "9", lambda t, mp: _profile(t, "name: uk\nstudy: [smoke, default]\n"),
            r"user\.yaml.*'study'"),
    CliCase("profile-compare-5", "9", lambda t, mp: _profile(t, "extends: smoke\ncompare: 5\n"),
            r"user\.yaml.*compare is 5; expected a list"),
    CliCase("profile-missing-threat-model", "9",
            lambda t, mp: _profile(t, "robustbench:\n  models:\n    - {name: Standard}\n"),
            r"user\.yaml.*missing key 'robustbench\.models\[0\]\.threat_model'"),
    CliCase("profile-bad-yaml-syntax", "9", lambda t, mp: _profile(t, "zoo: [1\ncompare: {\n"),
            r"user\.yaml: invalid YAML at line \d+, column \d+"),
    CliCase("profile-compare-string", "9", lambda t, mp: _profile(t, "extends: smoke\ncompare: digits-standard\n"),
            r"user\.yaml.*compare is 'digits-standard'; expected a list"),
    CliCase("profile-missing-file", "9",
            lambda t, mp: ["study", "--profile", str(t / "nowhere.yaml"), "--scheduler", "inprocess"],
            r"nowhere\.yaml does not exist"),
]


def _error_line(err: str) -> str:
    """The command's single error line; any traceback, or a second error line, fails the case."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("kstar: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CLI_ERRORS])
def test_cli_refuses_with_one_line_and_exit_2(case: CliCase, tmp_path, monkeypatch, capsys):
    if case.skip:
        pytest.skip(case.skip)
    argv = case.argv(tmp_path, monkeypatch)
    capsys.readouterr()
    try:
        status = main(argv)
    finally:
        if (tmp_path / "ro").exists():  # let pytest clean up the read-only rows' folder
            (tmp_path / "ro").chmod(0o755)
    err = capsys.readouterr().err
    line = _error_line(err)
    assert status == 2, err
    assert re.search(case.message, line), line
    if case.after is not None:
        case.after(tmp_path)


# ---------------------------------------------------------------------------------------------- the Python API
@dataclass(frozen=True)
class ApiCase:
    id: str
    item: str
    call: Callable[[Path], Any]
    error: type[KStarError]
    message: str


def _kstar(**options: Any) -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        from kstar_utils import compute_kstar

        x, y = _problem()
        return compute_kstar(x, y, method="exact", **options)

    return call


def _kstar_labels(labels: list) -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        from kstar_utils import compute_kstar

        x, _ = _problem(n=len(labels))
        return compute_kstar(x, labels, method="exact")

    return call


def _labels_file(name: str, text: str) -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        (tmp / name).write_text(text)
        return read_labels(tmp / name)

    return call


def _folder_check(make: Callable[[Path], Path]) -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        from kstar_utils.report.publish import ReportFolder

        folder = make(tmp)
        try:
            return ReportFolder(folder).check()
        finally:
            if folder.name == "s":  # the refusal deleted nothing
                _foreign_files_intact(tmp)

    return call


API_ERRORS = [
    ApiCase("block_size=-1", "6", _kstar(block_size=-1), KStarInputError, r"block_size must be an integer >= 1"),
    ApiCase("block_size=0", "6", _kstar(block_size=0), KStarInputError, r"block_size must be an integer >= 1"),
    ApiCase("n_neighbors=0", "6", _kstar(n_neighbors=0), KStarInputError, r"n_neighbors must be an integer >= 2"),
    ApiCase("n_jobs=-1", "6", _kstar(n_jobs=-1), KStarInputError, r"n_jobs must be an integer >= 1"),
    ApiCase("audit_size=-1", "6", _kstar(audit_size=-1), KStarInputError, r"audit_size must be an integer >= 0"),
    ApiCase("device=gpu7", "6", _kstar(device="gpu7"), KStarInputError, r"unknown device 'gpu7'"),
    ApiCase("device=cuda:99", "6", _kstar(device="cuda:99"), KStarInputError, r"'cuda:99'"),
    ApiCase("api-label-None", "7", _kstar_labels(["a", None] + ["a", "b"] * 14), KStarInputError,
            r"labels are missing .* rows 1\b"),
    ApiCase("api-label-nan", "7", _kstar_labels([0.0, float("nan")] + [0.0, 1.0] * 14), KStarInputError,
            r"rows 1\b"),
    ApiCase("txt-blank-line", "7", _labels_file("l.txt", "a\nb\n\na\n"), KStarInputError,
            r"l\.txt: the label of row 2 .* is empty"),
    ApiCase("txt-blank-first-line-over-integers", "7", _labels_file("l.txt", "\n1\n2\n3\n"), KStarInputError,
            r"l\.txt: the label of row 0 \(line 1\) is empty"),  # not a header
    ApiCase("csv-blank-line-between-rows", "7", _labels_file("l.csv", "id,label\n0,a\n\n2,b\n"), KStarInputError,
            r"l\.csv: row 1 \(line 3\) is blank, a sample without a label"),
    ApiCase("csv-missing-cell", "7", _labels_file("l.csv", "id,label\n0,a\n1,\n2,b\n"), KStarInputError,
            r"l\.csv: the label of row 1 .* is empty"),
    ApiCase("csv-two-columns-no-label-column", "7", _labels_file("l.csv", "id,name\n0,a\n1,b\n"), KStarInputError,
            r"first row must name exactly one label column"),
    ApiCase("report-folder-foreign-files", "2", _folder_check(_foreign_report_folder), ReportFolderError,
            r"holds files kstar did not write \(executed/log\.txt, thesis\.html\)"),
    ApiCase("report-folder-is-a-file", "10", _folder_check(_a_file), ReportFolderError, r"afile is a file"),
]


def _parquet_none(tmp: Path) -> Any:
    pd.DataFrame({"label": ["a", None, "b"]}).to_parquet(tmp / "l.parquet")
    return read_labels(tmp / "l.parquet")


API_ERRORS.append(ApiCase("parquet-None", "7", _parquet_none, KStarInputError,
                          r"l\.parquet: the label of row 1 is missing"))


@pytest.mark.parametrize("case", API_ERRORS, ids=[c.id for c in API_ERRORS])
def test_api_raises_a_kstar_error(case: ApiCase, tmp_path):
    with pytest.raises(case.error, match=case.message) as info:
        case.call(tmp_path)
    assert isinstance(info.value, KStarError)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- safe behaviour
def _labels_as_written(name: str, text: str, expected: list) -> Callable[[Path, Any], None]:
    def check(tmp: Path, capsys: Any = None) -> None:
        (tmp / name).write_text(text)
        labels = read_labels(tmp / name)
        assert labels.tolist() == expected
        kind = "i" if all(isinstance(v, int) for v in expected) else "U"
        assert labels.dtype.kind == kind, labels.dtype

    return check


def _cosine_scale(factor: float) -> Callable[[Path, Any], None]:
    def check(tmp: Path, capsys: Any = None) -> None:
        from kstar_utils import compute_kstar

        x, y = _problem(n=60, d=5)
        reference = compute_kstar(x, y, metric="cosine", method="exact")
        scaled = compute_kstar(x * factor, y, metric="cosine", method="exact")
        assert np.isfinite(reference.gamma_true)
        np.testing.assert_array_equal(scaled.kstar, reference.kstar)
        assert scaled.gamma_true == reference.gamma_true and scaled.gamma_approx == reference.gamma_approx

    return check


def _valid_block_size(tmp: Path, capsys: Any = None) -> None:
    """The smallest valid block size gives the same k* as the default (the bad ones are refused above)."""
    from kstar_utils import compute_kstar

    x, y = _problem()
    np.testing.assert_array_equal(compute_kstar(x, y, method="exact", block_size=1).kstar,
                                  compute_kstar(x, y, method="exact").kstar)


def _force_never_deletes(tmp: Path, capsys: Any = None) -> None:
    """--force writes beside foreign files, and a second report replaces only its own files."""
    from kstar_utils.report.publish import MANIFEST, ReportFolder

    s = _foreign_report_folder(tmp)
    for page in ("index.html", "01_framework.html"):
        with ReportFolder(s, force=True).staging() as stage:
            (stage / page).write_text(f"<p>{page}</p>\n")
            (stage / "executed").mkdir()
            (stage / "executed" / "01_framework.ipynb").write_text("{}\n")
    _foreign_files_intact(tmp)
    assert not (s / "index.html").exists() and (s / "01_framework.html").exists()  # the tool's old page replaced
    owned = ReportFolder(s).owned()
    assert set(owned) == {"01_framework.html", "executed/01_framework.ipynb"}, owned
    assert (s / MANIFEST).exists()
    with pytest.raises(ReportFolderError, match="thesis.html"):  # still foreign, still refused without --force
        ReportFolder(s).check()


def _feature_cache_entry_is_a_file(tmp: Path, capsys: Any) -> None:
    """A cache entry that is a file: recomputed with a warning, or one line naming it; never a traceback."""
    import shutil

    argv = ["extract", "--source", "pixels", "--model", "pixels", "--dataset", "digits", "--per-class", "1",
            "--device", "cpu", "--quiet"]
    assert main(argv + ["--out", str(tmp / "e1")]) == 0
    entries = [p for p in (tmp / "features").iterdir() if p.is_dir()]
    assert len(entries) == 1
    entry = entries[0]
    shutil.rmtree(entry)
    entry.write_text("not a cache entry\n")
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = main(argv + ["--out", str(tmp / "e2")])
        except Exception as err:  # noqa: BLE001 - the failure this row is about
            pytest.fail(f"traceback instead of a one-line error: {type(err).__name__}: {err}")
    err = capsys.readouterr().err
    if status == 0:  # detected, warned about, recomputed
        assert (tmp / "e2" / "features.npy").exists()
        assert any(issubclass(w.category, CacheCorruptionWarning) and entry.name in str(w.message) for w in caught) \
            or (entry.name in err and "CacheCorruptionWarning" in err), err
    else:  # refused with one line naming the entry
        assert status == 2 and entry.name in _error_line(err), err


def _zoo_damage(kind: str) -> Callable[[Path, Any], None]:
    def check(tmp: Path, capsys: Any = None) -> None:
        from kstar_utils.zoo.study import ensure_trained, model_folder
        from kstar_utils.zoo.train import ZooModelSpec, load_trained

        spec = ZooModelSpec(name="tiny", width=2, latent=4, epochs=1, train_limit=64, batch_size=32, seed=0)
        zoo = tmp / "zoo"
        first, folder, _ = ensure_trained(spec, zoo)
        assert folder == model_folder(spec, zoo)
        reference = {k: v.clone() for k, v in first.state_dict().items()}
        (folder / "notes.txt").write_text("mine\n")  # a user's file in the entry: never deleted
        weights, meta = folder / "model.safetensors", folder / "meta.json"
        if kind == "flipped-bits":
            data = bytearray(weights.read_bytes())
            for at in (len(data) // 2, len(data) - 5):
                data[at] ^= 0x10
            weights.write_bytes(bytes(data))
        elif kind == "truncated-safetensors":
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        elif kind == "truncated-meta":
            meta.write_text(meta.read_text()[:40])
        with pytest.warns(CacheCorruptionWarning, match=rf"zoo cache entry .*{folder.name}.* is corrupt"):
            model, again, _ = ensure_trained(spec, zoo)
        assert again == folder and (folder / "notes.txt").read_text() == "mine\n"
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheCorruptionWarning)  # the retrained entry verifies
            assert load_trained(folder) is not None
        for name, value in model.state_dict().items():  # seeded: retraining gives the same model
            assert torch.equal(value, reference[name]), name

    return check


@dataclass(frozen=True)
class SafeCase:
    id: str
    item: str
    check: Callable[[Path, Any], None]  # (tmp_path, capsys)
    slow: bool = False


SAFE = [
    SafeCase("label-NA-stays-NA", "7", _labels_as_written("l.txt", "NA\ncat\nNA\ndog\n", ["NA", "cat", "NA", "dog"])),
    SafeCase("label-NA-in-csv", "7",
             _labels_as_written("l.csv", "id,label\n0,NA\n1,N/A\n2,null\n", ["NA", "N/A", "null"])),
    SafeCase("label-007-07-7-apart", "7", _labels_as_written("l.txt", "007\n07\n7\n7\n", ["007", "07", "7", "7"])),
    SafeCase("label-header-digit-over-integers", "7", _labels_as_written("l.csv", "digit\n3\n1\n3\n", [3, 1, 3])),
    SafeCase("label-header-target-column", "7",
             _labels_as_written("l.csv", "id,target\n0,cat\n1,dog\n", ["cat", "dog"])),
    SafeCase("label-header-not-guessed-from-word", "7",
             _labels_as_written("l.txt", "label\ncat\ndog\n", ["label", "cat", "dog"])),
    SafeCase("label-txt-space-in-first-row", "7",
             _labels_as_written("l.txt", "tabby cat\nbird\ntabby cat\n", ["tabby cat", "bird", "tabby cat"])),
    SafeCase("cosine-1e160-equals-unscaled", "6", _cosine_scale(1e160)),
    SafeCase("cosine-1e-300-equals-unscaled", "6", _cosine_scale(1e-300)),
    SafeCase("block-size-1-equals-default", "6", _valid_block_size),
    SafeCase("report-force-never-deletes-foreign-files", "2", _force_never_deletes),
    SafeCase("feature-cache-entry-is-a-file", "10", _feature_cache_entry_is_a_file, slow=True),
    SafeCase("zoo-flipped-bits", "8", _zoo_damage("flipped-bits"), slow=True),
    SafeCase("zoo-truncated-safetensors", "8", _zoo_damage("truncated-safetensors"), slow=True),
    SafeCase("zoo-truncated-meta-json", "8", _zoo_damage("truncated-meta"), slow=True),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in SAFE])
def test_safe_behaviour(case: SafeCase, tmp_path, capsys):
    case.check(tmp_path, capsys)
    assert "Traceback" not in capsys.readouterr().err


def test_the_pickle_payload_is_live(tmp_path):
    """Guard for the rows above: the payload really runs under a plain pickle load, so its absence means refusal."""
    evil = _evil_checkpoint(tmp_path / "evil.pt", tmp_path / "ran")
    torch.load(evil, weights_only=False)
    assert (tmp_path / "ran").exists()


def test_decimal_comma_tables_read_as_numbers(tmp_path):
    """A spreadsheet saved in a decimal-comma locale ("1,5;2,25"): semicolons or tabs split the cells and the commas
    are decimal points, for features and labels alike; a plain comma-separated file is unchanged."""

    x = np.array([[1.5, -2.25], [0.125, 3.0], [4.0, 0.5]])
    with_label = "a;b;label\n" + "\n".join(f"{a};{b};{lab}".replace(".", ",") for (a, b), lab in zip(x, "xyx"))
    (tmp_path / "semi.csv").write_text(with_label + "\n")
    assert np.array_equal(read_features(tmp_path / "semi.csv", labels_in_file=True), x)
    assert list(read_labels(tmp_path / "semi.csv")) == ["x", "y", "x"]
    (tmp_path / "tabs.csv").write_text("\n".join("\t".join(str(v).replace(".", ",") for v in row) for row in x))
    assert np.array_equal(read_features(tmp_path / "tabs.csv"), x)  # no header: the first row is a sample
    (tmp_path / "plain.csv").write_text("\n".join(",".join(str(v) for v in row) for row in x))
    assert np.array_equal(read_features(tmp_path / "plain.csv"), x)
    named = "pc,1\tpc,2\n" + "\n".join("\t".join(str(v) for v in row) for row in x)  # commas in names only
    (tmp_path / "named.tsv.csv").write_text(named)
    assert np.array_equal(read_features(tmp_path / "named.tsv.csv"), x)


@pytest.mark.parametrize("text, expected", [
    ("x1, x2, label\n1.5, 2.5, 0\n3.5, 4.5, 1\n", [[1.5, 2.5], [3.5, 4.5]]),  # " label": still the label column
    ('"1.5","2.5"\n"3.5","4.5"\n"5.5","6.5"\n', [[1.5, 2.5], [3.5, 4.5], [5.5, 6.5]]),  # quoted, no header
    ('"1,5";"2,25"\n"3,5";"4"\n', [[1.5, 2.25], [3.5, 4.0]]),  # quoted decimal commas
    ("1,5e-3;2\n3,25E+02;4\n", [[0.0015, 2.0], [325.0, 4.0]]),  # decimal commas in scientific notation
    ("1;2\n3;4\n5,5;6\n", [[1.0, 2.0], [3.0, 4.0], [5.5, 6.0]]),  # the first decimal comma on line 3
    ("1,2,\n3,4,\n5,6,\n", [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),  # a separator ending every line
    ('"f;1",f2,label\n1.5,2.5,0\n3.5,4.5,1\n', [[1.5, 2.5], [3.5, 4.5]]),  # a separator inside a quoted name
])
def test_tables_are_read_as_written(tmp_path, text, expected):
    """Found by a hostile review: each of these had lost a sample, a column or a label column without an error."""

    path = tmp_path / "t.csv"
    path.write_text(text)
    assert read_features(path, labels_in_file="label" in text).tolist() == expected
    if "label" in text:
        assert read_labels(path).tolist() == [0, 1]
        with pytest.raises(KStarInputError, match="has a column named 'label'"):
            read_features(path)  # the labels given apart: the column is refused, never read as a feature


@pytest.mark.parametrize("text, message", [
    ("a,b\n0.5,1,2\n0.7,3,4\n", "line 2 has 3 cells, the first row 2"),  # pandas made the first column an index
    ("a,b\n1,2,\n3,4,\n", "line 2 has 3 cells, the first row 2"),  # a trailing separator on the data rows only
    ("a;b\n1.000;0,5\n1.500;0,5\n", "line 2, column 'a' holds '1.000', a point in a table with decimal commas"),
    ("1 000;2\n3;4\n", "line 1 looks like numbers, but '1 000' is not one"),  # was taken as a header and dropped
    ("1.234,5;2\n1,5;3\n", "line 1 looks like numbers, but '1.234,5' is not one"),
    ("a,b\n1,2\n3,x\n", "line 3, column 'b' holds 'x', not a number"),
    ("a,b\n1,2\n3,\n", "line 3, column 'b' holds an empty cell"),
])
def test_tables_that_cannot_be_read_as_written_are_refused_with_the_line(tmp_path, text, message):

    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(KStarInputError, match=re.escape(message)):
        read_features(path)


def test_a_binary_file_named_csv_is_named_as_such(tmp_path):

    (tmp_path / "b.csv").write_bytes(b"\x93\x00\x01abc")
    with pytest.raises(KStarInputError, match=r"not a UTF-8 text table \(a binary file named \.csv\?\)"):
        read_features(tmp_path / "b.csv")


def test_x_y_label_tables_keep_y_as_a_coordinate(tmp_path):
    """In "x, y, label" y is a coordinate and label the labels, for both readers; "a, y" alone: y is the label."""

    (tmp_path / "xy.csv").write_text("x,y,label\n1.5,2.5,0\n3.5,4.5,1\n")
    assert read_labels(tmp_path / "xy.csv").tolist() == [0, 1]
    assert read_features(tmp_path / "xy.csv", labels_in_file=True).tolist() == [[1.5, 2.5], [3.5, 4.5]]
    (tmp_path / "ay.csv").write_text("a,y\n1.5,0\n3.5,1\n")
    assert read_labels(tmp_path / "ay.csv").tolist() == [0, 1]
    assert read_features(tmp_path / "ay.csv", labels_in_file=True).tolist() == [[1.5], [3.5]]
    (tmp_path / "two.csv").write_text("a,label,class\n1.5,0,0\n")
    with pytest.raises(KStarInputError, match="it names 'label' and 'class': rename all but one"):
        read_labels(tmp_path / "two.csv")


def test_one_txt_table_gives_features_and_labels_alike(tmp_path, capsys):
    """`kstar compute t.txt t.txt`: the labels come from the table's label column, not one per line (which had
    counted the header line as a label)."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 2)), rng.integers(0, 3, 30)
    rows = "".join(f"{float(a)!r}\t{float(b)!r}\t{c}\n" for (a, b), c in zip(x, y))
    (tmp_path / "t.txt").write_text("x1\tx2\tlabel\n" + rows)
    assert main(["compute", str(tmp_path / "t.txt"), str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"),
                 "--method", "exact", "--quiet"]) == 0
    from kstar_utils import compute_kstar

    written = pd.read_csv(tmp_path / "o" / "samples.csv")
    assert written["kstar"].tolist() == compute_kstar(x, y).kstar.tolist()


@pytest.mark.parametrize("text, message", [
    ("0.0 0.0 0\n0.1 0.0 0\n5.0 5.0 1\n", "is given as LABELS too but has no header"),  # each line had been a label
    ("x,y,category\n0.0,0.0,0\n0.1,0.0,1\n", "must name exactly one label column"),  # y had been read as labels
])
def test_one_table_as_both_files_needs_its_label_column_named(tmp_path, capsys, text, message):
    (tmp_path / "t.txt").write_text(text)
    assert main(["compute", str(tmp_path / "t.txt"), str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_one_table_as_both_files_is_split_alike_for_features_and_labels(tmp_path):

    for name, text in (("blank.txt", 'x y label\n0.0 0.0 0\n0.1 0.0 0\n5.0 5.0 1\n'),
                       ("quoted.txt", '"x" "y" "label"\n0.0 0.0 0\n0.1 0.0 0\n5.0 5.0 1\n'),
                       ("boms.csv", "\ufeff\ufefflabel,x,y\n0,0.0,0.0\n0,0.1,0.0\n1,5.0,5.0\n")):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        features = read_features(path, labels_in_file=True)
        assert features.shape == (3, 2) and read_labels(path, table=True).tolist() == [0, 0, 1], name


@pytest.mark.parametrize("text, message", [
    ("0\n0.5\n0.6\n3.0\n", "its first line is 0, which pandas writes as the header of one unnamed column"),
    ("Unnamed: 0,x,y\n0,0.0,0.0\n1,0.1,0.0\n2,5.0,5.0\n", "its first column holds exactly 0, 1, ..., 2"),
    ("index,x,y\n0,0.0,0.0\n1,0.1,0.0\n2,5.0,5.0\n", "a saved row index"),
    ("1\u202f000 2\u202f500\n1\u202f100 2\u202f400\n", "line 1 looks like numbers, but '1"),  # no-break spaces
    ('a,b\n1,"2\n5"\n3,4\n', "line 2, column 'b' holds '2\\n5', not a number"),  # a quoted line break stays in
    ('a,b\n1,"2"3\n', "line 2: ',' expected after '\"'; fix the quotes there"),
    ("1.0,NA\n0.1,0.0\n", "line 1 mixes words ('NA') and numbers"),  # had been dropped as a header
])
def test_more_tables_that_cannot_be_read_as_written_are_refused(tmp_path, text, message):

    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KStarInputError, match=re.escape(message)):
        read_features(path)


def test_unicode_minus_quoted_one_column_and_integer_like_first_labels(tmp_path):

    (tmp_path / "m.csv").write_text("\u22121.5,2.0\n0.1,0.0\n", encoding="utf-8")
    assert read_features(tmp_path / "m.csv").tolist() == [[-1.5, 2.0], [0.1, 0.0]]
    (tmp_path / "q.csv").write_text('"1.5"\n"2.5"\n')
    assert read_features(tmp_path / "q.csv").tolist() == [[1.5], [2.5]]
    (tmp_path / "lq.csv").write_text('"label"\n"a"\n"b"\n')
    assert read_labels(tmp_path / "lq.csv").tolist() == ["a", "b"]  # the quoted header is a header, unquoted
    (tmp_path / "l.csv").write_text("+1\n2\n3\n")
    assert read_labels(tmp_path / "l.csv").tolist() == ["+1", "2", "3"]  # "+1" is a label, not a header


def test_pandas_integer_column_names_beside_a_label_column_are_a_header(tmp_path):

    frame = pd.DataFrame(np.arange(6.0).reshape(3, 2) / 4)
    frame.insert(0, "label", [0, 1, 0])
    frame.to_csv(tmp_path / "t.csv", index=False)  # header: label,0,1
    expected = (np.arange(6.0).reshape(3, 2) / 4).tolist()
    assert read_features(tmp_path / "t.csv", labels_in_file=True).tolist() == expected
    assert read_labels(tmp_path / "t.csv").tolist() == [0, 1, 0]


def test_tables_of_nothing_or_of_labels_only_are_refused_with_a_message(tmp_path):
    """Found by the fourth tester: these crashed with IndexError, not an error a user can act on."""
    for name, text in (("commas.csv", ",\n"), ("semis.csv", ";\r\n"), ("quotes.csv", '""\n'), ("bare.csv", ",")):
        (tmp_path / name).write_text(text)
        with pytest.raises(KStarInputError, match="holds no values, only separators or empty cells"):
            read_features(tmp_path / name)
    (tmp_path / "class.csv").write_text("class\n1\n2\n")
    with pytest.raises(KStarInputError, match="holds only its label column"):
        read_features(tmp_path / "class.csv", labels_in_file=True)


def test_integer_labels_beyond_int64_are_kept_as_written_and_txt_labels_lose_invisible_characters(tmp_path):
    """A 23-digit id is a class as written (it overflowed int64 before); a zero-width space after a .txt label no
    longer makes a second class (a .csv already dropped it)."""
    (tmp_path / "ids.txt").write_text("0\n12345678901234567890123\n0\n")
    assert read_labels(tmp_path / "ids.txt").tolist() == ["0", "12345678901234567890123", "0"]
    (tmp_path / "int64.txt").write_text(f"{2**63 - 1}\n{-2**63}\n")
    assert read_labels(tmp_path / "int64.txt").tolist() == [2**63 - 1, -2**63]
    for suffix in (".txt", ".csv"):
        (tmp_path / f"zw{suffix}").write_text("3\n3\u200b\n4\n")
        assert read_labels(tmp_path / f"zw{suffix}").tolist() == [3, 3, 4]
