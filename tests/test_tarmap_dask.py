"""tarmap --dask on a real Dask cluster on 127.0.0.1: a `dask scheduler`
and two `dask worker` processes (the session's, tests/daskcluster.py), one
worker killed with SIGKILL mid-run; and --dask local:N (a LocalCluster of
worker processes started by tarmap)."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, run, tool_env
from daskcluster import free_port
from makeshards import write_shard

pytest.importorskip("distributed", reason="dask.distributed (the [dask] extra, in the test extra) is not installed")

PIPELINE = "tarproc -c 'rm sample.json' -o -"
SHARDS = 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("dask-in")
    return [Path(write_shard(str(root / f"in-{i:02d}.tar"), 3, seed=i)) for i in range(SHARDS)]


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


def test_dask_worker_killed_mid_run_nothing_lost_nothing_duplicated(dask_cluster, shards, expected, tmp_path):
    address, workers = dask_cluster  # the session's cluster (tests/daskcluster.py); a killed worker is replaced
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
    summary = rf"tarmap: (\d+) tasks done, (\d+) skipped \(complete before\), 0 failed; {3 * SHARDS} samples"
    done = re.search(summary.encode(), stderr)
    assert done and int(done[1]) + int(done[2]) == SHARDS, stderr

    again = run(["tarmap", *map(str, shards), "-o", f"{out}/{{stem}}.tar", "-c", slow, "--dask", address, "-v"])
    assert again.returncode == 0 and f"0 tasks done, {SHARDS} skipped".encode() in again.stderr


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
                  f"tcp://127.0.0.1:{free_port()}"], timeout=120, env={**tool_env(), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines[-1].startswith("tarmap: error: Dask scheduler tcp://127.0.0.1:") and "cannot connect" in lines[-1]
    assert lines[-1].endswith("; given with --dask"), lines


def test_dask_local_cluster_killed_by_sigterm_is_quiet_and_leaves_nothing(shards, tmp_path):
    """Issue 19 item 14: distributed's CancelledError warnings and a
    dask-scratch-space/ left in $TMPDIR."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    started = tmp_path / "started"
    started.mkdir()
    slow = f"touch {started}/$TARMAP_INDEX; sleep 60; cat"
    proc = subprocess.Popen(["tarmap", *map(str, shards[:4]), "-o", f"{tmp_path}/out/{{index}}.tar", "-c", slow,
                             "--dask", "local:2"], env={**tool_env(), "TMPDIR": str(tmpdir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: len(list(started.iterdir())) >= 2, timeout=120, what="two running tasks")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -15, stderr  # died of SIGTERM after its cleanup (143 in a shell)
    text = stderr.decode()
    assert "CancelledError" not in text and "Traceback" not in text, text
    assert sorted(p.name for p in tmpdir.iterdir()) == [], "left in $TMPDIR"

    def pipelines() -> list[str]:  # the tasks' bash -c lines still running, in the workers
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(started).encode() in cmdline:
                found.append(entry.name)
        return found

    wait_for(lambda: not pipelines(), timeout=30, what="the pipelines to end")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tar"))
