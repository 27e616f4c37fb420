"""The per-sample executor in-process: collection rules, bounded lookahead, ordering."""

from __future__ import annotations

import os

import pytest

from tarproc.executor import CommandSpec, key_problem, run_sample, run_samples


def make_samples(n: int, size: int = 10):
    for i in range(n):
        yield {"__key__": f"k{i:04d}", "__source__": "gen", "txt": f"sample {i}".encode(), "bin": bytes([i % 256]) * size}


def spec_for(tmp_path, cmd: str, **kw) -> CommandSpec:
    root = tmp_path / "root"
    root.mkdir(parents=True, exist_ok=True)
    return CommandSpec(["bash", "-c", cmd], str(root), **kw)


def test_fields_keys_and_source_are_written(tmp_path):
    spec = spec_for(tmp_path, "cat __key__ __source__; ls")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert not result.failed
    assert result.log == b"k0000gen__key__\n__source__\nsample.bin\nsample.txt\n"
    assert result.outputs == [{"__key__": "k0000", "__source__": "gen", "bin": bytes(10), "txt": b"sample 0"}]
    assert os.listdir(spec.root) == []


def test_outputs_in_sorted_field_order_and_new_fields(tmp_path):
    spec = spec_for(tmp_path, "echo z > sample.zz; echo a > sample.aa; rm sample.bin")
    (out,) = run_sample(spec, next(make_samples(1)), 0).outputs
    assert list(out) == ["__key__", "__source__", "aa", "txt", "zz"]


def test_only_base_dot_files_are_collected(tmp_path):
    spec = spec_for(tmp_path, "echo x > other.txt; echo y > sample.; echo z > sample")
    (out,) = run_sample(spec, next(make_samples(1)), 0).outputs
    assert sorted(k for k in out if not k.startswith("__")) == ["bin", "txt"]


def test_unreadable_leftovers_are_still_removed(tmp_path):
    spec = spec_for(tmp_path, "mkdir -p d/e; touch d/e/f; chmod 000 d/e d")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert not result.failed
    assert os.listdir(spec.root) == []


def test_keep_keeps_directory(tmp_path):
    spec = spec_for(tmp_path, "true", keep=True)
    result = run_sample(spec, next(make_samples(1)), 7)
    assert result.directory and os.path.isfile(os.path.join(result.directory, "sample.txt"))


@pytest.mark.parametrize(
    "key, ok",
    [("abc", True), ("dir/abc", True), ("", False), ("a.b", False), ("/abs", False), ("../x", False), ("d/", False)],
)
def test_key_problem(key, ok):
    assert (key_problem(key) is None) == ok


@pytest.mark.parametrize("parallel", [1, 2])
def test_reader_stays_within_window_of_writer(tmp_path, parallel):
    spec = spec_for(tmp_path, "true")
    pulled = 0
    ahead = []

    def source():
        nonlocal pulled
        for sample in make_samples(30):
            pulled += 1
            yield sample

    keys = []
    for _inp, result in run_samples(spec, source(), parallel=parallel):
        keys.append(result.outputs[0]["__key__"])
        ahead.append(pulled - len(keys))
    assert keys == [f"k{i:04d}" for i in range(30)]
    assert max(ahead) <= 2 * parallel  # never more than the window ahead of the writer


def test_unordered_yields_every_sample_once(tmp_path):
    spec = spec_for(tmp_path, "sleep 0.0$(( RANDOM % 3 ))")
    results = list(run_samples(spec, make_samples(12), parallel=2, ordered=False))
    assert sorted(r.key for _, r in results) == [f"k{i:04d}" for i in range(12)]
    assert all(inp["__key__"] == r.key for inp, r in results)


def test_failure_carries_status_and_log(tmp_path):
    spec = spec_for(tmp_path, "echo some output; exit 7")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert result.failed and result.status == 7 and result.reason == "exit status 7"
    assert result.log == b"some output\n"


def test_missing_key_file_fails(tmp_path):
    spec = spec_for(tmp_path, "rm __key__")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert result.failed and "__key__ is missing" in result.reason


def test_dead_worker_stops_the_run_instead_of_hanging(tmp_path):
    # the pool replaces a worker killed by the OOM killer and loses its task:
    # waiting for it would hang forever
    from tarproc import TarprocError

    for ordered in (True, False):
        # a fresh root each time: the killed worker could not remove its sample directory
        spec = spec_for(tmp_path / str(ordered), '[ "$(cat __key__)" != k0003 ] || kill -9 $PPID')
        with pytest.raises(TarprocError, match=r"worker process \d+ was killed by signal 9"):
            list(run_samples(spec, make_samples(8), parallel=2, ordered=ordered))


def test_reserved_field_names_are_not_collected(tmp_path):
    # "__key__" as a field would be taken for a meta entry and silently never written
    spec = spec_for(tmp_path, "echo x > sample.__key__; echo y > sample.__z")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert result.outputs[0]["__key__"] == "k0000"
    assert sorted(result.outputs[0]) == ["__key__", "__source__", "bin", "txt"]
    assert sorted(result.warnings) == [
        "sample 'k0000': not collecting 'sample.__key__': field names starting with '__' are reserved",
        "sample 'k0000': not collecting 'sample.__z': field names starting with '__' are reserved",
    ]
