"""Signal safety, in one place: SIGINT/SIGTERM never leave a command running.

A process that runs commands (the parent at ``-p 1``, each pool worker)
records the process group of the command it is running; the handler kills
that group first and raises only once the command's bookkeeping is done,
so no command outlives an interrupt and no sample directory is left behind
(the ``finally`` blocks that remove it run). While a command is being
spawned (its group is not known yet) the signal is kept pending and acted
on as soon as the group is known.

In a pool worker the signal becomes ``SystemExit(128 + N)`` (the parent
stops its workers with SIGTERM and coordinates Ctrl-C itself, so workers
ignore SIGINT); in the parent SIGINT becomes :class:`KeyboardInterrupt` and
SIGTERM :class:`tarproc.errors.Interrupted` (exit 130 / 143).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from tarproc.errors import raise_interrupted
from tarproc.procs import kill_group


class _State:
    """What this process is running, for the signal handler (one process,
    one state: each worker has its own copy after fork)."""

    spawning = False
    pgids: list[int] = []  # the process groups of the running sample's commands
    pending: int | None = None
    in_worker = False
    exiting = False  # a worker's SystemExit is on its way


def _raise_for(signum: int):
    if _State.in_worker:
        if _State.exiting:
            return  # a second SIGTERM (to the group, then from the parent) while the first unwinds
        _State.exiting = True
        raise SystemExit(128 + signum)
    raise_interrupted(signum)


def _on_signal(signum, frame) -> None:
    if _State.spawning:
        _State.pending = signum
        return
    if _State.pgids:
        for pgid in _State.pgids:
            kill_group(pgid)
        _State.pending = signum
        return
    _raise_for(signum)


def install_signal_handlers() -> dict:
    """Install the handler for SIGINT and SIGTERM in this process; returns
    the previous handlers for :func:`restore_signal_handlers`."""
    return {signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}


def restore_signal_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def enter_worker() -> None:
    """Make this (forked) process a pool worker: SIGINT ignored (the parent
    coordinates Ctrl-C), SIGTERM kills the running command, then exits 143."""
    _State.in_worker = True
    _State.exiting = False
    _State.pgids = []
    _State.pending = None
    _State.spawning = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    release_signals()  # held since the fork (held_while_forking): a SIGTERM meanwhile acts now


def enter_reader() -> None:
    """Make this (forked) process a worker of ours that runs no command (a
    parallel reader, a tarcheck worker): SIGINT ignored (the parent handles
    Ctrl-C and stops it), SIGTERM and SIGPIPE their default action (the
    process ends)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    release_signals()  # held since the fork


def unwind_on_sigterm() -> None:
    """In a program of ours that a tool runs as a child (``python -m
    tarproc.jobs.shuffle``): SIGTERM raises :class:`tarproc.errors.Interrupted`,
    so that its ``finally`` blocks remove partial files before it exits."""
    signal.signal(signal.SIGTERM, lambda signum, frame: raise_interrupted(signum))


#: the signals held while processes are forked
HELD = frozenset({signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def held_while_forking() -> Iterator[None]:
    """Around forking worker processes: SIGINT and SIGTERM are blocked
    (``pthread_sigmask(2)``, POSIX.1-2017) and delivered when the block
    ends. A handler that raised inside Python's at-fork hooks would be lost
    (an exception there is only printed): the run would go on as if never
    interrupted. A forked worker starts with them blocked too, until it has
    its own handlers (:func:`release_signals`). A signal another thread
    takes meanwhile is held by a stand-in handler and raised again here
    at the end."""
    pending: list[int] = []

    def hold(signum, frame):  # another thread took it: this thread's handler acts afterwards
        pending.append(signum)

    handlers = {}
    try:
        for signum in HELD:
            handlers[signum] = signal.signal(signum, hold)
    except ValueError:  # not the main thread: the block alone
        pass
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pending:
            signal.raise_signal(pending[0])


def release_signals() -> None:
    """In a forked worker, once its handlers are in place: let the signals
    :func:`held_while_forking` blocked through (a pending one acts now)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


def check_pending() -> None:
    """Raise for a signal that arrived while a command was running."""
    if _State.pending is not None:
        signum, _State.pending = _State.pending, None
        _raise_for(signum)


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Around the start of a command: a signal meanwhile is kept pending."""
    _State.spawning = True
    try:
        yield
    finally:
        _State.spawning = False


def adopt(pgid: int) -> None:
    """Inside :func:`spawning`, as soon as the new command's process group
    is known: from then on a signal kills it (no moment between the spawn
    and :func:`running` where it would not)."""
    if pgid not in _State.pgids:
        _State.pgids.append(pgid)


@contextlib.contextmanager
def running(pgid: int) -> Iterator[None]:
    """While the command whose process group is ``pgid`` runs: a signal
    kills the group (also one that arrived while it was spawned); on the
    way out the group is killed (background children of the command), then
    a pending signal is raised."""
    adopt(pgid)
    try:
        if _State.pending is not None:
            kill_group(pgid)
        yield
    finally:
        kill_group(pgid)
        _State.pgids.remove(pgid)
    check_pending()
