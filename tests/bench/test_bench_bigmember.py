"""Peak memory of the tools on a 2 GiB member, beside peers, in one run (issue 19, item 2).

    .venv/bin/pytest tests/bench/test_bench_bigmember.py --benchmark-enable -s

Input: a sparse tar (no disk used) of one sample: ``s.bin`` of 2 GiB + 1000
bytes (zeros then a tail) and ``s.cls``. Each command runs in a fresh
interpreter that reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the
largest process it waited for, the tool's workers included), once per
benchmark round; the figure (MiB) goes to ``extra_info["peak_rss_mib"]``
and is printed. Peers: GNU ``tar -xO`` (streams the member to stdout) and
Python's ``tarfile`` streaming extraction (``extractfile`` read in 1 MiB
pieces). The targets: at most 100 MB for tarcats, tarshow and tarsplit,
100 MB plus the command's own for tarproc. Outputs go to ``/dev/null`` or
are removed after each round.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import tool_env  # noqa: E402
from test_bigfields import write_sparse_tar  # noqa: E402

pytestmark = pytest.mark.bench

SIZE = (1 << 31) + 1000

_PROBE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL);"
          " print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")

_TARFILE_PEER = r"""
import sys, tarfile
with tarfile.open(sys.argv[1], mode="r|") as tar:
    for info in tar:
        f = tar.extractfile(info)
        while f.read(1 << 20):
            pass
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bigmember") / "big.tar"
    write_sparse_tar(path, SIZE)
    return path


def peak_rss_mib(cmd: list[str], cwd: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, *cmd], cwd=cwd, env=tool_env(), capture_output=True,
                         timeout=600)
    status, kib = out.stdout.split()
    assert int(status) == 0, out.stderr.decode()
    return int(kib) / 1024


COMMANDS = {
    "gnu-tar-xO (peer)": ["tar", "-xOf", "{in}"],
    "tarfile-stream (peer)": [sys.executable, "-c", _TARFILE_PEER, "{in}"],
    "tarcats-file": ["tarcats", "{in}", "-o", "out.tar"],
    "tarcats-stdout": ["tarcats", "{in}", "-o", "-"],
    "tarshow": ["tarshow", "{in}"],
    "tarsplit": ["tarsplit", "{in}", "-n", "1", "-o", "part-%d.tar"],
    "tarproc-true": ["tarproc", "-c", "true", "-o", "out.tar", "{in}"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_peak_rss_2gib_member(benchmark, big, tmp_path, name):
    if name.startswith("gnu-tar") and shutil.which("tar") is None:
        pytest.skip("no GNU tar")
    cmd = [str(big) if a == "{in}" else a for a in COMMANDS[name]]
    peaks: list[float] = []

    def once():
        peaks.append(peak_rss_mib(cmd, tmp_path))
        for leftover in tmp_path.iterdir():
            leftover.unlink()

    benchmark.pedantic(once, rounds=1, iterations=1)
    peak = max(peaks)
    benchmark.extra_info["peak_rss_mib"] = round(peak, 1)
    benchmark.extra_info["member_bytes"] = SIZE
    print(f"\n{name}: peak RSS {peak:.1f} MiB for a {SIZE} byte member")
    assert os.listdir(tmp_path) == []
