"""Big fields through the real tools (issue 19).

Fields over 2 GiB (slow): Linux moves at most 0x7ffff000 bytes
(2,147,479,552) per ``write(2)``/``read(2)``, and a raw stream's ``write``
(``sys.stdout.buffer`` under ``PYTHONUNBUFFERED``) returns what one call
took; every tool must resume, or the member is cut and the run still exits
0. The input is a sparse tar (a header, a hole, a tail), so it costs no
disk; each output is checked member by member (name, size, last bytes, and
the end-of-archive marker after them: anything cut or shifted shows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import tool_env

#: past Linux's 0x7ffff000-byte cap of one write(2), and not a multiple of 512
BIG = (1 << 31) + 1000
TAIL = b"the last bytes of big.bin\n"

#: stdin (a tar stream, read through in 4 MiB pieces) -> one JSON line per
#: member: name, size, last 64 bytes; each header's checksum is verified
#: (tarfile's own stream mode reads 10 KiB at a time: 10x slower here)
CHECK = r"""
import json, sys, tarfile
read = sys.stdin.buffer.read
def exact(n):
    data = read(n)
    if len(data) != n:
        sys.exit(f"cut: {len(data)} of {n} bytes")
    return data
while True:
    header = exact(512)
    if header == bytes(512):
        exact(512)
        break
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    left, last = info.size, b""
    while left:
        chunk = read(min(left, 1 << 22))
        if not chunk:
            sys.exit(f"cut inside {info.name}: {left} bytes missing")
        left -= len(chunk)
        last = (last + chunk)[-64:]
    exact(-info.size % 512)
    print(json.dumps([info.name, info.size, last.hex()]))
"""


def write_sparse_tar(path: Path, size: int = BIG, key: str = "s") -> None:
    """A tar of ``key.bin`` (``size`` bytes: zeros then :data:`TAIL`, a hole
    on disk) and ``key.cls``."""
    with open(path, "wb") as out:
        info = tarfile.TarInfo(f"{key}.bin")
        info.size = size
        out.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        out.seek(size - len(TAIL), os.SEEK_CUR)
        out.write(TAIL + bytes(-size % 512))
        info = tarfile.TarInfo(f"{key}.cls")
        info.size = 2
        out.write(info.tobuf(format=tarfile.USTAR_FORMAT) + b"1\n" + bytes(510) + bytes(1024))


def expected(size: int = BIG, key: str = "s") -> list:
    """What :data:`CHECK` and :func:`check_file` see in :func:`write_sparse_tar`'s tar."""
    last = (bytes(64) + TAIL)[-64:] if size >= 64 else None
    return [[f"{key}.bin", size, last.hex()], [f"{key}.cls", 2, b"1\n".hex()]]


def check(stdin) -> list:
    """:data:`CHECK`'s members of the tar stream read from ``stdin`` (a pipe)."""
    out = subprocess.run([sys.executable, "-c", CHECK], stdin=stdin, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode()
    return [json.loads(line) for line in out.stdout.splitlines()]


def check_file(path: Path) -> list:
    """:data:`CHECK`'s view of a tar file, by seeking (tarfile verifies every
    header; the whole archive must be there, its end marker included)."""
    members = []
    with tarfile.open(path) as tar:
        for info in tar:
            with tar.extractfile(info) as f:
                f.seek(max(info.size - 64, 0))
                members.append([info.name, info.size, f.read().hex()])
    with open(path, "rb") as handle:  # the end-of-archive marker follows the last member
        handle.seek(info.offset_data + info.size + (-info.size % 512))
        assert handle.read(1024) == bytes(1024)
    return members


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """The sparse input of a :data:`BIG` member."""
    path = tmp_path_factory.mktemp("big") / "big.tar"
    write_sparse_tar(path)
    assert check_file(path) == expected()
    return path


def unbuffered() -> dict:
    """The tools' environment with ``PYTHONUNBUFFERED=1``: stdout is then a
    raw stream, whose writes may be short."""
    env = tool_env()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_tool(cmd, tmp_path: Path, stdout=None, shell: bool = False) -> None:
    out = subprocess.run(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE, env=unbuffered(),
                         cwd=tmp_path, timeout=600, shell=shell, executable="/bin/bash" if shell else None)
    assert out.returncode == 0, out.stderr.decode()


@pytest.mark.slow
def test_tarcats_stdout_pipe_keeps_all(big):
    """``tarcats -o - | reader``: every byte of the big member (it was cut
    at 0x7ffff000 bytes by a short write to the raw stdout, exit 0)."""
    proc = subprocess.Popen(["tarcats", str(big), "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=unbuffered())
    try:
        members = check(proc.stdout)
    finally:
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert members == expected()


@pytest.mark.slow
def test_tarsort_stdout_redirected_file(big, tmp_path):
    out = tmp_path / "out.tar"
    with open(out, "wb") as handle:
        run_tool(["tarsort", str(big), "-o", "-"], tmp_path, stdout=handle)
    assert check_file(out) == expected()
    assert out.stat().st_size == 512 + BIG + (-BIG % 512) + 1024 + 1024


@pytest.mark.slow
def test_tarproc_command_keeps_all(big, tmp_path):
    """``tarproc -c true``: the sample file read back whole (one read(2) of
    it stopped at 0x7ffff000 bytes)."""
    run_tool(["tarproc", "-c", "true", "-o", "out.tar", str(big)], tmp_path)
    assert check_file(tmp_path / "out.tar") == expected()


@pytest.mark.slow
def test_tarproc_map_into_tarsplit_keeps_all(big, tmp_path):
    (tmp_path / "ident.py").write_text("def f(sample):\n    return sample\n")
    run_tool(f"set -o pipefail; tarproc --map ident.py:f -o - {big} | tarsplit -n 1 -o part-%d.tar", tmp_path,
             shell=True)
    assert check_file(tmp_path / "part-0.tar") == expected()


@pytest.mark.slow
def test_tarshow_field_to_stdout(big):
    """``tarshow -f bin`` writes the field's bytes whole to a raw stdout."""
    proc = subprocess.Popen(["tarshow", str(big), "-f", "bin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=unbuffered())
    n = 0
    last = b""
    while chunk := proc.stdout.read(1 << 22):
        n += len(chunk)
        last = (last + chunk)[-64:]
    proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert [n, last.hex()] == expected()[0][1:]
