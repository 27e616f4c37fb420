"""tarproc.io.shards: size parsing, shard name patterns, ShardWriter limits,
manifest, post commands (quoting, failures, bounded overlap) and pipe: shards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest

from conftest import tar_members
from tarproc.errors import OutputError, UsageError
from tarproc.io.shards import (
    ShardInfo,
    ShardPattern,
    ShardWriter,
    post_command,
    sample_tar_size,
    split_samples,
)
from tarproc.io.sources import iter_samples
from tarproc.io.tario import TarWriter
from tarproc.samples import sample_members


def make_samples(n: int, size: int = 700, prefix: str = "s") -> list[dict]:
    return [
        {"__key__": f"{prefix}{i:04d}", "cls": str(i % 7).encode(), "bin": bytes([i % 251]) * (size + 13 * i)}
        for i in range(n)
    ]


def read_back(paths) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "__source__"} for s in iter_samples([str(p) for p in paths])]


# --------------------------------------------------------------- patterns
@pytest.mark.parametrize(
    "pattern,compression,index,expected",
    [
        ("out-%06d.tar", None, 3, "out-000003.tar"),
        ("out-%d.tar", None, 12, "out-12.tar"),
        ("100%%-%04d.tgz", None, 5, "100%-0005.tgz"),
        ("out-{shard:06d}.tar", None, 7, "out-000007.tar"),
        ("d/{shard}.tar", None, 42, "d/42.tar"),
        ("out", None, 2, "out-000002.tar"),
        ("out", "gzip", 2, "out-000002.tar.gz"),
        ("data/train.tgz", None, 1, "data/train-000001.tgz"),
        ("data/train.tar.zst", None, 0, "data/train-000000.tar.zst"),
        ("shards/", None, 9, "shards/000009.tar"),
        ("pipe:cat > /tmp/x-%03d.tar", None, 4, "pipe:cat > /tmp/x-004.tar"),
        ("pipe:cat > /tmp/x-{shard:02d}.tar", None, 4, "pipe:cat > /tmp/x-04.tar"),
    ],
)
def test_shard_pattern(pattern, compression, index, expected):
    assert ShardPattern(pattern, compression).name(index) == expected


@pytest.mark.parametrize("pattern", ["", "-"])
def test_shard_pattern_rejects_stdout(pattern):
    with pytest.raises(UsageError):
        ShardPattern(pattern)


@pytest.mark.parametrize(
    "pattern,message",
    [
        ("x-%s.tar", "use %d"),  # not silently a prefix 'x-%s-000000.tar'
        ("100%", "use %d"),
        ("z-{shard:q}.tar", "Unknown format code"),  # was a traceback when the first shard opened
        ("w-{other}.tar", "unknown placeholder {other}"),
        ("w-{index:04d}.tar", "unknown placeholder"),
    ],
)
def test_shard_pattern_rejects_bad_placeholders(pattern, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        ShardPattern(pattern)


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("pipe:cat > x-$(date +%Y)-%02d.tar", "pipe:cat > x-$(date +%Y)-03.tar"),
        ("pipe:cat > ${OUT:-o}/{shard}.tar", "pipe:cat > ${OUT:-o}/3.tar"),
        ("pipe:awk '{print}' > s-%d", "pipe:awk '{print}' > s-3"),
    ],
)
def test_pipe_pattern_keeps_the_shells_own_percent_and_braces(pattern, expected):
    assert ShardPattern(pattern).name(3) == expected


# -------------------------------------------------------------- tar sizes
@pytest.mark.parametrize(
    "key",
    ["plain", "d/" * 60 + "long", "x" * 120, "caf\u00e9/\u00fcber", "a/b"],
)
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 5000])
def test_sample_tar_size_matches_writer(key, size):
    sample = {"__key__": key, "__source__": "-", "txt": b"t" * size, "a.b": b"xy"}
    out = io.BytesIO()
    writer = TarWriter(out)
    for name, data in sample_members(sample):
        writer.add(name, data)
    assert sample_tar_size(sample) == len(out.getvalue())


# ------------------------------------------------------------ ShardWriter
def test_maxcount_splits_and_round_trips(tmp_path):
    samples = make_samples(10)
    shards = split_samples(samples, str(tmp_path / "out-%03d.tar"), maxcount=3)
    assert [s.name for s in shards] == [str(tmp_path / f"out-{i:03d}.tar") for i in range(4)]
    assert [s.samples for s in shards] == [3, 3, 3, 1]
    assert sorted(os.listdir(tmp_path)) == [f"out-{i:03d}.tar" for i in range(4)]  # no .partial left
    assert read_back(s.name for s in shards) == samples
    assert all(s.bytes == os.path.getsize(s.name) for s in shards)


def test_maxsize_never_exceeded_and_sample_never_straddles(tmp_path):
    samples = make_samples(30, size=900)
    limit = 6000
    shards = split_samples(samples, str(tmp_path / "s-%02d.tar"), maxsize=limit)
    assert len(shards) > 3
    for info in shards:
        assert os.path.getsize(info.name) <= limit
        keys = {name.split(".")[0] for name, _ in tar_members(Path(info.name).read_bytes())}
        assert len(keys) == info.samples
    # shards are filled: the first sample of the next shard would not have fitted
    for info, nxt in zip(shards, shards[1:]):
        first_next = read_back([nxt.name])[0]
        assert os.path.getsize(info.name) + sample_tar_size(first_next) > limit
    assert read_back(s.name for s in shards) == samples


def test_oversized_sample_gets_its_own_shard_with_warning(tmp_path):
    samples = make_samples(2, size=100) + [{"__key__": "big", "bin": b"B" * 20000}] + make_samples(2, 100, "t")
    warnings = []
    shards = split_samples(samples, str(tmp_path / "s-%02d.tar"), maxsize=8000, warn=warnings.append)
    assert [s.samples for s in shards] == [2, 1, 2]
    assert read_back([shards[1].name])[0]["__key__"] == "big"
    assert len(warnings) == 1 and "'big'" in warnings[0] and "shard of its own" in warnings[0]


def test_maxcount_and_maxsize_together(tmp_path):
    samples = make_samples(12, size=100)
    shards = split_samples(samples, str(tmp_path / "s-%02d.tar"), maxcount=4, maxsize=10**9)
    assert [s.samples for s in shards] == [4, 4, 4]


def test_start_and_maxshards(tmp_path):
    samples = make_samples(10)
    with ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=2, start=5, maxshards=3) as writer:
        written = writer.write_all(iter(samples))
    assert written == 6 and writer.full and writer.refused == "s0006"
    assert [os.path.basename(s.name) for s in writer.shards] == ["s-05.tar", "s-06.tar", "s-07.tar"]
    assert writer.write(samples[0]) is False


def test_bad_limits_are_usage_errors(tmp_path):
    with pytest.raises(UsageError):
        ShardWriter(str(tmp_path / "x-%d.tar"), maxcount=0)
    with pytest.raises(UsageError):
        ShardWriter(str(tmp_path / "x-%d.tar"), maxsize=-1)


def test_compression_from_suffix_and_explicit(tmp_path):
    samples = make_samples(4)
    gz = split_samples(samples, str(tmp_path / "a-%d.tar.gz"), maxcount=2)
    assert Path(gz[0].name).read_bytes()[:2] == b"\x1f\x8b"
    zst = split_samples(samples, str(tmp_path / "b"), maxcount=2, compression="zstd")
    assert Path(zst[0].name).read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert read_back(s.name for s in gz) == samples == read_back(s.name for s in zst)


def test_manifest_matches_files(tmp_path):
    manifest = io.StringIO()
    samples = make_samples(7)
    split_samples(samples, str(tmp_path / "m-%02d.tgz"), maxcount=3, manifest=manifest)
    records = [json.loads(line) for line in manifest.getvalue().splitlines()]
    assert [r["samples"] for r in records] == [3, 3, 1]
    for i, record in enumerate(records):
        data = Path(record["name"]).read_bytes()
        assert record["index"] == i
        assert record["bytes"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()


def test_error_removes_the_partial_shard_and_runs_no_post(tmp_path):
    marker = tmp_path / "posted"

    def samples():
        yield from make_samples(3)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path / "e-%d.tar"), maxcount=2, post=f"echo {{index}} >> {marker}") as writer:
            writer.write_all(samples())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e-0.tar", "posted"]  # the finished shard stays
    assert marker.read_text().split() == ["0"]


# ---------------------------------------------------------- post commands
def test_post_command_quotes_values():
    info = ShardInfo(3, "dir with space/it's-003.tar", 1, 10)
    assert post_command("cp {shard} /b/{basename} # {index}", info) == (
        "cp 'dir with space/it'\"'\"'s-003.tar' /b/'it'\"'\"'s-003.tar' # 3"
    )
    assert post_command("upload %s", info) == "upload 'dir with space/it'\"'\"'s-003.tar'"
    # with brace placeholders present, a %s is left alone
    assert post_command("date +%s; ls {basename}", info) == "date +%s; ls 'it'\"'\"'s-003.tar'"


def test_post_runs_per_shard_with_quoted_names(tmp_path):
    d = tmp_path / "a dir"
    d.mkdir()
    log = tmp_path / "log"
    split_samples(make_samples(5), str(d / "x'-%02d.tar"), maxcount=2, post=f'echo "$INDEX" {{basename}} >> {log} && test -s {{shard}}')
    assert sorted(log.read_text().splitlines()) == ["0 x'-00.tar", "1 x'-01.tar", "2 x'-02.tar"]


def test_post_failure_reported_with_shard_name_others_unaffected(tmp_path):
    failed = []
    log = tmp_path / "log"
    with ShardWriter(
        str(tmp_path / "f-%02d.tar"),
        maxcount=2,
        post=f'test "$INDEX" != 1 || exit 3; echo {{index}} >> {log}',
        on_post_error=lambda info, msg: failed.append((os.path.basename(info.name), msg)),
    ) as writer:
        writer.write_all(make_samples(6))
    assert failed == [("f-01.tar", "post command exited with status 3")]
    assert [os.path.basename(i.name) for i, _ in writer.failures] == ["f-01.tar"]
    assert sorted(log.read_text().split()) == ["0", "2"]
    assert len(list(tmp_path.glob("f-*.tar"))) == 3


@pytest.mark.parametrize("parallel", [1, 2])
def test_post_commands_in_flight_are_bounded(tmp_path, parallel):
    counts = tmp_path / "counts"
    post = f"cd {tmp_path} && touch run.{{index}} && ls run.* | wc -l >> counts && sleep 0.15 && rm run.{{index}}"
    split_samples(make_samples(8), str(tmp_path / "p-%d.tar"), maxcount=1, post=post, post_parallel=parallel)
    seen = [int(x) for x in counts.read_text().split()]
    assert len(seen) == 8 and max(seen) <= parallel


def test_post_overlaps_with_writing_the_next_shard(tmp_path):
    # each post command (but the last) waits until the next shard has been
    # written: this only finishes when posts run while writing goes on
    post = (
        'test {index} = 3 && exit 0; next=$(printf "%s/o-%d.tar" "$DIR" $((INDEX+1)));'
        ' for i in $(seq 100); do test -e "$next" && exit 0; sleep 0.05; done; exit 1'
    ).replace("$DIR", str(tmp_path))
    with ShardWriter(str(tmp_path / "o-%d.tar"), maxcount=1, post=post, post_parallel=2) as writer:
        writer.write_all(make_samples(4))
    assert writer.failures == []


# ------------------------------------------------------------ pipe shards
def test_pipe_pattern_streams_each_shard_and_hashes_it(tmp_path):
    manifest = io.StringIO()
    samples = make_samples(5)
    shards = split_samples(samples, f"pipe:cat > {tmp_path}/p-%02d.tar", maxcount=2, manifest=manifest)
    files = [tmp_path / f"p-{i:02d}.tar" for i in range(3)]
    assert read_back(files) == samples
    records = [json.loads(line) for line in manifest.getvalue().splitlines()]
    assert [r["name"] for r in records] == [f"pipe:cat > {f}" for f in files]
    for record, path in zip(records, files):
        assert record["bytes"] == path.stat().st_size
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [s.samples for s in shards] == [2, 2, 1]


def test_pipe_pattern_failure_is_output_error(tmp_path):
    with pytest.raises(OutputError, match="status 4"):
        split_samples(make_samples(3), "pipe:cat > /dev/null; exit 4", maxcount=2)
