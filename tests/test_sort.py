"""tarproc.ops.sort: external sort, stability, shuffle, temporary files."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tarproc.errors import SampleError, UsageError
from tarproc.ops.sort import ExternalSorter, sort_key_function, sort_samples


def make_samples(n: int, seed: int = 0, size: int = 100) -> list[dict]:
    rng = random.Random(seed)
    keys = [f"k{i:05d}" for i in range(n)]
    rng.shuffle(keys)
    return [
        {"__key__": key, "__source__": "-", "cls": str(rng.randrange(5)).encode(), "bin": rng.randbytes(size)}
        for key in keys
    ]


def keys_of(samples) -> list[str]:
    return [s["__key__"] for s in samples]


def test_sort_by_key_in_memory():
    samples = make_samples(200)
    out = list(sort_samples(samples))
    assert keys_of(out) == sorted(keys_of(samples))
    assert out[0] is min(samples, key=lambda s: s["__key__"])  # the same sample dicts, no copies


def test_external_sort_spills_runs_and_keeps_every_sample(tmp_path):
    samples = make_samples(500, size=1000)
    sorter = ExternalSorter(sort_key_function(), buffer_size=20_000, tmpdir=str(tmp_path), fan_in=4)
    seen_dirs = []

    def spy():
        for sample in samples:
            if sorter.directory and sorter.directory not in seen_dirs:
                seen_dirs.append(sorter.directory)
            yield sample

    out = list(sorter.sort(spy()))
    assert sorter.runs > 30  # many runs, several merge passes with fan_in=4
    assert sorter.samples == 500
    assert [(s["__key__"], s["bin"], s["cls"], s["__source__"]) for s in out] == sorted(
        (s["__key__"], s["bin"], s["cls"], s["__source__"]) for s in samples
    )
    assert seen_dirs and not os.path.exists(seen_dirs[0])
    assert os.listdir(tmp_path) == []


def test_stable_on_equal_sort_keys_also_reversed():
    samples = make_samples(300)
    for buffer in (1 << 30, 3000):
        by_cls = list(sort_samples(samples, field="cls", type="int", buffer_size=buffer))
        assert keys_of(by_cls) == keys_of(sorted(samples, key=lambda s: int(s["cls"])))
        rev = list(sort_samples(samples, field="cls", type="int", reverse=True, buffer_size=buffer))
        # descending by cls, but input order within a class
        expected = sorted(samples, key=lambda s: -int(s["cls"]))
        assert keys_of(rev) == keys_of(expected)


def test_duplicate_keys_are_all_kept_in_input_order():
    samples = [{"__key__": k, "n": str(i).encode()} for i, k in enumerate("bababa")]
    out = list(sort_samples(samples, buffer_size=1))
    assert [(s["__key__"], s["n"]) for s in out] == [
        ("a", b"1"), ("a", b"3"), ("a", b"5"), ("b", b"0"), ("b", b"2"), ("b", b"4")]


def test_types_str_int_float():
    values = [b"10", b"9", b" 100\n", b"-1"]
    samples = [{"__key__": f"k{i}", "v": v} for i, v in enumerate(values)]
    assert [s["v"] for s in sort_samples(samples, field="v", type="str")] == sorted(values)
    assert [s["v"] for s in sort_samples(samples, field="v", type="int")] == [b"-1", b"9", b"10", b" 100\n"]
    floats = [{"__key__": f"k{i}", "v": v} for i, v in enumerate([b"2.5", b"nan", b"-inf", b"1e3"])]
    assert [s["v"] for s in sort_samples(floats, field="v", type="float")] == [b"-inf", b"2.5", b"1e3", b"nan"]
    # as documented: NaN is the largest value, so --reverse puts it first
    assert [s["v"] for s in sort_samples(floats, field="v", type="float", reverse=True)] == [
        b"nan", b"1e3", b"2.5", b"-inf"]
    numeric_keys = [{"__key__": k, "x": b""} for k in ("10", "9", "100")]
    assert keys_of(sort_samples(numeric_keys, type="int")) == ["9", "10", "100"]


def test_bad_values_are_errors():
    with pytest.raises(SampleError, match="has no field 'v'"):
        list(sort_samples([{"__key__": "a", "w": b"1"}], field="v"))
    with pytest.raises(SampleError, match="field 'v' is not an int"):
        list(sort_samples([{"__key__": "a", "v": b"x1"}], field="v", type="int"))
    with pytest.raises(SampleError, match="key 'a' is not an int"):
        list(sort_samples([{"__key__": "a", "v": b"1"}], type="int"))
    with pytest.raises(UsageError):
        sort_key_function(type="date")
    with pytest.raises(UsageError):
        sort_key_function(field="cls", shuffle=True)


def test_shuffle_is_a_seeded_permutation_independent_of_input_order():
    samples = make_samples(300)
    a = keys_of(sort_samples(samples, shuffle=True, seed="1"))
    b = keys_of(sort_samples(list(reversed(samples)), shuffle=True, seed="1", buffer_size=2000))
    c = keys_of(sort_samples(samples, shuffle=True, seed="2"))
    assert sorted(a) == sorted(keys_of(samples))
    assert a == b
    assert a != c and sorted(c) == sorted(a)
    assert a != sorted(a) and a != keys_of(samples)


def test_temporary_files_removed_on_error_and_on_close(tmp_path):
    def failing():
        yield from make_samples(100, size=500)
        raise SampleError("boom")

    sorter = ExternalSorter(sort_key_function(), buffer_size=5000, tmpdir=str(tmp_path))
    with pytest.raises(SampleError, match="boom"):
        list(sorter.sort(failing()))
    assert sorter.runs > 1 and os.listdir(tmp_path) == []

    sorter = ExternalSorter(sort_key_function(), buffer_size=5000, tmpdir=str(tmp_path))
    it = sorter.sort(make_samples(100, size=500))
    next(it)
    assert len(os.listdir(tmp_path)) == 1
    it.close()
    assert os.listdir(tmp_path) == []


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 3)), max_size=60),
    st.integers(1, 3000),
    st.booleans(),
)
def test_property_external_sort_equals_stable_sorted(items, budget, reverse):
    samples = [{"__key__": f"{k}{i}", "v": str(v).encode()} for i, (k, v) in enumerate(items)]
    sorter = ExternalSorter(sort_key_function("v", "int"), reverse=reverse, buffer_size=budget, fan_in=2)
    out = list(sorter.sort(samples))
    assert keys_of(out) == keys_of(sorted(samples, key=lambda s: int(s["v"]), reverse=reverse))
