"""Run many tasks on an engine: a local pool or a Dask cluster.

:func:`run_all` submits ``fn(item, *args)`` for each item to an engine, at
most a window of them at once, and collects the results as they finish,
with two stopping rules for runs that go wrong:

- ``max_errors``: stop scheduling new items when more than N failed;
- ``halt_after``: fail fast — when the first K items to finish (skipped
  ones do not count) all failed, stop (a mistyped pipeline does not run
  40,000 tasks three times).

Items already running when a rule stops the run finish; the rest are not
started and are reported as not run. Retries are not the engine's business:
they live in the function (:func:`tarproc.tasks.run_task`), so that every
engine — and ``--index`` mode, which needs no engine — retries the same way.

Engines:

- :class:`LocalPool`: ``jobs`` threads of this process. A task's work is
  done by its pipeline's processes; the thread only streams and verifies
  bytes, so threads are enough and a killed pipeline or an interrupted run
  is handled in one process (:func:`tarproc.tasks.cancel_all`).
- :class:`DaskPool`: ``Client.submit`` / ``as_completed`` of
  ``dask.distributed`` (extra ``tarproc[dask]``), on an existing scheduler
  (``tcp://host:8786``) or a ``LocalCluster`` of N worker processes
  (``local:N``). A worker that dies has its tasks re-run by Dask.

The results must have ``ok`` (bool) and ``status`` (``"skipped"`` for an
item that did not need to run) attributes, as :class:`tarproc.tasks.TaskResult`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import SourceError, UsageError


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


class LocalPool:
    """``jobs`` tasks at once in threads of this process."""

    def __init__(self, jobs: int):
        if jobs < 1:
            raise UsageError(f"a local pool runs at least 1 task at once, not {jobs}")
        self.jobs = jobs
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="tarmap")

    @property
    def window(self) -> int:
        return self.jobs

    def submit(self, fn: Callable, *args) -> Any:
        return self._executor.submit(fn, *args)

    def wait_any(self, futures: set) -> set:
        done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
        return done

    def outcome(self, future) -> Any:
        """The result, or raises what the function raised."""
        return future.result()

    def close(self, cancel: bool = False) -> None:
        self._executor.shutdown(wait=True, cancel_futures=cancel)


class DaskPool:
    """Tasks on a Dask distributed cluster.

    :param timeout: seconds to connect (None: dask's configuration)
    :param address: ``tcp://host:8786`` (a running scheduler) or ``local:N``
        (a ``LocalCluster`` of N single-threaded worker processes on
        127.0.0.1, closed with the pool)
    :raises SourceError: distributed is not installed or the scheduler
        cannot be reached
    """

    def __init__(self, address: str, timeout: float | None = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise SourceError("Dask needs dask.distributed (pip install 'tarproc[dask]')") from None
        self.cluster = None
        try:
            if address.startswith("local:"):
                try:
                    n = int(address[6:])
                except ValueError:
                    raise UsageError(f"Dask address {address!r}: expected local:N with N a number", topic="dask") from None
                if n < 1:
                    raise UsageError(f"Dask address {address!r}: local:N needs N >= 1", topic="dask")
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                            host="127.0.0.1", dashboard_address=None)
                self.client = Client(self.cluster)
            else:
                # timeout None: dask's config (distributed.comm.timeouts.connect, 30 s)
                self.client = Client(address) if timeout is None else Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            if self.cluster is not None:
                self.cluster.close()
            raise SourceError(f"Dask scheduler {address}: cannot connect: {exc}", topic="dask") from None
        from distributed import as_completed

        self._done = as_completed()
        self._ready: set = set()

    @property
    def window(self) -> int:
        threads = sum(self.client.nthreads().values()) or 1
        return 2 * threads

    def submit(self, fn: Callable, *args) -> Any:
        future = self.client.submit(fn, *args, pure=False)
        self._done.add(future)
        return future

    def wait_any(self, futures: set) -> set:
        while not (self._ready & futures):
            self._ready.add(next(self._done))
        done = self._ready & futures
        self._ready -= done
        return done

    def outcome(self, future) -> Any:
        return future.result()

    def close(self, cancel: bool = False) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def run_all(
    items: Sequence,
    fn: Callable,
    args: tuple = (),
    pool=None,
    *,
    max_errors: int | None = None,
    halt_after: int = 3,
    on_start: Callable[[Any], None] | None = None,
    on_result: Callable[[Any, Any], None] | None = None,
    on_error: Callable[[Any, BaseException], Any] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> RunSummary:
    """Run ``fn(item, *args)`` for every item on ``pool`` (default: a
    :class:`LocalPool` of one thread) and return a :class:`RunSummary`.

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
        stop (:func:`tarproc.tasks.cancel_all`)
    :raises KeyboardInterrupt, Interrupted: after pending items were
        cancelled and running ones stopped
    """
    pool = pool or LocalPool(1)
    summary = RunSummary()
    queue = list(items)
    queue.reverse()
    running: dict = {}
    failures = 0
    ran = 0  # finished items that were not skipped
    window = max(1, pool.window)
    try:
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
