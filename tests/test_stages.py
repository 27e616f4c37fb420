"""tarproc.ops.stages (slice, shuffle, fields, rekey, interleave, bad shards,
file lists) and tarproc.io.parallel (parallel shard reader)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tarproc.errors import ArchiveError, SampleError, SourceError, TarprocError, TruncatedError, UsageError
from tarproc.io.parallel import ParallelReader, parallel_samples
from tarproc.io.shards import split_samples
from tarproc.io.sources import iter_samples
from tarproc.io.sources import read_filelist
from tarproc.ops.stages import (
    BadShards,
    FieldRule,
    FieldSelector,
    Rekeyer,
    interleave,
    open_shards,
    parse_fields,
    parse_slice,
    shard_stem,
    shuffle_list,
    shuffle_samples,
    skip_count,
    slice_samples,
)


def make_samples(n: int, prefix: str = "k", source: str = "src.tar") -> list[dict]:
    return [
        {"__key__": f"{prefix}{i:03d}", "__source__": source, "jpg": b"J%d" % i, "cls": b"%d" % (i % 3)}
        for i in range(n)
    ]


def keys(samples) -> list[str]:
    return [s["__key__"] for s in samples]


def strip(samples) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "__source__"} for s in samples]


# ----------------------------------------------------------------- slicing
@pytest.mark.parametrize(
    "text,expected",
    [("1:10", (1, 10, 1)), (":5", (0, 5, 1)), ("3:", (3, None, 1)), ("0:100:10", (0, 100, 10)), ("::2", (0, None, 2))],
)
def test_parse_slice(text, expected):
    assert parse_slice(text) == expected


@pytest.mark.parametrize("text", ["5", "a:b", "-1:5", "1:2:0", "1:2:3:4", "1:-2"])
def test_parse_slice_rejects(text):
    with pytest.raises(UsageError):
        parse_slice(text)


def test_slice_and_skip_count():
    samples = make_samples(20)
    assert keys(slice_samples(samples, 2, 11, 3)) == ["k002", "k005", "k008"]
    assert keys(skip_count(samples, 17)) == ["k017", "k018", "k019"]
    assert keys(skip_count(samples, 1, 2)) == ["k001", "k002"]
    assert keys(skip_count(samples, 0, 0)) == []


def test_slice_stops_reading_at_stop():
    consumed = []

    def source():
        for s in make_samples(100):
            consumed.append(s["__key__"])
            yield s

    assert len(list(slice_samples(source(), 0, 5))) == 5
    assert len(consumed) == 5


# --------------------------------------------------------------- shuffling
def test_shuffle_is_a_seeded_permutation_with_bounded_buffer():
    samples = make_samples(200)
    consumed = [0]

    def source():
        for s in samples:
            consumed[0] += 1
            yield s

    it = shuffle_samples(source(), 20, seed=3)
    first = next(it)
    assert consumed[0] == 21  # buffer of 20 filled, the 21st replaces one that is yielded
    out = [first] + list(it)
    assert sorted(keys(out)) == keys(samples)
    assert keys(out) != keys(samples)
    assert keys(out) == keys(shuffle_samples(samples, 20, seed=3))
    assert keys(out) != keys(shuffle_samples(samples, 20, seed=4))


def test_shuffle_buffer_of_one_keeps_order():
    samples = make_samples(10)
    assert list(shuffle_samples(samples, 1, seed=1)) == samples


def test_shuffle_list():
    items = [f"s{i}" for i in range(30)]
    shuffled = shuffle_list(items, seed=5)
    assert sorted(shuffled) == sorted(items) and shuffled != items
    assert shuffle_list(items, seed=5) == shuffled
    assert items == [f"s{i}" for i in range(30)]  # not shuffled in place


# ------------------------------------------------------------------ fields
def test_parse_fields():
    assert parse_fields("img=jpg,jpeg,png cls") == [FieldRule("img", ("jpg", "jpeg", "png")), FieldRule(None, ("cls",))]
    assert parse_fields(["a;b", "c=d"]) == [FieldRule(None, ("a", "b")), FieldRule("c", ("d",))]


@pytest.mark.parametrize("spec", ["", "   ", "=jpg", "img=", "img=jpg,,png", "a a", "x=jpg x=png", "__key__", "a/b"])
def test_parse_fields_rejects(spec):
    with pytest.raises(UsageError):
        parse_fields(spec)


def test_field_selector_selects_renames_and_orders():
    samples = [
        {"__key__": "a", "__source__": "s", "png": b"P", "cls": b"1", "txt": b"t"},
        {"__key__": "b", "__source__": "s", "jpeg": b"E", "jpg": b"J", "cls": b"2"},
    ]
    out = list(FieldSelector("cls img=jpg,jpeg,png")(samples))
    assert out == [
        {"__key__": "a", "__source__": "s", "cls": b"1", "img": b"P"},
        {"__key__": "b", "__source__": "s", "cls": b"2", "img": b"J"},
    ]
    assert [list(s) for s in out] == [["__key__", "__source__", "cls", "img"]] * 2
    # alternatives without a new name keep the name they were found with
    assert [sorted(s) for s in FieldSelector("jpg,png")(samples)] == [["__key__", "__source__", "png"], ["__key__", "__source__", "jpg"]]


def test_field_selector_missing_error_and_skip():
    samples = make_samples(3) + [{"__key__": "nojpg", "__source__": "x.tar", "cls": b"1"}] + make_samples(2, "z")
    with pytest.raises(SampleError, match=r"x\.tar: sample 'nojpg' has no field 'jpg' or 'png' \(it has cls\)"):
        list(FieldSelector("img=jpg,png")(samples))
    messages = []
    selector = FieldSelector("img=jpg,png", missing="skip", warn=messages.append)
    out = list(selector(samples))
    assert keys(out) == ["k000", "k001", "k002", "z000", "z001"]
    assert selector.skipped == 1 and len(messages) == 1 and "nojpg" in messages[0]
    with pytest.raises(UsageError):
        FieldSelector("jpg", missing="maybe")


# ------------------------------------------------------------------ rekey
@pytest.mark.parametrize(
    "source,stem",
    [("data/train-0003.tar.gz", "train-0003"), ("a.tgz", "a"), ("-", "stdin"), ("pipe:cat x", "pipe"),
     ("https://h/p/s-01.tar?x=1", "s-01"), ("x.v2-01.tar.zst", "x.v2-01")],
)
def test_shard_stem(source, stem):
    assert shard_stem(source) == stem


def test_rekey_formats():
    samples = make_samples(3, source="dir/part-07.tar")
    assert keys(Rekeyer("{index:09d}")(samples)) == ["000000000", "000000001", "000000002"]
    assert keys(Rekeyer("{shard}/{key}")(samples)) == ["part-07/k000", "part-07/k001", "part-07/k002"]
    assert keys(Rekeyer("{key}_{index}")(samples)) == ["k000_0", "k001_1", "k002_2"]
    assert samples[0]["__key__"] == "k000"  # input samples not changed
    out = list(Rekeyer("{index}")(samples))
    assert out[1]["jpg"] == b"J1" and out[1]["__source__"] == "dir/part-07.tar"


@pytest.mark.parametrize("fmt", ["{nope}", "{index", "{0}", "{index:zz}"])
def test_rekey_bad_format(fmt):
    with pytest.raises(UsageError):
        Rekeyer(fmt)


@pytest.mark.parametrize("fmt", ["{key}.v2", "/{key}", "../{key}", "{key}/"])
def test_rekey_refuses_invalid_keys(fmt):
    with pytest.raises(SampleError, match="not a valid key"):
        list(Rekeyer(fmt)(make_samples(1)))


# -------------------------------------------------------------- interleave
def test_interleave_round_robin_uneven():
    a, b, c = make_samples(3, "a"), make_samples(1, "b"), make_samples(2, "c")
    assert keys(interleave([a, b, c])) == ["a000", "b000", "c000", "a001", "c001", "a002"]
    assert list(interleave([])) == []


# ------------------------------------------------------------- bad shards
def cut_shard(tmp_path: Path, name: str, n: int, keep_samples: float) -> str:
    """A shard of ``n`` samples cut in the middle of a sample's data."""
    good = tmp_path / (name + ".full")
    split_samples(make_samples(n, prefix=name.split(".")[0] + "_"), str(good) + "-%d", maxcount=10**6)
    data = Path(str(good) + "-0").read_bytes()
    path = tmp_path / name
    # every sample is 2 members of 1024 bytes each (512 header + 512 data): cut inside the next one's jpg data
    path.write_bytes(data[: int(keep_samples) * 2048 + 512 + 100])
    return str(path)


def test_bad_shards_keep_good_samples_and_count(tmp_path):
    good1 = str(tmp_path / "g1.tar")
    split_samples(make_samples(4, "g1_"), good1.replace(".tar", "-%d.tar"), maxcount=100)
    good1 = good1.replace(".tar", "-0.tar")
    bad = cut_shard(tmp_path, "bad.tar", 10, 6)
    messages = []
    guard = BadShards(1, messages.append)
    out = list(open_shards([good1, bad, good1], bad=guard))
    assert keys(out) == keys(make_samples(4, "g1_")) + [f"bad_{i:03d}" for i in range(6)] + keys(make_samples(4, "g1_"))
    assert [s for s, _ in guard.bad] == [bad]
    assert len(messages) == 1 and "cut" in messages[0]
    assert messages[0].startswith(f"bad shard {bad} (6 samples before the fault kept: an uncompressed tar has no data"
                                  " checksum): ") and messages[0].count(bad) == 1


def test_bad_shards_limit(tmp_path):
    bad1 = cut_shard(tmp_path, "b1.tar", 5, 2)
    bad2 = cut_shard(tmp_path, "b2.tar", 5, 3)
    with pytest.raises(TruncatedError) as info:
        list(open_shards([bad1, bad2], bad=BadShards(1)))
    assert "b2.tar" in str(info.value) and "; more than 1 bad shards" in str(info.value)
    # limit 0: the original error, unchanged
    with pytest.raises(TruncatedError) as info:
        list(open_shards([bad1], bad=BadShards(0)))
    assert "more than" not in str(info.value)
    # a missing input counts as a bad shard
    guard = BadShards(2)
    out = list(open_shards([str(tmp_path / "missing.tar"), bad1], bad=guard))
    assert len(out) == 2 and len(guard.bad) == 2


def test_bad_shards_let_usage_errors_through():
    def failing():
        yield from make_samples(1)
        raise UsageError("bad option")

    with pytest.raises(UsageError):
        list(BadShards(5).guard(failing(), "x"))


def test_bad_shards_hold_a_shard_beyond_memory_in_a_temporary_file(tmp_path, monkeypatch):
    import tarproc.ops.stages as stages

    monkeypatch.setattr(stages, "HOLD_MEMORY", 100)  # a few samples in memory, the rest pickled to a file
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    samples = make_samples(50)
    opened = []
    real = tempfile.TemporaryFile

    def spy(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", spy)
    assert list(BadShards(1).guard(iter(samples), "x")) == samples
    assert len(opened) == 1 and opened[0].closed  # spooled, then closed (an anonymous file: no name left)
    assert list(tmp_path.iterdir()) == []


def test_open_shards_interleaved(tmp_path):
    paths = []
    for name, n in (("a", 3), ("b", 2)):
        split_samples(make_samples(n, name), str(tmp_path / f"{name}-%d.tar"), maxcount=100)
        paths.append(str(tmp_path / f"{name}-0.tar"))
    assert keys(open_shards(paths, interleaved=True)) == ["a000", "b000", "a001", "b001", "a002"]
    assert keys(open_shards(paths)) == ["a000", "a001", "a002", "b000", "b001"]


def test_read_filelist(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.tar\n\n  # comment\nb-{0..1}.tar\n pipe:cat c.tar \n")
    assert read_filelist(str(listing)) == ["a.tar", "b-{0..1}.tar", "pipe:cat c.tar"]
    import io

    assert read_filelist("-", stdin=io.StringIO("x.tar\ny.tar\n")) == ["x.tar", "y.tar"]
    with pytest.raises(SourceError):
        read_filelist(str(tmp_path / "nope.txt"))


# ---------------------------------------------------------------- parallel
@pytest.fixture
def five_shards(tmp_path) -> list[str]:
    paths = []
    for i in range(5):
        suffix = ".tar.gz" if i == 2 else ".tar"
        split_samples(make_samples(7 * (i + 1), prefix=f"s{i}_"), str(tmp_path / f"p{i}-%d{suffix}"), maxcount=10**6)
        paths.append(str(tmp_path / f"p{i}-0{suffix}"))
    return paths


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_parallel_samples_equal_serial(five_shards, processes):
    serial = list(iter_samples(five_shards))
    assert len(serial) == 7 * 15
    parallel = list(parallel_samples(five_shards, processes, chunk_samples=4, queue_chunks=2))
    assert parallel == serial


def test_parallel_worker_error_surfaces_in_order(five_shards, tmp_path):
    bad = cut_shard(tmp_path, "bad.tar", 10, 4)
    specs = five_shards[:2] + [bad] + five_shards[2:]
    got = []
    with pytest.raises(TruncatedError, match="bad.tar: stream is cut"):
        for sample in parallel_samples(specs, 2, chunk_samples=3):
            got.append(sample["__key__"])
    expected = keys(iter_samples(five_shards[:2])) + [f"bad_{i:03d}" for i in range(4)]
    assert got == expected


def test_parallel_with_bad_shards_goes_on(five_shards, tmp_path):
    bad = cut_shard(tmp_path, "bad.tar", 10, 4)
    specs = [five_shards[0], bad, str(tmp_path / "missing.tar"), five_shards[1]]
    guard = BadShards(2)
    with ParallelReader(specs, 2) as reader:
        out = list(itertools.chain.from_iterable(guard.guard(s, spec) for spec, s in reader.shards()))
    assert keys(out) == keys(iter_samples([five_shards[0]])) + [f"bad_{i:03d}" for i in range(4)] + keys(
        iter_samples([five_shards[1]])
    )
    assert [s for s, _ in guard.bad] == specs[1:3]
    assert isinstance(guard, BadShards)


def test_parallel_early_stop_terminates_workers(five_shards):
    reader = ParallelReader(five_shards * 4, 2, chunk_samples=1, queue_chunks=1)
    first = list(itertools.islice(reader.samples(), 3))
    assert len(first) == 3
    reader.close()
    assert all(not p.is_alive() for p in reader._procs)


def test_parallel_forwards_warnings(tmp_path, five_shards):
    import io
    import tarfile

    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("b.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "a.txt"
        tf.addfile(link)
    messages = []
    out = list(parallel_samples([five_shards[0], str(path)], 2, warn=messages.append))
    assert keys(out)[-1] == "a"
    assert any("symbolic link" in m and "b.txt" in m for m in messages)


def test_parallel_refuses_stdin():
    with pytest.raises(UsageError):
        ParallelReader(["a.tar", "-"], 2)


def test_parallel_error_classes(tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"x" * 2048)
    with pytest.raises(ArchiveError, match="not a tar archive"):
        list(parallel_samples([str(garbage), str(garbage)], 2))
    with pytest.raises(SourceError, match="cannot open"):
        list(parallel_samples([str(tmp_path / "none.tar"), str(garbage)], 2))
    assert issubclass(SourceError, TarprocError)
