"""The report folder is the tool's own: it replaces only files it wrote and publishes a report whole or not at all.

``OUT/.kstar-report.json`` lists every file the last report wrote (with its SHA-256). A new report is built in a
staging folder inside ``OUT`` (same file system, so moving is a rename); only when every page succeeded are its files
moved into place, the previous report's files that the new one no longer has are removed, and the list is rewritten.
A failed run removes its staging folder and leaves the previous report as it was. A folder holding files the tool
did not write is refused unless ``force=True``; even then no foreign file is ever deleted (one whose name the new
report uses is replaced, which is what ``force`` accepts). A link inside the folder is refused even with ``force``:
the report would be written through it, outside the folder. A sub-folder holding its own manifest is another report
(``reports/fashion`` beside the default report in ``reports``) and is left to it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ReportFolderError
from ..plumbing import sha256_file, write_json

MANIFEST = ".kstar-report.json"
STAGING_PREFIX = ".kstar-staging-"
STAGING_MARK = ".kstar-staging"
LOCK = ".kstar-report.lock"


class ReportFolder:
    """The output folder of ``kstar report``."""

    def __init__(self, out: str | os.PathLike, force: bool = False):
        self.out = Path(out).resolve()
        self.force = force

    @property
    def manifest_path(self) -> Path:
        return self.out / MANIFEST

    def owned(self) -> dict[str, str]:
        """Relative path -> SHA-256 of every file the last report wrote. The list is read from disk, so it is checked
        like any input: an entry that is absolute or climbs out of the folder ("..") is refused, never followed."""
        try:
            files = dict(json.loads(self.manifest_path.read_text())["files"])
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError):
            raise ReportFolderError(f"{self.manifest_path} is damaged; delete it (and the pages it listed) or choose "
                                    "another --out folder.") from None
        outside = [rel for rel in files if not _inside(rel)]
        if outside:
            raise ReportFolderError(f"{self.manifest_path} lists paths outside its folder ({', '.join(outside[:3])}); "
                                    "kstar never writes such a list: delete it, or choose another --out folder.")
        return files

    def _stale_staging(self) -> list[Path]:
        return [p for p in self.out.glob(f"{STAGING_PREFIX}*") if p.is_dir() and (p / STAGING_MARK).exists()]

    def _nested_reports(self) -> set[Path]:
        """Sub-folders that are report folders of their own (they hold a manifest): e.g. ``reports/fashion`` inside
        ``reports``. Each one is its own report's business, never foreign to this one."""
        return {p.parent for p in self.out.rglob(MANIFEST) if p.parent != self.out}

    def foreign_files(self) -> list[str]:
        """Files in the folder that no report of this tool wrote (nested report folders are not looked into)."""
        owned = set(self.owned())
        skip = set(self._stale_staging()) | self._nested_reports()
        found = []
        for path in sorted(self.out.rglob("*")):
            if any(s in path.parents for s in skip):
                continue
            if path.is_symlink():  # never the tool's: it writes regular files only
                found.append(path.relative_to(self.out).as_posix())
                continue
            if path.is_dir() or path.name in (MANIFEST, LOCK):
                continue
            rel = path.relative_to(self.out).as_posix()
            if rel not in owned:
                found.append(rel)
        return found

    def check(self) -> None:
        """Refuse a folder that is a file, is not writable, or holds foreign files (unless ``force``)."""
        if self.out.exists() and not self.out.is_dir():
            raise ReportFolderError(f"--out {self.out} is a file; give a folder.")
        parent = self.out if self.out.exists() else next((p for p in self.out.parents if p.exists()), self.out)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ReportFolderError(f"--out {self.out}: {parent} is not writable; choose a folder you can write.")
        if not self.out.exists():
            return
        foreign = self.foreign_files()
        links = [rel for rel in foreign if (self.out / rel).is_symlink()]
        if links:  # even with force: writing there would write through the link, outside this folder
            raise ReportFolderError(f"--out {self.out} holds links ({', '.join(links[:3])}); kstar does not write "
                                    "through links or replace them: remove them, or choose another folder.")
        if foreign and not self.force:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ReportFolderError(f"--out {self.out} holds files kstar did not write ({shown}); choose an empty "
                                    "or new folder, or pass --force to write beside them (they are never deleted).")

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh staging folder; on success its files are published, on any failure it is removed."""
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self._stale_staging():  # left by a killed run: ours by name and mark
            shutil.rmtree(stale, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))
        (stage / STAGING_MARK).write_text("kstar report staging folder; safe to delete when no report is running\n")
        try:
            yield stage
            from filelock import FileLock

            with FileLock(str(self.out / LOCK)):  # two runs publishing into one folder take turns
                self.publish(stage)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def publish(self, stage: Path) -> list[str]:
        """Move every file of ``stage`` into the folder, drop the previous report's files the new one lacks."""
        old = self.owned()
        files: dict[str, str] = {}
        moves = [(path, path.relative_to(stage).as_posix()) for path in sorted(stage.rglob("*"))
                 if not path.is_dir() and path.name != STAGING_MARK]
        for _, rel in moves:  # all checked before anything moves: a refused report publishes nothing
            _refuse_links(self.out, self.out / rel)
        for path, rel in moves:
            target = self.out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            files[rel] = sha256_file(path)
            os.replace(path, target)
        for rel in set(old) - set(files):
            target = self.out / rel
            if not _unchanged(target, self.out, old[rel]):
                continue  # edited (or replaced) since kstar wrote it: not the tool's file any more, so it stays
            target.unlink()
            for parent in target.parents:
                if parent == self.out or not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
        write_json(self.manifest_path, {"tool": "kstar_utils", "files": files,
                                        "published": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        return sorted(files)


def _refuse_links(out: Path, target: Path) -> None:
    """Raise if ``target`` or a folder between ``out`` and it is a link (one made while the report ran): the report
    would be written through it, outside ``out``."""
    for path in (target, *target.parents):
        if path == out:
            return
        if path.is_symlink():
            raise ReportFolderError(f"--out {out}: {path.relative_to(out)} became a link while the report ran; kstar "
                                    "does not write through links. Nothing was published: remove it and run again.")


def _inside(rel: str) -> bool:
    """A manifest entry names a file inside the folder: relative, no "..", no drive or root."""
    path = Path(rel)
    return bool(rel) and not path.is_absolute() and not path.drive and ".." not in path.parts


def _unchanged(target: Path, out: Path, sha: str) -> bool:
    """The file kstar wrote is still there as written: a regular file (not a link), inside ``out`` once every link on
    the way is followed, with the SHA-256 the manifest recorded."""
    if target.is_symlink() or not target.is_file():
        return False
    if out not in target.resolve().parents:
        return False
    return sha256_file(target) == sha
