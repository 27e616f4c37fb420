"""tarcats: identity copy, concatenation, inputs (stdin, -T, braces, pipe:,
URLs), subsetting, shuffling, fields, rekey, interleave, bad shards, interop."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import run, tar_members
from tarproc.cli import tarcats
from tarproc.io.shards import split_samples
from tarproc.io.sources import iter_samples


def invoke(args, input=None):
    return CliRunner().invoke(tarcats.app, args, input=input)


def samples_of(data: bytes) -> list[dict]:
    path = io.BytesIO(data)
    from tarproc.samples import group_samples
    from tarproc.io.tario import iter_members
    from tarproc.io.compress import decompressing_reader

    return [{k: v for k, v in s.items() if k != "__source__"} for s in group_samples(iter_members(decompressing_reader(path)))]


def member_keys(data: bytes) -> list[str]:
    """Sample keys in member order (repeats allowed)."""
    out: list[str] = []
    for name, _ in tar_members(data):
        key = name.split(".")[0]
        if not out or out[-1] != key:
            out.append(key)
    return out


def keys(samples) -> list[str]:
    return [s["__key__"] for s in samples]


@pytest.fixture
def small(tmp_path) -> list[str]:
    """Three shards a, b, c of 4, 3 and 5 samples (b gzip-compressed)."""
    paths = []
    for name, n in (("a", 4), ("b", 3), ("c", 5)):
        suffix = ".tar.gz" if name == "b" else ".tar"
        samples = [
            {"__key__": f"{name}{i}", "cls": b"%d" % i, "jpg": bytes([i]) * (100 * i + 1)} for i in range(n)
        ]
        split_samples(samples, str(tmp_path / f"{name}-%d{suffix}"), maxcount=100)
        paths.append(str(tmp_path / f"{name}-0{suffix}"))
    return paths


# ---------------------------------------------------------------- identity
def test_no_options_reproduces_members_byte_identical(imagenet_shard, tmp_path):
    out = tmp_path / "copy.tar"
    result = invoke([str(imagenet_shard), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert tar_members(out.read_bytes()) == tar_members(imagenet_shard.read_bytes())
    assert out.read_bytes() == imagenet_shard.read_bytes()  # our own shard: deterministic headers


def test_no_options_reproduces_testdata_members(testdata, tmp_path):
    for path in sorted(testdata.iterdir()):
        result = run(["tarcats", str(path), "-o", "-"])
        assert result.returncode == 0, (path, result.stderr)
        assert tar_members(result.stdout) == tar_members(path.read_bytes()), path
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tf:
            assert {(m.mtime, m.uid, m.gid, m.mode) for m in tf} == {(0, 0, 0, 0o444)}


def test_testdata_through_tarcats_gives_the_samples_webdataset_sees(testdata, tmp_path):
    wds = pytest.importorskip("webdataset")

    def wds_samples(path):
        return [
            {k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")}
            for s in wds.WebDataset(str(path), shardshuffle=False)
        ]

    for path in sorted(testdata.iterdir()):
        out = tmp_path / (path.name + ".out.tar")
        assert invoke([str(path), "-o", str(out)]).exit_code == 0
        expected = wds_samples(path)
        assert expected and wds_samples(out) == expected, path
        assert samples_of(out.read_bytes()) == expected


def test_cat_of_two_archives_keeps_both(small, tmp_path):
    a, c = small[0], small[2]
    result = run(f"cat {a} {c} | tarcats -o -", shell=True)
    assert result.returncode == 0, result.stderr
    assert keys(samples_of(result.stdout)) == ["a0", "a1", "a2", "a3", "c0", "c1", "c2", "c3", "c4"]


def test_stdin_is_the_default_input(small):
    data = Path(small[1]).read_bytes()  # gzip: detected on stdin
    result = invoke(["-o", "-"], input=data)
    assert result.exit_code == 0
    assert keys(samples_of(result.stdout_bytes)) == ["b0", "b1", "b2"]


def test_several_inputs_in_order_and_compressed_output(small, tmp_path):
    out = tmp_path / "all.tar.xz"
    result = invoke(small + ["-o", str(out), "-v"])
    assert result.exit_code == 0
    assert out.read_bytes()[:6] == b"\xfd7zXZ\x00"
    assert keys(samples_of(out.read_bytes())) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "c0", "c1", "c2", "c3", "c4"]
    assert "12 samples" in result.stderr and "from 3 inputs" in result.stderr
    zst = invoke(small + ["-o", "-", "--compress", "zstd"])
    assert zst.stdout_bytes[:4] == b"\x28\xb5\x2f\xfd"


# ------------------------------------------------------------------ inputs
def test_filelist_brace_and_pipe_inputs(small, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{small[2]}\n# a comment\n\n{small[0]}\n")
    directory = Path(small[0]).parent
    args = ["tarcats", "-T", str(listing), str(directory / "{a,c}-0.tar"), f"pipe:cat {small[1]}", "-o", "-"]
    repeated = run(args)  # c-0.tar and a-0.tar come twice: their keys repeat
    assert repeated.returncode == 3 and b"an input given twice?" in repeated.stderr
    result = run(args + ["--rekey", "{index:02d}-{key}"])
    assert result.returncode == 0, result.stderr
    # inputs come first, then the file list's entries
    assert [k[3:] for k in member_keys(result.stdout)] == (
        ["a0", "a1", "a2", "a3", "c0", "c1", "c2", "c3", "c4", "b0", "b1", "b2"]
        + ["c0", "c1", "c2", "c3", "c4", "a0", "a1", "a2", "a3"]
    )


def test_filelist_from_stdin(small):
    result = run(["tarcats", "-T", "-", "-o", "-"], input="\n".join(small).encode())
    assert result.returncode == 0, result.stderr
    assert len(samples_of(result.stdout)) == 12
    clash = run(["tarcats", "-T", "-", "-", "-o", "-"], input=b"")
    assert clash.returncode == 2 and b"stdin" in clash.stderr


def test_file_url_and_fsspec_memory(small):
    fsspec = pytest.importorskip("fsspec")
    result = invoke([f"file://{small[0]}", "-o", "-"])
    assert result.exit_code == 0
    assert keys(samples_of(result.stdout_bytes)) == ["a0", "a1", "a2", "a3"]
    fs = fsspec.filesystem("memory")
    with fs.open("/t3/shard-0.tar", "wb") as handle:
        handle.write(Path(small[2]).read_bytes())
    try:
        result = invoke(["memory://t3/shard-0.tar", "-o", "-"])
        assert result.exit_code == 0, result.stderr
        assert keys(samples_of(result.stdout_bytes)) == ["c0", "c1", "c2", "c3", "c4"]
    finally:
        fs.rm("/t3", recursive=True)


def test_pipe_output(small, tmp_path):
    result = run(["tarcats", small[0], "-o", "pipe:gzip > out.tgz"], cwd=tmp_path)
    assert result.returncode == 0
    assert keys(samples_of(gzip.decompress((tmp_path / "out.tgz").read_bytes()))) == ["a0", "a1", "a2", "a3"]


def test_missing_input_fails_before_writing(small, tmp_path):
    out = tmp_path / "o.tar"
    result = invoke([small[0], str(tmp_path / "nope.tar"), "-o", str(out)])
    assert result.exit_code == 1
    assert "nope.tar: cannot open" in result.stderr
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_closed_downstream_pipe_is_quiet(imagenet_shard):
    result = run(f"tarcats {imagenet_shard} {imagenet_shard} {imagenet_shard} -o - | head -c 1000 > /dev/null; echo ${{PIPESTATUS[0]}}", shell=True)
    assert b"Traceback" not in result.stderr and result.stderr == b""
    assert result.stdout.strip() in (b"0", b"141")


# ----------------------------------------------------------------- subsets
@pytest.mark.parametrize(
    "args,expected",
    [
        (["--skip", "2", "--count", "3"], ["a2", "a3", "b0"]),
        (["--count", "0"], []),
        (["--slice", "1:10:4"], ["a1", "b1", "c2"]),
        (["--slice", "::5", "--count", "2"], ["a0", "b1"]),
        (["--slice", "10:"], ["c3", "c4"]),
    ],
)
def test_skip_count_slice(small, args, expected):
    result = invoke(small + args + ["-o", "-"])
    assert result.exit_code == 0, result.stderr
    assert keys(samples_of(result.stdout_bytes)) == expected


def test_shuffle_is_seeded_permutation(small):
    plain = keys(samples_of(invoke(small + ["-o", "-"]).stdout_bytes))
    one = keys(samples_of(invoke(small + ["--shuffle", "5", "--seed", "1", "-o", "-"]).stdout_bytes))
    again = keys(samples_of(invoke(small + ["--shuffle", "5", "--seed", "1", "-o", "-"]).stdout_bytes))
    other = keys(samples_of(invoke(small + ["--shuffle", "5", "--seed", "2", "-o", "-"]).stdout_bytes))
    assert sorted(one) == sorted(plain) and one != plain
    assert one == again and other != one


def test_shuffle_shards(small):
    orders = set()
    for seed in range(6):
        out = keys(samples_of(invoke(small + ["--shuffle-shards", "--seed", str(seed), "-o", "-"]).stdout_bytes))
        assert sorted(out) == sorted(keys(samples_of(invoke(small + ["-o", "-"]).stdout_bytes)))
        # shards stay whole: the samples of one shard are adjacent and in order
        shard_order = [k[0] for i, k in enumerate(out) if i == 0 or out[i - 1][0] != k[0]]
        assert sorted(shard_order) == ["a", "b", "c"]
        orders.add("".join(shard_order))
    assert len(orders) > 1


# -------------------------------------------------------- fields and keys
def test_fields_select_and_rename(small):
    result = invoke([small[0], "-f", "img=png,jpg cls", "-o", "-"])
    assert result.exit_code == 0
    names = [n for n, _ in tar_members(result.stdout_bytes)]
    assert names[:4] == ["a0.img", "a0.cls", "a1.img", "a1.cls"]
    original = {s["__key__"]: s for s in iter_samples([small[0]])}
    for sample in samples_of(result.stdout_bytes):
        assert sample["img"] == original[sample["__key__"]]["jpg"]


def test_fields_missing_error_and_skip(imagenet_shard, small):
    result = invoke([small[0], "-f", "txt", "-o", "-"])
    assert result.exit_code == 3
    assert "sample 'a0' has no field 'txt'" in result.stderr and "--missing skip" in result.stderr
    mixed = run(
        f"tarcats {small[0]} -f 'img=png' -o - | cat - {small[1]} | tarcats -f img --missing skip -o - -v",
        shell=True,
    )
    assert mixed.returncode == 0, mixed.stderr
    assert b"3 samples skipped for a missing field" in mixed.stderr
    assert keys(samples_of(mixed.stdout)) == []
    many = invoke([str(imagenet_shard), "-f", "png", "--missing", "skip", "-o", "-"])
    assert many.exit_code == 0
    assert many.stderr.count("has no field") == tarcats.MAX_SKIP_MESSAGES
    assert "40 samples skipped for a missing field" in many.stderr


def test_rekey_and_interleave(small):
    result = invoke(small + ["--interleave", "--rekey", "{shard}/{key}", "-o", "-"])
    assert result.exit_code == 0
    assert keys(samples_of(result.stdout_bytes)) == [
        "a-0/a0", "b-0/b0", "c-0/c0", "a-0/a1", "b-0/b1", "c-0/c1", "a-0/a2", "b-0/b2", "c-0/c2", "a-0/a3", "c-0/c3", "c-0/c4"
    ]  # fmt: skip
    indexed = invoke(small + ["--skip", "1", "--count", "3", "--rekey", "{index:09d}", "-o", "-"])
    assert keys(samples_of(indexed.stdout_bytes)) == ["000000000", "000000001", "000000002"]
    bad = invoke(small + ["--rekey", "{key}.x", "-o", "-"])
    assert bad.exit_code == 3 and "not a valid key" in bad.stderr
    usage = invoke(small + ["--rekey", "{nope}", "-o", "-"])
    assert usage.exit_code == 2


def test_rekey_to_a_repeated_key_is_an_error(small, tmp_path):
    # '{shard}' gives every sample of a shard the same key: written as is, the
    # samples would merge into one with repeated fields
    out = tmp_path / "o.tar"
    result = invoke(small + ["--rekey", "{shard}", "-o", str(out)])
    assert result.exit_code == 3
    assert "new key 'a-0' (from 'a1' with '{shard}') is the previous sample's key too" in result.stderr
    assert not out.exists()
    empty = invoke(small + ["--rekey", "", "-o", "-"])  # was silently ignored
    assert empty.exit_code == 2 and "empty key format" in empty.stderr


def test_pipe_output_command_that_exits_early(imagenet_shard):
    result = run(["tarcats", str(imagenet_shard), "-o", "pipe:exit 5"])
    assert result.returncode == 1
    assert b"tarcats: error: pipe:exit 5: command exited with status 5 before reading all of its input" in result.stderr
    assert b"Traceback" not in result.stderr


# -------------------------------------------------------------- bad shards
def cut(path: str, tmp_path: Path, keep: int) -> str:
    out = tmp_path / ("cut-" + Path(path).name)
    out.write_bytes(Path(path).read_bytes()[:keep])
    return str(out)


def test_corrupt_shard_ends_the_run_by_default(small, tmp_path):
    bad = cut(small[2], tmp_path, 3000)
    out = tmp_path / "o.tar"
    result = invoke([small[0], bad, small[1], "-o", str(out)])
    assert result.exit_code == 3
    assert "cut-c-0.tar: stream is cut" in result.stderr
    assert not out.exists()


def test_max_bad_shards_keeps_good_samples(small, tmp_path):
    # c-0.tar: c0 (cls 512+512, jpg 512+512), c1 (1024, 512+512): cut inside c2's jpg data
    bad = cut(small[2], tmp_path, 4 * 1024 + 1024 + 512 + 20)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x01" * 4096)
    result = invoke([small[0], bad, str(garbage), small[1], "--max-bad-shards", "2", "-o", "-"])
    assert result.exit_code == 1
    assert keys(samples_of(result.stdout_bytes)) == ["a0", "a1", "a2", "a3", "c0", "c1", "b0", "b1", "b2"]
    assert "bad shard" in result.stderr and "cut-c-0.tar" in result.stderr and "garbage.tar" in result.stderr
    over = invoke([small[0], bad, str(garbage), "--max-bad-shards", "1", "-o", "-"])
    assert over.exit_code == 3 and "; more than 1 bad shards; --max-bad-shards N allows more" in over.stderr


def _tar_of(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for field in ("bin", "cls"):
                info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
                info.size = len(sample[field])
                tar.addfile(info, io.BytesIO(sample[field]))
    return buf.getvalue()


def corrupt_tgz(tmp_path: Path, n: int = 200) -> tuple[str, list[dict]]:
    """A .tgz of ``n`` samples (6 MB, more than the reader's buffers) with 16
    bytes overwritten inside sample 5's data: stored deflate blocks (level
    0), so the stream decompresses and only the CRC-32 at its end fails, the
    way 16 bytes overwritten in a real-JPEG .tgz showed up (194 samples kept,
    one with altered bytes)."""
    samples = [{"__key__": f"s{i:03d}", "bin": bytes([i]) * 30000, "cls": b"%d" % i} for i in range(n)]
    buf = io.BytesIO(_tar_of(samples))
    data = bytearray(gzip.compress(buf.getvalue(), compresslevel=0, mtime=0))
    at = data.index(bytes([5]) * 64) + 16  # inside one stored block, whatever their size
    data[at : at + 16] = b"\xee" * 16
    path = tmp_path / "bad.tgz"
    path.write_bytes(bytes(data))
    return str(path), samples


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_max_bad_shards_keeps_no_unverified_sample_of_a_corrupt_tgz(small, tmp_path, parallel):
    bad, originals = corrupt_tgz(tmp_path)
    out = tmp_path / "out.tar"
    result = run(["tarcats", "-p", parallel, small[0], bad, "--max-bad-shards", "1", "-o", str(out)])
    assert result.returncode == 1, result.stderr
    stderr = result.stderr.decode()
    read = re.search(rf"bad shard {re.escape(bad)} \((\d+) samples read, none kept: a gzip stream's bytes are verified"
                     r" only by the check at its end\): corrupt gzip stream: CRC-32 or length check failed", stderr)
    assert read and int(read.group(1)) > 100, stderr  # read (the old code kept them, s005 altered), not kept
    written = samples_of(out.read_bytes())
    assert keys(written) == ["a0", "a1", "a2", "a3"]  # nothing of bad.tgz, which decompressed with altered bytes


def test_max_bad_shards_passes_a_good_tgz_on_whole(small, tmp_path):
    bad, originals = corrupt_tgz(tmp_path)
    good = tmp_path / "good.tgz"
    good.write_bytes(gzip.compress(_tar_of(originals), mtime=0))
    result = run(["tarcats", str(good), small[0], "--max-bad-shards", "1", "-o", "-"])
    assert result.returncode == 0, result.stderr
    written = samples_of(result.stdout)
    assert written[:200] == originals and keys(written[200:]) == ["a0", "a1", "a2", "a3"]


def test_max_bad_shards_counts_missing_inputs(small, tmp_path):
    result = invoke([str(tmp_path / "gone.tar"), small[0], "--max-bad-shards", "1", "-o", "-"])
    assert result.exit_code == 1
    assert keys(samples_of(result.stdout_bytes)) == ["a0", "a1", "a2", "a3"]
    assert "gone.tar" in result.stderr


def test_usage_errors(small):
    assert invoke(small + ["--interleave", "-p", "2", "-o", "-"]).exit_code == 2
    assert invoke(small + ["--slice", "5", "-o", "-"]).exit_code == 2
    assert invoke(small + ["-f", "a=", "-o", "-"]).exit_code == 2
    assert invoke(small + ["-f", "img=jpg=png", "-o", "-"]).exit_code == 2
    assert invoke(["-", "-", "-o", "-"]).exit_code == 2
