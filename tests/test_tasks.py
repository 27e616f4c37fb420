"""tarproc.jobs.tasks as a library: the state of a run lives in its
:class:`tarproc.jobs.tasks.TaskContext`, so two runs in one process (threads)
neither cancel each other's pipelines nor mix their lines."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

from conftest import tool_env
from makeshards import write_shard

from tarproc.jobs import tasks


def wait_for(predicate, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_two_runs_in_threads_do_not_share_state(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", tool_env()["PATH"])
    shard = Path(write_shard(str(tmp_path / "in.tar"), 3))
    go = tmp_path / "go"
    lines_a: list[str] = []
    lines_b: list[str] = []
    run_a = tasks.TaskContext(line_writer=lines_a.append)
    run_b = tasks.TaskContext(line_writer=lines_b.append)
    task_a = tasks.Task(0, str(shard), str(tmp_path / "a.tar"), f"echo from-a >&2; sleep 30; : {tmp_path}",
                        str(tmp_path / "a.json"))
    # b's pipeline is running while a is cancelled, and finishes after that
    task_b = tasks.Task(0, str(shard), str(tmp_path / "b.tar"),
                        f"echo from-b >&2; while [ ! -e {go} ]; do sleep 0.02; done; cat", str(tmp_path / "b.json"))
    options = tasks.TaskOptions(policy=tasks.RetryPolicy(retries=0))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(tasks.run_task, task_a, options, None, run_a)
        b = pool.submit(tasks.run_task, task_b, options, None, run_b)
        wait_for(lambda: lines_a and lines_b, "both pipelines")
        run_a.cancel()  # the global state of old stopped every pipeline of the process here
        assert a.result(timeout=60).message == "cancelled"
        go.touch()
        result_b = b.result(timeout=60)
    assert result_b.status == "complete", result_b.message
    assert (tmp_path / "b.tar").read_bytes() == shard.read_bytes()
    assert not (tmp_path / "a.tar").exists()
    assert lines_a == ["tarmap: task 0: from-a"] and lines_b == ["tarmap: task 0: from-b"]
    # a cancelled run cancels nothing after it: a new run in the same process completes
    again = tasks.run_task(tasks.Task(1, str(shard), str(tmp_path / "c.tar"), "cat", str(tmp_path / "c.json")),
                           options, None, tasks.TaskContext(line_writer=lines_a.append))
    assert again.status == "complete", again.message


def test_cancel_gives_a_pipeline_its_grace_then_kills_it(tmp_path):
    shard = Path(write_shard(str(tmp_path / "in.tar"), 2))
    seen = tmp_path / "seen"
    context = tasks.TaskContext(grace=1.0)
    # the pipeline notes SIGTERM, ignores it and keeps running: SIGKILL ends it after the grace
    task = tasks.Task(0, str(shard), str(tmp_path / "x.tar"),
                      f"trap 'touch {seen}' TERM; echo ready >&2; while :; do sleep 0.05; done", str(tmp_path / "x.json"))
    lines: list[str] = []
    context.line_writer = lines.append
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(tasks.run_task, task, tasks.TaskOptions(), None, context)
        wait_for(lambda: lines, "the pipeline")
        context.cancel()
        assert future.result(timeout=60).message == "cancelled"
    assert seen.exists()  # it got SIGTERM first
    assert not (tmp_path / "x.tar").exists()
