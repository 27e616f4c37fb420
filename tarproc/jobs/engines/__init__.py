"""Engines: where shard tasks run. One declared interface, :class:`Engine`,
one module per engine, and the run loop (:func:`tarproc.jobs.engines.run.run_all`)
that works against the interface only.

An engine takes work from :func:`~tarproc.jobs.engines.run.run_all`: it
submits ``fn(item, *args)``, waits until any submitted item finishes, gives
its outcome, and closes. Two attributes tell a tool what it may assume,
so that no tool branches on a command-line option:

- :attr:`Engine.shares_filesystem`: whether the workers see this machine's
  file system. When False, a local input, output, records or staging path
  would be read or written on the workers' own disks: the tools warn before
  any task runs (:func:`tarproc.cli.engine.warn_local_paths`) and do not
  check that local inputs exist here.
- :attr:`Engine.in_process`: whether the items run in threads of this
  process, so that a callback given with them reaches the caller and
  :meth:`tarproc.jobs.tasks.TaskContext.cancel` stops them; otherwise the items run
  elsewhere (processes of a Dask cluster) and report on their own stderr.

Engines in this package (the registry is the package itself):

- :mod:`.local`: a pool of threads of this process (``-j N``);
- :mod:`.dask`: a Dask distributed cluster (``--dask ADDRESS``).

**A new engine is one module and one option**: a module
``tarproc/jobs/engines/NAME.py`` whose ``ENGINE`` is a class built as
``ENGINE(value)`` from the option's value (a string), following
:class:`Engine`; and an option ``NAME`` in
:data:`tarproc.cli.engine.ENGINE` (``--NAME VALUE``). :func:`names` finds
the module, :func:`create` builds the engine, and the tools offer it,
refuse it beside another engine and name its option in errors whose
``topic`` is ``NAME``.

Building an engine checks its value only (a :class:`~tarproc.errors.UsageError`
for a malformed one) and starts nothing: :meth:`Engine.start` connects or
starts workers, so a tool can read the attributes first.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from tarproc.errors import UsageError

#: the engine used when no other is chosen
DEFAULT = "local"
#: modules of this package that are not engines
_NOT_ENGINES = frozenset({"run"})


@runtime_checkable
class Engine(Protocol):
    """What :func:`~tarproc.jobs.engines.run.run_all` needs from an engine.

    A future is whatever :meth:`submit` returns (hashable); the engine alone
    interprets it.

    :ivar name: the engine's name (its module's name: ``local``, ``dask``)
    :ivar label: its name in messages (``local``, ``Dask``)
    :ivar shares_filesystem: whether the workers see this machine's file
        system (same paths, same files)
    :ivar in_process: whether items run in threads of this process
        (callbacks given with them reach the caller; :meth:`tarproc.jobs.tasks.TaskContext.cancel`
        stops them)
    """

    name: str
    label: str
    shares_filesystem: bool
    in_process: bool

    def start(self) -> None:
        """Connect or start the workers; idempotent.

        :raises SourceError: the engine cannot be reached or started
        """

    @property
    def window(self) -> int:
        """How many items to keep submitted at once (>= 1); after :meth:`start`."""

    def submit(self, fn: Callable, *args: Any) -> Any:
        """Start ``fn(*args)`` and return its future."""

    def wait_any(self, futures: set) -> set:
        """Block until at least one of ``futures`` finished; return the
        finished ones (each returned once)."""

    def outcome(self, future: Any) -> Any:
        """The result of a finished future, or raise what ``fn`` raised (or
        the engine's own error for that item, e.g. a worker that died too
        often)."""

    def close(self, cancel: bool = False) -> None:
        """Release the workers; ``cancel``: drop items not started yet and
        do not wait for running ones longer than needed. Idempotent."""


def names() -> list[str]:
    """The engines this package holds, the default first, then by name."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_ENGINES and not m.name.startswith("_"))
    return sorted(found, key=lambda n: n != DEFAULT)


def engine_class(name: str) -> type:
    """The ``ENGINE`` class of module ``tarproc.jobs.engines.NAME``.

    :raises UsageError: no such engine
    """
    if name not in names():
        raise UsageError(f"no engine {name!r} (engines: {', '.join(names())})")
    return importlib.import_module(f"{__name__}.{name}").ENGINE


def create(name: str, value: str) -> Engine:
    """Build engine ``name`` from its option's value, not started yet.

    :raises UsageError: no such engine, or a malformed value
    """
    return engine_class(name)(value)


__all__ = ["DEFAULT", "Engine", "create", "engine_class", "names"]
