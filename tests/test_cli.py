"""The command line: sub-commands, KStarError as one line and exit 2, programming errors keep their traceback."""

from __future__ import annotations

import pytest

from kstar_utils.cli import build_parser, main
from kstar_utils.errors import KStarError


def test_subcommands_and_one_line_errors(capsys, tmp_path):
    parser = build_parser()
    assert {"compute", "extract", "study", "report"} <= set(parser._subparsers._group_actions[0].choices)
    assert main(["study", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kstar: error: unknown profile 'nope'") and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: smoke\ncompair: 1\n")
    assert main(["report", "--profile", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown key 'compair'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["report", "--profile", "smoke", "--batch-size", "0"], "--batch-size"),
    (["report", "--profile", "smoke", "--workers", "-1"], "--workers"),
    (["study", "--profile", "smoke", "--device", "gpu7"], "unknown device 'gpu7'"),
    (["study", "--profile", "smoke", "--scheduler", "nowhere"], "--scheduler 'nowhere'"),
])
def test_bad_options_are_one_line_errors(capsys, tmp_path, argv, message):
    assert main(argv + ["--results-dir", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bug_keeps_its_traceback(monkeypatch):
    from kstar_utils import cli

    def boom(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_run_study", boom)  # build_parser binds the handler when main() runs
    with pytest.raises(ZeroDivisionError):
        main(["study"])
    assert not issubclass(ZeroDivisionError, KStarError)
