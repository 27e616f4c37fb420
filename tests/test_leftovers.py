"""Nothing left behind when a run stops early, through the real tools:

- tarmap interrupted (SIGTERM, SIGINT) or a task's ``--timeout``: its
  pipelines get SIGTERM and a grace (:data:`tarproc.procs.TERM_GRACE`), so
  a tarproc in them removes its sample directories from ``$TMPDIR``;
- tarshuffle on SIGTERM leaves no ``.partial`` file; its worker
  (``python -m tarproc.jobs.shuffle``) stops when tarshuffle is killed with
  SIGKILL and writes no output;
- tarproc killed with SIGKILL leaves its ``tarproc-*`` directory; the next
  run removes it (this host, PID gone) and keeps a live run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, run, tool_env
from makeshards import write_shard


def wait_for(predicate, what: str, seconds: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}: {proc.stderr.read().decode()}")
        time.sleep(0.02)


def processes(marker: str) -> str:
    """Command lines of running processes containing ``marker`` (a test's own tmp_path)."""
    return subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout.strip()


def gone(marker: str, seconds: float = 15.0) -> str:
    """Poll until no process contains ``marker``, at most ``seconds``; what is still running."""
    deadline = time.monotonic() + seconds
    while (found := processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def sample_dirs(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.glob("tarproc-*"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("in")
    return [Path(write_shard(str(root / f"part-{i}.tar"), 3, seed=i)) for i in range(2)]


# ------------------------------------------------------------------ tarmap
# a tool dies of SIGINT/SIGTERM after its cleanup (-2/-15 here; a shell shows 130/143)
@pytest.mark.parametrize("how,status", [("SIGTERM", -15), ("SIGINT", -2), ("timeout", 1), ("index-SIGTERM", -15)])
def test_tarmap_stopped_leaves_no_sample_directories(shards, tmp_path, how, status):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    env = tool_env()
    env["TMPDIR"] = str(tmpdir)
    pipeline = f"tarproc -c 'sleep 30; : {tmp_path}' -o -"
    argv = ["tarmap", *map(str, shards), "-o", f"{out}/{{stem}}.tar", "-c", pipeline, "-j", "2", "--retries", "0"]
    if how == "timeout":
        argv += ["--timeout", "1"]
    if how.startswith("index"):  # one task, run in tarmap's main thread (a pod's --index)
        del argv[argv.index("-j"):argv.index("-j") + 2]
        argv += ["--index", "1"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    # the pipelines' tarproc have a sample directory with a running command
    running = 1 if how.startswith("index") else 2
    wait_for(lambda: len([d for d in tmpdir.glob("tarproc-*") if any(d.iterdir())]) == running, "sample directories", proc=proc)
    if how != "timeout":
        proc.send_signal(getattr(signal, how.removeprefix("index-")))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr.decode()
    if how == "timeout":
        assert b"timed out after 1 s" in stderr
    assert sample_dirs(tmpdir) == []  # each tarproc cleaned up after its SIGTERM
    assert gone(f"sleep 30; : {tmp_path}") == ""
    assert not out.exists() or not [p.name for p in out.iterdir()]  # nothing complete-looking, no attempt file


# -------------------------------------------------------------- tarshuffle
def blocked_input(shard: Path, marker: Path, seconds: int) -> str:
    """A ``pipe:`` input that gives a shard's samples, then holds the map
    worker reading it for ``seconds`` (with its staged ``.partial`` open)."""
    return f"pipe:cat {shard}; sleep {seconds}; : {marker}"


def test_tarshuffle_sigterm_leaves_no_partial_files(shards, tmp_path):
    out = tmp_path / "out"
    staging = tmp_path / "staging"
    argv = [str(BIN / "tarshuffle"), blocked_input(shards[0], tmp_path, 30), str(shards[1]),
            "-o", f"{out}/train-%04d.tar", "--shards", "2", "--staging", str(staging), "-j", "2"]
    proc = subprocess.Popen(argv, env=tool_env(), stderr=subprocess.PIPE)
    wait_for(lambda: staging.exists() and list(staging.glob("staged-000000.tar.partial*")), "a staged partial file")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -15, stderr.decode()  # died of SIGTERM after its cleanup (143 in a shell)
    assert gone(str(tmp_path)) == ""
    assert [p.name for p in tmp_path.rglob("*") if ".partial" in p.name] == []
    assert not list(out.glob("train-*.tar")) if out.exists() else True


def test_tarshuffle_worker_stops_when_tarshuffle_is_killed(shards, tmp_path):
    out = tmp_path / "out"
    staging = tmp_path / "staging"
    # the worker would finish its staged file 3 s after starting, with no one left to record it
    argv = [str(BIN / "tarshuffle"), blocked_input(shards[0], tmp_path, 3),
            "-o", f"{out}/train-%04d.tar", "--shards", "1", "--staging", str(staging), "-j", "1"]
    proc = subprocess.Popen(argv, env=tool_env(), stderr=subprocess.DEVNULL)
    wait_for(lambda: staging.exists() and list(staging.glob("staged-000000.tar.partial*")), "a staged partial file")
    assert "tarproc.jobs.shuffle map" in processes("tarproc.jobs.shuffle map")
    proc.kill()
    proc.wait(timeout=10)
    assert gone(str(tmp_path)) == ""  # the worker and its input command stopped: no parent PID 1 orphans
    time.sleep(3.5)  # past the moment the old worker wrote its output
    assert sorted(p.name for p in staging.iterdir()) == []  # no staged file, no partial one, no record


# ----------------------------------------------------------------- tarproc
def test_stale_tarproc_directory_of_a_killed_run_is_removed_a_live_one_kept(shards, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = tool_env()
    env["TMPDIR"] = str(tmpdir)

    def start() -> subprocess.Popen:
        return subprocess.Popen(["tarproc", "-c", f"sleep 30; : {tmp_path}", "-o", os.devnull, str(shards[0])],
                                env=env, stderr=subprocess.DEVNULL)

    killed = start()
    wait_for(lambda: list(tmpdir.glob("tarproc-*/*")), "a sample directory")
    stale = sample_dirs(tmpdir)
    assert len(stale) == 1 and f".{killed.pid}." in stale[0]  # tarproc-<host>.<pid>.<random>
    killed.kill()
    killed.wait()
    assert sample_dirs(tmpdir) == stale  # SIGKILL: no chance to clean up
    live = start()  # the next run removes the dead run's directory...
    try:
        wait_for(lambda: [d for d in sample_dirs(tmpdir) if f".{live.pid}." in d], "the live run's directory")
        ours = sample_dirs(tmpdir)
        assert len(ours) == 1 and f".{live.pid}." in ours[0]
        done = run(["tarproc", "-c", "true", "-o", str(tmp_path / "x.tar"), str(shards[1])], env=env)
        assert done.returncode == 0, done.stderr
        assert sample_dirs(tmpdir) == ours  # ...and a run beside a live one keeps the live one's
    finally:
        live.terminate()
        live.wait(timeout=30)
    assert sample_dirs(tmpdir) == []
    # the killed run's sample commands ran in their own process groups: stop them
    for line in processes(f"sleep 30; : {tmp_path}").splitlines():
        os.kill(int(line.split()[0]), signal.SIGKILL)


def test_only_this_hosts_dead_runs_directories_are_stale(tmp_path):
    from tarproc.procs import host_name
    from tarproc.tempdirs import make_run_dir, remove_stale_run_dirs

    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its PID names no process now
    names = [f"tarproc-{host_name()}.{dead.pid}.abc", f"tarproc-otherhost.{dead.pid}.abc", "tarproc-k2j4x0ab",
             f"tarproc-{host_name()}.{os.getpid()}.abc", f"tarsort-{host_name()}.{dead.pid}.abc"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "sample.jpg").write_bytes(b"x")
    assert remove_stale_run_dirs("tarproc-", str(tmp_path)) == [str(tmp_path / names[0])]
    made = make_run_dir("tarproc-", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:] + [os.path.basename(made)])
    assert os.path.basename(made).startswith(f"tarproc-{host_name()}.{os.getpid()}.")
