"""The results store: where each task's result lives and how it is read back.

Layout of a store folder::

    done/<task key>.json       one per finished task, written once, atomically (temporary file + rename)
    failed/<task key>.json     the error and traceback of a task's last failed attempt (removed when it succeeds)
    features/<task key>/       features kept for Figure 2 (features.npy, labels.npy, classes.json, meta.json)

A result file is never rewritten: two runs sharing a store at most compute a task twice and the second rename
replaces identical content, so neither ever reads a half-written file. Aggregation reads only ``done/``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..plumbing import atomic_write_text, to_json

if TYPE_CHECKING:  # pragma: no cover
    from .tasks import Task


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def task_record(task: Task) -> dict:
    """What identifies a task in its result file (for readers; the key is what the store trusts)."""
    import dataclasses

    return {"key": task.key, "kind": task.kind, "model": dataclasses.asdict(task.model),
            "data": dataclasses.asdict(task.data) if task.data else None}


class ResultStore:
    """Read and write access to one store folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "done" / f"{key}.json"

    def failure_path(self, key: str) -> Path:
        return self.root / "failed" / f"{key}.json"

    def features_dir(self, key: str) -> Path:
        return self.root / "features" / key

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def write(self, task: Task, result: dict, seconds: float, host: str = "") -> Path:
        """Store ``task``'s result (atomically) and clear its failure record."""
        from .tasks import engine_versions

        record = {**task_record(task), "status": "done", "result": result, "seconds": round(seconds, 3),
                  "host": host, "created": _now(), "versions": engine_versions()}
        path = self.path(task.key)
        atomic_write_text(path, to_json(record, indent=None) + "\n")
        self.failure_path(task.key).unlink(missing_ok=True)
        return path

    def write_failure(self, task: Task, error: str, trace: str) -> Path:
        record = {**task_record(task), "status": "failed", "error": error, "traceback": trace, "created": _now()}
        path = self.failure_path(task.key)
        atomic_write_text(path, to_json(record) + "\n")
        return path

    def read(self, key: str) -> dict | None:
        """The finished record of ``key``, or None. A record that does not parse is treated as absent."""
        try:
            return json.loads(self.path(key).read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # a file that is not ours or was damaged on disk: recompute rather than trust it
            self.path(key).unlink(missing_ok=True)
            return None

    def failure(self, key: str) -> dict | None:
        try:
            return json.loads(self.failure_path(key).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def status(self, keys: list[str]) -> dict[str, Any]:
        """How many of ``keys`` are done, failed or missing."""
        done = [k for k in keys if self.has(k)]
        failed = [k for k in keys if k not in done and self.failure_path(k).is_file()]
        return {"done": len(done), "failed": len(failed), "missing": len(keys) - len(done) - len(failed)}
