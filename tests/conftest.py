"""Shared fixtures: deterministic shards in tmp_path, tool runners, testdata."""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
SHARED_TESTDATA = REPO.parent / "shared" / "testdata"

sys.path.insert(0, str(HERE))

from makeshards import write_shard  # noqa: E402


@functools.lru_cache(maxsize=1)
def imagemagick_dir() -> str | None:
    """A directory whose ``convert`` is ImageMagick (installed by
    ``.ci/imagemagick`` when possible), or None."""
    try:
        out = subprocess.run([str(REPO / ".ci" / "imagemagick")], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = out.stdout.strip()
    return os.path.dirname(path) if out.returncode == 0 and path else None


def tool_env(extra_path: str | None = None) -> dict:
    """Environment for running tools as subprocesses: the venv's bin first."""
    env = dict(os.environ)
    parts = [str(BIN)]
    if extra_path:
        parts.insert(0, extra_path)
    env["PATH"] = os.pathsep.join(parts + [env.get("PATH", "")])
    env.pop("TARPROC_DEBUG", None)
    return env


def run(cmd, *, input: bytes | None = None, cwd=None, env=None, timeout: float = 120, shell: bool = False):
    """Run a tool (list) or a shell pipeline (str, with shell=True) and
    return the CompletedProcess with bytes stdout/stderr."""
    return subprocess.run(
        cmd,
        input=input,
        cwd=cwd,
        env=env or tool_env(),
        capture_output=True,
        timeout=timeout,
        shell=shell,
        executable="/bin/bash" if shell else None,
    )


def tar_members(data: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of every regular member, read with the stdlib tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isreg()]


@pytest.fixture(scope="session")
def imagenet_shard(tmp_path_factory) -> Path:
    """A 40-sample ImageNet-like shard: real JPEG + cls + json."""
    path = tmp_path_factory.mktemp("shards") / "imagenet-0000.tar"
    return Path(write_shard(str(path), 40))


@pytest.fixture(scope="session")
def imagenet_shard_gz(tmp_path_factory) -> Path:
    """The same kind of shard, gzip-compressed."""
    path = tmp_path_factory.mktemp("shards") / "imagenet-0000.tgz"
    return Path(write_shard(str(path), 40))


@pytest.fixture(scope="session")
def convert_dir() -> str:
    """A PATH entry with ImageMagick's convert; skips when it cannot be had."""
    found = imagemagick_dir()
    if not found:
        pytest.skip("ImageMagick is not installed and could not be installed (apt-get install imagemagick)")
    return found


@pytest.fixture
def testdata() -> Path:
    """../shared/testdata (shards written by webdataset and the original tarproc)."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip("../shared/testdata is absent")
    return SHARED_TESTDATA


# servers shared by the whole session (one moto S3 server, one Dask cluster): registered here, once,
# so that modules using them do not each start their own (a fixture imported into two modules is two)
from daskcluster import _dask_session, dask_cluster, share_nothing_cluster  # noqa: E402,F401
from s3server import s3_server  # noqa: E402,F401
from slurmcluster import slurm  # noqa: E402,F401
from container import gm_env, tarproc_image  # noqa: E402,F401


class FifoReader:
    """A named pipe at ``path`` drained by a thread (a stand-in for
    ``/dev/null`` or a device: a path that exists and is not a regular file).
    :meth:`finish` closes our own write end and returns every byte read."""

    def __init__(self, path: Path):
        import threading

        os.mkfifo(path)
        self.path = path
        self.read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.keep_fd = os.open(path, os.O_WRONLY)  # no EOF before finish(), however many writers come and go
        self.data = bytearray()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        import select

        while True:
            select.select([self.read_fd], [], [], 1.0)
            try:
                chunk = os.read(self.read_fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                return
            self.data += chunk

    def finish(self) -> bytes:
        os.close(self.keep_fd)
        self.thread.join(10)
        os.close(self.read_fd)
        return bytes(self.data)
