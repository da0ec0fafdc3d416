"""kstar's downloader against a local HTTP server on 127.0.0.1: resume, retries, timeouts, refusals, messages."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kstar_utils.errors import DatasetNotFoundError, WeightsNotFoundError
from kstar_utils.sources import download
from kstar_utils.sources.download import deadline_seconds, download_file, gdrive_url

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file; behaviour set per server: ranges honoured or not, a first response cut short,
    an HTML page, a 404, a stall."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if server.mode == "404":
            self.send_error(404, "Not Found")
            return
        if server.mode == "html":
            body = b"<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and server.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        body = PAYLOAD[start:]
        if server.mode == "stall":
            self.wfile.write(body[:1000])
            self.wfile.flush()
            time.sleep(3)
            return
        if server.mode == "cut" and len(server.requests) == 1:
            self.wfile.write(body[: len(body) // 3])  # the connection drops a third of the way
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.mode, httpd.ranges, httpd.requests = "ok", True, []
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _url(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/file"


def test_download_with_hash_check(server, tmp_path):
    prefix = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    path = download_file(_url(server), tmp_path / "w.pth", sha256_prefix=prefix, backoff=0)
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "w.pth.part").exists()


def test_a_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    server.mode = "cut"
    download_file(_url(server), tmp_path / "w.bin", backoff=0)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert len(server.requests) == 2 and server.requests[0][1] is None
    assert server.requests[1][1] == f"bytes={len(PAYLOAD) // 3}-"  # resumed where it stopped


def test_a_server_without_ranges_starts_over(server, tmp_path):
    server.mode, server.ranges = "cut", False
    download_file(_url(server), tmp_path / "w.bin", backoff=0)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD  # not the first third twice


def test_failure_names_the_url_the_file_and_the_folder(server, tmp_path):
    server.mode = "404"
    with pytest.raises(WeightsNotFoundError, match=rf"downloading {_url(server)} failed \(HTTP 404 Not Found\); "
                       rf"download it yourself and place it as w.pth in {tmp_path}\."):
        download_file(_url(server), tmp_path / "w.pth", what="torchvision weights X", backoff=0)
    assert len(server.requests) == 1  # a 404 is not retried


def test_an_html_page_is_refused(server, tmp_path):
    server.mode = "html"
    with pytest.raises(DatasetNotFoundError, match="HTML page, not the file"):
        download_file(_url(server), tmp_path / "a.tar.gz", error=DatasetNotFoundError, backoff=0)
    assert not (tmp_path / "a.tar.gz").exists() and not (tmp_path / "a.tar.gz.part").exists()


def test_a_hash_mismatch_is_refused(server, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not start with 00000000"):
        download_file(_url(server), tmp_path / "w.pth", sha256_prefix="00000000", backoff=0)
    assert not (tmp_path / "w.pth").exists()


def test_a_stalled_connection_times_out_and_is_retried(server, tmp_path):
    server.mode = "stall"
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match=r"failed \((TimeoutError|timeout).*a partial download is kept"):
        download_file(_url(server), tmp_path / "w.bin", stall_timeout=0.5, connect_timeout=0.5, retries=2,
                      backoff=0)
    assert time.monotonic() - start < 20 and len(server.requests) == 2


def test_deadline_is_sized_to_the_file():
    assert deadline_seconds(None) == 3600.0
    small, large = deadline_seconds(10 * 2**20), deadline_seconds(1100 * 2**20)  # a WRN-70-16 checkpoint
    assert small < 120 and large > 4000 and large == 15 + 1100 * 4 + 60
    assert "id=abc" in gdrive_url("abc") and "confirm=t" in gdrive_url("abc")


def test_retries_back_off(monkeypatch, tmp_path):
    sleeps = []
    monkeypatch.setattr(download.time, "sleep", sleeps.append)
    with pytest.raises(WeightsNotFoundError, match="ConnectionRefusedError|URLError"):
        download_file("http://127.0.0.1:9/nothing", tmp_path / "x", retries=3, backoff=1.0, connect_timeout=1)
    assert sleeps == [1.0, 2.0]
