"""Benchmarks of tarcats, tarsplit and tarpcat beside their peers, in one run.

    .venv/bin/pytest tests/bench/test_bench_split_cat.py --benchmark-enable

Input: an ImageNet-like shard of N samples (real 500x375 JPEG + cls + json,
about 1 GB, the size of a real shard, so that the ~0.15-0.2 s start-up of a
command is amortised as it is in use) on /dev/shm; every measurement is file
to file on /dev/shm, and each output is removed after its test so that at
most about 3 GB of /dev/shm are in use:

- ``cat in > out``: the upper limit (no parsing at all);
- ``tarcats in -o out`` and ``tarsplit in -n 2500 -o out-%d.tar`` as real
  processes (interpreter start included) and in-process (the typer app);
- ``tarpcat -p 2`` over the four shards tarsplit makes;
- webdataset: ``WebDataset(in)`` -> ``TarWriter(out)`` (the cat peer) and
  ``WebDataset(in)`` -> ``ShardWriter(maxcount=2500)`` (the split peer).

Each benchmark records ``bytes`` (input size) and, once measured, ``MB/s``
(input bytes / median seconds) in ``extra_info`` (``--benchmark-json``).
Every output is checked to hold all the input's members.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import tool_env  # noqa: E402
from makeshards import write_shard  # noqa: E402

N = 10000  # about 1 GB
PER_SHARD = 2500
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    base = Path(tempfile.mkdtemp(prefix="tarproc-bench-", dir=SHM)) if SHM else tmp_path_factory.mktemp("bench")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def shard(workdir) -> Path:
    """The ImageNet-like input shard (N samples, ~1 GB)."""
    return Path(write_shard(str(workdir / f"imagenet-{N}.tar"), N, size=(500, 375)))


@pytest.fixture(scope="module")
def members(shard) -> int:
    import tarfile

    with tarfile.open(shard) as tf:
        return sum(1 for m in tf if m.isreg())


def _sh(args, **kw):
    out = subprocess.run(args, env=tool_env(), capture_output=True, **kw)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return out


def _record(benchmark, nbytes: int) -> None:
    benchmark.extra_info["bytes"] = nbytes
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median
        benchmark.extra_info["MB/s"] = round(nbytes / median / 1e6, 1)
        print(f"\n{benchmark.name}: {nbytes / median / 1e6:.0f} MB/s (median {median:.3f} s)")


def _count_members(paths) -> int:
    import tarfile

    total = 0
    for path in paths:
        with tarfile.open(path) as tf:
            total += sum(1 for m in tf if m.isreg())
    return total


def _clean(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()


# ------------------------------------------------------------------- cat
def test_cat_limit(benchmark, shard, workdir):
    out = workdir / "cat.tar"
    benchmark.pedantic(lambda: _sh(f"cat {shard} > {out}", shell=True), rounds=5, warmup_rounds=1)
    _record(benchmark, shard.stat().st_size)
    assert out.stat().st_size == shard.stat().st_size
    out.unlink()


def test_tarcats_process(benchmark, shard, workdir, members):
    out = workdir / "tarcats.tar"
    benchmark.pedantic(_sh, args=(["tarcats", str(shard), "-o", str(out)],), rounds=5, warmup_rounds=1)
    _record(benchmark, shard.stat().st_size)
    assert filecmp.cmp(out, shard, shallow=False)
    out.unlink()


def test_tarcats_in_process(benchmark, shard, workdir):
    from tarproc.cli import tarcats

    out = workdir / "tarcats-inproc.tar"

    def cats():
        result = CliRunner().invoke(tarcats.app, [str(shard), "-o", str(out)])
        assert result.exit_code == 0, result.stderr

    benchmark.pedantic(cats, rounds=5, warmup_rounds=1)
    _record(benchmark, shard.stat().st_size)
    assert out.stat().st_size == shard.stat().st_size
    out.unlink()


def test_webdataset_cat(benchmark, shard, workdir, members):
    wds = pytest.importorskip("webdataset")
    out = workdir / "wds.tar"

    def copy():
        with wds.TarWriter(str(out)) as sink:
            for sample in wds.WebDataset(str(shard), shardshuffle=False):
                sink.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})

    benchmark.pedantic(copy, rounds=3, warmup_rounds=1)
    _record(benchmark, shard.stat().st_size)
    assert _count_members([out]) == members
    out.unlink()


# ----------------------------------------------------------------- split
def test_tarsplit_process(benchmark, shard, workdir, members):
    out = workdir / "split"
    out.mkdir(exist_ok=True)
    benchmark.pedantic(
        _sh,
        args=(["tarsplit", str(shard), "-n", str(PER_SHARD), "-o", str(out / "s-%04d.tar")],),
        setup=lambda: _clean(out),
        rounds=5,
        warmup_rounds=1,
    )
    _record(benchmark, shard.stat().st_size)
    shards = sorted(out.iterdir())
    assert len(shards) == N // PER_SHARD and _count_members(shards) == members
    shutil.rmtree(out)


def test_tarsplit_in_process(benchmark, shard, workdir):
    from tarproc.cli import tarsplit

    out = workdir / "split-inproc"
    out.mkdir(exist_ok=True)

    def split():
        result = CliRunner().invoke(tarsplit.app, [str(shard), "-n", str(PER_SHARD), "-o", str(out / "s-%04d.tar")])
        assert result.exit_code == 0, result.stderr

    benchmark.pedantic(split, setup=lambda: _clean(out), rounds=5, warmup_rounds=1)
    _record(benchmark, shard.stat().st_size)
    assert len(list(out.iterdir())) == N // PER_SHARD
    shutil.rmtree(out)


def test_webdataset_split(benchmark, shard, workdir, members):
    wds = pytest.importorskip("webdataset")
    out = workdir / "wds-split"
    out.mkdir(exist_ok=True)

    def split():
        with wds.ShardWriter(str(out / "s-%04d.tar"), maxcount=PER_SHARD, verbose=0) as sink:
            for sample in wds.WebDataset(str(shard), shardshuffle=False):
                sink.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})

    benchmark.pedantic(split, setup=lambda: _clean(out), rounds=3, warmup_rounds=1)
    _record(benchmark, shard.stat().st_size)
    shards = sorted(out.iterdir())
    assert len(shards) == N // PER_SHARD and _count_members(shards) == members
    shutil.rmtree(out)


# ------------------------------------------------------------ parallel cat
@pytest.fixture(scope="module")
def split_shards(shard, workdir) -> list[str]:
    out = workdir / "pcat-in"
    out.mkdir(exist_ok=True)
    _sh(["tarsplit", str(shard), "-n", str(PER_SHARD), "-o", str(out / "s-%04d.tar")])
    return [str(p) for p in sorted(out.iterdir())]


@pytest.mark.parametrize("processes", [1, 2])
def test_tarpcat_process(benchmark, split_shards, workdir, shard, processes):
    out = workdir / f"pcat-{processes}.tar"
    benchmark.pedantic(
        _sh, args=(["tarpcat", "-p", str(processes), *split_shards, "-o", str(out)],), rounds=3, warmup_rounds=1
    )
    _record(benchmark, shard.stat().st_size)
    assert filecmp.cmp(out, shard, shallow=False)
    out.unlink()
