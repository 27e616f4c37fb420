"""tarmap side by side with GNU parallel and with itself on Dask, in one run.

    .venv/bin/pytest tests/bench/test_bench_tarmap.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds -p no:cacheprovider -s

- 148 small shards (200 samples each), pipeline ``tarproc -c true -o -``:
  ``tarmap -j 2`` vs GNU ``parallel -j2`` running the same pipeline per
  shard (``parallel`` is installed from Debian when we are root, else that
  benchmark skips saying why). Target: tarmap within 1.1x.
- tarmap's own overhead per task: pipeline ``cat`` with ``-j 1`` vs a bash
  loop running ``cat`` per shard; ``extra_info["overhead_ms_per_task"]``.
  Target: <= 30 ms.
- ``--dask local:2`` vs the local pool ``-j 2`` on the same tasks (the
  cluster's start-up included). Target: within 1.2x.

Shards live under /dev/shm when it exists, built once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import BIN, tool_env  # noqa: E402
from makeshards import write_shard  # noqa: E402

N_SHARDS = int(os.environ.get("TARPROC_BENCH_TARMAP_SHARDS", "148"))
SAMPLES = 200
PIPELINE = "tarproc -c true -o -"
RESULTS: dict[str, float] = {}


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


def fresh(directory: Path):
    def setup():
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    return setup


def run(args, **kw) -> None:
    subprocess.run(args, check=True, env=tool_env(), stdout=subprocess.DEVNULL, **kw)


def tarmap_args(shards, out: Path, pipeline: str, *extra) -> list[str]:
    return [str(BIN / "tarmap"), *shards, "-o", f"{out}/{{stem}}.tar", "-c", pipeline, "--halt-after", "0", *extra]


def test_tarmap_j2(benchmark, shards, scratch):
    out = scratch / "out-tarmap"
    benchmark.extra_info.update(tasks=len(shards), samples_per_task=SAMPLES)
    benchmark.pedantic(run, args=(tarmap_args(shards, out, PIPELINE, "-j", "2"),), setup=fresh(out), rounds=2)
    RESULTS["tarmap -j 2"] = benchmark.stats.stats.min
    print(f"\ntarmap -j 2, {len(shards)} tasks: {RESULTS['tarmap -j 2']:.2f} s")


def test_peer_gnu_parallel_j2(benchmark, shards, scratch, gnu_parallel):
    out = scratch / "out-parallel"
    benchmark.extra_info.update(tasks=len(shards), samples_per_task=SAMPLES)
    args = [gnu_parallel, "-j2", "--halt", "never", f"{PIPELINE} < {{}} > {out}/{{/.}}.tar", ":::", *shards]
    benchmark.pedantic(run, args=(args,), setup=fresh(out), rounds=2)
    RESULTS["parallel -j2"] = benchmark.stats.stats.min
    print(f"\nGNU parallel -j2, {len(shards)} tasks: {RESULTS['parallel -j2']:.2f} s")
    if "tarmap -j 2" in RESULTS:
        benchmark.extra_info["tarmap_over_parallel"] = RESULTS["tarmap -j 2"] / RESULTS["parallel -j2"]


def test_tarmap_overhead_cat_j1(benchmark, shards, scratch):
    out = scratch / "out-cat"
    benchmark.extra_info.update(tasks=len(shards))
    benchmark.pedantic(run, args=(tarmap_args(shards, out, "cat", "-j", "1"),), setup=fresh(out), rounds=3)
    RESULTS["tarmap cat"] = benchmark.stats.stats.min


def test_peer_bash_loop_cat(benchmark, shards, scratch):
    out = scratch / "out-loop"
    script = f'for f in "$@"; do b=${{f##*/}}; bash -c cat < "$f" > {out}/"$b"; done'
    benchmark.extra_info.update(tasks=len(shards))
    benchmark.pedantic(run, args=(["bash", "-c", script, "loop", *shards],), setup=fresh(out), rounds=3)
    RESULTS["loop cat"] = benchmark.stats.stats.min
    if "tarmap cat" in RESULTS:
        per_task = (RESULTS["tarmap cat"] - RESULTS["loop cat"]) / len(shards)
        benchmark.extra_info["tarmap_overhead_ms_per_task"] = per_task * 1000
        print(f"\ntarmap overhead per task (pipeline cat, -j 1): {per_task * 1000:.1f} ms")


def test_tarmap_dask_local_2(benchmark, shards, scratch):
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    out = scratch / "out-dask"
    benchmark.extra_info.update(tasks=len(shards), samples_per_task=SAMPLES)
    benchmark.pedantic(run, args=(tarmap_args(shards, out, PIPELINE, "--dask", "local:2"),), setup=fresh(out),
                       rounds=2)
    print(f"\ntarmap --dask local:2, {len(shards)} tasks: {benchmark.stats.stats.min:.2f} s")
    if "tarmap -j 2" in RESULTS:
        ratio = benchmark.stats.stats.min / RESULTS["tarmap -j 2"]
        benchmark.extra_info["dask_over_local_pool"] = ratio
        print(f"\ntarmap --dask local:2 / -j 2: {ratio:.2f}x")
    if "parallel -j2" in RESULTS and "tarmap -j 2" in RESULTS:
        print(f"tarmap -j 2 / parallel -j2: {RESULTS['tarmap -j 2'] / RESULTS['parallel -j2']:.2f}x")
