"""tarproc.jobs.shuffle (partition, staged, map, reduce): partition hash, staged files, reducer, determinism."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from makeshards import imagenet_samples  # noqa: E402

from tarproc.errors import DataError, ExitStatus  # noqa: E402
from tarproc.jobs.shuffle.map import map_shard  # noqa: E402
from tarproc.jobs.shuffle.partition import count_samples, partition_function, shard_count  # noqa: E402
from tarproc.jobs.shuffle.reduce import DuplicateKeyError, reduce_partition  # noqa: E402
from tarproc.jobs.shuffle.staged import (  # noqa: E402
    INDEX_MEMBER,
    StagingError,
    iter_partition,
    read_staged_index,
    staged_index_ok,
)
from tarproc.io.sinks import open_sink  # noqa: E402
from tarproc.ops.sort import sort_key_function  # noqa: E402
from tarproc.io.sources import iter_samples  # noqa: E402

SHARDS = 20
PER_SHARD = 12


def write_inputs(directory: Path, shards: int = SHARDS, per_shard: int = PER_SHARD, distinct_keys: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = str(directory / f"in-{s:02d}.tar")
        with open_sink(path) as sink:
            for sample in imagenet_samples(per_shard, seed=s, size=(48, 32), distinct=2):
                if distinct_keys:
                    sample["__key__"] = f"{sample['__key__']}_{s:02d}"
                sink.write(sample)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """20 shards of real JPEG samples (Pillow), distinct keys."""
    return write_inputs(tmp_path_factory.mktemp("shuffle-in"))


def contents(paths) -> Counter:
    """Multiset of (key, field, sha256 of the bytes)."""
    return Counter(
        (s["__key__"], f, hashlib.sha256(v).hexdigest())
        for s in iter_samples(paths)
        for f, v in s.items()
        if not f.startswith("__")
    )


def keys(path) -> list[str]:
    return [s["__key__"] for s in iter_samples([path])]


def run_shuffle(inputs, out: Path, n: int, seed="0", shuffle=True, buffer_size=1 << 30, order=None) -> list[str]:
    """Map every input, reduce every partition (in ``order``), return outputs."""
    out.mkdir(parents=True, exist_ok=True)
    staged = [str(out / f"staged-{i:04d}.tar") for i in range(len(inputs))]
    for i in order or range(len(inputs)):
        map_shard(inputs[i], staged[i], n, seed, buffer_size=buffer_size)
    outputs = [str(out / f"out-{j:04d}.tar") for j in range(n)]
    for j in reversed(range(n)) if order else range(n):
        reduce_partition(staged, j, outputs[j], seed, shuffle, buffer_size=buffer_size)
    return outputs


def file_bytes(paths) -> list[bytes]:
    return [Path(p).read_bytes() for p in paths]


def test_partition_function_is_seeded_and_spreads():
    part = partition_function("7", 7)
    keys_ = [f"n01440764_{i}" for i in range(2000)]
    first = [part(k) for k in keys_]
    assert first == [partition_function("7", 7)(k) for k in keys_]
    assert set(first) == set(range(7))
    assert max(Counter(first).values()) < 2000 / 7 * 1.3  # about K each
    assert first != [partition_function("8", 7)(k) for k in keys_]
    with pytest.raises(Exception, match="positive"):
        partition_function("0", 0)


def test_staged_file_is_one_tar_grouped_by_partition(inputs, tmp_path):
    staged = str(tmp_path / "staged.tar")
    result = map_shard(inputs[0], staged, 5, "3")
    assert result.samples == PER_SHARD and sum(result.counts) == PER_SHARD
    with tarfile.open(staged) as tar:
        names = tar.getnames()
    assert names[0] == INDEX_MEMBER
    index = read_staged_index(staged)
    assert index.partitions == 5 and index.seed == "3" and index.input == inputs[0]
    part = partition_function("3", 5)
    seen = []
    data = Path(staged).read_bytes()
    for j, (offset, length, count) in enumerate(index.ranges):
        samples = list(iter_partition(staged, j))
        assert len(samples) == count
        assert all(part(s["__key__"]) == j for s in samples)
        # the range is whole tar members: tarfile reads it with an end marker added
        raw = data[index.data_start + offset : index.data_start + offset + length] + bytes(1024)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            assert len({m.name.split(".")[0] for m in tar.getmembers()}) == count
        seen += [s["__key__"] for s in samples]
    original = keys(inputs[0])
    assert sorted(seen) == sorted(original)
    # each partition keeps input order
    assert seen == sorted(seen, key=lambda k: (part(k), original.index(k)))
    assert staged_index_ok(staged, 5, "3", inputs[0])
    assert not staged_index_ok(staged, 6, "3", inputs[0])
    assert not staged_index_ok(staged, 5, "4", inputs[0])
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]


def test_map_spills_to_runs_with_the_same_bytes(inputs, tmp_path):
    memory = map_shard(inputs[1], str(tmp_path / "a.tar"), 4, "1", buffer_size=1 << 30)
    spilled = map_shard(inputs[1], str(tmp_path / "b.tar"), 4, "1", buffer_size=20000)
    assert memory.spilled_runs == 0 and spilled.spilled_runs > 2
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_twenty_shards_to_seven(inputs, tmp_path):
    outputs = run_shuffle(inputs, tmp_path / "a", 7, seed="5")
    assert contents(outputs) == contents(inputs)  # every sample exactly once, bytes intact
    flat = [k for p in outputs for k in keys(p)]
    original = [k for p in inputs for k in keys(p)]
    assert flat != original and sorted(flat) == sorted(original)
    shuffled = sort_key_function(shuffle=True, seed="5")
    part = partition_function("5", 7)
    for j, path in enumerate(outputs):
        ks = keys(path)
        assert ks and all(part(k) == j for k in ks)
        # the order inside a shard is tarsort --shuffle's, not the input's
        assert ks == sorted(ks, key=lambda k: shuffled({"__key__": k}))
        assert ks != sorted(ks, key=original.index)
    # same seed, other task order and memory budget (spills, external sort): same bytes
    again = run_shuffle(inputs, tmp_path / "b", 7, seed="5", buffer_size=30000, order=list(reversed(range(SHARDS))))
    assert file_bytes(again) == file_bytes(outputs)
    other = run_shuffle(inputs, tmp_path / "c", 7, seed="6")
    assert contents(other) == contents(inputs)
    assert [k for p in other for k in keys(p)] != flat


def test_no_shuffle_keeps_input_order(inputs, tmp_path):
    outputs = run_shuffle(inputs, tmp_path, 7, seed="5", shuffle=False)
    assert contents(outputs) == contents(inputs)
    original = [k for p in inputs for k in keys(p)]
    for path in outputs:
        ks = keys(path)
        assert ks == sorted(ks, key=original.index)


def test_duplicate_keys_across_inputs_fail_and_write_nothing(tmp_path):
    paths = write_inputs(tmp_path / "in", shards=2, per_shard=6, distinct_keys=False)
    staged = [str(tmp_path / f"s{i}.tar") for i in range(2)]
    for i, path in enumerate(paths):
        map_shard(path, staged[i], 3, "0")
    for j in range(3):
        out = tmp_path / f"out-{j}.tar"
        with pytest.raises(DuplicateKeyError) as info:
            reduce_partition(staged, j, str(out), "0", shuffle=j != 1)
        message = str(info.value)
        assert paths[0] in message and paths[1] in message
        assert info.value.key in message and "prefix" in message
        assert "--" not in message.replace(paths[0], "").replace(paths[1], "")  # data words, no flags
        assert info.value.topic == "duplicate_key"  # the tool adds its option (tarshuffle.HINTS)
        assert isinstance(info.value, DataError) and info.value.exit_status == ExitStatus.DATA
        assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out-")]
    # the remedy: rekey per input
    outputs = []
    for i, path in enumerate(paths):
        map_shard(path, staged[i], 3, "0", rekey="{shard}/{key}")
    for j in range(3):
        outputs.append(str(tmp_path / f"out-{j}.tar"))
        reduce_partition(staged, j, outputs[j], "0")
    got = Counter(k for p in outputs for k in keys(p))
    assert len(got) == 12 and set(got.values()) == {1}
    assert {k.split("/")[0] for k in got} == {"in-00", "in-01"}


def test_staging_of_another_run_is_refused(inputs, tmp_path):
    staged = str(tmp_path / "s.tar")
    map_shard(inputs[0], staged, 3, "0")
    with pytest.raises(StagingError, match="another run"):
        reduce_partition([staged], 0, str(tmp_path / "o.tar"), seed="1")
    with pytest.raises(StagingError, match="missing"):
        reduce_partition([str(tmp_path / "nope.tar")], 0, str(tmp_path / "o.tar"))
    Path(staged).write_bytes(Path(inputs[0]).read_bytes())
    with pytest.raises(StagingError, match="not a staged file"):
        read_staged_index(staged)
    assert not (tmp_path / "o.tar").exists()


def test_staging_on_an_fsspec_url_reads_ranges(inputs, tmp_path):
    pytest.importorskip("fsspec")
    staged = [f"memory://shuffle-test/staged-{i}.tar" for i in range(3)]
    for i in range(3):
        map_shard(inputs[i], staged[i], 2, "9")
    local = [str(tmp_path / f"s{i}.tar") for i in range(3)]
    for i in range(3):
        map_shard(inputs[i], local[i], 2, "9")
    for j in range(2):
        reduce_partition(staged, j, str(tmp_path / f"url-{j}.tar"), "9")
        reduce_partition(local, j, str(tmp_path / f"loc-{j}.tar"), "9")
        assert (tmp_path / f"url-{j}.tar").read_bytes() == (tmp_path / f"loc-{j}.tar").read_bytes()


def test_counting_and_shard_count(inputs):
    assert count_samples(inputs[0]) == PER_SHARD
    assert shard_count(240, 35) == 7 and shard_count(0, 5) == 1 and shard_count(10, 10) == 1
