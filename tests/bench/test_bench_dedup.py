"""tardedup beside tarshuffle on the same input, in one run.

    .venv/bin/pytest tests/bench/test_bench_dedup.py --benchmark-enable -s

Input: 20 ImageNet-like shards of 500 samples (real JPEGs, 160x120 and up,
+ cls + json) on /dev/shm, 10% of the samples planted copies of an earlier
sample's content under their own keys. Both tools run three rounds with
``-j 2``, outputs on /dev/shm:

- ``tardedup IN... -o 'out/{stem}.tar'`` (hash, reduce, write: 20 + 3 + 20 tasks);
- ``tarshuffle IN... --shards 20`` (map, reduce: 2 x 20 tasks), the peer.

The target (issue 18): the same order of cost. The dedup output is checked
to have removed exactly the planted copies.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import BIN, tool_env  # noqa: E402
from makeshards import imagenet_samples  # noqa: E402

from tarproc.io.sinks import open_sink  # noqa: E402

SHARDS = 20
PER_SHARD = 500
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    base = Path(tempfile.mkdtemp(prefix="tardedup-bench-", dir=SHM)) if SHM else tmp_path_factory.mktemp("bench")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(workdir):
    """The shards and the number of planted copies."""
    total = SHARDS * PER_SHARD
    rng = random.Random(0)
    planted = set(rng.sample(range(1, total), total // 10))
    samples = list(imagenet_samples(total, seed=0))
    paths = []
    for s in range(SHARDS):
        path = str(workdir / f"in-{s:02d}.tar")
        with open_sink(path) as sink:
            for g in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                sample = samples[g]
                if g in planted:
                    twin = samples[rng.choice([t for t in range(g) if t not in planted])]
                    sample = {**twin, "__key__": f"copy_{g:06d}"}
                sink.write(sample)
        paths.append(path)
    return paths, len(planted)


def _sh(args):
    out = subprocess.run(args, env=tool_env(), capture_output=True)
    assert out.returncode == 0, out.stderr.decode()[-2000:]


def _fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()


def _record(benchmark, nbytes: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median
        benchmark.extra_info["MB/s"] = round(nbytes / median / 1e6, 1)
        print(f"\n{benchmark.name}: median {median:.2f} s, {nbytes / median / 1e6:.0f} MB/s,"
              f" load {os.getloadavg()[0]:.1f}")


@pytest.mark.bench
def test_bench_tardedup_j2(benchmark, inputs, workdir):
    paths, planted = inputs
    out = workdir / "dedup"
    argv = [str(BIN / "tardedup"), *paths, "-o", f"{out}/{{stem}}.tar", "-j", "2"]
    benchmark.pedantic(lambda: _sh(argv), setup=lambda: _fresh(out), rounds=3, iterations=1)
    _record(benchmark, sum(os.path.getsize(p) for p in paths))
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert len(removed) == planted and all(r["key"].startswith("copy_") for r in removed)
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.bench
def test_bench_peer_tarshuffle_j2(benchmark, inputs, workdir):
    paths, _ = inputs
    out = workdir / "shuffled"
    argv = [str(BIN / "tarshuffle"), *paths, "--shards", str(SHARDS), "-o", f"{out}/out-%d.tar", "-j", "2",
            "--tmpdir", str(workdir)]
    benchmark.pedantic(lambda: _sh(argv), setup=lambda: _fresh(out), rounds=3, iterations=1)
    _record(benchmark, sum(os.path.getsize(p) for p in paths))
    shutil.rmtree(out, ignore_errors=True)
