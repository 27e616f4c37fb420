"""tarproc.ops.create: samples from lines, TSV plans and directory trees."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tarproc.ops.create import KeyNumbers, check_key, dir_samples, line_samples, parse_fields, tsv_samples
from tarproc.errors import SampleError, SourceError, UsageError
from tarproc.samples import group_samples
from tarproc.samples import sample_members
from tarproc.io.tario import TarWriter, iter_members


def lines(text: bytes, fields, **kw):
    return list(line_samples(io.BytesIO(text), fields, **kw))


def test_parse_fields():
    assert parse_fields("url txt") == ["url", "txt"]
    assert parse_fields(" url, txt ,seg.png") == ["url", "txt", "seg.png"]
    assert parse_fields("__key__ txt") == ["__key__", "txt"]
    for bad in ("", "a a", "a/b", ".x", "x.", "__meta__"):
        with pytest.raises(UsageError):
            parse_fields(bad)


def test_check_key():
    for good in ("a", "dir/a", "a b", "a-1_2", "d.d/a"):
        check_key(good)
    for bad in ("", "a.b", "dir/.a", "/abs", "x/../y", "dir/", "a\nb"):
        with pytest.raises(SampleError):
            check_key(bad)


def test_key_numbers():
    keys = KeyNumbers("img{:04d}", 7)
    assert [keys(), keys()] == ["img0007", "img0008"]
    with pytest.raises(UsageError, match="bad key format"):
        KeyNumbers("{:q}")


def test_lines_split_on_whitespace_last_field_takes_rest():
    out = lines(b"http://a a cat  on a mat\r\n\nhttp://b\tdog\n", ["url", "txt"])
    assert out == [
        {"__key__": "000000000", "txt": b"a cat  on a mat", "url": b"http://a"},
        {"__key__": "000000001", "txt": b"dog", "url": b"http://b"},
    ]
    assert list(out[0]) == ["__key__", "txt", "url"]  # fields in sorted order


def test_lines_separator_single_field_and_key_column():
    assert lines(b"a b\n", ["txt"]) == [{"__key__": "000000000", "txt": b"a b"}]
    out = lines(b"k1\tx y\tz\nk2\t\t\n", ["__key__", "a", "b"], sep=b"\t")
    assert out == [{"__key__": "k1", "a": b"x y", "b": b"z"}, {"__key__": "k2", "a": b"", "b": b""}]
    out = lines(b"1,2\n", ["a"], keyformat="s{:02d}", start=5)
    assert out == [{"__key__": "s05", "a": b"1,2"}]


def test_lines_errors_name_the_line():
    with pytest.raises(SampleError, match=r"in.txt:2: expected 2 values"):
        lines(b"a b\nc\n", ["x", "y"], source="in.txt")
    with pytest.raises(SampleError, match=r"-:2: key 'k' given twice"):
        lines(b"k 1\nk 2\n", ["__key__", "x"])
    with pytest.raises(SampleError, match=r"-:1: .*dot.*'k.jpg'"):
        lines(b"k.jpg 1\n", ["__key__", "x"])


def test_tsv_plan(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.jpg").write_bytes(b"JPEG1")
    (tmp_path / "abs.bin").write_bytes(b"\x00\x01")
    plan = (
        b"__key__\t@jpg\tcls\t@bin\n"
        b"n1\timg/1.jpg\t0\t\n"
        b"\n"
        b"n2\t\t1\t" + str(tmp_path / "abs.bin").encode() + b"\n"
    )
    out = list(tsv_samples(io.BytesIO(plan), str(tmp_path)))
    assert out == [
        {"__key__": "n1", "cls": b"0", "jpg": b"JPEG1"},
        {"__key__": "n2", "bin": b"\x00\x01", "cls": b"1"},
    ]
    numbered = list(tsv_samples(io.BytesIO(b"txt\nhello world\nbye\n"), keyformat="{:03d}"))
    assert numbered == [{"__key__": "000", "txt": b"hello world"}, {"__key__": "001", "txt": b"bye"}]


@pytest.mark.parametrize(
    "plan, error, message",
    [
        (b"", SourceError, "empty plan"),
        (b"__key__\n", SourceError, "no field columns"),
        (b"a\t@a\n", SourceError, "field 'a' given twice"),
        (b"a\tb/c\n", SourceError, "invalid field name 'b/c'"),
        (b"@__key__\n", SourceError, "key column cannot be a file"),
        (b"a\tb\n1\n", SourceError, r"plan.tsv:2: expected 2 columns, got 1"),
        (b"@a\nmissing.jpg\n", SourceError, r"plan.tsv:2: .*missing.jpg: cannot read"),
        (b"__key__\ta\nk\t\n", SampleError, "has no fields"),
        (b"__key__\ta\nk\t1\nk\t2\n", SampleError, "plan.tsv:3: key 'k' given twice"),
    ],
)
def test_tsv_plan_errors(tmp_path, plan, error, message):
    with pytest.raises(error, match=message):
        list(tsv_samples(io.BytesIO(plan), str(tmp_path), source="plan.tsv"))


def make_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)


def test_dir_samples_group_by_key_in_order(tmp_path):
    make_tree(tmp_path, {
        "train/cat/001.jpg": b"J1", "train/cat/001.json": b"{}", "train/cat/002.jpg": b"J2",
        "train/dog/001.jpg": b"D1", "top.txt": b"t",
    })
    out = list(dir_samples(str(tmp_path)))
    assert out == [
        {"__key__": "top", "txt": b"t"},
        {"__key__": "train/cat/001", "jpg": b"J1", "json": b"{}"},
        {"__key__": "train/cat/002", "jpg": b"J2"},
        {"__key__": "train/dog/001", "jpg": b"D1"},
    ]


def test_dir_samples_keep_a_key_together_around_dotted_directories(tmp_path):
    # sorted by name, 'x.d/' falls between 'x.a' and 'x.z' and would split the key 'x'
    make_tree(tmp_path, {"x.a": b"1", "x.z": b"2", "x.d/y.txt": b"3", "x/w.txt": b"4", "x-1.txt": b"5"})
    out = [(s["__key__"], sorted(k for k in s if k != "__key__")) for s in dir_samples(str(tmp_path))]
    assert out == [("x", ["a", "z"]), ("x/w", ["txt"]), ("x-1", ["txt"]), ("x.d/y", ["txt"])]


def test_dir_samples_report_what_they_skip(tmp_path):
    make_tree(tmp_path, {"a.txt": b"a", "README": b"r", ".hidden": b"h", "end.": b"e", "sub/b.txt": b"b"})
    os.symlink("a.txt", tmp_path / "link.txt")
    os.symlink("sub", tmp_path / "linkdir")
    os.mkfifo(tmp_path / "fifo.txt")
    warnings = []
    out = list(dir_samples(str(tmp_path), warn=warnings.append))
    assert [s["__key__"] for s in out] == ["a", "sub/b"]
    text = "\n".join(sorted(warnings))
    assert len(warnings) == 6
    for needle in ("'.hidden': file has no key", "'README': file has no key", "'end.': file has no key",
                   "'fifo.txt': not a regular file", "symbolic link 'link.txt' -> 'a.txt'",
                   "symbolic link 'linkdir' -> 'sub'"):
        assert needle in text


def test_dir_samples_include_exclude_label(tmp_path):
    make_tree(tmp_path, {
        "n01/a.jpg": b"1", "n01/a.txt": b"t", "n02/b.JPEG": b"2", ".git/x.y": b"g", "n02/skip/c.jpg": b"3",
        "top.jpg": b"4",
    })
    out = list(dir_samples(str(tmp_path), label_field="cls", include=["*.jpg", "*.JPEG"],
                           exclude=[".git", "n02/skip"]))
    root_name = os.path.basename(str(tmp_path)).encode()
    assert out == [
        {"__key__": "n01/a", "cls": b"n01", "jpg": b"1"},
        {"__key__": "n02/b", "JPEG": b"2", "cls": b"n02"},
        {"__key__": "top", "cls": root_name, "jpg": b"4"},
    ]
    with pytest.raises(SampleError, match="field 'txt'"):
        list(dir_samples(str(tmp_path), label_field="txt"))


def test_dir_samples_errors(tmp_path):
    with pytest.raises(SourceError, match="no such directory"):
        list(dir_samples(str(tmp_path / "nope")))
    (tmp_path / "f.txt").write_bytes(b"")
    with pytest.raises(SourceError, match="not a directory"):
        list(dir_samples(str(tmp_path / "f.txt")))


def test_dir_samples_skip_paths(tmp_path):
    make_tree(tmp_path, {"a.txt": b"a", "out.tar.partial": b"x"})
    out = list(dir_samples(str(tmp_path), skip_paths=[str(tmp_path / "out.tar.partial")]))
    assert [s["__key__"] for s in out] == ["a"]


NAME = st.sampled_from(["a", "b", "a.a", "a.x", "a.y", "a.b", "a-1.x", "a0.x", "a b.x", ".h", "z.", "b.x.y"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(NAME, min_size=1, max_size=3), min_size=1, max_size=25, unique_by=lambda p: "/".join(p)))
def test_property_dir_tree_reads_back_grouped(tmp_path_factory, paths):
    """Whatever the names, every file with a key is written once and the
    output is grouped (reading it back raises no 'key comes back')."""
    root = tmp_path_factory.mktemp("tree")
    files = set()
    for parts in paths:
        rel = "/".join(parts)
        path = root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rel.encode())
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue
        files.add(rel)
    # a path that later became a directory's prefix is a directory, not a file
    files = {f for f in files if (root / f).is_file()}
    out = io.BytesIO()
    writer = TarWriter(out)
    for sample in dir_samples(str(root)):
        for name, data in sample_members(sample):
            writer.add(name, data)
    writer.finish()
    out.seek(0)
    samples = list(group_samples(iter_members(out), "t"))
    written = {f"{s['__key__']}.{k}": v for s in samples for k, v in s.items() if not k.startswith("__")}
    keyed = {f for f in files if 0 < (base := f.rsplit("/", 1)[-1]).find(".") < len(base) - 1}
    assert set(written) == keyed
    assert all(written[name] == name.encode() for name in written)


def test_key_numbers_must_vary_and_name_only_the_number():
    """Regression: a --keyformat without a placeholder gave every sample the
    same key (an error only at the second line); '{x}' gave a bare KeyError."""
    with pytest.raises(UsageError, match="same key"):
        KeyNumbers("k")
    with pytest.raises(UsageError, match="the only field is the number"):
        KeyNumbers("{x}")
    with pytest.raises(UsageError, match="the only field is the number"):
        KeyNumbers("{1}")
    assert KeyNumbers("{:x}", 10)() == "a"
