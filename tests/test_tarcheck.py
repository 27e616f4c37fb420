"""tarcheck and tarproc.jobs.check: planted faults whose answer is known (a cut
shard, ungrouped keys, a key repeated across shards, a missing field, a
truncated JPEG inside a valid tar), exact counts and offsets in the report,
exit statuses, the wids index, repairs that re-check clean with exactly the
complete samples' bytes; every shard of ../shared/testdata; S3."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from conftest import run, tar_members, tool_env
from makeshards import imagenet_samples
from tarproc.jobs.check import CheckOptions, check_dataset, check_shard, decode_problem, parse_require
from tarproc.errors import UsageError
from tarproc.io.sinks import open_sink
from tarproc.io.sources import iter_samples
from tarproc.io.tario import TarWriter

N = 12  # samples per shard


def samples(prefix: str, n: int = N, seed: int = 0) -> list[dict]:
    out = []
    for i, s in enumerate(imagenet_samples(n, seed=seed, size=(48, 32), distinct=4)):
        s["__key__"] = f"{prefix}/{i:04d}"
        out.append(s)
    return out


def write(path: Path, items: list[dict]) -> Path:
    with open_sink(str(path)) as sink:
        for s in items:
            sink.write(s)
    return path


def members_of(items: list[dict]) -> list[tuple[str, bytes]]:
    return [(f"{s['__key__']}.{f}", s[f]) for s in items for f in s if not f.startswith("__")]


def offsets(path: Path) -> dict[str, int]:
    """Offset of the first member of each key, read by the stdlib."""
    out: dict[str, int] = {}
    with tarfile.open(path) as tf:
        for m in tf:
            out.setdefault(m.name.split(".")[0], m.offset)
    return out


@pytest.fixture
def dataset(tmp_path) -> dict:
    """good-0, good-1 (clean), cut-2 (cut inside sample 7's jpg), ungrouped-3
    (sample 2's cls after sample 3), dup-4 (sample 5's key is good-0's 0003),
    missing-5 (sample 4 has no cls), jpeg-6 (sample 9's JPEG cut to half)."""
    d = tmp_path / "data"
    d.mkdir()
    shards = {name: samples(name, seed=i) for i, name in enumerate(["good-0", "good-1", "cut-2", "ungrouped-3",
                                                                     "dup-4", "missing-5", "jpeg-6"])}
    write(d / "good-0.tar", shards["good-0"])
    write(d / "good-1.tar", shards["good-1"])
    full = write(tmp_path / "cut-2-full.tar", shards["cut-2"])
    cut_at = offsets(full)["cut-2/0007"] + 3 * 512 + 100  # inside sample 7's jpg (after its cls)
    (d / "cut-2.tar").write_bytes(full.read_bytes()[:cut_at])
    members = members_of(shards["ungrouped-3"])
    i = next(j for j, (name, _) in enumerate(members) if name == "ungrouped-3/0002.cls")
    members.insert(i + 5, members.pop(i))  # after sample 3's members
    with open(d / "ungrouped-3.tar", "wb") as handle:
        writer = TarWriter(handle)
        for name, data in members:
            writer.add(name, data)
        writer.finish()
    shards["dup-4"][5]["__key__"] = "good-0/0003"
    write(d / "dup-4.tar", shards["dup-4"])
    del shards["missing-5"][4]["cls"]
    write(d / "missing-5.tar", shards["missing-5"])
    jpg = shards["jpeg-6"][9]["jpg"]
    shards["jpeg-6"][9]["jpg"] = jpg[: len(jpg) // 2]
    write(d / "jpeg-6.tar", shards["jpeg-6"])
    return {"dir": d, "samples": shards, "cut_at": cut_at, "full": full}


#: the shards of :func:`dataset` in the order they are given
ORDER = ["good-0", "good-1", "cut-2", "ungrouped-3", "dup-4", "missing-5", "jpeg-6"]


def all_shards(d: Path) -> list[str]:
    return [str(d / f"{name}.tar") for name in ORDER]


def report_lines(text: bytes | str) -> dict[str, dict]:
    lines = [json.loads(x) for x in (text.decode() if isinstance(text, bytes) else text).splitlines()]
    return {Path(x["shard"]).stem: x for x in lines}


def test_every_planted_fault_found_with_exact_counts_offsets_and_exit_3(dataset, tmp_path):
    d = dataset["dir"]
    index = tmp_path / "idx" / "train.json"
    result = run(["tarcheck", *all_shards(d), "-j", "2", "--require", "jpg cls", "--decode", "jpg",
                  "--index", str(index)])
    assert result.returncode == 3, result.stderr
    lines = [json.loads(x) for x in result.stdout.decode().splitlines()]
    assert [Path(x["shard"]).stem for x in lines] == ORDER  # input order
    r = report_lines(result.stdout)
    for name in ("good-0", "good-1"):
        assert r[name]["status"] == "ok" and r[name]["problems"] == []
        assert r[name]["samples"] == N and r[name]["bytes"] == (d / f"{name}.tar").stat().st_size
        assert (r[name]["first_key"], r[name]["last_key"]) == (f"{name}/0000", f"{name}/0011")
    cut = r["cut-2"]
    assert cut["status"] == "bad" and cut["samples"] == 7 and cut["last_key"] == "cut-2/0006"
    assert [p["kind"] for p in cut["problems"]] == ["truncated"]
    assert cut["problems"][0]["key"] == "cut-2/0006" and "cut inside data" in cut["problems"][0]["message"]
    assert cut["problems"][0]["offset"] == dataset["cut_at"]
    ung = r["ungrouped-3"]
    assert ung["samples"] == N and [p["kind"] for p in ung["problems"]] == ["ungrouped"]
    assert ung["problems"][0]["key"] == "ungrouped-3/0002"
    assert ung["problems"][0]["offset"] == offsets(d / "ungrouped-3.tar")["ungrouped-3/0004"] - 1024
    dup = r["dup-4"]
    assert [(p["kind"], p["key"]) for p in dup["problems"]] == [("duplicate_key", "good-0/0003")]
    assert dup["problems"][0]["offset"] == offsets(d / "dup-4.tar")["good-0/0003"]
    assert "good-0.tar at offset" in dup["problems"][0]["message"]
    miss = r["missing-5"]
    assert [(p["kind"], p["key"]) for p in miss["problems"]] == [("missing_field", "missing-5/0004")]
    assert miss["problems"][0]["offset"] == offsets(d / "missing-5.tar")["missing-5/0004"]
    jp = r["jpeg-6"]
    assert [(p["kind"], p["key"]) for p in jp["problems"]] == [("decode", "jpeg-6/0009")]
    assert "truncated" in jp["problems"][0]["message"]
    assert r["good-0"]["problems"] == []  # the first occurrence of a key is not a problem
    err = result.stderr.decode()
    assert err.endswith("; 1 keys repeated across shards; " + err.rsplit("; ", 1)[1])
    assert "tarcheck: 7 shards: 2 ok, 5 bad, 0 error; 79 samples," in err
    assert "tarcheck: bad shard " + str(d / "cut-2.tar") + ": truncated:" in err
    # the index: every shard read to its end (not the cut one), urls relative to the index
    idx = json.loads(index.read_text())
    assert idx["__kind__"] == "wids-shard-index-v1" and idx["wids_version"] == 1
    assert [(s["url"], s["nsamples"]) for s in idx["shardlist"]] == [
        (f"../data/{name}.tar", N) for name in ("good-0", "good-1", "dup-4", "missing-5", "jpeg-6")]


def test_clean_dataset_exit_0_report_file_and_totals(dataset, tmp_path):
    d = dataset["dir"]
    report = tmp_path / "r.jsonl"
    result = run(["tarcheck", str(d / "good-{0..1}.tar"), "--report", str(report), "--require", "jpg,png cls json",
                  "--decode", "jpg", "--decode", "json", "-j", "2"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert [x["status"] for x in report_lines(report.read_text()).values()] == ["ok", "ok"]
    assert "2 shards: 2 ok, 0 bad, 0 error; 24 samples" in result.stderr.decode()
    assert not list(tmp_path.glob("*.partial"))


def test_a_shard_that_cannot_be_read_is_an_error_exit_1(dataset):
    d = dataset["dir"]
    (d / "nope.tar").mkdir()  # exists (so not refused before the run) but cannot be read
    result = run(["tarcheck", str(d / "good-0.tar"), str(d / "nope.tar"), str(d / "cut-2.tar"), "-j", "1"])
    assert result.returncode == 1
    r = report_lines(result.stdout)
    assert r["nope"]["status"] == "error" and r["nope"]["problems"][0]["kind"] == "io"
    assert r["cut-2"]["status"] == "bad" and r["good-0"]["status"] == "ok"
    assert "1 error;" in result.stderr.decode()


def test_a_missing_local_shard_is_one_error_before_the_run(dataset):
    result = run(["tarcheck", str(dataset["dir"] / "good-0.tar"), str(dataset["dir"] / "gone.tar")])
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().startswith("tarcheck: error: ") and len(result.stderr.splitlines()) == 1


def test_usage_errors_exit_2(dataset):
    d = str(dataset["dir"] / "good-0.tar")
    for args in (["--decode", "bin"], ["--require", "jpg,"], ["-j", "2", "-", d]):
        result = run(["tarcheck", d, *args])
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(b"tarcheck: error: ") and len(result.stderr.splitlines()) == 1
    assert run(["tarcheck", d, "--repair", str(dataset["dir"])]).returncode == 2


def test_stdin_with_j1(dataset):
    data = (dataset["dir"] / "cut-2.tar").read_bytes()
    result = run(["tarcheck", "-", "-j", "1"], input=data)
    assert result.returncode == 3
    assert report_lines(result.stdout)["-"]["samples"] == 7


def test_repair_cut_and_ungrouped_recheck_clean_with_the_complete_samples_bytes(dataset, tmp_path):
    d, fixed = dataset["dir"], tmp_path / "fixed"
    result = run(["tarcheck", *all_shards(d), "-j", "2", "--repair", str(fixed),
                  "--require", "jpg cls", "--decode", "jpg", "--report", str(tmp_path / "r.jsonl")])
    assert result.returncode == 3
    r = report_lines((tmp_path / "r.jsonl").read_text())
    assert sorted(p.name for p in fixed.iterdir()) == ["cut-2.tar", "ungrouped-3.tar"]  # nothing else is repairable
    assert r["cut-2"]["repair"]["output"] == str(fixed / "cut-2.tar") and r["cut-2"]["repair"]["samples"] == 7
    assert "'cut-2/0006'" in r["cut-2"]["repair"]["action"]
    assert r["ungrouped-3"]["repair"]["samples"] == N
    for name in ("dup-4", "missing-5", "jpeg-6", "good-0"):
        assert "repair" not in r[name]
    assert tar_members((fixed / "cut-2.tar").read_bytes()) == members_of(dataset["samples"]["cut-2"][:7])
    # every member kept, samples in key order; sample 2's cls, read last, stays after its other fields
    regrouped = tar_members((fixed / "ungrouped-3.tar").read_bytes())
    assert sorted(regrouped) == sorted(members_of(dataset["samples"]["ungrouped-3"]))
    assert [n for n, _ in regrouped][6:9] == ["ungrouped-3/0002.jpg", "ungrouped-3/0002.json", "ungrouped-3/0002.cls"]
    again = run(["tarcheck", str(fixed / "cut-2.tar"), str(fixed / "ungrouped-3.tar"), "--require", "jpg cls",
                 "--decode", "jpg"])
    assert again.returncode == 0, again.stdout
    assert [x["samples"] for x in report_lines(again.stdout).values()] == [7, N]


def test_repair_of_a_shard_cut_before_its_first_complete_sample_writes_nothing_and_says_why(dataset, tmp_path):
    """No copy (an empty archive would look like a complete shard), and the
    report's repair entry says so, naming the cut (not 'sample None')."""
    d, fixed = tmp_path / "in", tmp_path / "fixed"
    d.mkdir()
    full = dataset["full"].read_bytes()
    (d / "first.tar").write_bytes(full[: 3 * 512 + 100])  # inside sample 0's jpg (after its cls)
    (d / "empty.tar").write_bytes(b"")
    result = run(["tarcheck", str(d / "first.tar"), str(d / "empty.tar"), "-j", "1", "--repair", str(fixed)])
    assert result.returncode == 3, result.stderr
    r = report_lines(result.stdout)
    assert not fixed.exists() or not list(fixed.iterdir())
    for name, offset in (("first", 3 * 512 + 100), ("empty", 0)):
        assert [p["kind"] for p in r[name]["problems"]] == ["truncated"] and r[name]["samples"] == 0
        repair = r[name]["repair"]
        assert repair["output"] is None and repair["samples"] == 0
        assert f"cut at offset {offset} before any sample is complete; no copy written" in repair["action"]
        assert "None" not in repair["action"]
    assert b"0 repaired to" in result.stderr


def test_report_and_index_to_a_fifo_are_written_into_it_not_renamed_over_it(dataset, tmp_path):
    """As -o does: a device or FIFO (/dev/null) is written directly; a
    rename over it would replace /dev/null itself with a regular file."""
    import os
    import stat
    import threading

    got = {}
    for name in ("report", "index"):
        os.mkfifo(tmp_path / name)

    def drain(name):
        got[name] = (tmp_path / name).read_bytes()

    readers = [threading.Thread(target=drain, args=(n,), daemon=True) for n in ("report", "index")]
    for t in readers:
        t.start()
    result = run(["tarcheck", str(dataset["dir"] / "good-0.tar"), "-j", "1", "--report", str(tmp_path / "report"),
                  "--index", str(tmp_path / "index")])
    for t in readers:
        t.join(30)
    assert result.returncode == 0, result.stderr
    assert all(stat.S_ISFIFO(os.stat(tmp_path / n).st_mode) for n in ("report", "index"))
    assert json.loads(got["report"])["samples"] == N and b"wids-shard-index-v1" in got["index"]
    assert not list(tmp_path.glob("*.partial"))


def test_library_check_shard_and_dataset(dataset):
    d = dataset["dir"]
    options = CheckOptions(require=parse_require(["jpg cls"]))
    report = check_shard(0, str(d / "missing-5.tar"), options)
    assert report.status == "bad" and report.samples == N and report.ok
    assert [k for k, _ in report.keys][:2] == ["missing-5/0000", "missing-5/0001"]
    specs = [str(d / "good-0.tar"), str(d / "dup-4.tar"), str(d / "good-0.tar")]
    result = check_dataset(specs)
    assert [r.status for r in result.shards] == ["ok", "bad", "bad"] and result.duplicates == 1 + N
    assert len(result.shards[2].problems) == N and result.exit_status == 3
    with pytest.raises(UsageError):
        parse_require(["a,,b"])


def _task(kind: str, n: int):
    import os

    if kind == "die":
        os._exit(3)
    if kind == "raise":
        raise ValueError(f"bad {n}")
    return n * 2


def test_process_pool_results_a_task_s_exception_and_a_dead_worker():
    """ProcessPool (forked workers, pipes): results come back, a task's
    exception is raised again by outcome(), a worker that dies is an error
    naming its exit status, and close() leaves no process behind."""
    from tarproc.errors import TarprocError
    from tarproc.jobs.check import ProcessPool

    pool = ProcessPool(2)
    pool.start()
    futures = [pool.submit(_task, "ok", i) for i in range(5)] + [pool.submit(_task, "raise", 7)]
    pending = set(futures)
    while pending:
        pending -= pool.wait_any(pending)
    assert [pool.outcome(f) for f in futures[:5]] == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="bad 7"):
        pool.outcome(futures[5])
    dead = pool.submit(_task, "die", 0)
    pool.wait_any({dead})
    with pytest.raises(TarprocError, match="exit status 3"):
        pool.outcome(dead)
    pids = [w.pid for w in pool._workers]
    pool.close()
    import os

    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, 0)  # already reaped: no zombie left


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_workers_and_leaves_no_report(dataset, tmp_path, sig):
    """tarcheck -j 2 dies of SIGINT/SIGTERM (130/143 in a shell) after stopping its workers (here
    stuck opening FIFOs nobody writes); no report, complete or partial, is left."""
    import os
    import signal
    import subprocess
    import time

    fifos = [tmp_path / f"stuck-{i}.tar" for i in range(2)]
    for fifo in fifos:
        os.mkfifo(fifo)
    report = tmp_path / "report.jsonl"
    proc = subprocess.Popen(["tarcheck", "-j", "2", "--report", str(report), *map(str, fifos)], env=tool_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        workers: list[str] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        time.sleep(0.2)  # the workers are in open(2) of their FIFO
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -getattr(signal, sig), err
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")]
    assert not list(tmp_path.glob("report.jsonl*"))


def test_decode_problem_finds_a_truncated_jpeg_in_memory():
    jpg = samples("x", 1)[0]["jpg"]
    assert decode_problem("jpg", jpg) is None
    assert "truncated" in decode_problem("jpg", jpg[:-200])
    assert decode_problem("json", b"{}") is None and decode_problem("json", b"{") is not None
    assert decode_problem("cls", b"\xff") is not None


def test_compressed_cut_shard_is_truncated_and_repaired(tmp_path):
    items = samples("gz", 30)
    full = write(tmp_path / "full.tar.gz", items)
    (tmp_path / "in").mkdir()
    cut = tmp_path / "in" / "z.tar.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    report = check_shard(0, str(cut), CheckOptions(repair_dir=str(tmp_path / "fixed")))
    assert [p["kind"] for p in report.problems] == ["truncated"]
    got = list(iter_samples([str(tmp_path / "fixed" / "z.tar.gz")]))
    assert len(got) == report.samples > 0
    assert members_of(got) == members_of(items[: report.samples])


def test_every_shard_of_shared_testdata(testdata, tmp_path):
    """../shared/testdata beside the checkout (the conftest fixture, as the interop tests; skipped when absent)."""
    shards = sorted(str(p) for p in testdata.iterdir() if p.is_file())
    result = run(["tarcheck", *shards, "-j", "2", "--index", str(tmp_path / "i.json")])
    r = [json.loads(x) for x in result.stdout.decode().splitlines()]
    assert [x["shard"] for x in r] == shards
    for line in r:
        want = sum(1 for _ in iter_samples([line["shard"]], regroup=True))  # fragments = samples when grouped
        assert line["samples"] == want, line
        if line["status"] == "ok":
            assert line["problems"] == []
        else:  # only a key repeated across these unrelated shards
            assert {p["kind"] for p in line["problems"]} == {"duplicate_key"}, line
    assert result.returncode == (3 if any(x["status"] == "bad" for x in r) else 0), result.stderr
    assert len(json.loads((tmp_path / "i.json").read_text())["shardlist"]) == len(shards)


def test_remote_check_on_s3(s3_server, dataset, tmp_path):
    s3_server.reset()
    fs = s3_server.fs()
    fs.mkdir("data")
    d = dataset["dir"]
    for name in ("good-0", "dup-4", "cut-2"):
        fs.put(str(d / f"{name}.tar"), f"data/{name}.tar")
    result = run(["tarcheck", "s3://data/good-0.tar", "s3://data/dup-4.tar", "s3://data/cut-2.tar", "-j", "2",
                  "--index", str(tmp_path / "i.json"), "--repair", "s3://data/fixed"], env=s3_server.env(tool_env()))
    assert result.returncode == 3, result.stderr
    r = report_lines(result.stdout)
    assert r["good-0"]["status"] == "ok" and r["good-0"]["bytes"] == (d / "good-0.tar").stat().st_size
    assert [p["kind"] for p in r["dup-4"]["problems"]] == ["duplicate_key"]
    assert r["cut-2"]["samples"] == 7 and r["cut-2"]["repair"]["output"] == "s3://data/fixed/cut-2.tar"
    fs.invalidate_cache()
    assert tar_members(fs.cat_file("data/fixed/cut-2.tar")) == members_of(dataset["samples"]["cut-2"][:7])
    idx = json.loads((tmp_path / "i.json").read_text())
    assert [s["url"] for s in idx["shardlist"]] == ["s3://data/good-0.tar", "s3://data/dup-4.tar"]


def test_readme_tarcheck_example_runs(dataset, tmp_path):
    """The README's example, as written there (on two shards named as it names them)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x.strip() for x in readme.splitlines() if x.strip().startswith("tarcheck 'train-"))
    for i in range(2):
        (tmp_path / f"train-{i:04d}.tar").write_bytes((dataset["dir"] / f"good-{i}.tar").read_bytes())
    result = run(line.replace("{0000..0147}", "{0000..0001}"), shell=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "report.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "train.json").read_text())["shardlist"][1]["url"] == "train-0001.tar"


def test_the_io_status_wins_over_bad_data(tmp_path):
    from tarproc.jobs.check import DatasetReport, ShardReport

    bad, err = ShardReport(0, "a"), ShardReport(1, "b")
    bad.add("decode", 0, "k", "x")
    err.add("io", None, None, "y")
    assert DatasetReport([bad]).exit_status == 3 and DatasetReport([bad, err]).exit_status == 1
    assert DatasetReport([ShardReport(0, "a")]).exit_status == 0


def test_dask_engine_gives_the_same_report(dask_cluster, dataset, tmp_path):
    address, _ = dask_cluster
    specs = all_shards(dataset["dir"])
    local = run(["tarcheck", *specs, "-j", "2", "--require", "jpg cls", "--decode", "jpg"])
    on_dask = run(["tarcheck", *specs, "--dask", address, "--require", "jpg cls", "--decode", "jpg"])
    assert on_dask.returncode == local.returncode == 3, on_dask.stderr
    assert on_dask.stdout == local.stdout


def test_seeking_over_data_finds_what_reading_it_finds(dataset, tmp_path):
    """A local uncompressed shard checked without --decode is read as tar tf reads it (headers, data
    skipped by seeking): the same problems at the same offsets as reading every byte."""
    from tarproc.jobs.check import _SkimReader  # noqa: F401 - the path under test

    d = dataset["dir"]
    (tmp_path / "short.tar").write_bytes((d / "good-0.tar").read_bytes()[:4096 + 700])  # cut inside a header
    for spec in [*all_shards(d), str(tmp_path / "short.tar")]:
        skimmed = check_shard(0, spec, CheckOptions(require=parse_require(["jpg cls"])))
        read = check_shard(0, spec, CheckOptions(require=parse_require(["jpg cls"]), decode=("cls",)))
        assert (skimmed.status, skimmed.samples, skimmed.bytes, skimmed.problems, skimmed.keys) == \
            (read.status, read.samples, read.bytes, read.problems, read.keys), spec
    assert check_shard(0, str(d / "cut-2.tar")).problems[0]["offset"] == dataset["cut_at"]


def test_a_member_without_a_key_is_a_problem_at_its_offset(tmp_path):
    path = tmp_path / "readme.tar"
    with open(path, "wb") as handle:
        writer = TarWriter(handle)
        writer.add("a.cls", b"1")
        writer.add("README", b"hello")
        writer.add("b.cls", b"2")
        writer.finish()
    report = check_shard(0, str(path))
    assert report.status == "bad" and report.samples == 2
    assert [(p["kind"], p["offset"]) for p in report.problems] == [("skipped_member", 1024)]
    assert "README" in report.problems[0]["message"]
