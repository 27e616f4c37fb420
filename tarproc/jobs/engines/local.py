"""The local engine: ``N`` items at once in threads of this process (``-j N``).

A shard task's work is done by its pipeline's processes; the thread only
streams and verifies bytes, so threads are enough, and a killed pipeline or
an interrupted run is handled in one process (:meth:`tarproc.jobs.tasks.TaskContext.cancel`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from tarproc.errors import UsageError


class LocalEngine:
    """Threads of this process; follows :class:`tarproc.jobs.engines.Engine`.

    :param value: the number of items at once, as given (``-j N``) or an int
    :raises UsageError: not a number >= 1
    """

    name = "local"
    label = "local"
    shares_filesystem = True
    in_process = True

    def __init__(self, value: str | int):
        try:
            jobs = int(value)
        except ValueError:
            raise UsageError(f"a local engine runs N tasks at once: {value!r} is not a number") from None
        if jobs < 1:
            raise UsageError(f"a local pool runs at least 1 task at once, not {jobs}")
        self.jobs = jobs
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="tarmap")

    @property
    def window(self) -> int:
        return self.jobs

    def submit(self, fn: Callable, *args: Any) -> concurrent.futures.Future:
        self.start()
        return self._executor.submit(fn, *args)

    def wait_any(self, futures: set) -> set:
        done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
        return done

    def outcome(self, future: concurrent.futures.Future) -> Any:
        return future.result()

    def close(self, cancel: bool = False) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)


ENGINE = LocalEngine
