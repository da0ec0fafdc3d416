"""One downloader for every file kstar fetches itself: weights (torchvision, RobustBench) and data-set archives.

Why not the libraries' own: torch hub and torchvision use one long-blocking request without resume, and RobustBench
wraps gdown in a 15-second socket timeout that cannot fetch a 1.1 GB checkpoint. :func:`download_file` instead

* gives up on a stalled connection after ``stall_timeout`` seconds without a byte, and on the whole transfer after a
  deadline sized to the file (``connect_timeout`` + size / ``min_rate`` + a minute, from Content-Length);
* retries ``retries`` times with back-off, resuming a partial file (``<dest>.part``) with an HTTP Range request where
  the server honours it (206), starting over where it does not (200);
* refuses an HTML page where a binary file was expected (Google Drive's quota and confirmation pages) and checks a
  SHA-256 prefix when one is known;
* moves the finished file into place atomically, and on failure raises ``error`` (a KStarError class) naming the URL,
  the file to place and the folder to place it in.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import KStarError, WeightsNotFoundError

CHUNK = 1 << 20
HTML_MARKERS = (b"<!doctype html", b"<html")
USER_AGENT = "kstar-utils (https://github.com/; urllib)"


class _Fatal(Exception):
    """A failure that another attempt cannot fix (HTTP 404, an HTML page, a hash mismatch)."""


def deadline_seconds(size: int | None, connect_timeout: float = 15.0, min_rate: float = 256 * 1024) -> float:
    """Time allowed for one attempt at a file of ``size`` bytes: connection, size at ``min_rate`` bytes/s, a minute.

    An unknown size gets an hour; the stall timeout still ends a dead connection much sooner.
    """
    if not size:
        return 3600.0
    return connect_timeout + size / min_rate + 60.0


def gdrive_url(file_id: str) -> str:
    """The direct download URL of a public Google Drive file (skips the virus-scan confirmation page)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _total_size(response: http.client.HTTPResponse, have: int) -> int | None:
    rng = response.headers.get("Content-Range")
    if rng:
        match = re.search(r"/(\d+)\s*$", rng)
        if match:
            return int(match.group(1))
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (have if response.status == 206 else 0)


def _attempt(url: str, part: Path, connect_timeout: float, stall_timeout: float, min_rate: float, progress: bool,
             expected_size: int | None) -> None:
    """One try: resume ``part`` from its current size (Range) or start it over, until the server's end."""
    have = part.stat().st_size if part.exists() else 0
    if expected_size and have >= expected_size:
        return
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=max(connect_timeout, stall_timeout))
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the range starts at the end: the part file is complete
            return
        if err.code in (408, 425, 429) or err.code >= 500:
            raise
        raise _Fatal(f"HTTP {err.code} {err.reason}") from err
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range header: start over
        total = _total_size(response, have) or expected_size
        deadline = time.monotonic() + deadline_seconds(total, connect_timeout, min_rate)
        first = True
        with part.open("ab" if have else "wb") as out:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                if first and not have and block.lstrip()[:64].lower().startswith(HTML_MARKERS):
                    raise _Fatal("the server answered with an HTML page, not the file (for Google Drive: a quota or "
                                 "confirmation page)")
                first = False
                out.write(block)
                have += len(block)
                if progress:
                    print(f"\r{part.name}: {have / 2**20:.1f} MiB" + (f" of {total / 2**20:.1f}" if total else ""),
                          end="", file=sys.stderr)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"slower than {min_rate / 1024:.0f} KiB/s: over the "
                                       f"{deadline_seconds(total, connect_timeout, min_rate):.0f} s allowed for "
                                       f"{(total or 0) / 2**20:.0f} MiB")
        if progress:
            print(file=sys.stderr)
        if total is not None and have < total:
            raise http.client.IncompleteRead(b"", total - have)


def download_file(url: str, dest: str | os.PathLike, *, sha256_prefix: str | None = None,
                  expected_size: int | None = None, retries: int = 3, connect_timeout: float = 15.0,
                  stall_timeout: float = 60.0, min_rate: float = 256 * 1024, backoff: float = 2.0,
                  progress: bool = False, what: str = "file",
                  error: type[KStarError] = WeightsNotFoundError) -> Path:
    """Download ``url`` to ``dest`` (atomically), resuming and retrying; see the module docstring.

    Returns ``dest``. Raises ``error`` with one line naming the URL and where to place the file by hand.
    """
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    cause = "no attempt made"
    attempts = max(1, int(retries))
    for attempt in range(attempts):
        try:
            _attempt(url, part, connect_timeout, stall_timeout, min_rate, progress, expected_size)
            if sha256_prefix:
                digest = hashlib.sha256()
                with part.open("rb") as handle:
                    for block in iter(lambda: handle.read(CHUNK), b""):
                        digest.update(block)
                if not digest.hexdigest().startswith(sha256_prefix):
                    part.unlink(missing_ok=True)
                    raise _Fatal(f"its SHA-256 {digest.hexdigest()[:16]}... does not start with {sha256_prefix}")
            os.replace(part, target)
            return target
        except _Fatal as err:
            cause = str(err)
            part.unlink(missing_ok=True)
            break
        except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as err:
            cause = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
            if attempt + 1 < attempts:
                time.sleep(backoff * 2 ** attempt)
    raise error(
        f"{what}: downloading {url} failed ({cause}); download it yourself and place it as {target.name} in "
        f"{target.parent}" + (f" (a partial download is kept as {part.name})" if part.exists() else "") + "."
    )
