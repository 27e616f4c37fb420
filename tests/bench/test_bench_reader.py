"""Reader throughput, side by side with its peers in one run.

    .venv/bin/pytest tests/bench/test_bench_reader.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds -p no:cacheprovider

On an ImageNet-like shard (2000 samples of real 500x375 JPEG + cls + json):
our reader as samples (``iter_samples``) and as members (``iter_members``)
vs ``tarfile`` stream reading (``r|``, every regular member read) vs
webdataset's tar iterator grouped into samples; then the same shard gzipped:
ours (isal) vs ``tarfile`` ``r|gz``. Each result records MB/s of tar bytes
in ``extra_info`` (target: our reader >= 5x tarfile).
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from makeshards import write_shard  # noqa: E402

from tarproc import iter_samples  # noqa: E402
from tarproc.io.compress import decompressing_reader  # noqa: E402
from tarproc.io.tario import iter_members  # noqa: E402

N = 2000


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("bench-reader")
    tar = write_shard(str(base / "imagenet-0000.tar"), N, size=(500, 375))
    tgz = write_shard(str(base / "imagenet-0000.tgz"), N, size=(500, 375))
    return {"tar": tar, "tgz": tgz, "bytes": os.path.getsize(tar)}


def record(benchmark, shards, result):
    """Check the work done and store the throughput in MB/s of tar bytes."""
    assert result == N
    benchmark.extra_info["samples"] = N
    benchmark.extra_info["tar_MB"] = round(shards["bytes"] / 1e6, 1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["MB/s"] = round(shards["bytes"] / 1e6 / benchmark.stats.stats.mean, 1)


def ours_samples(path: str) -> int:
    n = 0
    for sample in iter_samples([path]):
        n += "jpg" in sample
    return n


def ours_members(path: str) -> int:
    with open(path, "rb", buffering=0) as f:
        return sum(m.name.endswith(".jpg") for m in iter_members(decompressing_reader(f, path), path))


def tarfile_stream(path: str, mode: str = "r|") -> int:
    n = 0
    with tarfile.open(path, mode) as tf:
        for info in tf:
            if info.isreg():
                tf.extractfile(info).read()
                n += info.name.endswith(".jpg")
    return n


def webdataset_samples(path: str) -> int:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(path, "rb") as f:
        files = ({**d, "__url__": path} for d in tar_file_iterator(f))
        return sum("jpg" in s for s in group_by_keys(files))


def test_reader_samples(benchmark, shards):
    record(benchmark, shards, benchmark.pedantic(ours_samples, args=(shards["tar"],), rounds=7, warmup_rounds=1))


def test_reader_members(benchmark, shards):
    record(benchmark, shards, benchmark.pedantic(ours_members, args=(shards["tar"],), rounds=7, warmup_rounds=1))


def test_peer_tarfile_stream(benchmark, shards):
    record(benchmark, shards, benchmark.pedantic(tarfile_stream, args=(shards["tar"],), rounds=3, warmup_rounds=1))


def test_peer_webdataset(benchmark, shards):
    record(benchmark, shards, benchmark.pedantic(webdataset_samples, args=(shards["tar"],), rounds=3, warmup_rounds=1))


def test_reader_samples_gzip(benchmark, shards):
    record(benchmark, shards, benchmark.pedantic(ours_samples, args=(shards["tgz"],), rounds=3, warmup_rounds=1))


def test_peer_tarfile_stream_gzip(benchmark, shards):
    record(benchmark, shards, benchmark.pedantic(tarfile_stream, args=(shards["tgz"], "r|gz"), rounds=3, warmup_rounds=1))
