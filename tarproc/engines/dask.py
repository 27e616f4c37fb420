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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..errors import SourceError, UsageError


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
    """A Dask distributed cluster; follows :class:`tarproc.engines.Engine`.

    :param value: ``tcp://host:8786`` (a running scheduler) or ``local:N``
    :param timeout: seconds to connect (None: dask's configuration,
        ``distributed.comm.timeouts.connect``)
    :raises UsageError: ``local:N`` with N not a number >= 1
    """

    name = "dask"
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
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            host="127.0.0.1", dashboard_address=None)
                self.client = Client(self.cluster)
            elif self.timeout is None:
                self.client = Client(self.address)
            else:
                self.client = Client(self.address, timeout=self.timeout)
        except (OSError, TimeoutError) as exc:
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None
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
        future = self.client.submit(fn, *args, pure=False)
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
        try:
            if self.client is not None:
                self.client.close()
        finally:
            self.client = None
            if self.cluster is not None:
                cluster, self.cluster = self.cluster, None
                cluster.close()


ENGINE = DaskEngine
