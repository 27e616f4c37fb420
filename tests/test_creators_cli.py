"""lines2tar, tsv2tar and dir2tar through CliRunner and real pipes; GNU tar
and webdataset read what they write."""

from __future__ import annotations

import functools
import os
import subprocess
import tarfile

import pytest
from conftest import run, tar_members
from typer.testing import CliRunner

from tarproc import iter_samples
from tarproc.cli import dir2tar as dir2tar_cli
from tarproc.cli import lines2tar as lines2tar_cli
from tarproc.cli import tsv2tar as tsv2tar_cli

runner = CliRunner()


@functools.lru_cache(maxsize=1)
def gnu_tar() -> str | None:
    try:
        out = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    return "tar" if "GNU tar" in out else None


def webdataset_samples(path) -> list[dict]:
    wds = pytest.importorskip("webdataset")
    return [
        {k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
        for s in wds.WebDataset(str(path), shardshuffle=False)
    ]


def our_samples(path) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "__source__"} for s in iter_samples([str(path)])]


# ------------------------------------------------------------------ lines2tar

URLS = b"http://x/1.jpg a red car\nhttp://x/2.jpg\ta dog\n\nhttp://x/3.jpg three\r\n"


def test_lines2tar_fields_keys_and_order():
    result = runner.invoke(lines2tar_cli.app, ["-k", "url txt"], input=URLS)
    assert result.exit_code == 0, result.stderr
    assert tar_members(result.stdout_bytes) == [
        ("000000000.txt", b"a red car"), ("000000000.url", b"http://x/1.jpg"),
        ("000000001.txt", b"a dog"), ("000000001.url", b"http://x/2.jpg"),
        ("000000002.txt", b"three"), ("000000002.url", b"http://x/3.jpg"),
    ]


def test_lines2tar_separator_keycolumn_keyformat(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"one\ttwo words\n")
    b.write_bytes(b"three\n")
    result = runner.invoke(lines2tar_cli.app, ["-k", "txt", "--keyformat", "img{:03d}", "--start", "5", str(a), str(b)])
    assert [n for n, _ in tar_members(result.stdout_bytes)] == ["img005.txt", "img006.txt"]
    result = runner.invoke(lines2tar_cli.app, ["-k", "__key__ txt", "-s", "\\t"], input=b"k1\tA b\nk2\tC\n")
    assert tar_members(result.stdout_bytes) == [("k1.txt", b"A b"), ("k2.txt", b"C")]


def test_lines2tar_errors():
    result = runner.invoke(lines2tar_cli.app, ["-k", "url txt"], input=b"a b\nc\n")
    assert result.exit_code == 3 and "lines2tar: error: -:2: expected 2 values" in result.stderr
    result = runner.invoke(lines2tar_cli.app, ["-k", "__key__ txt"], input=b"a.b x\n")
    assert result.exit_code == 3 and "dot" in result.stderr
    assert runner.invoke(lines2tar_cli.app, ["--keyformat"]).exit_code == 2
    assert runner.invoke(lines2tar_cli.app, ["-k", "a", "--keyformat", "{:z}"]).exit_code == 2
    assert runner.invoke(lines2tar_cli.app, ["-k", "a", "-s", ""]).exit_code == 2


def test_lines2tar_deterministic_file_and_webdataset(tmp_path):
    src = tmp_path / "urls.txt"
    src.write_bytes(URLS)
    one, two = tmp_path / "one.tgz", tmp_path / "two.tgz"
    for out in (one, two):
        result = run(["lines2tar", "-k", "url txt", str(src), "-o", str(out)])
        assert result.returncode == 0, result.stderr
    assert one.read_bytes() == two.read_bytes() and one.read_bytes()[:2] == b"\x1f\x8b"
    assert webdataset_samples(one) == our_samples(one)
    assert [s["__key__"] for s in webdataset_samples(one)] == ["000000000", "000000001", "000000002"]


# -------------------------------------------------------------------- tsv2tar


@pytest.fixture
def plan_dir(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"\xff\xd8\xffA")
    (tmp_path / "img" / "b.jpg").write_bytes(b"\xff\xd8\xffB")
    (tmp_path / "plan.tsv").write_bytes(
        b"__key__\t@jpg\tcls\ttxt\n"
        b"n01/a\timg/a.jpg\t0\ta cat\n"
        b"n02/b\timg/b.jpg\t1\t\n"
    )
    return tmp_path


def test_tsv2tar_reads_files_relative_to_C(plan_dir):
    result = runner.invoke(tsv2tar_cli.app, ["-C", str(plan_dir), str(plan_dir / "plan.tsv")])
    assert result.exit_code == 0, result.stderr
    assert tar_members(result.stdout_bytes) == [
        ("n01/a.cls", b"0"), ("n01/a.jpg", b"\xff\xd8\xffA"), ("n01/a.txt", b"a cat"),
        ("n02/b.cls", b"1"), ("n02/b.jpg", b"\xff\xd8\xffB"),
    ]


def test_tsv2tar_stdin_pipe_deterministic_and_webdataset(plan_dir):
    out1, out2 = plan_dir / "o1.tar", plan_dir / "o2.tar"
    for out in (out1, out2):
        result = run(f"cat plan.tsv | tsv2tar - -o {out}", shell=True, cwd=plan_dir)
        assert result.returncode == 0, result.stderr
    assert out1.read_bytes() == out2.read_bytes()
    assert webdataset_samples(out1) == our_samples(out1)


def test_tsv2tar_errors(plan_dir):
    result = runner.invoke(tsv2tar_cli.app, [str(plan_dir / "plan.tsv")])  # -C defaults to the current dir
    assert result.exit_code == 1 and "img/a.jpg: cannot read" in result.stderr
    result = runner.invoke(tsv2tar_cli.app, [str(plan_dir / "missing.tsv")])
    assert result.exit_code == 1 and "No such file" in result.stderr
    result = runner.invoke(tsv2tar_cli.app, ["-"], input=b"a\tb\n1\n")
    assert result.exit_code == 1 and "-:2: expected 2 columns, got 1" in result.stderr


# -------------------------------------------------------------------- dir2tar

TREE = {
    "train/cat/001.jpg": b"\xff\xd8\xff cat 1",
    "train/cat/001.json": b'{"cat": 1}',
    "train/cat/002.jpg": b"\xff\xd8\xff cat 2",
    "train/dog/001.jpg": b"\xff\xd8\xff dog 1",
    "train/dog/001.seg.png": b"\x89PNG seg",
    "val/x.a.txt": b"multi-dot field",
    "val/x.d/y.txt": b"dotted directory",
    "val/x.z": b"after the dotted directory",
    "val/big.bin": bytes(range(256)) * 700,
    "n" * 120 + "/long.txt": b"long path needs pax",
    "caf\u00e9/\u00e9t\u00e9.txt": b"utf-8 names",
    "empty.txt": b"",
}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    for rel, data in TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_dir2tar_samples(tree):
    result = runner.invoke(dir2tar_cli.app, [str(tree)])
    assert result.exit_code == 0, result.stderr
    members = tar_members(result.stdout_bytes)
    assert dict(members) == TREE and len(members) == len(TREE)
    names = [n for n, _ in members]
    assert names.index("val/x.z") == names.index("val/x.a.txt") + 1  # key val/x kept together


def test_dir2tar_gnu_tar_round_trip_byte_identical(tree, tmp_path):
    if not gnu_tar():
        pytest.skip("tar --version does not say GNU tar")
    out = tmp_path / "tree.tar"
    result = run(["dir2tar", str(tree), "-o", str(out)])
    assert result.returncode == 0, result.stderr
    listing = run(["tar", "tf", str(out)])
    assert sorted(listing.stdout.decode().splitlines()) == sorted(TREE)
    restored = tmp_path / "restored"
    restored.mkdir()
    result = run(["tar", "xf", str(out), "-C", str(restored)])
    assert result.returncode == 0, result.stderr
    got = {}
    for dirpath, _, files in os.walk(restored):
        for name in files:
            path = os.path.join(dirpath, name)
            got[os.path.relpath(path, restored)] = open(path, "rb").read()
    assert got == TREE
    result = run(f"diff -r {tree} {restored}", shell=True)
    assert result.returncode == 0, result.stdout


def test_dir2tar_deterministic_and_webdataset(tree, tmp_path):
    first = run(["dir2tar", str(tree)]).stdout
    os.utime(tree / "train/cat/001.jpg", (1, 1))  # mtimes do not matter
    second = run(f"cd {tree} && dir2tar . -o -", shell=True).stdout
    assert first == second
    out = tmp_path / "t.tar"
    out.write_bytes(first)
    assert webdataset_samples(out) == our_samples(out)
    with tarfile.open(out) as tf:
        assert {m.name for m in tf} == set(TREE) and all(m.mtime == 0 and m.uid == 0 for m in tf)


def test_dir2tar_into_tarsplit_shards(tree, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    result = run(f"dir2tar {tree} | tarsplit -n 3 -o '{shards}/part-%06d.tar'", shell=True)
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(shards))
    assert names[0] == "part-000000.tar" and len(names) >= 3
    restored = tmp_path / "restored"
    restored.mkdir()
    for name in names:
        assert run(["tar", "xf", str(shards / name), "-C", str(restored)]).returncode == 0
    assert run(f"diff -r {tree} {restored}", shell=True).returncode == 0


def test_dir2tar_reports_and_excludes(tree, tmp_path):
    (tree / "README").write_bytes(b"no key")
    os.symlink("train", tree / "link")
    out = tree / "out.tar"  # the output inside the tree is never read back
    result = runner.invoke(dir2tar_cli.app, [str(tree), "-o", str(out)])
    assert result.exit_code == 1
    assert "skipping 'README': file has no key" in result.stderr
    assert "skipping symbolic link 'link' -> 'train'" in result.stderr
    assert dict(tar_members(out.read_bytes())) == TREE  # written, with the warnings
    result = runner.invoke(dir2tar_cli.app, [str(tree), "--exclude", "README", "--exclude", "link",
                                             "--exclude", "out.tar", "--include", "*.jpg",
                                             "--label-from-dir", "cls"])
    assert result.exit_code == 0, result.stderr
    assert tar_members(result.stdout_bytes) == [
        ("train/cat/001.cls", b"cat"), ("train/cat/001.jpg", TREE["train/cat/001.jpg"]),
        ("train/cat/002.cls", b"cat"), ("train/cat/002.jpg", TREE["train/cat/002.jpg"]),
        ("train/dog/001.cls", b"dog"), ("train/dog/001.jpg", TREE["train/dog/001.jpg"]),
    ]


def test_dir2tar_errors_and_help(tmp_path):
    result = runner.invoke(dir2tar_cli.app, [str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such directory" in result.stderr
    assert runner.invoke(dir2tar_cli.app, []).exit_code == 2
    assert runner.invoke(dir2tar_cli.app, [str(tmp_path), "--label-from-dir", "a/b"]).exit_code == 2
    for app in (dir2tar_cli.app, lines2tar_cli.app, tsv2tar_cli.app):
        result = runner.invoke(app, ["--help"])
        assert result.exit_code == 0 and "Examples:" in result.stdout


def test_help_example_with_a_key_column_works():
    """Regression: the help/README example used the key 'cat.0001', which the
    WebDataset rule forbids (a dot in the last path component)."""
    help_text = runner.invoke(lines2tar_cli.app, ["--help"]).stdout
    assert "cat.0001" not in help_text and "cat_0001" in help_text
    result = run("printf 'cat_0001\\tA cat.\\n' | lines2tar -k '__key__ txt' -s '\\t' -o -", shell=True)
    assert result.returncode == 0, result.stderr
    assert tar_members(result.stdout) == [("cat_0001.txt", b"A cat.")]


def test_tsv2tar_bad_keyformat_is_a_usage_error_before_reading(tmp_path):
    result = runner.invoke(tsv2tar_cli.app, ["--keyformat", "sample", str(tmp_path / "missing.tsv")])
    assert result.exit_code == 2 and "same key" in result.stderr
    result = runner.invoke(lines2tar_cli.app, ["-k", "url", "--keyformat", "{name}"], input=b"a\n")
    assert result.exit_code == 2 and "the only field is the number" in result.stderr
    assert "Traceback" not in result.stderr


def test_tsv2tar_help_says_paths_outside_C_are_read(tmp_path):
    help_text = " ".join(runner.invoke(tsv2tar_cli.app, ["--help"]).stdout.split())
    assert "-C is a base, not a boundary" in help_text
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    (tmp_path / "base").mkdir()
    plan = b"@txt\n../outside.txt\n" + str(outside).encode() + b"\n"
    result = runner.invoke(tsv2tar_cli.app, ["-C", str(tmp_path / "base"), "-"], input=plan)
    assert result.exit_code == 0, result.stderr
    assert tar_members(result.stdout_bytes) == [("000000000.txt", b"secret"), ("000000001.txt", b"secret")]


def test_lines2tar_key_repeated_in_another_input_is_an_error(tmp_path):
    """Regression: keys were only checked within one input, so two files
    with the same __key__ gave a shard whose key comes back (unreadable)."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"k1 one\nk2 two\n")
    b.write_bytes(b"k3 three\nk1 again\n")
    result = runner.invoke(lines2tar_cli.app, ["-k", "__key__ txt", str(a), str(b)])
    assert result.exit_code == 3
    assert f"{b}:2: key 'k1' given twice" in result.stderr


def test_tsv2tar_ignores_a_utf8_bom_before_the_header():
    """Regression: a spreadsheet's UTF-8 BOM made the first column a field
    named '\\ufeff__key__' instead of the key column."""
    result = runner.invoke(tsv2tar_cli.app, ["-"], input=b"\xef\xbb\xbf__key__\ttxt\nk1\thello\n")
    assert result.exit_code == 0, result.stderr
    assert tar_members(result.stdout_bytes) == [("k1.txt", b"hello")]


def test_tsv2tar_refuses_fifos_and_devices(tmp_path):
    """Regression: an @FIELD naming a FIFO blocked forever and /dev/zero
    read until memory ran out; only regular files are read."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        result = run(["tsv2tar", "-", "-o", os.devnull], input=b"@txt\n" + path.encode() + b"\n", timeout=20)
        assert result.returncode == 1
        assert result.stderr.decode() == f"tsv2tar: error: -:2: {path}: cannot read: not a regular file\n"
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "target.txt")
    (tmp_path / "target.txt").write_bytes(b"via link")
    result = runner.invoke(tsv2tar_cli.app, ["-"], input=b"@txt\n" + str(link).encode() + b"\n")
    assert result.exit_code == 0 and tar_members(result.stdout_bytes) == [("000000000.txt", b"via link")]


def test_dir2tar_tarsplit_tar_xf_round_trip_with_awkward_names(tmp_path):
    """Spaces, tabs, newlines, non-UTF-8 bytes and a path over 256 bytes
    (pax) survive dir2tar | tarsplit and GNU tar xf byte for byte."""
    if not gnu_tar():
        pytest.skip("tar --version does not say GNU tar")
    root = tmp_path / "tree"
    files = {
        b"sp ace/x y.txt": b"space",
        b"tab\there.txt": b"tab",
        b"new\nline.txt": b"newline",
        b"raw\xff\xfe/b\xe9.bin": bytes(range(256)),
        b"/".join([b"d" * 60] * 5) + b"/long.txt": b"over 256 bytes",
        "\u00fc\u00f1\u00ee/\u00e7\u00f8d\u00e9.json": b"{}",
    }
    files = {k.encode() if isinstance(k, str) else k: v for k, v in files.items()}
    for rel, data in files.items():
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
    shards, restored = tmp_path / "shards", tmp_path / "restored"
    shards.mkdir()
    restored.mkdir()
    result = run(f"dir2tar {root} | tarsplit -n 2 -o '{shards}/s-%04d.tar'", shell=True)
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(shards)) == 3
    for name in sorted(os.listdir(shards)):
        assert run(["tar", "xf", str(shards / name), "-C", str(restored)]).returncode == 0
    got = {}
    for dirpath, _, names in os.walk(os.fsencode(restored)):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                got[os.path.relpath(path, os.fsencode(restored))] = handle.read()
    assert got == files
