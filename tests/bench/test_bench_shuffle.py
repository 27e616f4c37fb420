"""tarshuffle beside its one-machine peer, in one run.

    .venv/bin/pytest tests/bench/test_bench_shuffle.py --benchmark-enable -s

Input: 8 ImageNet-like shards of 1250 samples (real 500x375 JPEG + cls +
json), about 1 GB in all, on /dev/shm; output: 8 shards on /dev/shm, spills
in /dev/shm too (``--tmpdir``), so both sides measure CPU, not a disk:

- peer: ``tarcats IN... -o - | tarsort --shuffle -o - | tarsplit -n 1250``
  (the whole dataset through one sort, the issue's one-machine peer);
- ``tarshuffle IN... --shards 8 -j 2`` (map then reduce tasks);
- peak memory per task: ``tarshuffle --buffer-size 32M`` (every map task
  spills runs, every reduce task sorts externally), read back from the
  ``max_rss`` of every task's completion record, must stay within the
  buffer plus a fixed allowance (interpreter, read buffers, the largest
  sample); the 256M default is recorded too.

The target (issue 8): tarshuffle within 1.3x of the peer's median time.
Every output is checked to hold each input sample exactly once.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import BIN, tool_env  # noqa: E402
from makeshards import imagenet_samples  # noqa: E402

from tarproc.io.sinks import open_sink  # noqa: E402
from tarproc.io.sources import iter_samples  # noqa: E402

SHARDS = 8
PER_SHARD = 1250
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None
#: what a worker holds besides its --buffer-size: interpreter and modules
#: (~25 MiB), read buffers, a bytearray's over-allocation, the sample in flight
ALLOWANCE = 64 << 20


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    base = Path(tempfile.mkdtemp(prefix="tarshuffle-bench-", dir=SHM)) if SHM else tmp_path_factory.mktemp("bench")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(workdir) -> list[str]:
    samples = imagenet_samples(SHARDS * PER_SHARD, seed=0, size=(500, 375))
    paths = []
    for s in range(SHARDS):
        path = str(workdir / f"in-{s}.tar")
        with open_sink(path) as sink:
            for _ in range(PER_SHARD):
                sink.write(next(samples))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def input_keys(inputs) -> Counter:
    return Counter(s["__key__"] for s in iter_samples(inputs))


def _sh(args, **kw):
    out = subprocess.run(args, env=tool_env(), capture_output=True, **kw)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return out


def _fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()


def _check(out: Path, input_keys: Counter) -> None:
    keys = Counter(s["__key__"] for s in iter_samples(sorted(glob.glob(str(out / "out-*.tar")))))
    assert keys == input_keys


def _record(benchmark, nbytes: int) -> None:
    benchmark.extra_info["bytes"] = nbytes
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median
        benchmark.extra_info["MB/s"] = round(nbytes / median / 1e6, 1)
        print(f"\n{benchmark.name}: median {median:.2f} s, {nbytes / median / 1e6:.0f} MB/s")


def _size(inputs) -> int:
    return sum(os.path.getsize(p) for p in inputs)


@pytest.mark.bench
def test_bench_peer_cat_sort_split(benchmark, inputs, input_keys, workdir):
    out = workdir / "peer"
    tools = " ".join(f"'{p}'" for p in inputs)
    script = (f"set -o pipefail; tarcats {tools} -o - | tarsort --shuffle --seed 7 --tmpdir '{workdir}' -o - |"
              f" tarsplit -n {PER_SHARD} -o '{out}/out-%d.tar'")
    benchmark.pedantic(lambda: _sh(["bash", "-c", script]), setup=lambda: _fresh(out), rounds=3, iterations=1)
    _record(benchmark, _size(inputs))
    _check(out, input_keys)
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.bench
def test_bench_tarshuffle_j2(benchmark, inputs, input_keys, workdir):
    out = workdir / "shuffled"
    argv = [str(BIN / "tarshuffle"), *inputs, "--shards", str(SHARDS), "-o", f"{out}/out-%d.tar", "--seed", "7",
            "-j", "2", "--tmpdir", str(workdir)]
    benchmark.pedantic(lambda: _sh(argv), setup=lambda: _fresh(out), rounds=3, iterations=1)
    _record(benchmark, _size(inputs))
    _check(out, input_keys)
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.bench
@pytest.mark.parametrize("buffer", ["32M", "256M"])
def test_bench_tarshuffle_peak_memory_per_task(benchmark, inputs, input_keys, workdir, buffer):
    out = workdir / f"mem-{buffer}"
    argv = [str(BIN / "tarshuffle"), *inputs, "--shards", str(SHARDS), "-o", f"{out}/out-%d.tar", "--seed", "7",
            "-j", "2", "--tmpdir", str(workdir), "--buffer-size", buffer, "--keep-staging"]
    benchmark.pedantic(lambda: _sh(argv), setup=lambda: _fresh(out), rounds=1, iterations=1)
    _record(benchmark, _size(inputs))
    _check(out, input_keys)
    peaks = {}
    for phase, pattern in (("map", out / "tarshuffle-staging" / "*.tarmap.json"), ("reduce", out / "*.tarmap.json")):
        peaks[phase] = max(json.loads(Path(p).read_text())["max_rss"] for p in glob.glob(str(pattern)))
    budget = {"32M": 32 << 20, "256M": 256 << 20}[buffer]
    benchmark.extra_info.update({f"peak_{k}_MiB": round(v / 2**20, 1) for k, v in peaks.items()})
    print(f"\npeak memory per task with --buffer-size {buffer}: map {peaks['map'] / 2**20:.0f} MiB,"
          f" reduce {peaks['reduce'] / 2**20:.0f} MiB")
    for phase, peak in peaks.items():
        assert peak <= budget + ALLOWANCE, (phase, peak)
    shutil.rmtree(out, ignore_errors=True)
