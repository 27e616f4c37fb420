"""tarmap side by side with GNU parallel, a bash loop and itself on Dask, in one run.

    .venv/bin/pytest tests/bench/test_bench_tarmap.py --benchmark-enable -p no:cacheprovider -s

148 small shards (200 samples each, the issue's size; ``TARPROC_BENCH_TARMAP_SHARDS``
changes it for a quick look, and the figures then say so), built once on /dev/shm.
Each comparison runs its peer in the benchmark's (untimed) setup before each
round of tarmap, so the two alternate round by round under the same load.
Every figure is printed with its target, with the wall time (best of the
rounds) and the CPU time of the whole process tree (``wait4(2)``), which
another engineer's load inflates much less than the wall time:

- tarmap's own overhead per task: pipeline ``cat``, ``-j 1``, beside a bash
  loop running ``bash -c cat`` per shard; (tarmap - loop) / tasks, tarmap's
  start-up included. Target: <= 30 ms.
- pipeline ``tarproc -c true -o -``: ``tarmap -j 2`` vs GNU ``parallel -j2``
  running the same pipeline per shard (``parallel`` is installed from Debian
  when we are root, else that benchmark skips saying why). Target: <= 1.1x.
- ``--dask local:2`` vs the local pool ``-j 2`` on the same tasks. Target:
  <= 1.2x, with the LocalCluster's start-up inside the timing (it is what the
  user waits for); beside it ``--dask tcp://...`` on an already running
  cluster of two single-threaded workers, start-up outside.

The figures land in ``extra_info`` too (``--benchmark-json``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import BIN, tool_env  # noqa: E402
from makeshards import write_shard  # noqa: E402

N_SHARDS = int(os.environ.get("TARPROC_BENCH_TARMAP_SHARDS", "148"))
SAMPLES = 200
PIPELINE = "tarproc -c true -o -"
ROUNDS = int(os.environ.get("TARPROC_BENCH_TARMAP_ROUNDS", "2"))


@pytest.fixture(scope="module")
def scratch():
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="tarproc-bench-tarmap-", dir=base)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shards(scratch) -> list[str]:
    root = scratch / "in"
    return [write_shard(str(root / f"train-{i:04d}.tar"), SAMPLES, seed=i, size=(32, 24), distinct=4)
            for i in range(N_SHARDS)]


@pytest.fixture(scope="module")
def gnu_parallel() -> str:
    found = shutil.which("parallel")
    if found is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "parallel"], capture_output=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("parallel")
    if found is None:
        pytest.skip("GNU parallel is not installed and could not be installed (apt-get install parallel needs root)")
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    if "GNU parallel" not in version:
        pytest.skip(f"{found} is not GNU parallel (moreutils' parallel takes other options)")
    return found


class Runs:
    """Wall and whole-tree CPU seconds of each run of one command."""

    def __init__(self, name: str, args: list[str], out: Path):
        self.name, self.args, self.out = name, args, out
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.loads: list[float] = []  # the 1-minute load average as each run ended

    def fresh(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)

    def __call__(self) -> None:
        started = time.perf_counter()
        proc = subprocess.Popen(self.args, env=tool_env(), stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # the CPU of every process of the run, reaped below it
        self.wall.append(time.perf_counter() - started)
        self.cpu.append(usage.ru_utime + usage.ru_stime)
        self.loads.append(os.getloadavg()[0])
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, f"{self.name} exited with {proc.returncode}"

    def best(self) -> tuple[float, float]:
        return min(self.wall), min(self.cpu)

    def line(self) -> str:
        wall, cpu = self.best()
        rounds = ", ".join(f"{w:.2f} s at load {load:.1f}" for w, load in zip(self.wall, self.loads))
        return f"{self.name}: {wall:.2f} s (CPU {cpu:.2f} s; rounds: {rounds})"


def beside(benchmark, ours: Runs, peers: list[Runs], rounds: int = ROUNDS) -> list[float]:
    """Benchmark ``ours``; before each of its rounds run every peer (untimed
    by pytest-benchmark, timed here). Returns the load averages seen."""
    loads = [os.getloadavg()[0]]

    def setup():
        for peer in peers:
            peer.fresh()
            peer()
        ours.fresh()

    benchmark.pedantic(ours, setup=setup, rounds=rounds)
    loads.append(os.getloadavg()[0])
    benchmark.extra_info.update(tasks=N_SHARDS, samples_per_task=SAMPLES, loadavg_1min=loads)
    for runs in [ours, *peers]:
        benchmark.extra_info[f"{runs.name} wall_s"], benchmark.extra_info[f"{runs.name} cpu_s"] = runs.best()
    return loads


def report(title: str, lines: list[str], loads: list[float]) -> None:
    size = f"{N_SHARDS} tasks of {SAMPLES} samples" + ("" if N_SHARDS == 148 else " (the targets are for 148)")
    print(f"\n[tarmap bench] {title}; {size}; load average {loads[0]:.1f} -> {loads[-1]:.1f} on"
          f" {os.cpu_count()} CPUs")
    for text in lines:
        print(f"[tarmap bench]   {text}")


def verdict(value: float, limit: float) -> str:
    return "meets the target" if value <= limit else "MISSES the target"


def tarmap_args(shards, out: Path, pipeline: str, *extra) -> list[str]:
    return [str(BIN / "tarmap"), *shards, "-o", f"{out}/{{stem}}.tar", "-c", pipeline, "--halt-after", "0", *extra]


def test_tarmap_overhead_per_task_beside_a_bash_loop(benchmark, shards, scratch):
    ours = Runs("tarmap -j 1 -c cat", tarmap_args(shards, scratch / "out-cat", "cat", "-j", "1"), scratch / "out-cat")
    loop_out = scratch / "out-loop"
    script = f'for f in "$@"; do b=${{f##*/}}; bash -c cat < "$f" > {loop_out}/"$b"; done'
    loop = Runs("bash loop of bash -c cat", ["bash", "-c", script, "loop", *shards], loop_out)
    loads = beside(benchmark, ours, [loop], rounds=max(3, ROUNDS))
    wall = (ours.best()[0] - loop.best()[0]) / N_SHARDS * 1000
    cpu = (ours.best()[1] - loop.best()[1]) / N_SHARDS * 1000
    benchmark.extra_info.update(overhead_ms_per_task=wall, overhead_cpu_ms_per_task=cpu)
    report("tarmap's own cost per task", [
        ours.line(), loop.line(),
        f"overhead per task: {wall:.1f} ms wall (target <= 30 ms: {verdict(wall, 30)}); {cpu:.1f} ms CPU",
    ], loads)


def test_tarmap_j2_beside_gnu_parallel_j2(benchmark, shards, scratch, gnu_parallel):
    ours = Runs("tarmap -j 2", tarmap_args(shards, scratch / "out-tarmap", PIPELINE, "-j", "2"), scratch / "out-tarmap")
    par_out = scratch / "out-parallel"
    peer = Runs("GNU parallel -j2", [gnu_parallel, "-j2", "--halt", "never", f"{PIPELINE} < {{}} > {par_out}/{{/.}}.tar",
                                     ":::", *shards], par_out)
    loads = beside(benchmark, ours, [peer])
    ratio = ours.best()[0] / peer.best()[0]
    benchmark.extra_info["tarmap_over_parallel"] = ratio
    report(f"pipeline {PIPELINE!r}", [
        ours.line(), peer.line(),
        f"tarmap -j 2 / GNU parallel -j2: {ratio:.3f}x wall (target <= 1.1x: {verdict(ratio, 1.1)});"
        f" {ours.best()[1] / peer.best()[1]:.3f}x CPU",
    ], loads)


def test_tarmap_dask_local_2_beside_the_local_pool(benchmark, shards, scratch, tmp_path_factory):
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    from daskcluster import DaskCluster

    local = Runs("tarmap -j 2", tarmap_args(shards, scratch / "out-pool", PIPELINE, "-j", "2"), scratch / "out-pool")
    ours = Runs("tarmap --dask local:2", tarmap_args(shards, scratch / "out-dask", PIPELINE, "--dask", "local:2"),
                scratch / "out-dask")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask") / "cluster.log")  # started outside the timing
    try:
        cluster.ensure_workers()
        running = Runs("tarmap --dask tcp:// (2 running workers)",
                       tarmap_args(shards, scratch / "out-tcp", PIPELINE, "--dask", cluster.address),
                       scratch / "out-tcp")
        loads = beside(benchmark, ours, [local, running])
    finally:
        cluster.stop()
    ratio = ours.best()[0] / local.best()[0]
    warm = running.best()[0] / local.best()[0]
    benchmark.extra_info.update(dask_over_local_pool=ratio, running_cluster_over_local_pool=warm)
    report("--dask beside the local pool", [
        ours.line() + " (LocalCluster start-up inside the timing)", running.line() + " (start-up outside)",
        local.line(),
        f"--dask local:2 / -j 2: {ratio:.3f}x wall (target <= 1.2x: {verdict(ratio, 1.2)})",
        f"--dask on a running cluster / -j 2: {warm:.3f}x wall (start-up excluded; same target: {verdict(warm, 1.2)})",
    ], loads)
