"""tarmap --dask on a real Dask cluster on 127.0.0.1: a `dask scheduler`
and two `dask worker` processes started by the test, one worker killed with
SIGKILL mid-run; and --dask local:N (a LocalCluster of worker processes)."""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, run, tool_env
from makeshards import write_shard

pytest.importorskip("distributed", reason="dask.distributed (the [dask] extra, in the test extra) is not installed")

PIPELINE = "tarproc -c 'rm sample.json' -o -"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("dask-in")
    return [Path(write_shard(str(root / f"in-{i:02d}.tar"), 3, seed=i)) for i in range(10)]


@pytest.fixture(scope="module")
def expected(shards) -> dict[str, bytes]:
    out = {}
    for path in shards:
        with open(path, "rb") as handle:
            out[path.stem] = subprocess.run(["bash", "-c", PIPELINE], stdin=handle, capture_output=True,
                                            env=tool_env(), check=True).stdout
    return out


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two single-threaded workers (no nanny: a killed worker stays dead)."""
    dask = str(BIN / "dask")
    if not os.path.exists(dask):
        pytest.skip("the `dask` command of distributed is not installed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = tool_env()
    logs = open(tmp_path / "cluster.log", "wb")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              env=env, stdout=logs, stderr=logs, start_new_session=True)]
    from distributed import Client

    try:
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                           "--no-nanny", "--no-dashboard"], env=env, stdout=logs, stderr=logs,
                                          start_new_session=True))
        client = Client(address, timeout=60)
        client.wait_for_workers(2, timeout=60)
        client.close()
        yield address, procs[1:]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        logs.close()


def test_dask_worker_killed_mid_run_nothing_lost_nothing_duplicated(cluster, shards, expected, tmp_path):
    address, workers = cluster
    out = tmp_path / "out"
    slow = "sleep 0.4; " + PIPELINE
    proc = subprocess.Popen([str(BIN / "tarmap"), *map(str, shards), "-o", f"{out}/{{stem}}.tar", "-c", slow,
                             "--dask", address, "-v"], env=tool_env(), stderr=subprocess.PIPE)
    wait_for(lambda: out.exists() and list(out.glob("*.tarmap.json")), what="a first record")
    victim = workers[0]
    os.kill(victim.pid, signal.SIGKILL)  # mid-run: it holds a running task (each takes > 0.4 s)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert {p.stem: p.read_bytes() for p in out.glob("*.tar")} == expected  # 0 lost, 0 duplicated, same bytes
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{s}.tar" for s in expected] +
                                                          [f"{s}.tar.tarmap.json" for s in expected])
    for path in shards:
        record = json.loads((out / f"{path.stem}.tar.tarmap.json").read_text())
        assert record["status"] == "complete" and record["samples"] == 3
        assert record["bytes"] == len(expected[path.stem])
    # a task that finished on the killed worker, its result lost, is run again by Dask and finds itself complete
    done = re.search(rb"tarmap: (\d+) tasks done, (\d+) skipped \(complete before\), 0 failed; 30 samples", stderr)
    assert done and int(done[1]) + int(done[2]) == 10, stderr

    again = run(["tarmap", *map(str, shards), "-o", f"{out}/{{stem}}.tar", "-c", slow, "--dask", address, "-v"])
    assert again.returncode == 0 and b"0 tasks done, 10 skipped" in again.stderr


def test_dask_local_cluster_and_a_permanent_failure(shards, expected, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive" * 40)
    result = run(["tarmap", str(shards[0]), str(bad), str(shards[1]), "-o", f"{out}/{{index}}.tar", "-c", PIPELINE,
                  "--dask", "local:2", "--backoff", "0"], timeout=180)
    assert result.returncode == 1, result.stderr
    text = result.stderr.decode()
    assert f"task 1 ({bad}) failed permanently: pipeline exited with status 3" in text
    assert "retrying" not in text
    assert (out / "0.tar").read_bytes() == expected[shards[0].stem]
    assert (out / "2.tar").read_bytes() == expected[shards[1].stem]
    assert not (out / "1.tar").exists()


def test_dask_unreachable_scheduler_is_one_error(shards, tmp_path):
    result = run(["tarmap", str(shards[0]), "-o", f"{tmp_path}/{{index}}.tar", "-c", "cat", "--dask",
                  f"tcp://127.0.0.1:{free_port()}"], timeout=120, env={**tool_env(), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines[-1].startswith("tarmap: error: --dask tcp://127.0.0.1:") and "cannot connect" in lines[-1], lines
    assert sys.executable  # the suite's interpreter runs the workers (same venv)
