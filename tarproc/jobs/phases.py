"""Jobs of several phases of shard tasks, one phase after the other
(tarshuffle: map, reduce, :mod:`tarproc.jobs.shufflejob`; tardedup: hash,
reduce, write, :mod:`tarproc.jobs.dedup`): each phase's tasks run on a fresh
engine (:func:`tarproc.jobs.engines.run.run_all`), and a phase with failed or
unrun tasks ends the run, since the next phase reads what it writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

from tarproc.errors import UsageError
from tarproc.jobs import tasks
from tarproc.jobs.engines import Engine
from tarproc.jobs.engines.run import RunSummary, run_all


@dataclasses.dataclass
class PhaseOutcome:
    """One phase's :class:`tarproc.jobs.engines.run.RunSummary` (None: the
    phase was not needed, as tarshuffle's map phase when every reduce task
    was complete) and its tasks."""

    phase: str
    tasks: list
    summary: RunSummary | None = None

    @property
    def ok(self) -> bool:
        return self.summary is None or not (self.summary.failed or self.summary.not_run)

    @property
    def permanent(self) -> bool:
        return self.summary is not None and any(r.permanent for r in self.summary.failed)


def check_job(inputs: Sequence[str], partitions: int, what: str) -> None:
    """The checks every job of phases makes when it is built.

    :param partitions: the number of partitions (reduce tasks)
    :param what: what the partitions are called to the user (``output shards``)
    :raises UsageError: ``partitions`` is not positive, or there are no inputs
    """
    if partitions < 1:
        raise UsageError(f"the number of {what} must be positive, not {partitions}")
    if not inputs:
        raise UsageError("no inputs")


def all_complete(task_list: Sequence[tasks.Task], options: tasks.TaskOptions) -> bool:
    """True when every task has a matching completion record."""
    return all(tasks.is_complete(task, options) is not None for task in task_list)


def run_phases(
    phases: Iterable[tuple[str, list[tasks.Task]]],
    options: tasks.TaskOptions,
    pool_factory: Callable[[], Engine],
    fn: Callable,
    fn_args: tuple = (),
    *,
    max_errors: int | None = None,
    halt_after: int = 3,
    on_phase: Callable[[str, int], None] | None = None,
    on_result: Callable[[str, tasks.Task, tasks.TaskResult], None] | None = None,
    context: tasks.TaskContext | None = None,
) -> list[PhaseOutcome]:
    """Run each phase's tasks, in order, each phase on a fresh engine from
    ``pool_factory`` (:func:`tarproc.jobs.engines.run.run_all` starts and
    closes it), until a phase has failed or unrun tasks.

    :param phases: ``(phase, tasks)``, taken one at a time (a phase's tasks
        may be built once the phase before has run)
    :param fn: runs one task on the engine, called as
        ``fn(task, options, *fn_args)``; an exception it raises becomes a
        failed :class:`tarproc.jobs.tasks.TaskResult`
    :param max_errors: stop a phase when more than this many tasks failed
    :param halt_after: stop a phase when its first K tasks to finish all failed
    :param on_phase: called with (phase, number of tasks) when a phase starts
    :param on_result: called with (phase, task, result) as tasks finish
    :param context: cancelled on an interrupt, to stop the running tasks
    :returns: the outcome of each phase run; only the last may be not ``ok``
    :raises KeyboardInterrupt, Interrupted: running tasks are stopped
        (:meth:`tarproc.jobs.tasks.TaskContext.cancel`) first
    """
    context = context or tasks.TaskContext()
    outcomes = []

    def error(task, exc):
        return tasks.TaskResult(task.index, task.input, task.output, "failed", message=f"{type(exc).__name__}: {exc}")

    for phase, task_list in phases:
        if on_phase is not None:
            on_phase(phase, len(task_list))

        def result(task, res, phase=phase):
            if on_result is not None:
                on_result(phase, task, res)

        summary = run_all(task_list, fn, (options, *fn_args), pool_factory(), max_errors=max_errors,
                          halt_after=halt_after, on_result=result, on_error=error, on_interrupt=context.cancel)
        outcomes.append(PhaseOutcome(phase, task_list, summary))
        if not outcomes[-1].ok:
            break
    return outcomes


__all__ = ["PhaseOutcome", "all_complete", "check_job", "run_phases"]
