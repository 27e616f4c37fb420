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
import sys
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


# ---------------------------------------------------------------------------
# Workers that share nothing: each in its own network namespace (its own
# address on a private link) and mount namespace (a tmpfs on /tmp, its own
# working directory and host name). The private link is a bridge in a "hub"
# namespace, with a veth pair to each worker's namespace: interfaces and
# addresses that exist in those namespaces only, nothing in this machine's
# own network. The hub holds the scheduler, an S3 server (moto) and the
# client: tools the tests run with ``cluster.client_argv(...)`` (``ip netns
# exec HUB ...``, which keeps this machine's files, so the client sees the
# test's tmp_path and the workers do not).

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def share_nothing_missing() -> str:
    """Why workers that share nothing cannot be had here ("" when they can)."""
    import shutil

    if os.geteuid() != 0:
        return "network and mount namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux)"
    probe = f"tpprobe{os.getpid()}"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"ip netns add fails here: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


class ShareNothingCluster:
    """A scheduler, an S3 server and :data:`WORKERS` workers in namespaces
    of their own (see above); :meth:`stop` ends the processes and deletes
    the namespaces, whatever state the start reached."""

    def __init__(self, log: Path, moto_server: str, workers: int = WORKERS):
        tag = f"tp{os.getpid() % 100000}"
        self.hub = f"{tag}-hub"
        self.worker_ns = [f"{tag}-w{i}" for i in range(workers)]
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._log = open(log, "wb")
        # 10.X.Y.0/24 chosen by pid: private, and only inside these namespaces
        net = f"10.{200 + os.getpid() % 50}.{os.getpid() // 50 % 250}"
        self.host = f"{net}.1"
        self.address = f"tcp://{self.host}:8786"
        self.endpoint = f"http://{self.host}:5000"
        try:
            self._link(net)
            self.moto = self._start([*self.exec_hub(), moto_server, "-H", self.host, "-p", "5000"])
            self.scheduler = self._start([*self.exec_hub(), str(BIN / "dask"), "scheduler", "--host", self.host,
                                          "--port", "8786", "--no-dashboard", "--dashboard-address", f"{self.host}:0"])
            self.workers = [self._start_worker(i, f"{net}.{10 + i}") for i in range(workers)]
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def exec_hub(self) -> list[str]:
        return ["ip", "netns", "exec", self.hub]

    def _link(self, net: str) -> None:
        for ns in [self.hub, *self.worker_ns]:
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{self.host}/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.worker_ns):
            _ip("-n", self.hub, "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.hub, "link", "set", f"veth{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{net}.{10 + i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def env(self, base: dict | None = None) -> dict:
        """The tools' environment (venv first) pointing botocore at the hub's S3 server."""
        from s3server import CREDENTIALS

        env = tool_env() if base is None else dict(base)
        env.update(CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint, AWS_ENDPOINT_URL_S3=self.endpoint)
        return env

    def _start(self, argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=self.env(), stdout=self._log, stderr=self._log, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _start_worker(self, i: int, address: str) -> subprocess.Popen:
        # a mount namespace of its own: /tmp a fresh tmpfs, the working directory in it, its own host name
        script = (f"mount -t tmpfs -o mode=1777 tmpfs /tmp && hostname worker-{i} && mkdir /tmp/work && cd /tmp/work"
                  f' && exec "$@"')
        return self._start(["ip", "netns", "exec", self.worker_ns[i], "unshare", "--mount", "--uts",
                            "--propagation", "private", "sh", "-c", script, "worker",
                            str(BIN / "dask"), "worker", self.address, "--host", address, "--nthreads", "1",
                            "--no-nanny", "--no-dashboard", "--dashboard-address", f"{address}:0",
                            "--local-directory", "/tmp/work", "--name", f"worker-{i}"])

    def _wait_ready(self, timeout: float = 60) -> None:
        """Until the S3 server answers and the scheduler lists every worker
        (asked from the hub: this process is not on the private link)."""
        check = ("import sys, time, urllib.request\n"
                 "from distributed import Client\n"
                 "deadline = time.monotonic() + float(sys.argv[3])\n"
                 "while True:\n"
                 "    try:\n"
                 "        urllib.request.urlopen(sys.argv[2] + '/', timeout=2).close(); break\n"
                 "    except OSError:\n"
                 "        if time.monotonic() > deadline: sys.exit('the S3 server did not start')\n"
                 "        time.sleep(0.1)\n"
                 "with Client(sys.argv[1], timeout=float(sys.argv[3])) as c:\n"
                 f"    c.wait_for_workers({len(self.worker_ns)}, timeout=float(sys.argv[3]))\n")
        done = subprocess.run([*self.exec_hub(), sys.executable, "-c", check, self.address, self.endpoint,
                               str(timeout)], capture_output=True, text=True, env=self.env(), timeout=timeout + 30)
        if done.returncode != 0:
            raise RuntimeError(f"the share-nothing cluster did not start: {done.stderr.strip()[-1000:]}")

    def s3(self, script: str, *args: str) -> str:
        """Run ``script`` (Python, with ``fs``, an s3fs file system on the
        hub's S3 server, and ``args``) in the hub; its stdout."""
        code = ("import sys, s3fs\nfs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)\n"
                "args = sys.argv[1:]\n" + script)
        done = subprocess.run([*self.exec_hub(), sys.executable, "-c", code, *args], capture_output=True, text=True,
                              env=self.env(), timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"s3 script failed: {done.stderr.strip()[-1000:]}")
        return done.stdout

    def in_worker(self, i: int, argv: list[str]) -> subprocess.CompletedProcess:
        """Run ``argv`` in worker ``i``'s namespaces (its /tmp, not a fresh one)."""
        pid = self.workers[i].pid
        # the worker's process: sh exec'd into dask; nsenter joins its mount, UTS and network namespaces
        return subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-n", *argv], capture_output=True,
                              timeout=60)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        self._log.close()


@pytest.fixture(scope="session")
def share_nothing_cluster(tmp_path_factory):
    """A :class:`ShareNothingCluster` for the session; skips, saying why,
    when namespaces, dask or moto cannot be had."""
    pytest.importorskip("distributed", reason="dask.distributed (the [dask] extra, in the test extra) is not installed")
    pytest.importorskip("s3fs", reason="s3fs (the [cloud] extra, in the test extra) is not installed")
    why = share_nothing_missing()
    if why:
        pytest.skip(why)
    from s3server import moto_server

    exe, why = moto_server()
    if exe is None:
        pytest.skip(why)
    cluster = ShareNothingCluster(tmp_path_factory.mktemp("dask-share-nothing") / "cluster.log", exe)
    try:
        yield cluster
    finally:
        cluster.stop()
