"""tarproc.jobs.phases: phases run in order, each on a fresh engine, and a
phase with a failed task ends the run."""

from __future__ import annotations

import pytest

from tarproc.errors import UsageError
from tarproc.jobs import engines, tasks
from tarproc.jobs.phases import PhaseOutcome, check_job, run_phases


def make_tasks(phase: str, n: int) -> list[tasks.Task]:
    return [tasks.Task(i, f"{phase}-in-{i}", f"{phase}-out-{i}", "true", f"{phase}-{i}.json") for i in range(n)]


def run_one(task: tasks.Task, options: tasks.TaskOptions, fail: set[str]) -> tasks.TaskResult:
    if task.input in fail:
        raise RuntimeError(f"{task.input} broke")
    permanent = task.output in fail
    return tasks.TaskResult(task.index, task.input, task.output, "failed" if permanent else "complete",
                            permanent=permanent)


def run(phases, fail=(), **kwargs):
    pools, seen = [], []

    def pool():
        pools.append(engines.create("local", "1"))
        return pools[-1]

    outcomes = run_phases(phases, tasks.TaskOptions(), pool, run_one, (set(fail),), halt_after=0,
                          on_phase=lambda name, n: seen.append((name, n)),
                          on_result=lambda name, task, result: seen.append((name, task.index, result.status)), **kwargs)
    return outcomes, pools, seen


def test_every_phase_runs_in_order_on_its_own_engine():
    outcomes, pools, seen = run([("a", make_tasks("a", 2)), ("b", make_tasks("b", 3))])
    assert [o.phase for o in outcomes] == ["a", "b"] and all(o.ok for o in outcomes)
    assert [len(o.summary.results) for o in outcomes] == [2, 3]
    assert len(pools) == 2 and pools[0] is not pools[1]
    assert seen[0] == ("a", 2) and seen[3] == ("b", 3)
    assert sorted(seen[1:3]) == [("a", 0, "complete"), ("a", 1, "complete")]


def test_a_failed_phase_ends_the_run_and_an_exception_is_a_failed_task():
    built = []

    def phases():
        for name in ("a", "b", "c"):
            built.append(name)
            yield name, make_tasks(name, 2)

    outcomes, pools, seen = run(phases(), fail={"b-in-1"})
    assert [o.phase for o in outcomes] == ["a", "b"] and built == ["a", "b"] and len(pools) == 2
    assert outcomes[0].ok and not outcomes[1].ok and not outcomes[1].permanent
    (failed,) = outcomes[1].summary.failed
    assert (failed.index, failed.input, failed.output) == (1, "b-in-1", "b-out-1")
    assert failed.message == "RuntimeError: b-in-1 broke"
    assert ("b", 1, "failed") in seen


def test_a_permanent_failure_is_the_outcomes():
    outcomes, _, _ = run([("a", make_tasks("a", 2))], fail={"a-out-0"})
    assert not outcomes[0].ok and outcomes[0].permanent
    assert PhaseOutcome("a", []).ok and not PhaseOutcome("a", []).permanent  # a phase not needed


def test_check_job():
    check_job(["x.tar"], 1, "output shards")
    with pytest.raises(UsageError, match="the number of output shards must be positive, not 0"):
        check_job(["x.tar"], 0, "output shards")
    with pytest.raises(UsageError, match="no inputs"):
        check_job([], 2, "partitions")
