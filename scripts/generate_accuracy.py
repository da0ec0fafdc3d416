#!/usr/bin/env python
"""Regenerate kstar_utils/data/*.csv, the published accuracies, from upstream's own files.

* ``robustbench_accuracy.csv``: every ``model_info/<dataset>/<threat model>/<model>.json`` of the RobustBench
  repository for CIFAR-10 Linf and L2, CIFAR-100 Linf and ImageNet Linf (the robustbench wheel does not ship them).
* ``openclip_zeroshot.csv``: every row (architecture, pretrained tag) of open_clip's ``docs/openclip_results.csv``.

Each row cites the upstream commit that last changed the file it came from (``source_commit``) and the commit the
script read (``read_commit``); ``accuracy_sources.json`` records the repositories, the commits read and the counts.
The inputs are git repositories: a clone (its work tree is ignored: files are read at HEAD, or at ``--*-rev``) or a
bare git directory. Usage::

    git clone https://github.com/RobustBench/robustbench /tmp/robustbench
    git clone https://github.com/mlfoundations/open_clip /tmp/open_clip
    python scripts/generate_accuracy.py --robustbench /tmp/robustbench --open-clip /tmp/open_clip
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROBUSTBENCH_BOARDS = (("cifar10", "Linf"), ("cifar10", "L2"), ("cifar100", "Linf"), ("imagenet", "Linf"))
OPENCLIP_TABLE = "docs/openclip_results.csv"
RB_COLUMNS = ["dataset", "threat_model", "model", "eps", "clean_accuracy", "autoattack_accuracy",
              "external_accuracy", "robust_accuracy", "architecture", "additional_data", "unreliable", "venue",
              "name", "source", "source_commit", "read_commit"]
OC_FIXED = ["model", "pretrained", "params_m", "flops_b", "zeroshot_avg38"]
OC_RENAME = {"name": "model", "pretrained": "pretrained", "params (M)": "params_m", "FLOPs (B)": "flops_b",
             "Average perf. on 38 datasets": "zeroshot_avg38"}


class GitRepo:
    """Read files of a git repository at one revision: a clone (``PATH/.git``) or a bare git directory."""

    def __init__(self, path: str | Path, rev: str = "HEAD"):
        p = Path(path)
        if (p / ".git").exists():
            self.git_dir = p / ".git"
        elif (p / "HEAD").is_file() and (p / "objects").is_dir():
            self.git_dir = p
        else:
            raise SystemExit(f"{p} is neither a git clone nor a git directory; clone the repository first.")
        self.commit = self._git("rev-parse", f"{rev}^{{commit}}").strip()
        self.date = self._git("show", "-s", "--format=%cI", self.commit).strip()

    def _git(self, *args: str) -> str:
        result = subprocess.run(["git", f"--git-dir={self.git_dir}", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"git {' '.join(args)} failed in {self.git_dir}: {result.stderr.strip()}")
        return result.stdout

    def list(self, folder: str) -> list[str]:
        """Paths of the files directly in ``folder``."""
        out = self._git("ls-tree", "--name-only", self.commit, f"{folder.rstrip('/')}/")
        return [line for line in out.splitlines() if line]

    def show(self, path: str) -> str:
        return self._git("show", f"{self.commit}:{path}")

    def last_commit(self, path: str) -> str:
        """The commit (at or before the one read) that last changed ``path``."""
        return self._git("log", "-1", "--format=%H", self.commit, "--", path).strip()


def _number(value: object) -> float:
    """A percentage from model_info ("84.97", 84.97, "" or missing -> NaN)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return float(value)


def robustbench_rows(repo: GitRepo) -> list[dict]:
    """One row per model_info JSON of the boards kstar uses, with RobustBench's leaderboard robust accuracy."""
    rows = []
    for dataset, threat in ROBUSTBENCH_BOARDS:
        for path in sorted(repo.list(f"model_info/{dataset}/{threat}")):
            if not path.endswith(".json"):
                continue
            info = json.loads(repo.show(path))
            autoattack, external = _number(info.get("autoattack_acc")), _number(info.get("external"))
            commit = repo.last_commit(path)
            rows.append({
                "dataset": dataset, "threat_model": threat, "model": Path(path).stem, "eps": info.get("eps"),
                "clean_accuracy": _number(info.get("clean_acc")), "autoattack_accuracy": autoattack,
                "external_accuracy": external,
                # RobustBench ranks by "external" where present (a stronger attack than AutoAttack), else AutoAttack
                "robust_accuracy": external if not math.isnan(external) else autoattack,
                "architecture": info.get("architecture", ""), "additional_data": bool(info.get("additional_data")),
                "unreliable": bool(info.get("unreliable", False)), "venue": info.get("venue", ""),
                "name": info.get("name", ""),
                "source": f"github.com/RobustBench/robustbench {path} @ {commit}",
                "source_commit": commit, "read_commit": repo.commit,
            })
    return rows


def column_name(header: str) -> str:
    """open_clip's column header as a CSV column: lower case, letters and digits only (CIFAR-10 -> cifar10)."""
    return OC_RENAME.get(header) or re.sub(r"[^0-9a-z]", "", header.lower())


def openclip_rows(repo: GitRepo) -> tuple[list[dict], list[str]]:
    """Every (architecture, pretrained tag) row of open_clip's results table, columns renamed."""
    text = repo.show(OPENCLIP_TABLE)
    commit = repo.last_commit(OPENCLIP_TABLE)
    reader = csv.DictReader(io.StringIO(text))
    columns = [column_name(h) for h in reader.fieldnames or []]
    rows = []
    for raw in reader:
        row: dict = {}
        for header, value in raw.items():
            name = column_name(header)
            row[name] = value if name in ("model", "pretrained") else _number(value)
        row.update({"source": f"github.com/mlfoundations/open_clip {OPENCLIP_TABLE} @ {commit}",
                    "source_commit": commit, "read_commit": repo.commit})
        rows.append(row)
    datasets = [c for c in columns if c not in OC_FIXED]
    return rows, OC_FIXED + datasets + ["source", "source_commit", "read_commit"]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:g}" if abs(value) >= 1e-4 or value == 0 else repr(value)
    return str(value)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c, "")) for c in columns])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue())
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robustbench", required=True, help="RobustBench git clone or git directory")
    parser.add_argument("--open-clip", required=True, help="open_clip git clone or git directory")
    parser.add_argument("--robustbench-rev", default="HEAD", help="revision to read (default HEAD)")
    parser.add_argument("--open-clip-rev", default="HEAD", help="revision to read (default HEAD)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "kstar_utils" / "data"),
                        help="output folder (default: kstar_utils/data)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rb, oc = GitRepo(args.robustbench, args.robustbench_rev), GitRepo(args.open_clip, args.open_clip_rev)
    rb_rows = robustbench_rows(rb)
    oc_rows, oc_columns = openclip_rows(oc)
    write_csv(out / "robustbench_accuracy.csv", rb_rows, RB_COLUMNS)
    write_csv(out / "openclip_zeroshot.csv", oc_rows, oc_columns)
    counts = {f"{d}/{t}": sum(r["dataset"] == d and r["threat_model"] == t for r in rb_rows)
              for d, t in ROBUSTBENCH_BOARDS}
    record = {
        "generated_by": "scripts/generate_accuracy.py",
        "generated_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "robustbench": {"repository": "https://github.com/RobustBench/robustbench", "commit": rb.commit,
                        "commit_date": rb.date, "files": "model_info/<dataset>/<threat model>/*.json",
                        "rows": counts},
        "open_clip": {"repository": "https://github.com/mlfoundations/open_clip", "commit": oc.commit,
                      "commit_date": oc.date, "file": OPENCLIP_TABLE, "rows": len(oc_rows)},
    }
    (out / "accuracy_sources.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"robustbench @ {rb.commit[:12]}: {counts}; open_clip @ {oc.commit[:12]}: {len(oc_rows)} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
