"""Every case of the malformed-input corpus (tests/malformed.py), through the
library and through the real ``tarproc`` command line.

Library: the right exception class and message (naming the source), the
complete samples before the fault yielded with their exact bytes, the partial
sample never. CLI (``tarproc -c true -o OUT`` reading stdin): the exit status,
exactly one ``tarproc: error:`` line (or one ``tarproc: warning:`` line per
skipped member), no traceback, nothing written outside the run directory,
``OUT`` only on success (``OUT.partial`` otherwise), and the output holds
exactly the surviving samples.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest

from conftest import BIN, run
from malformed import Case, cases

from tarproc import iter_source_samples
from tarproc.samples import fields

CASES = cases()
IDS = [case.name for case in CASES]
ESCAPES = [Path("/tmp/tarproc-malformed-absolute.txt"), Path("/tarproc-malformed-absolute.txt")]


@pytest.fixture(scope="module")
def tarproc_cmd() -> list[str]:
    """The real ``tarproc`` console script of the venv."""
    return [str(BIN / "tarproc")]


def read_members(path: Path) -> list[tuple[str, bytes]]:
    """Sorted (name, bytes) of a tar file's regular members, read with
    tarfile (which accepts a stream without the end-of-archive marker)."""
    if path.stat().st_size == 0:  # nothing was written before the error
        return []
    with tarfile.open(path, "r:") as tf:
        return sorted((m.name, tf.extractfile(m).read()) for m in tf if m.isreg())


def sample_items(samples: list[dict]) -> list[tuple[str, bytes]]:
    return sorted((f"{s['__key__']}.{f}", s[f]) for s in samples for f in fields(s))


def test_corpus_is_complete():
    """The corpus covers every kind of bad input the issue lists."""
    names = set(IDS)
    assert len(names) == len(IDS), "duplicate case names"
    for wanted in (
        "empty", "garbage", "cut-inside-header", "cut-inside-data", "cut-at-member-boundary",
        "bad-checksum-first-header", "bad-checksum-later-header", "negative-size-octal", "negative-size-base256",
        "absurd-size-octal", "absurd-size-base256", "huge-gnu-longname-record", "huge-pax-record",
        "zero-block-mid-stream", "lone-zero-block-at-end", "concatenated-archives", "gzip-bad-crc",
        "gzip-truncated", "gzip-several-members", "xz-truncated", "bzip2-truncated", "zstd-truncated",
        "symlink-member", "hardlink-member", "char-device-member", "fifo-member", "dotdot-name", "absolute-name",
        "duplicate-field", "non-adjacent-key", "member-without-key", "garbage-after-end-marker",
        "trailing-zero-padding",
    ):
        assert wanted in names
    for case in CASES:
        assert case.status in (0, 1, 3)
        # a data error is exit status 3 (retrying cannot help); skipped members are warnings, 1
        assert (case.error is not None) == (case.status == 3), case.name
        assert (case.warnings > 0) == (case.status == 1), case.name
        assert set(case.survivors) <= {n.split(".")[0] for n in case.members}, case.name


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_library(case: Case, tmp_path):
    path = tmp_path / f"{case.name}.tar"
    path.write_bytes(case.data)
    warnings: list[str] = []
    samples: list[dict] = []
    if case.error is None:
        samples = list(iter_source_samples(str(path), warn=warnings.append))
    else:
        with pytest.raises(case.error) as info:
            for sample in iter_source_samples(str(path), warn=warnings.append):
                samples.append(sample)
        message = str(info.value)
        assert type(info.value) is case.error, message
        assert re.search(case.message, message), message
        assert message.startswith(f"{path}: "), message
        assert "\n" not in message
    assert [s["__key__"] for s in samples] == case.survivors
    assert all(s["__source__"] == str(path) for s in samples)
    assert sample_items(samples) == case.expected_members
    assert len(warnings) == case.warnings, warnings
    for warning in warnings:
        assert re.search(case.message, warning), warning
        assert str(path) in warning


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cli(case: Case, tmp_path, tarproc_cmd):
    rundir = tmp_path / "run"
    workdir = tmp_path / "work"
    rundir.mkdir()
    workdir.mkdir()
    escapes_before = [p.exists() for p in ESCAPES]
    proc = run(tarproc_cmd + ["-c", "true", "-o", "OUT", "-w", str(workdir)], input=case.data, cwd=rundir)
    stderr = proc.stderr.decode("utf-8", "replace")
    lines = stderr.splitlines()

    assert proc.returncode == case.status, stderr
    assert "Traceback" not in stderr
    assert proc.stdout == b""
    if case.error is not None:
        assert len(lines) == 1, stderr
        assert lines[0].startswith("tarproc: error: "), stderr
        assert re.search(case.message, lines[0]), stderr
        # no output, and no unfinished OUT.partial to be taken for data
        assert [p.name for p in rundir.iterdir()] == []
        assert list(workdir.iterdir()) == []
        assert [p.exists() for p in ESCAPES] == escapes_before
        return
    else:
        assert len(lines) == case.warnings, stderr
        for line in lines:
            assert line.startswith("tarproc: warning: "), stderr
            assert re.search(case.message, line), stderr
        assert not (rundir / "OUT.partial").exists()
        output = rundir / "OUT"
    assert output.exists()
    assert read_members(output) == case.expected_members

    # nothing was written anywhere else: not next to the run dir, not in the
    # work dir (sample dirs removed), not at an absolute member path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "work"]
    assert [p.name for p in rundir.iterdir()] == [output.name]
    assert list(workdir.iterdir()) == []
    assert [p.exists() for p in ESCAPES] == escapes_before


def test_cli_corpus_as_files(tmp_path, tarproc_cmd):
    """The same errors when the input is a file argument: the message names it."""
    for name in ("cut-inside-data", "bad-checksum-later-header", "gzip-truncated"):
        case = next(c for c in CASES if c.name == name)
        path = tmp_path / f"{name}.tar"
        path.write_bytes(case.data)
        out = tmp_path / f"{name}.out.tar"
        proc = run(tarproc_cmd + ["-c", "true", "-o", str(out), "-w", str(tmp_path), str(path)], cwd=tmp_path)
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 3
        assert len(lines) == 1 and lines[0].startswith(f"tarproc: error: {path}: "), lines
        assert re.search(case.message, lines[0])
        assert not out.exists() and not Path(f"{out}.partial").exists()


def test_write_corpus(tmp_path):
    from malformed import write_corpus

    paths = write_corpus(str(tmp_path / "corpus"))
    assert len(paths) == len(CASES)
    assert Path(paths[0]).read_bytes() == CASES[0].data
