"""The where stage (tarproc.ops.stages.Where) and tarcats/tarpcat --where: names
and decoding, the error policy (-e), exit statuses, the stderr line, the bytes
of the kept samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run, tar_members
from tarproc.errors import ExpressionError, UsageError
from tarproc.io.sinks import open_sink
from tarproc.io.sources import iter_samples
from tarproc.ops.stages import Where, where


def sample(i: int, **more) -> dict:
    out = {"__key__": f"s{i:03d}", "__source__": "mem", "cls": b"%d" % i,
           "json": json.dumps({"width": 100 * i, "tags": ["a", "b"][: i % 3]}).encode(), "jpg": b"J" * i}
    out.update(more)
    return out


def keys(samples) -> list[str]:
    return [s["__key__"] for s in samples]


def test_the_issue_example_keeps_exactly_the_matching_samples():
    samples = [sample(i) for i in range(10)]
    kept = keys(where(samples, 'int(cls) < 5 and json["width"] >= 256'))
    assert kept == ["s003", "s004"]


def test_names_text_json_bytes_key_source_sample_and_dotted_fields():
    s = sample(7, **{"seg.png": b"PNG!", "txt": "héllo".encode(), "2x.bin": b"ab"})
    assert list(where([s], 'key == "s007" and source == "mem" and "jpg" in sample'))
    assert list(where([s], 'len(jpg) == 7 and isinstance(jpg, bytes)'))
    assert list(where([s], 'seg_png == b"PNG!" and _2x_bin == b"ab"'))
    assert list(where([s], 'txt == "héllo" and isinstance(cls, str) and cls == "7"'))
    assert list(where([s], 'json["tags"] == ["a"] and json["width"] == 700'))
    # names inside a comprehension (a nested scope) are fields too
    assert list(where([s], 'any(c in txt for c in "xyzh")'))
    assert not list(where([s], 'all(t == "b" for t in json["tags"])'))


def test_a_field_is_decoded_only_when_used():
    bad_json = sample(1, json=b"{not json")
    w = Where("int(cls) == 1", errors="abort")
    assert keys(w([bad_json])) == ["s001"]
    with pytest.raises(ExpressionError, match="JSONDecodeError"):
        list(Where('json["width"] > 0', errors="abort")([bad_json]))


def test_a_syntax_error_is_a_usage_error_before_reading():
    def never():
        raise AssertionError("read")
        yield  # pragma: no cover

    with pytest.raises(UsageError, match="bad expression"):
        where(never(), "int(cls) <")
    with pytest.raises(UsageError):
        Where("   ")
    with pytest.raises(UsageError):
        Where("True", errors="nope")


def test_error_policy_abort_skip_ignore_with_exact_counts():
    samples = [sample(i) for i in range(12)]
    del samples[3]["cls"]
    del samples[8]["cls"]
    with pytest.raises(ExpressionError, match=r"sample 's003'.*NameError"):
        list(Where("int(cls) % 2 == 0", errors="abort")(samples))
    warnings: list[str] = []
    w = Where("int(cls) % 2 == 0", errors="skip", warn=warnings.append)
    assert keys(w(samples)) == ["s000", "s002", "s004", "s006", "s010"]
    assert (w.seen, w.kept, w.dropped, w.failed) == (12, 5, 5, 2)
    assert len(warnings) == 2 and warnings[0].startswith("leaving out mem: expression") and "'s003'" in warnings[0]
    w = Where("int(cls) % 2 == 0", errors="ignore", warn=warnings.append)
    assert keys(w(samples)) == ["s000", "s002", "s003", "s004", "s006", "s008", "s010"]
    assert (w.kept, w.dropped, w.failed) == (7, 5, 2)


def test_failing_on_each_of_the_first_samples_stops_whatever_the_policy():
    samples = [sample(i) for i in range(30)]
    w = Where("int(clss) > 0", errors="skip", halt_after=10)
    with pytest.raises(ExpressionError, match="each of the first 10 samples"):
        list(w(samples))
    assert w.seen == 10
    # one success first: no halt, every failure skipped
    samples[0]["clss"] = b"1"
    w = Where("int(clss) > 0", errors="skip", halt_after=10)
    assert keys(w(samples)) == ["s000"] and w.failed == 29


# ----------------------------------------------------------------- the tool
@pytest.fixture
def shards(tmp_path) -> list[Path]:
    """Two shards of 30 and 20 samples; cls = i % 7, json width = 20 * i."""
    paths = []
    for s, (start, n) in enumerate(((0, 30), (30, 20))):
        path = tmp_path / f"w-{s}.tar"
        with open_sink(str(path)) as sink:
            for i in range(start, start + n):
                sink.write({"__key__": f"k{i:04d}", "cls": b"%d" % (i % 7), "jpg": bytes([i]) * (i + 1),
                            "json": json.dumps({"width": 20 * i}).encode()})
        paths.append(path)
    return paths


def expected_members(shards, keep) -> list[tuple[str, bytes]]:
    return [(f"{s['__key__']}.{f}", s[f]) for s in iter_samples([str(p) for p in shards]) if keep(s)
            for f in s if not f.startswith("__")]


def test_tarcats_where_keeps_the_samples_bytes_and_says_how_many(shards, tmp_path):
    out = tmp_path / "out.tar"
    result = run(["tarcats", *map(str, shards), "--where", 'int(cls) < 3 and json["width"] >= 256', "-o", str(out)])
    assert result.returncode == 0, result.stderr
    want = expected_members(shards, lambda s: int(s["cls"]) < 3 and json.loads(s["json"])["width"] >= 256)
    assert tar_members(out.read_bytes()) == want
    kept = len({name.split(".")[0] for name, _ in want})
    assert kept == 16
    assert result.stderr.decode() == f"tarcats: --where kept {kept} of 50 samples ({50 - kept} false)\n"


def test_tarpcat_where_in_parallel_gives_the_same_bytes(shards, tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    expr = "len(jpg) % 3 == 0"
    assert run(["tarcats", *map(str, shards), "--where", expr, "-o", str(a)]).returncode == 0
    result = run(["tarpcat", "-p", "2", *map(str, shards), "--where", expr, "-o", str(b)])
    assert result.returncode == 0, result.stderr
    assert a.read_bytes() == b.read_bytes() and len(tar_members(a.read_bytes())) == 3 * 16


def test_tarcats_where_syntax_error_exit_2_before_reading(shards, tmp_path):
    out = tmp_path / "out.tar"
    result = run(["tarcats", str(shards[0]), str(tmp_path / "missing.tar"), "--where", "int(cls) <", "-o", str(out)])
    assert result.returncode == 2
    assert result.stderr.decode().startswith("tarcats: error: bad expression 'int(cls) <'")
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("out.tar*"))


def test_tarcats_where_error_policy_exit_statuses(shards, tmp_path):
    out = tmp_path / "out.tar"
    expr = "int(cls) < 1 or json['height'] > 0"  # json has no height: fails where cls != 0
    result = run(["tarcats", *map(str, shards), "--where", expr, "-e", "abort", "-o", str(out)])
    assert result.returncode == 3
    err = result.stderr.decode()
    assert "failed on sample 'k0001'" in err and "KeyError: 'height'" in err and "-e skip leaves such samples out" in err
    assert not out.exists()
    result = run(["tarcats", *map(str, shards), "--where", expr, "-o", str(out)])  # -e skip, the default
    assert result.returncode == 1
    want = expected_members(shards, lambda s: int(s["cls"]) < 1)
    assert tar_members(out.read_bytes()) == want
    err = result.stderr.decode()
    assert err.count("warning: leaving out") == 20 and "counted, not listed" in err
    assert err.endswith("tarcats: --where kept 8 of 50 samples (0 false, failed on 42 (left out))\n")
    result = run(["tarcats", *map(str, shards), "--where", expr, "-e", "ignore", "-o", str(out)])
    assert result.returncode == 0
    assert len(tar_members(out.read_bytes())) == 3 * 50


def test_tarcats_where_mistyped_field_stops_after_ten(shards, tmp_path):
    result = run(["tarcats", *map(str, shards), "--where", "int(clss) < 3", "-o", str(tmp_path / "o.tar")])
    assert result.returncode == 3
    assert "failed on each of the first 10 samples" in result.stderr.decode()
    assert "NameError: name 'clss' is not defined" in result.stderr.decode()


def test_readme_where_example_runs(shards, tmp_path):
    """The README's example, as written there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x.strip() for x in readme.splitlines() if x.strip().startswith("tarcats ") and "--where" in x)
    for i, shard in enumerate(shards):
        (tmp_path / f"train-{i:04d}.tar").write_bytes(shard.read_bytes())
    result = run(line.replace("{0000..0009}", "{0000..0001}"), shell=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"--where kept" in result.stderr
