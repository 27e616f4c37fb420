"""Dask workers that share nothing with the client (issue 17): each worker
in its own network namespace (an address on a private link) and mount
namespace (its own /tmp and working directory), tests/daskcluster.py's
``share_nothing_cluster``. With inputs and outputs on the S3 test server
(in the cluster's hub, reachable from every worker) tarmap and tarshuffle
give the bytes of a local run; a local output is warned about before any
task runs and a task whose output lies on a worker only is failed, never
reported complete, on the first run and on a re-run.

The first tests need no cluster (default suite); those marked ``engines``
start one (``make test-engines``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import BIN, run, tool_env
from makeshards import write_shard
from tarproc.jobs.tasks import TaskResult, client_sees_output

PIPELINE = "tarproc -c 'rm sample.json' -o -"
SHARED = "every worker must mount it (a shared volume), or use an object-store URL"


@pytest.mark.parametrize("address, shares", [
    ("local:2", True), ("tcp://127.0.0.1:8786", True), ("tcp://127.3.0.1:8786", True), ("tcp://localhost:8786", True),
    ("tcp://[::1]:8786", True), ("127.0.0.1:8786", True), ("tcp://10.0.0.5:8786", False),
    ("tcp://scheduler.example:8786", False), ("tls://[2001:db8::1]:8786", False)])
def test_which_dask_addresses_share_this_file_system(address, shares):
    from tarproc.jobs.engines.dask import DaskEngine

    assert DaskEngine(address).shares_filesystem is shares


def test_an_output_the_client_cannot_see_is_a_failed_task(tmp_path):
    here = tmp_path / "here.tar"
    here.write_bytes(b"x")
    record = {"samples": 3, "bytes": 10}
    seen = TaskResult(0, "s3://b/in.tar", str(here), "complete", record=record)
    assert client_sees_output(seen, "Dask worker") is seen
    for status in ("complete", "skipped"):
        result = client_sees_output(TaskResult(1, "s3://b/in.tar", str(tmp_path / "gone.tar"), status,
                                                      record=record), "Dask worker")
        assert (result.status, result.ok, result.record, result.permanent) == ("failed", False, None, False)
        assert result.message == (f"its output {str(tmp_path / 'gone.tar')!r} is {status} on the Dask worker but not on"
                                  " this machine: the workers do not share this file system; use an object-store URL"
                                  " or a path every worker and this machine share")
    remote = TaskResult(2, "s3://b/in.tar", "s3://b/out.tar", "complete", record=record)
    assert client_sees_output(remote, "Dask worker") is remote
    failed = TaskResult(3, "s3://b/in.tar", str(tmp_path / "gone.tar"), "failed", message="boom")
    assert client_sees_output(failed, "Dask worker") is failed


def free_port() -> int:
    from daskcluster import free_port as port

    return port()


# ------------------------------------------------------------------ a real share-nothing cluster
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("share-nothing-in")
    return [Path(write_shard(str(root / f"in-{i:02d}.tar"), 3, seed=i)) for i in range(4)]


@pytest.fixture
def cluster(share_nothing_cluster, shards):
    """The session's share-nothing cluster, its S3 server emptied and the
    shards uploaded to s3://inputs/."""
    share_nothing_cluster.s3(
        "for b in fs.ls(''):\n    fs.rm(b, recursive=True)\n"
        "fs.mkdir('inputs'); fs.mkdir('outputs')\n"
        "for path in args: fs.put(path, 'inputs/' + path.rsplit('/', 1)[1])\n", *map(str, shards))
    return share_nothing_cluster


def client(cluster, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a tool as the client, in the cluster's hub (this machine's files)."""
    return subprocess.run([*cluster.exec_hub(), *argv], env=cluster.env(), capture_output=True, timeout=timeout)


def pipeline_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return subprocess.run(["bash", "-c", PIPELINE], stdin=handle, capture_output=True, env=tool_env(),
                              check=True).stdout


@pytest.mark.engines
def test_workers_share_nothing_with_the_client(cluster, tmp_path):
    (tmp_path / "mine").write_text("client")
    names = set()
    for i in range(len(cluster.workers)):
        seen = cluster.in_worker(i, ["sh", "-c", f"hostname; test -e {tmp_path}/mine && echo shared; pwd; ls /tmp"])
        assert seen.returncode == 0, seen.stderr
        lines = seen.stdout.decode().split()
        names.add(lines[0])
        assert "shared" not in lines and lines[1:3] == ["/", "work"], lines
    assert names == {"worker-0", "worker-1"}


@pytest.mark.engines
def test_tarmap_on_s3_succeeds_on_share_nothing_workers(cluster, shards):
    argv = [str(BIN / "tarmap"), "s3://inputs/in-{00..03}.tar", "-o", "s3://outputs/ppm/{stem}.tar", "-c", PIPELINE,
            "--dask", cluster.address, "-v"]
    result = client(cluster, argv)
    assert result.returncode == 0, result.stderr
    assert b"warning" not in result.stderr and b"4 tasks done, 0 skipped" in result.stderr, result.stderr
    got = cluster.s3("import json\nprint(json.dumps({p: fs.cat(p).hex() for p in sorted(fs.find('outputs/ppm'))}))")
    import json

    got = {k.rsplit("/", 1)[1]: bytes.fromhex(v) for k, v in json.loads(got).items()}
    for path in shards:
        assert got[f"{path.stem}.tar"] == pipeline_bytes(path)
        assert json.loads(got[f"{path.stem}.tar.tarmap.json"])["samples"] == 3
    again = client(cluster, argv)
    assert again.returncode == 0 and b"0 tasks done, 4 skipped" in again.stderr, again.stderr


@pytest.mark.engines
def test_tarshuffle_on_s3_succeeds_on_share_nothing_workers(cluster, shards, tmp_path):
    local = tmp_path / "local"
    reference = run([str(BIN / "tarshuffle"), *map(str, shards), "-o", f"{local}/train-%04d.tar", "--shards", "2",
                     "--seed", "7", "--rekey", "{shard}/{key}"], timeout=180)
    assert reference.returncode == 0, reference.stderr
    inputs = [f"s3://inputs/{p.name}" for p in shards]
    result = client(cluster, [str(BIN / "tarshuffle"), *inputs, "-o", "s3://outputs/shuf/train-%04d.tar", "--shards",
                              "2", "--seed", "7", "--rekey", "{shard}/{key}", "--dask", cluster.address, "-v"])
    assert result.returncode == 0, result.stderr
    assert b"warning" not in result.stderr, result.stderr
    listing = cluster.s3("print('\\n'.join(sorted(fs.find('outputs/shuf'))))").split()
    assert listing == ["outputs/shuf/train-0000.tar", "outputs/shuf/train-0000.tar.tarmap.json",
                       "outputs/shuf/train-0001.tar", "outputs/shuf/train-0001.tar.tarmap.json"]  # staging removed
    for j in range(2):
        got = cluster.s3("import sys\nsys.stdout.write(fs.cat(args[0]).hex())", f"outputs/shuf/train-{j:04d}.tar")
        assert bytes.fromhex(got) == (local / f"train-{j:04d}.tar").read_bytes()


@pytest.mark.engines
def test_local_output_on_share_nothing_workers_is_never_reported_complete(cluster, shards, tmp_path):
    """The case of issue 17: ``-o /tmp/private-out/{stem}.tar`` used to exit 0
    with "4 done" and the outputs on the workers only, and a re-run "4
    skipped". Now: a warning before any task, then every task failed with
    the reason, exit 1, on the first run and on the re-run."""
    out = f"{tmp_path}/private-out/{{stem}}.tar"
    argv = [str(BIN / "tarmap"), "s3://inputs/in-{00..03}.tar", "-o", out, "-c", PIPELINE, "--dask", cluster.address,
            "--retries", "0", "-v"]
    for run_number in range(2):
        result = client(cluster, argv)
        lines = result.stderr.decode().splitlines()
        assert lines[0] == (f"tarmap: warning: output {out!r} is a local path: the workers of --dask {cluster.address}"
                            f" do not share this machine's files: {SHARED}"), lines
        assert result.returncode == 1, lines
        failed = [line for line in lines if " failed: its output " in line]
        assert len(failed) == 4, lines
        status = "complete" if run_number == 0 else "skipped"  # the re-run lands on a worker holding it, or not
        assert all("on the Dask worker but not on this machine: the workers do not share this file system" in line
                   for line in failed), failed
        assert run_number == 1 or all(f"is {status} on the Dask worker" in line for line in failed), failed
    assert not (tmp_path / "private-out").exists()
    # the outputs lie on the workers, in their own /tmp
    held = [cluster.in_worker(i, ["sh", "-c", f"ls {tmp_path}/private-out 2>/dev/null"]).stdout.decode().split()
            for i in range(len(cluster.workers))]
    assert {name for names in held for name in names if name.endswith(".tar")} == {f"{p.stem}.tar" for p in shards}
