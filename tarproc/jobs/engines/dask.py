"""The Dask engine: items on a Dask distributed cluster (``--dask ADDRESS``,
extra ``tarproc[dask]``), with ``Client.submit`` / ``as_completed``.

``ADDRESS`` is a running scheduler (``tcp://host:8786``) or ``local:N``, a
``LocalCluster`` of N single-threaded worker processes on 127.0.0.1,
started with the engine and closed with it. A worker that dies has its
items re-run by Dask.

Whether the workers share this machine's file system cannot be asked of a
scheduler, so it is decided from the address
(:attr:`DaskEngine.shares_filesystem`): True for ``local:N`` and for a
scheduler on a loopback address (``localhost``, ``127.0.0.0/8``, ``::1``),
whose workers are taken to run on this machine; False for any other
address, whose workers are taken to have disks of their own (the tools then
warn about local paths before any task runs). A cluster whose remote
workers all mount the same paths works either way: the warning says so.

A ``local:N`` cluster is this run's own: its workers keep their scratch
space (``dask-scratch-space``) in a temporary directory removed when the
engine closes, and closing it on an interrupt (``close(cancel=True)``)
first kills the pipelines running in its workers
(:meth:`tarproc.jobs.tasks.TaskContext.cancel` there) and quiets distributed's logging,
so that SIGINT or SIGTERM ends the run without distributed's
``CancelledError`` warnings or workers killed after a grace period. A
scheduler's cluster is not ours: its workers are left alone.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import tempfile
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tarproc.errors import SourceError, UsageError


def is_loopback(address: str) -> bool:
    """Whether a scheduler address (``tcp://HOST:PORT``, ``HOST:PORT``)
    names this machine's loopback interface (``localhost``, 127.0.0.0/8,
    ``::1``). A name other than ``localhost`` is not resolved: False."""
    try:
        host = urlsplit(address if "://" in address else f"tcp://{address}").hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DaskEngine:
    """A Dask distributed cluster; follows :class:`tarproc.jobs.engines.Engine`.

    :param value: ``tcp://host:8786`` (a running scheduler) or ``local:N``
    :param timeout: seconds to connect (None: dask's configuration,
        ``distributed.comm.timeouts.connect``)
    :raises UsageError: ``local:N`` with N not a number >= 1
    """

    name = "dask"
    label = "Dask"
    in_process = False

    def __init__(self, value: str, timeout: float | None = None):
        self.address = value
        self.timeout = timeout
        self.workers = 0
        if value.startswith("local:"):
            try:
                self.workers = int(value[6:])
            except ValueError:
                raise UsageError(f"Dask address {value!r}: expected local:N with N a number", topic="dask") from None
            if self.workers < 1:
                raise UsageError(f"Dask address {value!r}: local:N needs N >= 1", topic="dask")
        #: local:N, or a scheduler on a loopback address (see the module's docs)
        self.shares_filesystem = bool(self.workers) or is_loopback(value)
        self.cluster = None
        self.client = None
        self.scratch: str | None = None  # local:N: the workers' local_directory
        self._done = None
        self._ready: set = set()

    def start(self) -> None:
        """Start the ``LocalCluster`` or connect to the scheduler.

        :raises SourceError: distributed is not installed, or the scheduler
            cannot be reached
        """
        if self.client is not None:
            return
        try:
            from distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise SourceError("Dask needs dask.distributed (pip install 'tarproc[dask]')") from None
        try:
            if self.workers:
                import dask

                self.scratch = tempfile.mkdtemp(prefix="tarproc-dask-")
                # the scheduler, nannies and workers all make a dask-scratch-space in dask's temporary-directory
                with dask.config.set({"temporary-directory": self.scratch}):
                    self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                host="127.0.0.1", dashboard_address=None,
                                                local_directory=self.scratch)
                self.client = Client(self.cluster)
            elif self.timeout is None:
                self.client = Client(self.address)
            else:
                self.client = Client(self.address, timeout=self.timeout)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise SourceError(f"Dask scheduler {self.address}: cannot connect: {exc}", topic="dask") from None
        self._done = as_completed()

    @property
    def window(self) -> int:
        """Twice the workers' threads (the local:N count before :meth:`start`)."""
        if self.client is None:
            return max(1, 2 * self.workers)
        threads = sum(self.client.nthreads().values()) or 1
        return 2 * threads

    def submit(self, fn: Callable, *args: Any) -> Any:
        self.start()
        future = self.client.submit(_in_worker_context, fn, *args, pure=False)
        self._done.add(future)
        return future

    def wait_any(self, futures: set) -> set:
        while not (self._ready & futures):
            self._ready.add(next(self._done))
        done = self._ready & futures
        self._ready -= done
        return done

    def outcome(self, future: Any) -> Any:
        return future.result()

    def close(self, cancel: bool = False) -> None:
        """Close the client, and the ``LocalCluster`` with its scratch
        directory; ``cancel`` (an interrupt): kill the pipelines running in
        the ``LocalCluster``'s workers first and keep distributed's warnings
        about the cancelled work off stderr."""
        try:
            if cancel and self.cluster is not None:
                logging.getLogger("distributed").setLevel(logging.ERROR)
                if self.client is not None:
                    try:
                        self.client.run(_stop_worker_tasks)
                    except Exception:  # noqa: BLE001 - a worker already gone: closing kills it anyway
                        pass
            if self.client is not None:
                self.client.close()
        finally:
            self.client = None
            try:
                if self.cluster is not None:
                    cluster, self.cluster = self.cluster, None
                    cluster.close()
            finally:
                if self.scratch is not None:
                    shutil.rmtree(self.scratch, ignore_errors=True)
                    self.scratch = None


def _in_worker_context(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` in a Dask worker with the worker's own
    :class:`tarproc.jobs.tasks.TaskContext` as :data:`tarproc.jobs.tasks.CURRENT_CONTEXT`
    (one per worker, kept on the worker object: the worker's state, not this
    module's), so that :func:`_stop_worker_tasks` can stop its pipelines."""
    from distributed import get_worker

    from tarproc.jobs import tasks

    try:
        state = get_worker().__dict__
    except ValueError:  # not in a worker (a client's own thread): a context of the call's own
        return fn(*args)
    context = state.get(_CONTEXT_ATTR) or state.setdefault(_CONTEXT_ATTR, tasks.TaskContext())
    token = tasks.CURRENT_CONTEXT.set(context)
    try:
        return fn(*args)
    finally:
        tasks.CURRENT_CONTEXT.reset(token)


#: the worker attribute holding its TaskContext
_CONTEXT_ATTR = "tarproc_task_context"


def _stop_worker_tasks(dask_worker=None) -> None:
    """In a ``local:N`` worker (``Client.run``, which passes the worker), on
    an interrupt: quiet distributed's logging and stop the pipelines of the
    running tasks (:meth:`tarproc.jobs.tasks.TaskContext.cancel`), which then
    return at once."""
    logging.getLogger("distributed").setLevel(logging.ERROR)
    context = getattr(dask_worker, _CONTEXT_ATTR, None)
    if context is not None:
        context.cancel()


ENGINE = DaskEngine
