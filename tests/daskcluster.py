"""A real Dask cluster for tests: a ``dask scheduler`` and single-threaded
``dask worker`` processes on 127.0.0.1, started and stopped by the fixture
(registered in conftest.py, so one cluster serves the whole session).

Workers run without a nanny, so a worker a test kills stays dead: before
each test the ``dask_cluster`` fixture replaces the workers that died and
waits until the scheduler knows exactly the live ones. Tests get::

    def test_x(dask_cluster):
        address, workers = dask_cluster     # tcp://127.0.0.1:PORT, [Popen, Popen]
        os.kill(workers[0].pid, signal.SIGKILL)   # allowed: it is replaced for the next test
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, tool_env

WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """A scheduler and :data:`WORKERS` workers; :meth:`ensure_workers`
    replaces dead ones, :meth:`stop` ends all of them."""

    def __init__(self, log: Path):
        self.dask = str(BIN / "dask")
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self._log = open(log, "wb")
        self.scheduler = self._start([self.dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard", "--dashboard-address", "127.0.0.1:0"])
        self.workers: list[subprocess.Popen] = []
        self.started = 0  # workers started so far (each has a name of its own)

    def _start(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(argv, env=tool_env(), stdout=self._log, stderr=self._log, start_new_session=True)

    def ensure_workers(self, timeout: float = 60) -> list[subprocess.Popen]:
        """Start a worker for each one that died; return the live workers once
        the scheduler lists exactly them (by pid)."""
        from distributed import Client

        alive = [w for w in self.workers if w.poll() is None]
        while len(alive) < WORKERS:
            self.started += 1
            name = f"test-worker-{self.started}"
            worker = self._start([self.dask, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                                  "--no-nanny", "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--name", name])
            worker.name = name
            alive.append(worker)
        self.workers = alive
        want = {w.name for w in alive}
        with Client(self.address, timeout=timeout) as client:
            deadline = time.monotonic() + timeout
            while True:
                names = {w.get("name") for w in client.scheduler_info()["workers"].values()}
                if names == want:
                    break
                if any(w.poll() is not None for w in alive) or time.monotonic() > deadline:
                    raise RuntimeError(f"dask workers did not start (the scheduler lists {names}, want {want})")
                time.sleep(0.05)
        return list(alive)

    def stop(self) -> None:
        procs = [*self.workers, self.scheduler]
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # a graceful close takes well under a second
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._log.write(f"daskcluster: {proc.args[:2]} (pid {proc.pid}) ignored SIGTERM for 5 s: SIGKILL\n".encode())
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def _dask_session(tmp_path_factory):
    pytest.importorskip("distributed", reason="dask.distributed (the [dask] extra, in the test extra) is not installed")
    if not os.path.exists(BIN / "dask"):
        pytest.skip("the `dask` command of distributed is not installed")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask") / "cluster.log")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def dask_cluster(_dask_session) -> tuple[str, list[subprocess.Popen]]:
    """``(address, [worker Popen, ...])``: the session's cluster with
    :data:`WORKERS` live workers (a test may kill them)."""
    return _dask_session.address, _dask_session.ensure_workers()
