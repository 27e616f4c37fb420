"""tardedup: planted duplicates removed exactly (first occurrence kept, bytes
of kept samples identical, removed list exact), the same output with -j 1
and -j 2, --by, killed (SIGKILL, SIGTERM) and re-run -> identical output."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, run, tool_env
from tarproc.jobs.dedup import content_hash, parse_by
from tarproc.io.sinks import open_sink
from tarproc.io.sources import iter_samples

SHARDS = 6
PER_SHARD = 30


def make_dataset(root: Path, shards: int = SHARDS, per_shard: int = PER_SHARD, seed: int = 0):
    """Shards in-K.tar whose samples are unique but for 10% planted copies
    of an earlier sample's content (under their own keys); returns the
    paths and the removed records expected (in input order)."""
    rng = random.Random(seed)
    total = shards * per_shard
    planted = set(rng.sample(range(1, total), total // 10))
    contents, where, expected = [], [], []
    paths = [root / f"in-{k}.tar" for k in range(shards)]
    for g in range(total):
        k, pos = divmod(g, per_shard)
        key = f"s{k}/{pos:04d}"
        if g in planted:
            twin = rng.choice([t for t in range(g) if t not in planted])
            content = contents[twin]
            expected.append({"shard": str(paths[k]), "key": key, "position": pos, "twin_shard": where[twin][0],
                             "twin_key": where[twin][1], "twin_position": where[twin][2]})
        else:
            content = {"jpg": rng.randbytes(rng.randrange(10, 3000)), "cls": str(g % 7).encode()}
        contents.append(content)
        where.append((str(paths[k]), key, pos))
    for k, path in enumerate(paths):
        with open_sink(str(path)) as sink:
            for pos in range(per_shard):
                sink.write({"__key__": f"s{k}/{pos:04d}", **contents[k * per_shard + pos]})
    return paths, expected


def strip(samples):
    return [{k: v for k, v in s.items() if k != "__source__"} for s in samples]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    return make_dataset(root)


def dedup(tmp_path: Path, name: str, *more: str) -> Path:
    out = tmp_path / name
    result = run(["tardedup", str(tmp_path / "in" / f"in-{{0..{SHARDS - 1}}}.tar"), "-o", f"{out}/{{stem}}.tar", *more])
    assert result.returncode == 0, result.stderr
    return out


def outputs(out: Path) -> dict[str, bytes]:
    """The output shards and the removed list (not the completion records, which hold times and hosts)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.endswith(".tarmap.json")}


def test_content_hash_and_by():
    a = {"__key__": "a", "jpg": b"x", "cls": b"1"}
    b = {"__key__": "b", "jpg": b"x", "cls": b"2"}
    assert content_hash(a) != content_hash(b)
    assert content_hash(a, ("jpg",)) == content_hash(b, ("jpg",))
    # field boundaries count: jpg=ab + cls="" is not jpg=a + cls=b
    assert content_hash({"__key__": "c", "jpg": b"ab", "cls": b""}) != content_hash({"__key__": "d", "jpg": b"a", "cls": b"b"})
    assert parse_by("jpg, cls") == ("cls", "jpg")


def test_planted_duplicates_removed_exactly(dataset, tmp_path):
    paths, expected = dataset
    assert len(expected) == SHARDS * PER_SHARD // 10
    out = dedup(tmp_path, "out", "-j", "2", "-v")
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert removed == expected
    gone = {(r["shard"], r["key"]) for r in removed}
    for path in paths:  # one output per input: its samples, bytes unchanged, less the removed ones
        kept = strip(s for s in iter_samples([str(path)]) if (str(path), s["__key__"]) not in gone)
        assert strip(iter_samples([str(out / path.name)])) == kept
    # the outputs, their records and the list; the staging is gone
    assert sorted(outputs(out)) == sorted([p.name for p in paths] + ["removed.jsonl"])
    assert sorted(p.name for p in out.iterdir()) == sorted(set(outputs(out)) | {p.name + ".tarmap.json" for p in paths})


def test_same_output_whatever_j_and_partitions_given(dataset, tmp_path):
    one = outputs(dedup(tmp_path, "j1", "-j", "1"))
    two = outputs(dedup(tmp_path, "j2", "-j", "2"))
    assert one == two
    assert outputs(dedup(tmp_path, "p3", "-j", "2", "--partitions", "3")) == one


def test_by_field(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    with open_sink(str(root / "in-0.tar")) as sink:
        sink.write({"__key__": "a", "jpg": b"same", "cls": b"1"})
        sink.write({"__key__": "b", "jpg": b"same", "cls": b"2"})
    result = run(["tardedup", str(root / "in-0.tar"), "-o", f"{tmp_path}/all/{{stem}}.tar"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "all" / "removed.jsonl").read_text() == ""
    result = run(["tardedup", str(root / "in-0.tar"), "--by", "jpg", "-o", f"{tmp_path}/jpg/{{stem}}.tar"])
    assert result.returncode == 0, result.stderr
    assert [s["__key__"] for s in iter_samples([str(tmp_path / "jpg" / "in-0.tar")])] == ["a"]
    result = run(["tardedup", str(root / "in-0.tar"), "--by", "png", "-o", f"{tmp_path}/png/{{stem}}.tar"])
    assert result.returncode == 3
    assert "has no field 'png'" in result.stderr.decode() and "--by" in result.stderr.decode()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_and_run_again_gives_the_same_output(tmp_path, sig):
    root = tmp_path / "in"
    root.mkdir()
    make_dataset(root, shards=12, per_shard=20, seed=1)
    args = [str(BIN / "tardedup"), str(root / "in-{0..11}.tar"), "-j", "1"]
    reference = tmp_path / "ref"
    assert run(args + ["-o", f"{reference}/{{stem}}.tar"]).returncode == 0
    out = tmp_path / "out"
    proc = subprocess.Popen(args + ["-o", f"{out}/{{stem}}.tar"], env=tool_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = out / "tardedup-staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(staging.glob("removed-*.jsonl.tarmap.json")):
        time.sleep(0.02)  # killed in the reduce phase: hash files and records done, some reduce tasks too
    os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == -sig, proc.stderr.read()  # killed, or died of SIGTERM after its cleanup (143 in a shell)
    assert not (out / "removed.jsonl").exists()
    again = run(args + ["-o", f"{out}/{{stem}}.tar", "-v"])
    assert again.returncode == 0, again.stderr
    assert b"skipped" in again.stderr
    assert outputs(out) == outputs(reference)  # nothing lost or doubled, no partial files, staging removed
    assert not list(out.rglob("*.partial*"))


@pytest.mark.slow
def test_one_task_at_a_time_with_phase_and_index(dataset, tmp_path):
    """As Kubernetes or Slurm would run it: each task of each phase alone,
    then the whole command once more, which skips them all and writes the list."""
    paths, expected = dataset
    args = ["tardedup", str(tmp_path / "in" / f"in-{{0..{SHARDS - 1}}}.tar"), "-o", f"{tmp_path}/one/{{stem}}.tar",
            "--partitions", "2"]
    for phase, count in (("hash", SHARDS), ("reduce", 2), ("write", SHARDS)):
        for i in range(count):
            result = run(args + ["--phase", phase, "--index", str(i)])
            assert result.returncode == 0, result.stderr
    result = run(args + ["--index", "2"])
    assert result.returncode == 2 and "--phase and --index go together" in result.stderr.decode()
    result = run(args + ["-v"])
    assert result.returncode == 0, result.stderr
    assert b"0 tasks done, 6 skipped" in result.stderr
    removed = [json.loads(line) for line in (tmp_path / "one" / "removed.jsonl").read_text().splitlines()]
    assert removed == expected
    assert not (tmp_path / "one" / "tardedup-staging").exists()


@pytest.mark.slow
def test_s3_inputs_outputs_and_staging(s3_server, dataset, tmp_path):
    paths, expected = dataset
    s3_server.reset()
    fs = s3_server.fs()
    for bucket in ("raw", "clean"):
        fs.mkdir(bucket)
    for path in paths:
        fs.put(str(path), f"raw/{path.name}")
    env = s3_server.env(tool_env())
    result = run(["tardedup", f"s3://raw/in-{{0..{SHARDS - 1}}}.tar", "-o", "s3://clean/{stem}.tar", "-j", "2",
                  "--partitions", "2"], env=env)
    assert result.returncode == 0, result.stderr
    fs.invalidate_cache()
    removed = [json.loads(line) for line in fs.cat_file("clean/removed.jsonl").decode().splitlines()]
    local = {str(p): f"s3://raw/{p.name}" for p in paths}
    assert removed == [{**r, "shard": local[r["shard"]], "twin_shard": local[r["twin_shard"]]} for r in expected]
    local_out = dedup(tmp_path, "local")
    for path in paths:
        assert fs.cat_file(f"clean/{path.name}") == (local_out / path.name).read_bytes()
    assert not [p for p in fs.find("clean") if "tardedup-staging" in p]  # the staging is removed
