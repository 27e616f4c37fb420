"""Benchmarks of tarcheck and tarcats --where, each beside its peers in the same run (issue 18).

    .venv/bin/pytest tests/bench/test_bench_check_where.py --benchmark-enable -s

Each comparison times ours as the benchmark and runs its peers once before
each round (untimed by pytest-benchmark, timed here), so they alternate; the
peers' medians, the ratios and the issue's targets are in ``extra_info``
(and printed). On /dev/shm:

- ``tarcheck -j 2`` over 20 shards of real JPEGs (100 samples of 500x375,
  about 10 MB each) beside a bash loop of ``tar tf`` over the same shards
  (target: <= 1.5x, for far more checking) and beside webdataset iterating
  them in Python (``WebDataset(urls)``, every sample); the same over 148
  shards (``TARPROC_BENCH_CHECK_SHARDS``: how many), where the per-shard
  cost, not the start-up, decides (shards 20 on hold the samples of shards
  0-19 under new keys); also ``tarcheck -j 2 --decode jpg`` (every JPEG
  decoded with Pillow), for what that costs.
- ``tarcats --where 'int(cls) < 5'`` over a shard of 2000 samples (about 27
  KB) beside the same filter as ``tarproc -p 2 -c 'test "$(cat sample.cls)"
  -lt 5'`` (target: >= 20x faster) and a webdataset ``.select()`` loop
  writing the kept samples with ``TarWriter``. Every output holds exactly
  the kept samples.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import tool_env  # noqa: E402
from makeshards import imagenet_samples  # noqa: E402

from tarproc.io.sinks import open_sink  # noqa: E402

SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None
SHARDS = 20
#: the larger dataset of the tarcheck benchmark (its per-shard cost)
MANY = int(os.environ.get("TARPROC_BENCH_CHECK_SHARDS", "148"))
PER_SHARD = 100
N_WHERE = 2000
ROUNDS = 3
WHERE = "int(cls) < 5"
TEST = 'test "$(cat sample.cls)" -lt 5'


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    base = Path(tempfile.mkdtemp(prefix="tarproc-bench-", dir=SHM)) if SHM else tmp_path_factory.mktemp("bench")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _write(path: Path, n: int, seed: int, size, prefix: str, distinct: int) -> Path:
    with open_sink(str(path)) as sink:
        for i, sample in enumerate(imagenet_samples(n, seed=seed, size=size, distinct=distinct)):
            sample["__key__"] = f"{prefix}/{i:06d}"
            sink.write(sample)
    return path


@pytest.fixture(scope="module")
def jpeg_shards(workdir) -> list[str]:
    """MANY shards of 100 samples (real 500x375 JPEG + cls + json), keys
    unique across shards: the first 20 made from seeds 0-19, each later one
    the samples of shard ``s % 20`` under keys of its own (quick to write)."""
    made = {}
    paths = []
    for s in range(max(SHARDS, MANY)):
        if s < SHARDS:
            made[s] = list(imagenet_samples(PER_SHARD, seed=s, size=(500, 375), distinct=16))
        path = workdir / f"train-{s:04d}.tar"
        with open_sink(str(path)) as sink:
            for i, sample in enumerate(made[s % SHARDS]):
                sink.write({**sample, "__key__": f"s{s:04d}/{i:06d}"})
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def where_shard(workdir) -> Path:
    return _write(workdir / "where.tar", N_WHERE, 0, (240, 180), "w", 64)


def _run(args, ok=(0,), **kw):
    out = subprocess.run(args, env=tool_env(), capture_output=True, **kw)
    assert out.returncode in ok, out.stderr.decode()[-2000:]
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _beside(benchmark, ours, peers: dict, target: str, rounds: int = ROUNDS) -> dict:
    times: dict = {name: [] for name in peers}

    def setup():
        for name, peer in peers.items():
            times[name].append(_timed(peer))

    benchmark.pedantic(ours, setup=setup, rounds=rounds)
    median = benchmark.stats.stats.median
    info = {"median_s": median, "target": target}
    for name, values in times.items():
        info[f"{name}_median_s"] = statistics.median(values)
        info[f"ratio_to_{name}"] = median / statistics.median(values)
    benchmark.extra_info.update(info)
    load = os.getloadavg()[0]
    benchmark.extra_info["loadavg_1min"] = load
    print(f"\n  {benchmark.name}: median {median:.3f} s; "
          + "; ".join(f"{n} {info[f'{n}_median_s']:.3f} s (x{info[f'ratio_to_{n}']:.2f})" for n in peers)
          + f"; target: {target}; load {load:.1f}")
    return info


def _tar_tf(shards):
    return lambda: _run(["bash", "-c", 'for f in "$@"; do tar tf "$f" > /dev/null; done', "tar-tf", *shards])


def _webdataset_iter(shards):
    wds = pytest.importorskip("webdataset")

    def iterate():
        n = sum(1 for _ in wds.WebDataset(shards, shardshuffle=False))
        assert n == len(shards) * PER_SHARD

    return iterate


@pytest.mark.parametrize("count", [SHARDS, MANY], ids=lambda n: f"{n}shards")
def test_tarcheck_j2_beside_tar_tf_and_webdataset(benchmark, jpeg_shards, count):
    shards = jpeg_shards[:count]

    def ours():
        out = _run(["tarcheck", "-j", "2", *shards])
        assert out.stdout.count(b'"status": "ok"') == count

    # 7 rounds: each takes a second or two, and a fifth of a second is the whole run at 20 shards
    info = _beside(benchmark, ours, {"tar_tf": _tar_tf(shards), "webdataset": _webdataset_iter(shards)},
                   "<= 1.5x a loop of tar tf", rounds=7)
    benchmark.extra_info["shards"] = count
    benchmark.extra_info["bytes"] = sum(os.path.getsize(s) for s in shards)
    benchmark.extra_info["ms_per_shard"] = 1000 * info["median_s"] / count
    benchmark.extra_info["tar_tf_ms_per_shard"] = 1000 * info["tar_tf_median_s"] / count
    assert info["median_s"] > 0


def test_tarcheck_j2_decode_jpg_beside_tar_tf(benchmark, jpeg_shards):
    shards = jpeg_shards[:SHARDS]

    def ours():
        out = _run(["tarcheck", "-j", "2", "--decode", "jpg", "--require", "jpg cls", *shards])
        assert out.stdout.count(b'"status": "ok"') == SHARDS

    _beside(benchmark, ours, {"tar_tf": _tar_tf(shards)}, "(no target: every JPEG decoded)")


def _kept(path: Path) -> int:
    with tarfile.open(path) as tf:
        return len({m.name.split(".")[0] for m in tf if m.isreg()})


def test_tarcats_where_beside_tarproc_test_and_webdataset_select(benchmark, where_shard, workdir):
    want = sum(1 for i in range(N_WHERE) if i % 10 < 5)  # cls = i % 10
    out, peer_out, wds_out = workdir / "where.out.tar", workdir / "tarproc.out.tar", workdir / "wds.out.tar"

    def ours():
        _run(["tarcats", str(where_shard), "--where", WHERE, "-o", str(out)])

    def tarproc_test():
        # a sample whose command fails is left out (and reported: exit status 1)
        _run(["tarproc", "-p", "2", "-q", "--halt-after", "0", "-c", TEST, str(where_shard), "-o", str(peer_out)],
             ok=(0, 1))

    def webdataset_select():
        wds = pytest.importorskip("webdataset")
        with wds.TarWriter(str(wds_out)) as sink:
            for sample in wds.WebDataset(str(where_shard), shardshuffle=False).select(lambda s: int(s["cls"]) < 5):
                sink.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})

    _beside(benchmark, ours, {"tarproc_c_test": tarproc_test, "webdataset_select": webdataset_select},
            ">= 20x faster than tarproc -c 'test ...'")
    assert _kept(out) == _kept(peer_out) == _kept(wds_out) == want
