"""A real S3 API server for tests: moto in server mode on 127.0.0.1.

``moto_server -H 127.0.0.1 -p PORT``, as s3fs's own tests use it, started and
stopped by the fixture. moto[server] lives in a virtual environment of its
own (``.venv-moto`` in the repository, or ``$TARPROC_MOTO_VENV``): installed
into the same venv as s3fs, pip's resolver can backtrack for many minutes
over the botocore pins. The fixture creates it on first use (pip from the
package index); when that fails the tests that need it skip, saying why.

The fixture is registered in conftest.py, so one server serves the whole
session (a fixture imported into several test modules would start one per
module). Use::

    def test_x(s3_server):
        s3_server.reset()                 # every bucket and object deleted
        fs = s3_server.fs()               # an s3fs file system on the server
        fs.mkdir("bucket")
        subprocess.run([...], env=s3_server.env())   # AWS_* for our tools
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("TARPROC_MOTO_VENV", REPO / ".venv-moto"))
MOTO_SPEC = "moto[server]>=5"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def moto_server() -> tuple[str | None, str]:
    """``(path of moto_server, "")``, installing it when needed, or
    ``(None, why not)``."""
    exe = VENV / "bin" / "moto_server"
    if exe.exists():
        return str(exe), ""
    # pytest-xdist workers may all get here at once: one installs, the others wait
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{VENV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():
            return str(exe), ""
        return _install(exe)


def _install(exe: Path) -> tuple[str | None, str]:
    try:
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=300)
        done = subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", MOTO_SPEC], capture_output=True,
                              timeout=900, text=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot create the moto venv {VENV}: {exc}"
    if done.returncode != 0 or not exe.exists():
        return None, f"cannot install {MOTO_SPEC} into {VENV}: {done.stderr.strip()[-300:]}"
    return str(exe), ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """A running moto server; :meth:`stop` ends it."""

    def __init__(self, exe: str, log: Path):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start (see {log})") from None
                time.sleep(0.1)

    def env(self, base: dict | None = None) -> dict:
        """An environment pointing botocore (and so s3fs) at the server."""
        env = dict(os.environ if base is None else base)
        env.update(CREDENTIALS)
        env["AWS_ENDPOINT_URL"] = self.endpoint
        env["AWS_ENDPOINT_URL_S3"] = self.endpoint
        return env

    def storage_options(self) -> dict:
        return {"endpoint_url": self.endpoint, "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}

    def fs(self):
        """A fresh (uncached) s3fs file system on the server."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **self.storage_options())

    def reset(self) -> None:
        """Delete every bucket and object (moto's reset API)."""
        urllib.request.urlopen(urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST"),
                               timeout=10).close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 for the session (reset before each
    user: call ``s3_server.reset()``); skips when moto or s3fs cannot be had."""
    pytest.importorskip("s3fs", reason="s3fs (the [cloud] extra, in the test extra) is not installed")
    exe, why = moto_server()
    if exe is None:
        pytest.skip(why)
    server = S3Server(exe, tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()
