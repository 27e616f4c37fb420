"""Benchmarks of the per-sample executor, each beside its peer in the same run.

    make bench        # or: .venv/bin/pytest tests/bench/test_bench_tarproc.py --benchmark-enable

- ``tarproc -c true`` over N samples vs a bare loop spawning ``bash -c true``
  N times (from Python, and from bash), on $TMPDIR and on /dev/shm;
- ``-p 2`` vs ``-p 1`` on a CPU-bound command (output checked identical);
- peak memory of ``tarproc -p 2 -c true`` over a 1 GB shard: the largest
  process's RSS and the process tree's proportional set size (PSS, which
  counts the pages forked workers share once).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import tool_env  # noqa: E402
from makeshards import write_shard  # noqa: E402

N = 2000
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None
CPU_COMMAND = "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """An ImageNet-like shard of N samples (real JPEG + cls + json)."""
    base = Path(tempfile.mkdtemp(dir=SHM)) if SHM else tmp_path_factory.mktemp("bench")
    path = write_shard(str(base / "imagenet-2000.tar"), N, size=(500, 375))
    yield path
    os.unlink(path)


def _run(args, **kw):
    out = subprocess.run(args, env=tool_env(), capture_output=True, **kw)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return out


def test_tarproc_true_per_sample_tmpdir(benchmark, shard):
    benchmark.extra_info["samples"] = N
    benchmark.pedantic(_run, args=(["tarproc", "-c", "true", "-o", "/dev/null", shard],), rounds=3)


@pytest.mark.skipif(SHM is None, reason="no /dev/shm")
def test_tarproc_true_per_sample_shm(benchmark, shard):
    benchmark.extra_info["samples"] = N
    benchmark.pedantic(_run, args=(["tarproc", "-w", SHM, "-c", "true", "-o", "/dev/null", shard],), rounds=3)


def test_peer_python_loop_bash_true(benchmark):
    code = f"import subprocess\nfor _ in range({N}): subprocess.run(['bash', '-c', 'true'])"
    benchmark.extra_info["samples"] = N
    benchmark.pedantic(_run, args=([sys.executable, "-c", code],), rounds=3)


def test_peer_bash_loop_bash_true(benchmark):
    benchmark.extra_info["samples"] = N
    benchmark.pedantic(_run, args=(["bash", "-c", f"for i in $(seq {N}); do bash -c true; done"],), rounds=3)


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_cpu_bound_parallel(benchmark, shard, tmp_path, parallel):
    out = tmp_path / f"p{parallel}.tar"
    args = ["tarproc", "-p", parallel, "-c", CPU_COMMAND, "--count", "200", "-o", str(out), shard]
    benchmark.extra_info["samples"] = 200
    benchmark.pedantic(_run, args=(args,), rounds=2)
    reference = tmp_path / "reference.tar"
    if not reference.exists():
        _run(["tarproc", "-c", "true", "--count", "200", "-o", str(reference), shard])
    assert out.read_bytes() == reference.read_bytes()  # ordered, same bytes


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return pids


def _is_python(pid: int) -> bool:
    """True for tarproc's own processes (the pool workers), not the commands."""
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kib(pid: int, path: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_peak_memory_1gb_shard_parallel_2(benchmark, tmp_path_factory):
    base = Path(tempfile.mkdtemp(dir=SHM)) if SHM else tmp_path_factory.mktemp("big")
    big = base / "imagenet-1gb.tar"
    # ~110 kB JPEGs as in ImageNet; 9000 samples is about 1 GB
    write_shard(str(big), 9000, size=(540, 405), distinct=64)
    size = big.stat().st_size
    peaks = {"rss_kib": 0, "pss_kib": 0}

    def run_and_watch():
        proc = subprocess.Popen(["tarproc", "-p", "2", "-w", SHM or tempfile.gettempdir(), "-c", "true", "-o", "/dev/null", str(big)],
                                env=tool_env(), stderr=subprocess.PIPE)
        done = threading.Event()

        def watch():
            while not done.is_set():
                pids = [p for p in _tree(proc.pid) if p == proc.pid or _is_python(p)]
                rss = max((_kib(p, "status", "VmRSS:") for p in pids), default=0)
                pss = sum(_kib(p, "smaps_rollup", "Pss:") for p in pids)
                peaks["rss_kib"] = max(peaks["rss_kib"], rss)
                peaks["pss_kib"] = max(peaks["pss_kib"], pss)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        _, err = proc.communicate()
        done.set()
        watcher.join()
        assert proc.returncode == 0, err.decode()[-2000:]

    try:
        benchmark.pedantic(run_and_watch, rounds=1)
    finally:
        big.unlink()
    benchmark.extra_info.update(shard_bytes=size, peak_rss_mib=peaks["rss_kib"] / 1024, peak_tree_pss_mib=peaks["pss_kib"] / 1024)
    print(f"\n1 GB shard ({size / 1e9:.2f} GB), -p 2: largest process RSS {peaks['rss_kib'] / 1024:.1f} MiB,"
          f" tree PSS {peaks['pss_kib'] / 1024:.1f} MiB")
