"""tarsplit: the split -> cat round trip (hypothesis), the CLI (CliRunner),
real pipelines, post commands, pipe: output, manifest, webdataset interop."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import BIN, run, tar_members, tool_env
from tarproc.cli import tarsplit
from tarproc.io.shards import END_MARKER, sample_tar_size, split_samples
from tarproc.io.sources import iter_samples


def strip(samples):
    return [{k: v for k, v in s.items() if k != "__source__"} for s in samples]


def shard_files(directory: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in directory.glob(pattern) if not p.name.endswith(".partial"))


# ----------------------------------------------------------- property test
field_names = st.sampled_from(["jpg", "cls", "json", "txt", "seg.png", "a.b.c"])
sample_strategy = st.lists(
    st.tuples(st.lists(field_names, min_size=1, max_size=4, unique=True), st.integers(0, 3000)),
    min_size=0,
    max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=sample_strategy,
    maxcount=st.one_of(st.none(), st.integers(1, 12)),
    maxsize=st.one_of(st.none(), st.integers(1024, 40000)),
    compression=st.sampled_from([None, "gzip"]),
    data_seed=st.integers(0, 255),
)
def test_split_then_cat_is_identity(spec, maxcount, maxsize, compression, data_seed):
    if maxcount is None and maxsize is None:
        maxcount = 5
    samples = []
    for i, (fields, size) in enumerate(spec):
        sample = {"__key__": f"dir{i % 3}/key{i:05d}"}
        for j, field in enumerate(fields):
            sample[field] = bytes((data_seed + i + j + k) % 256 for k in range(size + j))
        samples.append(sample)
    with tempfile.TemporaryDirectory() as tmp:
        pattern = f"{tmp}/s-%04d" + (".tar.gz" if compression == "gzip" else ".tar")
        shards = split_samples(samples, pattern, maxcount=maxcount, maxsize=maxsize, compression=compression)
        names = [s.name for s in shards]
        assert sorted(os.listdir(tmp)) == sorted(os.path.basename(n) for n in names)
        assert strip(iter_samples(names)) == samples
        assert sum(s.samples for s in shards) == len(samples)
        for info in shards:
            assert info.samples >= 1
            if maxcount is not None:
                assert info.samples <= maxcount
            if maxsize is not None and info.samples > 1:
                tar_size = sum(sample_tar_size(s) for s in iter_samples([info.name])) + END_MARKER
                assert tar_size <= maxsize


# --------------------------------------------------------------- CliRunner
def invoke(args, input=None):
    return CliRunner().invoke(tarsplit.app, args, input=input)


def test_cli_maxcount_manifest_and_verbose(imagenet_shard, tmp_path):
    manifest = tmp_path / "m.jsonl"
    out = tmp_path / "out-%04d.tar"
    result = invoke([str(imagenet_shard), "-n", "15", "-o", str(out), "--manifest", str(manifest), "-v"])
    assert result.exit_code == 0, result.stderr
    files = shard_files(tmp_path, "out-*.tar")
    assert [f.name for f in files] == ["out-0000.tar", "out-0001.tar", "out-0002.tar"]
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["samples"] for r in records] == [15, 15, 10]
    for record, path in zip(records, files):
        data = path.read_bytes()
        assert record["name"] == str(path)
        assert record["bytes"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
        assert f"tarsplit: {path}: {record['samples']} samples, {len(data)} bytes" in result.stderr
    members = sum((tar_members(f.read_bytes()) for f in files), [])
    assert members == tar_members(imagenet_shard.read_bytes())


def test_cli_maxsize_plain_prefix_gzip_start_maxshards(imagenet_shard, tmp_path):
    result = invoke([str(imagenet_shard), "-s", "20k", "-z", "-o", str(tmp_path / "pre"), "--start", "7", "--maxshards", "3"])
    # the input goes on after 3 shards: said without -v, and exit status 1 (nothing dropped silently)
    assert result.exit_code == 1, result.stderr
    files = shard_files(tmp_path)
    assert [f.name for f in files] == ["pre-000007.tar.gz", "pre-000008.tar.gz", "pre-000009.tar.gz"]
    for f in files:
        raw = f.read_bytes()
        assert raw[:2] == b"\x1f\x8b"
        assert len(gzip.decompress(raw)) <= 20 * 1024  # k = 1024 (coreutils), not 1000
    assert "warning: --maxshards 3 reached: sample 'n" in result.stderr
    assert "and the rest of the input were not written" in result.stderr


def test_cli_maxshards_that_take_the_whole_input_succeed(imagenet_shard, tmp_path):
    result = invoke([str(imagenet_shard), "-n", "10", "-o", str(tmp_path / "s-%d.tar"), "--maxshards", "4"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert len(shard_files(tmp_path)) == 4


def test_cli_oversized_sample_warns_but_succeeds(imagenet_shard, tmp_path):
    result = invoke([str(imagenet_shard), "-s", "2k", "-o", str(tmp_path / "o-%d.tar")])
    assert result.exit_code == 0
    assert "shard of its own" in result.stderr
    assert len(shard_files(tmp_path)) == 40


@pytest.mark.parametrize(
    "args,message",
    [
        (["-n", "5"], "missing -o"),
        (["-o", "x-%d.tar", "-C", "echo {nope}"], "unknown placeholder {nope}"),
        (["-s", "lots", "-o", "x-%d.tar"], "'lots' is not a size"),
        (["-n", "5", "-o", "-"], "not stdout"),
        (["-n", "0", "-o", "x-%d.tar"], "--maxcount"),
        (["-n", "5", "-z", "--compress", "xz", "-o", "x-%d.tar"], "disagree"),
    ],
)
def test_cli_usage_errors(imagenet_shard, tmp_path, args, message):
    result = invoke([str(imagenet_shard)] + args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not list(tmp_path.iterdir())


def test_cli_missing_input(tmp_path):
    result = invoke([str(tmp_path / "nope.tar"), "-n", "2", "-o", str(tmp_path / "o-%d.tar")])
    assert result.exit_code == 1
    assert "tarsplit: error:" in result.stderr and "nope.tar" in result.stderr


def test_cli_truncated_input_keeps_finished_shards_and_removes_the_partial_one(imagenet_shard, tmp_path):
    cut = tmp_path / "cut.tar"
    cut.write_bytes(imagenet_shard.read_bytes()[:50000])
    out = tmp_path / "out"
    out.mkdir()
    result = invoke([str(cut), "-n", "2", "-o", str(out / "o-%d.tar")])
    assert result.exit_code == 3
    assert "cut" in result.stderr
    complete = shard_files(out)
    assert complete and all(len(tar_members(f.read_bytes())) == 6 for f in complete)
    assert not list(out.glob("*.partial"))


# -------------------------------------------------------------- real pipes
def test_pipe_from_tarcats(imagenet_shard, tmp_path):
    result = run(f"tarcats {imagenet_shard} -o - | tarsplit -n 7 -o 'out-%06d.tar'", shell=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = shard_files(tmp_path)
    assert [f.name for f in files] == [f"out-{i:06d}.tar" for i in range(6)]
    assert sum((tar_members(f.read_bytes()) for f in files), []) == tar_members(imagenet_shard.read_bytes())


def test_pipe_from_tarproc(imagenet_shard, tmp_path):
    if not (BIN / "tarproc").exists() or run([str(BIN / "tarproc"), "--help"]).returncode != 0:
        pytest.skip("tarproc is not installed yet")
    result = run(f"tarproc -c true {imagenet_shard} -o - | tarsplit -n 10 -o 'out-%06d.tar'", shell=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = shard_files(tmp_path)
    assert len(files) == 4
    got = strip(iter_samples([str(f) for f in files]))
    expected = strip(iter_samples([str(imagenet_shard)]))
    assert [s["__key__"] for s in got] == [s["__key__"] for s in expected]
    assert [{k: s[k] for k in ("cls", "jpg", "json")} for s in got] == [
        {k: s[k] for k in ("cls", "jpg", "json")} for s in expected
    ]


def test_post_command_fails_on_one_shard(imagenet_shard, tmp_path):
    post = "test {index} != 2 || exit 5; cp {shard} up/{basename}"
    (tmp_path / "up").mkdir()
    result = run(["tarsplit", str(imagenet_shard), "-n", "10", "-o", "s-%02d.tar", "-C", post], cwd=tmp_path)
    assert result.returncode == 1
    assert b"tarsplit: error: s-02.tar: post command exited with status 5" in result.stderr
    assert sorted(os.listdir(tmp_path / "up")) == ["s-00.tar", "s-01.tar", "s-03.tar"]
    assert len(shard_files(tmp_path, "s-*.tar")) == 4


def test_post_command_output_goes_to_stderr_not_the_manifest(imagenet_shard, tmp_path):
    out = run(["tarsplit", "-n", "20", "-o", str(tmp_path / "s-%02d.tar"), "-C", "echo posted {index}", "--manifest", "-",
               str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["samples"] == 20 for line in lines)
    assert sorted(out.stderr.decode().split("\n")[:2]) == ["posted 0", "posted 1"]


def test_post_command_upload_and_remove(imagenet_shard, tmp_path):
    (tmp_path / "bucket").mkdir()
    post = "cp %s bucket/ && rm %s"
    result = run(["tarsplit", str(imagenet_shard), "-n", "9", "-o", "s-{shard:03d}.tar", "-C", post, "--post-parallel", "3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("s-*"))
    uploaded = sorted((tmp_path / "bucket").iterdir())
    assert [p.name for p in uploaded] == [f"s-{i:03d}.tar" for i in range(5)]
    assert sum((tar_members(p.read_bytes()) for p in uploaded), []) == tar_members(imagenet_shard.read_bytes())


def test_pipe_output_pattern(imagenet_shard, tmp_path):
    result = run(
        ["tarsplit", str(imagenet_shard), "-n", "16", "-o", "pipe:gzip > part-%02d.tgz", "--manifest", "m.jsonl"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    parts = shard_files(tmp_path, "part-*.tgz")
    assert [p.name for p in parts] == ["part-00.tgz", "part-01.tgz", "part-02.tgz"]
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    for record, part in zip(records, parts):
        tar = gzip.decompress(part.read_bytes())
        assert record["name"] == f"pipe:gzip > {part.name}"
        assert record["bytes"] == len(tar) and record["sha256"] == hashlib.sha256(tar).hexdigest()
    members = sum((tar_members(gzip.decompress(p.read_bytes())) for p in parts), [])
    assert members == tar_members(imagenet_shard.read_bytes())


def test_pipe_output_failure(imagenet_shard, tmp_path):
    result = run(["tarsplit", str(imagenet_shard), "-n", "16", "-o", "pipe:cat >/dev/null; exit 3"], cwd=tmp_path)
    assert result.returncode == 1
    assert b"command exited with status 3" in result.stderr


@pytest.mark.parametrize(
    "command,message",
    [
        ("exit 3", "command exited with status 3 before reading all of its input"),
        ("head -c 10 >/dev/null", "command exited before reading all of its input"),
        ("no-such-command-xyz", "command exited with status 127"),
    ],
)
def test_pipe_output_command_that_stops_reading(imagenet_shard, tmp_path, command, message):
    # shards far larger than a pipe buffer: the write fails (EPIPE) before the
    # command's status is known; this used to be a silent exit 141
    result = run(["tarsplit", str(imagenet_shard), "-n", "30", "-o", "pipe:" + command], cwd=tmp_path)
    assert result.returncode == 1
    assert f"tarsplit: error: pipe:{command}: {message}".encode() in result.stderr
    assert b"Traceback" not in result.stderr


def test_pipe_output_command_is_stopped_when_the_input_is_cut(imagenet_shard, tmp_path):
    # the last shard's command must not see a clean end of input: a compound
    # command ('gzip | cat') used to finish a valid .tgz of the cut shard
    cut = tmp_path / "cut.tar"
    cut.write_bytes(imagenet_shard.read_bytes()[:400000])
    result = run(["tarsplit", str(cut), "-n", "30", "-o", "pipe:gzip | cat > p-%d.tgz"], cwd=tmp_path)
    assert result.returncode == 3 and b"cut" in result.stderr
    assert [p.name for p in tmp_path.glob("p-*.tgz")] == ["p-0.tgz"]
    data = (tmp_path / "p-0.tgz").read_bytes()
    if data:  # killed before writing anything, or a gzip stream with no trailer
        with pytest.raises((EOFError, OSError)):
            gzip.decompress(data)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][:1] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_sigterm_kills_running_post_commands_and_their_children(imagenet_shard, tmp_path):
    # SIGTERM while tarsplit waits for the post commands at the end: they used
    # to go on (one was no longer listed while waited for, and close() did not abort)
    proc = subprocess.Popen(
        [str(BIN / "tarsplit"), str(imagenet_shard), "-n", "20", "-o", "s-%d.tar", "-C", "sleep 60 & echo $! > {shard}.pid; wait"],
        cwd=tmp_path, env=tool_env(), stderr=subprocess.PIPE,
    )  # fmt: skip
    pidfiles = [tmp_path / "s-0.tar.pid", tmp_path / "s-1.tar.pid"]
    deadline = time.monotonic() + 30
    while not all(p.exists() and p.read_text().strip() for p in pidfiles) and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in pidfiles]
    assert all(_alive(pid) for pid in pids)
    proc.send_signal(signal.SIGTERM)  # tarsplit is waiting for the oldest post command
    assert proc.wait(timeout=30) == -signal.SIGTERM  # 143 in a shell
    assert b"terminated" in proc.stderr.read()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def test_manifest_to_stdout(imagenet_shard, tmp_path):
    result = run(["tarsplit", str(imagenet_shard), "-n", "25", "-o", "s-%d.tar", "--manifest", "-"], cwd=tmp_path)
    assert result.returncode == 0
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [(r["name"], r["samples"]) for r in lines] == [("s-0.tar", 25), ("s-1.tar", 15)]


# ------------------------------------------------------------------ interop
def test_webdataset_reads_every_shard(imagenet_shard, tmp_path):
    wds = pytest.importorskip("webdataset")
    result = invoke([str(imagenet_shard), "-n", "12", "-o", str(tmp_path / "w-%03d.tgz")])
    assert result.exit_code == 0
    expected = strip(iter_samples([str(imagenet_shard)]))
    seen = []
    for path in shard_files(tmp_path):
        for sample in wds.WebDataset(str(path), shardshuffle=False):
            seen.append({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
    assert seen == expected


def test_gnu_tar_lists_shards(imagenet_shard, tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("no tar")
    invoke([str(imagenet_shard), "-n", "20", "-o", str(tmp_path / "g-%d.tar")])
    names = []
    for path in shard_files(tmp_path):
        listed = run(["tar", "tf", str(path)])
        assert listed.returncode == 0
        names += listed.stdout.decode().split()
    assert names == [n for n, _ in tar_members(imagenet_shard.read_bytes())]
