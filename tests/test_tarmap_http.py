"""URL inputs over plain HTTP through the family's one reader
(:func:`tarproc.io.sources.open_url`): tarmap reads all of a shard larger than
fsspec's 5 MiB block from ``python -m http.server``, and a body cut short by
the server is an I/O error (exit status 1, retryable), never bad data (3)."""

from __future__ import annotations

import contextlib
import http.server
import random
import socket
import threading
from pathlib import Path

import pytest

from conftest import run
from test_interop import http_server

from tarproc.io.sinks import open_sink

PIPELINE = "tarproc -c 'rm sample.cls' -o -"
#: bytes of a shard: above fsspec's default block (5 MiB), where tarmap's old reader stopped
SHARD_BYTES = 8 << 20


def write_big_shard(path: Path, seed: int) -> Path:
    """A gzip shard of 8 samples of 1 MiB random bytes (8 MiB stored: random bytes do not compress)."""
    rng = random.Random(seed)
    with open_sink(str(path)) as sink:
        for i in range(SHARD_BYTES >> 20):
            sink.write({"__key__": f"s{seed}-{i:03d}", "bin": rng.randbytes(1 << 20), "cls": b"%d" % i})
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("www")
    for i in range(4):
        write_big_shard(root / f"train-{i:04d}.tgz", i)
    return root


def test_tarmap_reads_whole_http_shards_byte_identical_to_a_local_run(served, tmp_path):
    assert all(p.stat().st_size > 5 << 20 for p in served.glob("*.tgz"))
    local = run(["tarmap", str(served / "train-{0000..0003}.tgz"), "-o", f"{tmp_path}/local/{{stem}}.tar",
                 "-j", "2", "-c", PIPELINE])
    assert local.returncode == 0, local.stderr
    with http_server(served) as base:
        remote = run(["tarmap", f"{base}/train-{{0000..0003}}.tgz", "-o", f"{tmp_path}/ppm/{{stem}}.tar",
                      "-j", "2", "-c", PIPELINE])
        assert remote.returncode == 0, remote.stderr
        want = {p.name: p.read_bytes() for p in sorted((tmp_path / "local").glob("*.tar"))}
        got = {p.name: p.read_bytes() for p in sorted((tmp_path / "ppm").glob("*.tar"))}
        assert len(want) == 4 and got == want
        # complete now: a second run skips every task (the records name the URLs' size and mtime)
        again = run(["tarmap", f"{base}/train-{{0000..0003}}.tgz", "-o", f"{tmp_path}/ppm/{{stem}}.tar",
                     "-c", PIPELINE, "-v"])
        assert again.returncode == 0, again.stderr
        assert b"0 tasks done, 4 skipped" in again.stderr


class _CutShort(http.server.BaseHTTPRequestHandler):
    """Announces the whole body (Content-Length), sends ``sent`` bytes of it
    and closes the connection."""

    body = b""
    sent = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: self.sent])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def cut_short_server(body: bytes, sent: int):
    _CutShort.body, _CutShort.sent = body, sent
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutShort)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/train-0000.tgz"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("tool", ["tarmap", "tarcats"])
def test_a_body_cut_short_is_an_io_error_not_bad_data(tool, served, tmp_path):
    body = (served / "train-0000.tgz").read_bytes()
    sent = 3 << 20
    with cut_short_server(body, sent) as url:
        if tool == "tarmap":
            out = run(["tarmap", url, "-o", f"{tmp_path}/out/{{stem}}.tar", "-c", PIPELINE, "--retries", "0"])
        else:
            out = run(["tarcats", url, "-o", str(tmp_path / "out.tar")])
    stderr = out.stderr.decode()
    assert out.returncode == 1, stderr
    # the pipeline's tarproc saw a truncated gzip stream (its stderr is copied); the task's error names the cause
    error = next(line for line in stderr.splitlines() if line.startswith(f"{tool}: error: "))
    assert f"{url}: connection closed after {sent} of {len(body)} bytes" in error, stderr
    assert "permanently" not in stderr, stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no output, no record, no partial file
