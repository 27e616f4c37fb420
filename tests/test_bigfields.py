"""Big fields through the real tools (issue 19).

Item 1, fields over 2 GiB (slow): Linux moves at most 0x7ffff000 bytes
(2,147,479,552) per ``write(2)``/``read(2)``, and a raw stream's ``write``
(``sys.stdout.buffer`` under ``PYTHONUNBUFFERED``) returns what one call
took; every tool must resume, or the member is cut and the run still exits
0. The input is a sparse tar (a header, a hole, a tail), so it costs no
disk; each output is checked member by member (name, size, last bytes, and
the end-of-archive marker after them: anything cut or shifted shows).

Item 2, memory: a member beyond :data:`tarproc.io.spool.THRESHOLD` is
file-backed, so a tool's peak RSS stays far below the member's size (here
with the threshold lowered to 1 MiB and a 64 MiB member; the 2 GiB figures
are in ``tests/bench/test_bench_bigmember.py``).
"""

from __future__ import annotations

import io
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


# ------------------------------------------------------------ item 2: memory

MID = 64 << 20  # the member of the memory test: 64 MiB


@pytest.fixture(scope="module")
def mid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mid") / "mid.tar"
    write_sparse_tar(path, MID)
    return path


def peak_rss(cmd: list[str], cwd: Path, env: dict) -> int:
    """Peak RSS in bytes of ``cmd`` and of each process it waited for (the
    largest one: ``getrusage(RUSAGE_CHILDREN)`` of a fresh interpreter)."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL);"
             " print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=cwd, env=env, capture_output=True, timeout=300)
    status, kib = out.stdout.split()
    assert int(status) == 0, out.stderr.decode()
    return int(kib) * 1024  # Linux: KiB


@pytest.mark.parametrize("cmd", [
    ["tarcats", "{in}", "-o", "out.tar"],
    ["tarcats", "{in}", "-o", "-"],
    ["tarshow", "{in}"],
    ["tarsplit", "{in}", "-n", "1", "-o", "part-%d.tar"],
    ["tarproc", "-c", "true", "-o", "out.tar", "{in}"],
    ["tarproc", "-p", "1", "-c", "cat sample.bin > sample.out", "-o", "out.tar", "{in}"],
], ids=["tarcats", "tarcats-stdout", "tarshow", "tarsplit", "tarproc", "tarproc-p1-new-output"])
def test_big_member_memory_is_bounded(mid, tmp_path, cmd):
    """With ``TARPROC_LARGE_FIELD`` at 1 MiB, a 64 MiB member costs less
    than its size (it was read into memory twice: 151 MiB peak, 22 MiB of
    them the interpreter's; tarproc's outputs are moved out of the sample
    directory, not read);
    the output keeps every byte, and no spool file is left behind."""
    path = mid
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = unbuffered()
    env["TARPROC_LARGE_FIELD"] = str(1 << 20)
    env["TMPDIR"] = str(tmp)
    rss = peak_rss([str(path) if a == "{in}" else a for a in cmd], tmp_path, env)
    assert rss < MID, f"peak RSS {rss / 2**20:.0f} MiB for a {MID >> 20} MiB member"
    want = expected(MID)
    if any("sample.out" in a for a in cmd):  # a new output file as big as the input's
        want.append(["s.out", *want[0][1:]])
    for name in ("out.tar", "part-0.tar"):
        if (tmp_path / name).exists():
            assert check_file(tmp_path / name) == want
    assert os.listdir(tmp) == []


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    from tarproc.io.tario import TarWriter

    out = io.BytesIO()
    writer = TarWriter(out)
    for name, data in members:
        writer.add(name, data)
    writer.finish()
    return out.getvalue()


@pytest.fixture
def spooling(monkeypatch, tmp_path):
    """The reader's threshold lowered to 70,000 bytes in this process, the
    spool directory in ``tmp_path/spool``; yields that directory."""
    from tarproc.io import spool, tario

    directory = tmp_path / "spool"
    monkeypatch.setattr(tario, "_LARGE", 70_000)
    monkeypatch.setattr(spool, "_DIRECTORY", str(directory))
    monkeypatch.setattr(spool, "_made", 0)
    return directory


def test_reader_spools_a_large_member_and_removes_its_file(spooling):
    """A member over the threshold is a file-backed LargeField with the same
    bytes, written back identically; its file goes with it."""
    import gc

    from tarproc.ops.describe import describe_bytes
    from tarproc.samples import group_samples
    from tarproc.io.spool import LargeField
    from tarproc.io.tario import iter_members

    big = bytes(range(256)) * 400 + b"END"
    text = b"first line\n" + b"more text\n" * 10_000
    raw = _tar([("k.bin", big), ("k.txt", text), ("k.cls", b"7")])
    [sample] = list(group_samples(iter_members(io.BytesIO(raw))))
    assert [type(sample[f]) for f in ("bin", "txt", "cls")] == [LargeField, LargeField, bytes]
    field = sample["bin"]
    assert len(field) == len(big) and bytes(field) == big and field == big and field != big[:-1] + b"X"
    assert field[:4] == big[:4] and field[-3:] == b"END" and field.startswith(big[:9]) and field.endswith(b"END")
    assert describe_bytes(field) == describe_bytes(big)  # binary: its first bytes
    assert describe_bytes(sample["txt"]) == "'first line'..."
    assert _tar([("k.bin", sample["bin"]), ("k.txt", sample["txt"]), ("k.cls", sample["cls"])]) == raw
    assert len(os.listdir(spooling)) == 2
    del sample, field
    gc.collect()
    assert os.listdir(spooling) == []


def test_cut_inside_a_spooled_member_is_the_same_error_and_leaves_nothing(spooling, monkeypatch):
    from tarproc.io import tario
    from tarproc.errors import TruncatedError

    raw = _tar([("k.bin", bytes(200_000))])[:150_000]
    with pytest.raises(TruncatedError) as spooled:
        list(tario.iter_members(io.BytesIO(raw), "in.tar"))
    assert os.listdir(spooling) == []
    monkeypatch.setattr(tario, "_LARGE", 1 << 30)
    with pytest.raises(TruncatedError) as read:
        list(tario.iter_members(io.BytesIO(raw), "in.tar"))
    assert str(spooled.value) == str(read.value) == "in.tar: stream is cut inside data at offset 150000 (member header at offset 0)"
