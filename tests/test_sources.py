"""tarproc.io.sources: brace patterns, files, stdin, pipe:CMD, errors."""

from __future__ import annotations

import gzip
import io
import itertools
import sys

import pytest

from malformed import KEYS, sample_members, tar_bytes
from tarproc.errors import SourceError, TruncatedError
from tarproc.io.sources import (
    check_inputs_exist,
    expand_inputs,
    iter_samples,
    iter_source_samples,
    open_source,
)

GOOD = tar_bytes(sample_members())


@pytest.fixture
def shards(tmp_path):
    """shard-000.tar, shard-001.tar.gz (gzip content, misleading name), shard-002.tar"""
    paths = []
    for i in range(3):
        keys = [f"k{i}{j}" for j in range(3)]
        data = tar_bytes(sample_members(keys))
        path = tmp_path / f"shard-{i:03d}.tar"
        path.write_bytes(gzip.compress(data) if i == 1 else data)
        paths.append(path)
    return paths


def test_expand_inputs():
    assert expand_inputs(["a-{000..002}.tar"]) == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_inputs(["{x,y}.tgz", "-", "plain.tar", "s3://b/{1..2}.tar"]) == [
        "x.tgz", "y.tgz", "-", "plain.tar", "s3://b/1.tar", "s3://b/2.tar"
    ]
    assert expand_inputs(["pipe:cat a-{0..1}.tar"]) == ["pipe:cat a-{0..1}.tar"]  # braces belong to the command
    assert expand_inputs([]) == []


def test_brace_pattern_reads_every_shard_in_order(shards, tmp_path):
    pattern = str(tmp_path / "shard-{000..002}.tar")
    got = list(iter_samples([pattern]))
    assert [s["__key__"] for s in got] == [f"k{i}{j}" for i in range(3) for j in range(3)]
    assert [s["__source__"] for s in got] == [str(p) for p in shards for _ in range(3)]
    assert got[3]["cls"] == b"0" and got[4]["txt"] == bytes((7 + j) % 251 for j in range(511))


def test_inputs_are_opened_one_after_another(shards, tmp_path):
    """Samples of the first input come out before the second (missing) one fails."""
    got = []
    with pytest.raises(SourceError, match=r"missing\.tar: cannot open: No such file or directory"):
        for sample in iter_samples([str(shards[0]), str(tmp_path / "missing.tar")]):
            got.append(sample["__key__"])
    assert got == ["k00", "k01", "k02"]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SourceError, match="nope.tar: cannot open: No such file or directory"):
        list(iter_source_samples(str(tmp_path / "nope.tar")))
    with pytest.raises(SourceError, match="cannot open: Is a directory"):
        list(iter_source_samples(str(tmp_path)))


def test_file_url(shards):
    got = list(iter_source_samples(f"file://{shards[1]}"))
    assert [s["__key__"] for s in got] == ["k10", "k11", "k12"]
    assert got[0]["__source__"] == f"file://{shards[1]}"


@pytest.mark.parametrize("compressed", [False, True])
def test_stdin(monkeypatch, compressed):
    data = gzip.compress(GOOD) if compressed else GOOD
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    got = list(iter_samples(["-"]))
    assert [s["__key__"] for s in got] == KEYS
    assert {s["__source__"] for s in got} == {"-"}


def test_pipe_source(shards):
    spec = f"pipe:cat {shards[1]}"
    got = list(iter_samples([spec]))
    assert [s["__key__"] for s in got] == ["k10", "k11", "k12"]
    assert {s["__source__"] for s in got} == {spec}


def test_pipe_exit_status_checked_after_complete_output(shards):
    spec = f"pipe:cat {shards[0]}; exit 3"
    got = []
    with pytest.raises(SourceError, match=r"pipe:cat .*; exit 3: command exited with status 3$"):
        for sample in iter_samples([spec]):
            got.append(sample["__key__"])
    assert got == ["k00", "k01", "k02"]


@pytest.mark.parametrize(
    "command,status",
    [("false", 1), ("cat /nonexistent/shard.tar 2>/dev/null", 1), ("exit 7", 7)],
)
def test_failing_pipe_is_reported_by_status_not_as_an_empty_stream(command, status):
    with pytest.raises(SourceError, match=rf"pipe:{command}: command exited with status {status} \(empty input"):
        list(iter_samples([f"pipe:{command}"]))


def test_failing_pipe_with_cut_output(shards):
    spec = f"pipe:head -c 3000 {shards[0]}; exit 4"
    with pytest.raises(SourceError, match=r"command exited with status 4 \(stream is cut inside .*'k00'\)"):
        list(iter_samples([spec]))


def test_pipe_cut_output_with_success_status_is_a_truncation(shards):
    with pytest.raises(TruncatedError, match=r"pipe:head -c 3000 .*: stream is cut inside"):
        list(iter_samples([f"pipe:head -c 3000 {shards[0]}"]))


def test_stopping_early_is_not_an_error(shards):
    """A consumer that stops early closes the pipe: the command then dies of
    SIGPIPE or exits non-zero, and that is not reported."""
    spec = f"pipe:cat {shards[0]}; head -c 100000000 /dev/zero; exit 5"
    it = iter_samples([spec])
    assert [s["__key__"] for s in itertools.islice(it, 2)] == ["k00", "k01"]
    it.close()


def test_open_source_yields_decompressed_stream(shards):
    with open_source(str(shards[1])) as stream:
        assert stream.read(5) == b"k10.c"


def test_check_inputs_exist(shards, tmp_path):
    check_inputs_exist([str(shards[0]), "-", "pipe:false", "https://example.com/x.tar", f"file://{shards[1]}"])
    with pytest.raises(SourceError, match="gone.tar: cannot open: No such file or directory"):
        check_inputs_exist([str(shards[0]), str(tmp_path / "gone.tar")])
    with pytest.raises(SourceError):
        check_inputs_exist([f"file://{tmp_path}/gone.tar"])
