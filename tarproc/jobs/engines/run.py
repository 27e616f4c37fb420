"""The run loop: many items on one :class:`tarproc.jobs.engines.Engine`.

:func:`run_all` submits ``fn(item, *args)`` for each item to an engine, at
most a window of them at once, and collects the results as they finish,
with two stopping rules for runs that go wrong:

- ``max_errors``: stop scheduling new items when more than N failed;
- ``halt_after``: fail fast — when the first K items to finish (skipped
  ones do not count) all failed, stop (a mistyped pipeline does not run
  40,000 tasks three times).

Items already running when a rule stops the run finish; the rest are not
started and are reported as not run. Retries are not the engine's business:
they live in the function (:func:`tarproc.jobs.tasks.run_task`), so that every
engine — and ``--index`` mode, which needs no engine — retries the same way.

The results must have ``ok`` (bool) and ``status`` (``"skipped"`` for an
item that did not need to run) attributes, as :class:`tarproc.jobs.tasks.TaskResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tarproc.jobs.engines import Engine, create


@dataclasses.dataclass
class RunSummary:
    """What :func:`run_all` did.

    :ivar results: one result per item that finished, in finishing order
    :ivar not_run: items never started because a stopping rule fired
    :ivar stopped: why the run stopped early ("" when it did not)
    :ivar stopped_topic: the rule that stopped it (``max_errors``,
        ``halt_after``), so a tool can name its option
    """

    results: list = dataclasses.field(default_factory=list)
    not_run: list = dataclasses.field(default_factory=list)
    stopped: str = ""
    stopped_topic: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> list:
        return [r for r in self.results if not r.ok]


def run_all(
    items: Sequence,
    fn: Callable,
    args: tuple = (),
    engine: Engine | None = None,
    *,
    max_errors: int | None = None,
    halt_after: int = 3,
    on_start: Callable[[Any], None] | None = None,
    on_result: Callable[[Any, Any], None] | None = None,
    on_error: Callable[[Any, BaseException], Any] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> RunSummary:
    """Run ``fn(item, *args)`` for every item on ``engine`` (default: the
    local engine with one thread), started here and closed at the end (also
    on an error), and return a :class:`RunSummary`.

    :param max_errors: stop scheduling when more than this many failed
        (None: never)
    :param halt_after: stop when the first K items to finish (not counting
        skipped ones) all failed (0: never)
    :param on_start: called with each item when it is submitted
    :param on_result: called with (item, result) as each finishes, in the
        calling thread
    :param on_error: turns an exception the function raised (a Dask worker
        that died too often, say) into a result; default: re-raise
    :param on_interrupt: called when the run is interrupted (SIGINT,
        SIGTERM), before waiting for the running items: it should make them
        stop (:meth:`tarproc.jobs.tasks.TaskContext.cancel`)
    :raises SourceError: the engine cannot be started (:meth:`Engine.start`)
    :raises KeyboardInterrupt, Interrupted: after pending items were
        cancelled and running ones stopped
    """
    pool = engine if engine is not None else create("local", "1")
    summary = RunSummary()
    queue = list(items)
    queue.reverse()
    running: dict = {}
    failures = 0
    ran = 0  # finished items that were not skipped
    try:
        pool.start()
        window = max(1, pool.window)
        while queue or running:
            while queue and len(running) < window and not summary.stopped:
                item = queue.pop()
                if on_start is not None:
                    on_start(item)
                running[pool.submit(fn, item, *args)] = item
            if not running:
                break
            for future in pool.wait_any(set(running)):
                item = running.pop(future)
                try:
                    result = pool.outcome(future)
                except Exception as exc:  # noqa: BLE001 - the engine's error for one item
                    if on_error is None:
                        raise
                    result = on_error(item, exc)
                if not pool.shares_filesystem:
                    from tarproc.jobs.tasks import TaskResult, client_sees_output  # here: start-up stays short

                    if isinstance(result, TaskResult):  # not complete where it is not seen
                        result = client_sees_output(result, f"{pool.label} worker")
                summary.results.append(result)
                if on_result is not None:
                    on_result(item, result)
                if result.status != "skipped":
                    ran += 1
                if not result.ok:
                    failures += 1
                if summary.stopped or not queue:
                    continue  # stopped already, or nothing left to keep from starting
                if max_errors is not None and failures > max_errors:
                    summary.stopped, summary.stopped_topic = f"more than {max_errors} tasks failed", "max_errors"
                elif halt_after and failures == ran == halt_after:
                    summary.stopped = f"the first {halt_after} tasks to finish all failed"
                    summary.stopped_topic = "halt_after"
            if summary.stopped:
                summary.not_run.extend(reversed(queue))
                queue.clear()
    except BaseException:
        summary.not_run.extend(reversed(queue))
        if on_interrupt is not None:
            on_interrupt()
        pool.close(cancel=True)
        raise
    pool.close()
    return summary


def results_by_index(results: Iterable) -> dict:
    """``{result.index: result}``; a later result for the same index wins."""
    return {r.index: r for r in results}
