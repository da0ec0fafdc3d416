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


def test_the_package_and_the_help_load_without_the_engine():
    """``import kstar_utils`` and ``kstar --help`` import neither torch nor scipy nor numba (about 5 s here); the
    engine's names load on first use and are the engine's own."""
    import subprocess
    import sys

    probe = (
        "import sys, kstar_utils\n"
        "from kstar_utils.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = sorted(m for m in ('torch', 'scipy', 'numba', 'pynndescent') if m in sys.modules)\n"
        "from kstar_utils import compute_kstar, gamma_true\n"
        "import kstar_utils.kstar, kstar_utils.metrics\n"
        "print(heavy, compute_kstar is kstar_utils.kstar.compute_kstar, gamma_true is kstar_utils.metrics.gamma_true,"
        " 'compute_kstar' in dir(kstar_utils))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] True True True"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        import kstar_utils

        kstar_utils.nothing_here  # noqa: B018
