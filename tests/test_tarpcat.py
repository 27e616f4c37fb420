"""tarpcat: parallel reading gives every sample of every shard exactly once
(the same stream as tarcats), with shuffling, errors and early stops."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import run, tar_members
from tarproc.cli import tarpcat
from tarproc.io.compress import decompressing_reader
from tarproc.samples import group_samples
from tarproc.io.shards import split_samples
from tarproc.io.tario import iter_members


def invoke(args, input=None):
    return CliRunner().invoke(tarpcat.app, args, input=input)


def keys_of(data: bytes) -> list[str]:
    return [s["__key__"] for s in group_samples(iter_members(decompressing_reader(io.BytesIO(data))))]


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> list[str]:
    from makeshards import imagenet_samples

    directory = tmp_path_factory.mktemp("pcat")
    samples = list(imagenet_samples(60, size=(64, 48), distinct=8))
    plain = split_samples(samples[:30], str(directory / "p-%02d.tar"), maxcount=7)
    packed = split_samples(samples[30:], str(directory / "z-%02d.tgz"), maxcount=9)
    return [s.name for s in plain + packed]


def test_same_stream_as_tarcats(split):
    serial = run(["tarcats", *split, "-o", "-"])
    parallel = run(["tarpcat", "-p", "3", *split, "-o", "-"])
    assert serial.returncode == 0 and parallel.returncode == 0, parallel.stderr
    assert parallel.stdout == serial.stdout
    keys = keys_of(parallel.stdout)
    assert len(keys) == 60 and len(set(keys)) == 60


def test_every_sample_exactly_once_with_shuffle(split):
    result = invoke(["-p", "2", *split, "--shuffle-shards", "--shuffle", "10", "--seed", "3", "-o", "-"])
    assert result.exit_code == 0, result.stderr
    keys = keys_of(result.stdout_bytes)
    reference = keys_of(run(["tarcats", *split, "-o", "-"]).stdout)
    assert sorted(keys) == sorted(reference) and keys != reference
    again = invoke(["-p", "2", *split, "--shuffle-shards", "--shuffle", "10", "--seed", "3", "-o", "-"])
    assert keys_of(again.stdout_bytes) == keys  # same seed, same order, whatever the workers' timing
    members = dict(tar_members(result.stdout_bytes))
    original = dict(sum((tar_members(Path(p).read_bytes()) for p in split), []))
    assert members == original


def test_corrupt_shard_error_from_worker(split, tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(Path(split[1]).read_bytes()[:5000])
    result = invoke(["-p", "2", split[0], str(bad), split[2], "-o", str(tmp_path / "out.tar")])
    assert result.exit_code == 3
    assert "tarpcat: error: " in result.stderr and "bad.tar: stream is cut" in result.stderr
    assert not (tmp_path / "out.tar").exists()
    tolerant = invoke(["-p", "2", split[0], str(bad), split[2], "--max-bad-shards", "1", "-o", "-"])
    assert tolerant.exit_code == 1
    keys = keys_of(tolerant.stdout_bytes)
    first, third = keys_of(Path(split[0]).read_bytes()), keys_of(Path(split[2]).read_bytes())
    assert keys[: len(first)] == first and keys[-len(third) :] == third
    assert "bad shard" in tolerant.stderr


def test_count_stops_early_and_exits_cleanly(split):
    result = run(["tarpcat", "-p", "2", *(split * 5), "--count", "5", "-o", "-"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(keys_of(result.stdout)) == 5


def test_closed_pipe_is_quiet(split):
    result = run(f"tarpcat -p 2 {' '.join(split * 5)} -o - | head -c 100 >/dev/null", shell=True, timeout=60)
    assert b"Traceback" not in result.stderr and result.stderr == b""


def test_usage_errors(split):
    stdin = invoke(["-p", "2", split[0], "-", "-o", "-"], input=b"")
    assert stdin.exit_code == 2 and "stdin" in stdin.stderr
    assert invoke(["-p", "2", *split, "--interleave", "-o", "-"]).exit_code == 2


def test_single_input_and_p1_run_in_process(split):
    one = invoke([split[0], "-o", "-"])
    assert keys_of(one.stdout_bytes) == keys_of(Path(split[0]).read_bytes())
    serial = invoke(["-p", "1", *split, "-o", "-"])
    assert len(keys_of(serial.stdout_bytes)) == 60
