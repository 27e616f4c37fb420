"""tarproc.samples: the WebDataset key rule and grouping members into samples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webdataset.tariterators import base_plus_ext

from tarproc import samples as samples_mod
from tarproc.errors import ArchiveError, SampleError, TruncatedError
from tarproc.samples import fields, group_samples, is_meta, sample_members, split_name, unsafe_name
from tarproc.io.tario import Member


def members(*names, offset_step=512):
    return [Member(name, name.encode(), i * offset_step) for i, name in enumerate(names)]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("a.jpg", ("a", "jpg")),
        ("dir/name.ext1.ext2", ("dir/name", "ext1.ext2")),
        ("d.1/sub.x/n01440764_10026.JPEG", ("d.1/sub.x/n01440764_10026", "JPEG")),
        ("a.b.c.d", ("a", "b.c.d")),
        ("x/y", None),
        ("README", None),
        (".hidden", None),
        ("dir/.hidden.txt", None),
        ("trailing.", None),
        ("dir/", None),
        ("dir/a.", None),
        ("ünï/cødé.json", ("ünï/cødé", "json")),
    ],
)
def test_split_name(name, expected):
    assert split_name(name) == expected


@given(st.text(st.sampled_from("ab./_-é"), min_size=1, max_size=12))
@settings(max_examples=300, deadline=None)
def test_split_name_is_webdatasets_rule(name):
    """Where we find a key, webdataset finds the same key and field; where
    webdataset finds none, neither do we (it also accepts an empty field
    after a trailing dot, which we report instead)."""
    ours = split_name(name)
    theirs = base_plus_ext(name)
    if ours is not None:
        assert theirs == ours
    if theirs is None or theirs[1] == "":
        assert ours is None


def test_unsafe_names():
    assert unsafe_name("/etc/passwd.txt") == "absolute member name"
    assert unsafe_name("../x.txt") == "member name contains '..'"
    assert unsafe_name("a/../../x.txt") == "member name contains '..'"
    assert unsafe_name("a/..b/x..y.txt") is None
    assert unsafe_name("a/b.txt") is None


def test_meta_and_fields():
    sample = {"__key__": "k", "__source__": "s", "jpg": b"1", "cls": "3", "__extra__": 1}
    assert fields(sample) == ["jpg", "cls"]
    assert is_meta("__key__") and not is_meta("jpg")
    assert list(sample_members(sample)) == [("k.jpg", b"1"), ("k.cls", b"3")]


def test_group_samples():
    got = list(group_samples(members("a.jpg", "a.cls", "b.jpg", "dir/a.jpg", "dir/a.json.gz"), "src"))
    assert got == [
        {"__key__": "a", "__source__": "src", "jpg": b"a.jpg", "cls": b"a.cls"},
        {"__key__": "b", "__source__": "src", "jpg": b"b.jpg"},
        {"__key__": "dir/a", "__source__": "src", "jpg": b"dir/a.jpg", "json.gz": b"dir/a.json.gz"},
    ]
    assert list(got[0]) == ["__key__", "__source__", "jpg", "cls"]  # member order kept


def test_case_is_preserved():
    got = list(group_samples(members("K.JPG", "K.jpg")))
    assert got == [{"__key__": "K", "__source__": "-", "JPG": b"K.JPG", "jpg": b"K.jpg"}]


def test_repeated_field_is_an_error_and_the_sample_is_not_yielded():
    it = group_samples(members("a.jpg", "b.jpg", "b.cls", "b.jpg", "c.jpg"), "src")
    assert next(it)["__key__"] == "a"
    with pytest.raises(SampleError, match=r"src: field 'jpg' repeated in sample 'b' \(offset 1536\)"):
        next(it)


def test_key_coming_back_is_an_error_suggesting_tarsort():
    got = []
    with pytest.raises(SampleError, match=r"src: key 'a' comes back after other keys at offset 1024:.*tarsort"):
        for sample in group_samples(members("a.jpg", "b.jpg", "a.cls"), "src"):
            got.append(sample["__key__"])
    assert got == ["a", "b"]


def test_remembered_keys_are_bounded(monkeypatch):
    monkeypatch.setattr(samples_mod, "MAX_SEEN_KEYS", 2)
    # 'a' and 'b' are remembered: 'a' coming back is caught
    with pytest.raises(SampleError):
        list(group_samples(members("a.x", "b.x", "c.x", "a.y")))
    # 'c' was not remembered (limit reached): only adjacency is checked beyond it
    assert [s["__key__"] for s in group_samples(members("a.x", "b.x", "c.x", "d.x", "c.y"))] == list("abcdc")


@pytest.mark.parametrize(
    "name,why",
    [("README", "member has no key"), (".x", "member has no key"), ("a/../b.txt", "contains '..'"),
     ("/abs/b.txt", "absolute member name"), ("x.", "member has no key")],
)
def test_members_without_key_or_with_unsafe_names(name, why):
    warnings = []
    got = list(group_samples(members("a.jpg", name, "a.cls", "b.jpg"), "src", warnings.append))
    assert [s["__key__"] for s in got] == ["a", "b"]
    assert got[0]["cls"] == b"a.cls"  # the skipped member does not split sample a
    assert len(warnings) == 1 and why in warnings[0] and repr(name) in warnings[0] and "src" in warnings[0]
    with pytest.raises(SampleError, match=why.replace("..", r"\.\.")):
        list(group_samples(members("a.jpg", name), "src", warnings.append, strict=True))


def failing(items, error):
    yield from items
    raise error


@pytest.mark.parametrize("error", [TruncatedError("src: stream is cut at offset 9"), ArchiveError("src: bad header")])
def test_stream_errors_keep_their_type_and_name_the_last_complete_sample(error):
    got = []
    with pytest.raises(type(error)) as info:
        for sample in group_samples(failing(members("a.x", "a.y", "b.x", "c.x", "c.y"), error), "src"):
            got.append(sample)
    assert type(info.value) is type(error)
    assert str(info.value) == f"{error} (last complete sample: 'b')"
    assert [s["__key__"] for s in got] == ["a", "b"]  # 'c' may be partial: never yielded
    with pytest.raises(type(error), match=r"\(no complete sample\)$"):
        list(group_samples(failing(members("a.x"), error)))


def test_empty_input():
    assert list(group_samples([])) == []


@given(st.text(st.sampled_from("ab./_-"), min_size=1, max_size=10))
@settings(max_examples=300, deadline=None)
def test_the_reader_applies_the_one_member_name_rule(name):
    """group_samples applies the one member name rule (member_parts, which
    split_name and unsafe_name view): it keeps exactly the members they
    accept, under the key and field they give (and a field starting with
    '__' is a meta entry, never data)."""
    got = list(group_samples(members(name), "src", warn=lambda m: None))
    parts = split_name(name)
    accepted = parts is not None and unsafe_name(name) is None and not parts[1].startswith("__")
    if accepted:
        assert [(s["__key__"], [k for k in s if not k.startswith("__")]) for s in got] == [(parts[0], [parts[1]])]
    else:
        assert [k for s in got for k in s if not k.startswith("__")] == []
