"""tarmix: exact per-source counts (largest remainder), the seeded
interleaving, --when-exhausted, provenance (--source-field, --manifest),
unique keys, through the real tool; and on the S3 test server."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import run, tool_env
from tarproc.errors import UsageError
from tarproc.ops.mix import Mixer, largest_remainder, parse_source
from tarproc.io.sinks import open_sink
from tarproc.io.sources import iter_samples


def make_source(root: Path, name: str, shards: int, per_shard: int) -> str:
    """``shards`` shards NAME-K.tar of ``per_shard`` samples, keys
    ``NAME/000123`` numbered through the source; the pattern."""
    n = 0
    for k in range(shards):
        with open_sink(str(root / f"{name}-{k}.tar")) as sink:
            for _ in range(per_shard):
                sink.write({"__key__": f"{name}/{n:06d}", "txt": f"{name} sample {n}".encode(), "cls": str(n).encode()})
                n += 1
    return str(root / f"{name}-{{0..{shards - 1}}}.tar")


def shards_of(directory: Path, pattern: str = "mix-*.tar") -> list[Path]:
    return sorted(p for p in directory.glob(pattern) if not p.name.endswith(".partial"))


def read_all(paths) -> list[dict]:
    return list(iter_samples([str(p) for p in paths]))


def origin(sample: dict) -> str:
    return sample["txt"].decode().split()[0]


@pytest.fixture
def sources(tmp_path) -> dict[str, str]:
    root = tmp_path / "in"
    root.mkdir()
    return {"a": make_source(root, "a", 3, 20), "b": make_source(root, "b", 2, 20), "small": make_source(root, "small", 1, 10)}


# --------------------------------------------------------------- the library
def test_largest_remainder_known_answers():
    assert largest_remainder(1_000_000, [Fraction("0.7"), Fraction("0.3")]) == [700_000, 300_000]
    assert largest_remainder(10, [Fraction(1)] * 3) == [4, 3, 3]  # ties: the first source
    # 3.5, 1.75, 1.75: floors 3, 1, 1; the 2 left go to the largest remainders (.75, .75)
    assert largest_remainder(7, [Fraction("0.5"), Fraction("0.25"), Fraction("0.25")]) == [3, 2, 2]
    assert largest_remainder(5, [Fraction(2, 3), Fraction(1, 3)]) == [3, 2]
    assert largest_remainder(4, [Fraction(0), Fraction(1)]) == [0, 4]
    with pytest.raises(UsageError):
        largest_remainder(4, [Fraction(0)])


def test_parse_source_weight_after_the_last_colon():
    assert parse_source("laion-{0000..0999}.tar:0.7") == ("laion-{0000..0999}.tar", Fraction(7, 10))
    assert parse_source("s3://bucket/x-{0..9}.tar:0.3") == ("s3://bucket/x-{0..9}.tar", Fraction(3, 10))
    assert parse_source("s3://bucket/x.tar") == ("s3://bucket/x.tar", Fraction(1))
    assert parse_source("pipe:cat a.tar") == ("pipe:cat a.tar", Fraction(1))
    assert parse_source("odd:2:1") == ("odd:2", Fraction(1))
    assert parse_source("a.tar:2/3") == ("a.tar", Fraction(2, 3))
    with pytest.raises(UsageError, match="negative"):
        parse_source("a.tar:-1")


def test_schedule_is_a_seeded_interleaving_with_exact_counts(sources):
    def labels(seed):
        mixer = Mixer([(sources["a"], Fraction(2)), (sources["b"], Fraction(1))], 30, seed=seed)
        return [s["__mix__"] for s in mixer]

    first = labels(1)
    assert Counter(first) == {0: 20, 1: 10}
    assert labels(1) == first
    assert labels(2) != first and Counter(labels(2)) == {0: 20, 1: 10}


# ----------------------------------------------------------------- the tool
def test_exact_counts_order_manifest_and_source_field(sources, tmp_path):
    out = tmp_path / "out"
    manifest = tmp_path / "mix.json"
    result = run(["tarmix", f"{sources['a']}:0.7", f"{sources['b']}:0.3", "-n", "50", "-o", f"{out}/mix-%03d.tar",
                  "--maxcount", "20", "--seed", "1", "--manifest", str(manifest), "--source-field", "origin.txt", "-v"])
    assert result.returncode == 0, result.stderr
    stderr = result.stderr.decode()
    assert "35 samples from 3 shards" in stderr and "15 samples from 2 shards" in stderr  # the plan, stated
    paths = shards_of(out)
    assert [p.name for p in paths] == ["mix-000.tar", "mix-001.tar", "mix-002.tar"]
    samples = read_all(paths)
    assert len(samples) == 50
    by_source = {name: [s for s in samples if origin(s) == name] for name in ("a", "b")}
    # exact counts; without replacement, each source read from its front, in order
    assert [s["__key__"] for s in by_source["a"]] == [f"a/{n:06d}" for n in range(35)]
    assert [s["__key__"] for s in by_source["b"]] == [f"b/{n:06d}" for n in range(15)]
    for s in samples:  # the origin field names the input shard the sample came from
        n = int(s["cls"])
        assert s["origin.txt"].decode() == str(tmp_path / "in" / f"{origin(s)}-{n // 20}.tar")
    doc = json.loads(manifest.read_text())
    assert [(x["quota"], x["taken"], x["exhausted"]) for x in doc["sources"]] == [(35, 35, False), (15, 15, False)]
    assert doc["written"] == 50 and doc["stopped_by"] is None
    for shard, path in zip(doc["shards"], paths):
        assert shard["name"] == str(path)
        got = Counter(origin(s) for s in read_all([path]))
        assert shard["sources"] == {sources[k]: n for k, n in sorted(got.items())}
        assert shard["samples"] == sum(got.values())
        assert shard["sha256"] and shard["bytes"] == path.stat().st_size


def test_same_seed_same_bytes_other_seed_other_order(sources, tmp_path):
    def mix(seed: str, name: str) -> list[bytes]:
        out = tmp_path / name
        result = run(["tarmix", f"{sources['a']}:2", f"{sources['b']}:1", "-n", "45", "--seed", seed, "-o", f"{out}/"])
        assert result.returncode == 0, result.stderr
        return [p.read_bytes() for p in shards_of(out, "*.tar")]

    first = mix("1", "one")
    assert mix("1", "again") == first
    other = mix("2", "two")
    assert other != first
    keys = [[s["__key__"] for s in read_all([p])] for p in shards_of(tmp_path / "two", "*.tar")]
    assert sorted(sum(keys, [])) == sorted(s["__key__"] for s in read_all(shards_of(tmp_path / "one", "*.tar")))


def test_manifest_to_a_fifo_is_written_into_it_not_renamed_over_it(sources, tmp_path):
    """As -o does with /dev/null: a rename over a device or FIFO would replace it (as root, /dev/null itself)."""
    import os
    import stat
    import threading

    fifo = tmp_path / "manifest"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run(["tarmix", f"{sources['a']}:0.5", f"{sources['b']}:0.5", "-n", "10", "-o", f"{tmp_path}/out/mix-%02d.tar",
                  "--manifest", str(fifo)])
    reader.join(30)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and json.loads(got[0])
    assert not list(tmp_path.glob("*.partial"))


def test_when_exhausted_stop_writes_what_was_drawn_and_exits_1(sources, tmp_path):
    out = tmp_path / "out"
    manifest = tmp_path / "m.json"
    result = run(["tarmix", f"{sources['small']}:0.5", f"{sources['b']}:0.5", "-n", "40", "-o", f"{out}/mix-%02d.tar",
                  "--manifest", str(manifest)])
    assert result.returncode == 1
    assert f"source {sources['small']} ran out after 10 of its 20 samples" in result.stderr.decode()
    samples = read_all(shards_of(out))
    small = [s["__key__"] for s in samples if origin(s) == "small"]
    assert small == [f"small/{n:06d}" for n in range(10)]  # every one, nothing dropped
    doc = json.loads(manifest.read_text())
    assert doc["stopped_by"] == sources["small"] and doc["written"] == len(samples) < 40
    assert not list(out.glob("*.partial"))


def test_when_exhausted_repeat_needs_new_keys_then_reads_again(sources, tmp_path):
    args = ["tarmix", f"{sources['small']}:0.5", f"{sources['b']}:0.5", "-n", "40", "--when-exhausted", "repeat"]
    result = run(args + ["-o", f"{tmp_path}/bad/"])
    assert result.returncode == 3
    assert "--rekey" in result.stderr.decode() and "Traceback" not in result.stderr.decode()
    manifest = tmp_path / "m.json"
    result = run(args + ["--rekey", "{index:09d}", "-o", f"{tmp_path}/ok/", "--manifest", str(manifest)])
    assert result.returncode == 0, result.stderr
    samples = read_all(shards_of(tmp_path / "ok", "*.tar"))
    assert len(samples) == 40 and len({s["__key__"] for s in samples}) == 40
    payloads = Counter(s["txt"] for s in samples if origin(s) == "small")
    assert payloads == {f"small sample {n}".encode(): 2 for n in range(10)}  # two whole passes
    assert json.loads(manifest.read_text())["sources"][0]["passes"] == 2


def test_when_exhausted_renormalize_shares_the_rest_by_weight(sources, tmp_path):
    out = tmp_path / "out"
    manifest = tmp_path / "m.json"
    result = run(["tarmix", f"{sources['small']}:1", f"{sources['a']}:1", f"{sources['b']}:1", "-n", "60", "-o",
                  f"{out}/", "--when-exhausted", "renormalize", "--manifest", str(manifest)])
    assert result.returncode == 0, result.stderr
    assert "the 10 left go to the others by weight: 5 to" in result.stderr.decode()
    samples = read_all(shards_of(out, "*.tar"))
    assert Counter(origin(s) for s in samples) == {"small": 10, "a": 25, "b": 25}
    doc = json.loads(manifest.read_text())
    assert [(x["planned"], x["quota"], x["exhausted"]) for x in doc["sources"]] == [
        (20, 10, True), (20, 25, False), (20, 25, False)]


def test_renormalize_with_every_source_exhausted_stops(sources, tmp_path):
    result = run(["tarmix", f"{sources['small']}:1", f"{sources['b']}:1", "-n", "100", "-o", f"{tmp_path}/o/",
                  "--when-exhausted", "renormalize"])
    assert result.returncode == 1
    assert len(read_all(shards_of(tmp_path / "o", "*.tar"))) == 50  # every sample of both


def test_keys_repeated_across_sources_stop_with_a_hint_and_rekey_fixes_it(sources, tmp_path):
    twice = [f"{sources['a']}:1", f"{sources['a']}:1"]
    result = run(["tarmix", *twice, "-n", "20", "-o", f"{tmp_path}/x/"])
    assert result.returncode == 3
    err = result.stderr.decode()
    assert err.startswith("tarmix: error: key ") and "--rekey '{shard}/{key}'" in err
    assert not [p for p in (tmp_path / "x").glob("*.tar")]  # the shard stays NAME.partial
    result = run(["tarmix", f"{sources['a']}:1", f"{sources['b']}:1", "-n", "20", "--rekey", "{shard}/{key}",
                  "-o", f"{tmp_path}/y/"])
    assert result.returncode == 0, result.stderr
    keys = [s["__key__"] for s in read_all(shards_of(tmp_path / "y", "*.tar"))]
    assert len(set(keys)) == 20 and all(k.split("/")[0] in {"a-0", "b-0"} for k in keys)


@pytest.mark.parametrize("args, message", [
    ([], "no SOURCE"),
    (["x.tar:1"], "missing -n"),
    (["x.tar:1", "-n", "5"], "missing -o"),
    (["x.tar:1", "-n", "5", "-o", "o/", "--when-exhausted", "never"], "--when-exhausted"),
    (["x.tar:0", "-n", "5", "-o", "o/"], "weight above 0"),
])
def test_usage_errors(tmp_path, args, message):
    result = run(["tarmix", *args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.decode()


def test_s3_sources(s3_server, sources, tmp_path):
    s3_server.reset()
    fs = s3_server.fs()
    fs.mkdir("mixin")
    for k in range(2):
        fs.put(str(tmp_path / "in" / f"b-{k}.tar"), f"mixin/b-{k}.tar")
    out = tmp_path / "out"
    result = run(["tarmix", "s3://mixin/b-{0..1}.tar:0.25", f"{sources['a']}:0.75", "-n", "40", "-o", f"{out}/",
                  "--source-field", "origin.txt"], env=s3_server.env(tool_env()))
    assert result.returncode == 0, result.stderr
    samples = read_all(shards_of(out, "*.tar"))
    assert Counter(origin(s) for s in samples) == {"a": 30, "b": 10}
    assert {s["origin.txt"] for s in samples if origin(s) == "b"} == {b"s3://mixin/b-0.tar"}


def test_shuffle_shards_is_a_seeded_order_per_source(tmp_path):
    specs = [str(tmp_path / f"x-{k}.tar") for k in range(8)]
    pattern = str(tmp_path / "x-{0..7}.tar")

    def order(seed):
        return Mixer([(pattern, Fraction(1))], 0, seed=seed, shuffle_shards=True).sources[0].shards

    assert sorted(order(1)) == specs and order(1) == order(1)
    assert order(1) != specs or order(2) != specs
    assert Mixer([(pattern, Fraction(1))], 0).sources[0].shards == specs  # as given without it
