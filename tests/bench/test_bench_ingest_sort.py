"""Ingestion and sorting, side by side with GNU tools in one run.

    .venv/bin/pytest tests/bench/test_bench_ingest_sort.py --benchmark-enable \
        --benchmark-columns=min,median,mean,rounds -p no:cacheprovider

- ``dir2tar`` on a folder of 100,000 small files (50,000 samples of a
  500..4000-byte ``jpg`` and a ``cls``, in 100 class directories) vs
  ``find . -type f | sort | tar cf OUT -T -`` (GNU tar) on the same folder
  (target: within 2x). Both write a file (GNU tar does not read the files
  when its output is /dev/null).
- ``tarsort`` of a large input (default 1 GiB of ~10 KB samples, env
  ``TARPROC_BENCH_SORT_MB``) with a 256M and a 64M memory budget vs GNU
  ``sort -S 100M`` of the member names (``tar tf | sort``); peak RSS of
  each is recorded in ``extra_info`` (``peak_RSS_MB``).

Data lives under /dev/shm when it exists (tmp otherwise) and is built once
per session and removed at its end.
"""

from __future__ import annotations

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

from conftest import tool_env  # noqa: E402

from tarproc.io.tario import TarWriter  # noqa: E402

CLASSES, PER_CLASS = 100, 500  # 50,000 samples, 100,000 files
SORT_MB = int(os.environ.get("TARPROC_BENCH_SORT_MB", "1024"))
SAMPLE_BYTES = 10240


def _gnu_tar() -> bool:
    try:
        return "GNU tar" in subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return False


@pytest.fixture(scope="module")
def scratch():
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="tarproc-bench-ingest-", dir=base)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tree(scratch) -> Path:
    """100,000 small files: slices of one random blob (fast to make, ~1 s)."""
    root = scratch / "tree"
    rng = random.Random(0)
    blob = rng.randbytes(1 << 20)
    for c in range(CLASSES):
        directory = root / f"n{c:08d}"
        directory.mkdir(parents=True)
        for i in range(PER_CLASS):
            start = rng.randrange(0, (1 << 20) - 4096)
            (directory / f"{c:03d}_{i:05d}.jpg").write_bytes(blob[start : start + rng.randrange(500, 4000)])
            (directory / f"{c:03d}_{i:05d}.cls").write_bytes(str(c).encode())
    return root


def run_rss(cmd: str, cwd=None) -> tuple[int, int]:
    """Run ``bash -c cmd`` from a fresh Python wrapper and return (exit
    status, peak RSS in KiB): the wrapper's
    ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, i.e. the largest peak of any
    process of the pipeline, and of nothing run before it."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "status = subprocess.run(['bash', '-c', sys.argv[1]]).returncode\n"
        "print(status, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, cmd], capture_output=True, text=True, cwd=cwd,
                         env=tool_env(), check=True)
    status, rss = out.stdout.split()
    return int(status), int(rss)


def bench_command(benchmark, cmd: str, rounds: int, cwd=None) -> int:
    """Benchmark a shell command; returns the peak RSS (KiB) seen."""
    peaks = []

    def once():
        status, rss = run_rss(cmd, cwd)
        assert status == 0, cmd
        peaks.append(rss)

    benchmark.pedantic(once, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info["peak_RSS_MB"] = round(max(peaks) / 1024, 1)
    return max(peaks)


# ------------------------------------------------------------------ dir2tar


def test_dir2tar_100k_files(benchmark, tree, scratch):
    out = scratch / "dir2tar.tar"
    bench_command(benchmark, f"dir2tar {tree} -o {out}", rounds=5)
    benchmark.extra_info["files"] = CLASSES * PER_CLASS * 2
    import tarfile

    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert len(names) == CLASSES * PER_CLASS * 2 and names[0] == "n00000000/000_00000.cls"


def test_gnu_tar_find_sort_100k_files(benchmark, tree, scratch):
    if not _gnu_tar():
        pytest.skip("tar --version does not say GNU tar")
    out = scratch / "gnutar.tar"
    bench_command(benchmark, f"find . -type f | sort | tar cf {out} -T -", rounds=5, cwd=tree)
    benchmark.extra_info["files"] = CLASSES * PER_CLASS * 2
    assert os.path.getsize(out) > 100 * CLASSES * PER_CLASS


# ------------------------------------------------------------------ tarsort


@pytest.fixture(scope="module")
def sort_input(scratch) -> Path:
    """SORT_MB MiB of samples (a ~10 KB ``bin`` and a ``cls``) in random key
    order, written with the core TarWriter (~2 s per GiB)."""
    path = scratch / "unsorted.tar"
    rng = random.Random(0)
    blob = rng.randbytes(1 << 22)
    keys = [f"s{i:08d}" for i in range(SORT_MB * (1 << 20) // SAMPLE_BYTES)]
    rng.shuffle(keys)
    with open(path, "wb") as handle:
        writer = TarWriter(handle)
        for key in keys:
            start = rng.randrange(0, (1 << 22) - 12000)
            writer.add(f"{key}.bin", blob[start : start + 9000 + rng.randrange(0, 1500)])
            writer.add(f"{key}.cls", b"%d" % rng.randrange(1000))
        writer.finish()
    return path


@pytest.mark.parametrize("budget", ["256M", "64M"])
def test_tarsort_large_input(benchmark, sort_input, scratch, budget):
    tmp = scratch / "sort-tmp"
    tmp.mkdir(exist_ok=True)
    out = scratch / "sorted.tar"
    bench_command(benchmark, f"tarsort --buffer-size {budget} --tmpdir {tmp} {sort_input} -o {out}", rounds=1)
    benchmark.extra_info["input_MB"] = round(os.path.getsize(sort_input) / 1e6)
    assert os.listdir(tmp) == []
    assert os.path.getsize(out) == os.path.getsize(sort_input)
    keys = subprocess.run(f"tar tf {out} | sed -n '1p;$p'", shell=True, capture_output=True, text=True).stdout.split()
    assert keys == ["s00000000.bin", f"s{SORT_MB * (1 << 20) // SAMPLE_BYTES - 1:08d}.cls"]


def test_gnu_sort_of_the_keys(benchmark, sort_input, scratch):
    out = scratch / "keys.txt"
    bench_command(benchmark, f"tar tf {sort_input} | LC_ALL=C sort -S 100M -o {out}", rounds=3)
    benchmark.extra_info["input_MB"] = round(os.path.getsize(sort_input) / 1e6)
    with open(out) as handle:
        assert handle.readline() == "s00000000.bin\n"
