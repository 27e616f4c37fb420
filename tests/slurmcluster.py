"""A real one-node Slurm cluster for tests: ``slurmctld`` and ``slurmd``
(Debian ``slurm-wlm``, installed by ``.ci/slurm`` when root and missing)
on 127.0.0.1 with a port pair and a directory of their own, started in the
foreground without systemd, cgroups or munge (``AuthType=auth/none``), and
stopped at the end of the session. Registered in conftest.py.

The node says ``CPUs=4`` (``SlurmdParameters=config_overrides`` lets it run
4 tasks on fewer cores) and the cluster's ``MaxArraySize`` is
:data:`MAX_ARRAY_SIZE` (small, to test runs with more tasks than an array
can hold). Tests get a :class:`Slurm` whose :meth:`Slurm.env` points the
client commands at it; poll with :meth:`Slurm.wait` (``squeue``; ``sbatch
--wait`` polls slowly: a 1 s job took ~10 s).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, tool_env

MAX_ARRAY_SIZE = 5
CPUS = 4

CONF = """\
ClusterName=tarproc
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
MaxArraySize={max_array}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _free_port_pair() -> tuple[int, int]:
    """Two free TCP ports on 127.0.0.1 (taken by the OS, released at once)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


class Slurm:
    """One controller and one node daemon; :meth:`stop` ends both."""

    def __init__(self, root: Path, max_array: int = MAX_ARRAY_SIZE):
        self.root = root
        for sub in ("state", "spool"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, d_port = _free_port_pair()
        self.conf = root / "slurm.conf"
        self.conf.write_text(CONF.format(ctld_port=ctld_port, d_port=d_port, dir=root, max_array=max_array,
                                         cpus=CPUS))
        self._log = open(root / "daemons.out", "wb")
        env = self.env()
        self.procs = [subprocess.Popen(argv, env=env, stdout=self._log, stderr=self._log, start_new_session=True)
                      for argv in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", "localhost"])]

    def env(self, **more: str) -> dict:
        """The tools' environment with ``SLURM_CONF`` naming this cluster."""
        return {**tool_env(), "SLURM_CONF": str(self.conf), **more}

    def cmd(self, *argv: str, input: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(list(argv), env=self.env(), input=input, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {proc.stderr}")
        return proc.stdout

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {self.log_tail()}")
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env(), capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Slurm node is not idle after {timeout} s: {state.stdout!r} {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.root.glob("*.log")))

    def submit(self, script: str, *options: str) -> str:
        """``sbatch --parsable [OPTIONS]`` with the script on stdin; the job id."""
        return self.cmd("sbatch", "--parsable", *options, input=script).strip().split(";")[0]

    def active(self, job: str) -> list[tuple[str, str]]:
        """``(job id, state)`` of the job's array tasks still known to squeue."""
        out = self.cmd("squeue", "-h", "-r", "-j", job, "-o", "%i %T", check=False)
        return [tuple(line.split()) for line in out.splitlines() if line.strip()]

    def wait(self, *jobs: str, timeout: float = 120) -> None:
        """Until no task of ``jobs`` is pending or running (polls squeue)."""
        deadline = time.monotonic() + timeout
        while any(self.active(job) for job in jobs):
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm jobs {jobs} not done after {timeout} s: {[self.active(j) for j in jobs]}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()


def _slurm_available() -> str | None:
    """None when slurmctld, slurmd and sbatch can be had, else why not."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("sbatch"):
        return None
    script = REPO / ".ci" / "slurm"
    result = subprocess.run([str(script)], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    return result.stderr.strip() or "Slurm is not available"


def started_cluster(tmp_path_factory, max_array: int = MAX_ARRAY_SIZE):
    """Yield a started one-node cluster (:class:`Slurm`) whose
    ``MaxArraySize`` is ``max_array``, stopped afterwards; skips, saying
    why, when Slurm cannot be had or we are not root."""
    why = _slurm_available()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster runs its daemons as root (SlurmUser=root, no munge)")
    cluster = Slurm(tmp_path_factory.mktemp("slurm"), max_array)
    try:
        cluster.wait_idle()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A started one-node cluster (:class:`Slurm`, ``MaxArraySize`` 5), per xdist worker."""
    yield from started_cluster(tmp_path_factory)
