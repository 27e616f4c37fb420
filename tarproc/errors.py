"""The one error hierarchy of tarproc, and the exit status of every tool.

The library raises only :class:`TarprocError` subclasses for problems with the
data, the sources or the commands it runs; the command-line layer turns them
into ``tool: error: message`` on stderr and the exit status of the error.
"""

from __future__ import annotations

from collections.abc import Callable

import enum
import signal
import weakref


#: the warning callback every library function takes: called with one line
#: of text about data that was skipped or repaired (the CLI prints it as
#: ``tool: warning: ...``); the one definition, imported by every module
Warn = Callable[[str], None]

class ExitStatus(enum.IntEnum):
    """Exit status of every tarproc tool (documented in each man page)."""

    OK = 0
    #: a failure a retry may fix: I/O, network, failed source or upload,
    #: failed commands or samples beyond the allowed limit, skipped members
    ERROR = 1
    #: usage error: a bad option or argument
    USAGE = 2
    #: the input data is bad (corrupt or truncated archive, malformed
    #: samples): retrying cannot help. Engines use it to stop retrying
    #: (Kubernetes ``podFailurePolicy`` action ``FailIndex`` on exit code 3)
    DATA = 3
    #: interrupted by SIGINT (128 + 2)
    SIGINT = 130
    #: the downstream pipe was closed (128 + SIGPIPE), like coreutils
    SIGPIPE = 141
    #: interrupted by SIGTERM (128 + 15)
    SIGTERM = 143


class TarprocError(Exception):
    """Base class of every error the library raises on purpose.

    ``str(error)`` is a one-line message meant for a user, about the data
    or the values given, never naming a command-line option: ``topic=``
    (``UsageError(message, topic="output_pattern")``) names the rule or value
    the error is about, and the tool adds its option as a hint
    (``Tool.run(hints)``).
    """

    exit_status: int = ExitStatus.ERROR
    #: which rule the error is about ("missing_field", "bad_shards"...), so a
    #: command line can add how to change it (the library's message speaks of
    #: the data, not of options)
    topic: str | None = None
    #: the compression of the input being read when a reading error was
    #: raised (``"none"``, ``"gzip"``, ...; None: not known, or no input was
    #: open), set by :func:`tarproc.io.sources.iter_source_samples`: the bytes
    #: of a compressed stream are verified only by its check at the end
    #: (gzip's CRC-32 and length), so after an error none of what it gave is
    #: verified, while an uncompressed tar has no data checksum to fail
    compression: str | None = None

    def __init__(self, *args, topic: str | None = None):
        super().__init__(*args)
        if topic is not None:
            self.topic = topic


class DataError(TarprocError):
    """The input data is bad: retrying cannot help (exit status 3)."""

    exit_status = ExitStatus.DATA


class ArchiveError(DataError):
    """The tar stream is malformed (bad checksum, bad size, garbage, ...).

    Follows POSIX.1-2001 ustar/pax (IEEE Std 1003.1, ``pax`` utility) and the
    GNU tar format (GNU tar manual, "Basic Tar Format").
    """


class TruncatedError(ArchiveError):
    """The stream ended inside a header, inside data or before the end marker."""


class CompressionError(DataError):
    """The compressed stream is corrupt (bad CRC, truncated, bad magic)."""


class SampleError(DataError):
    """The members do not form WebDataset samples (repeated field, key that
    comes back after another key, member without a key under ``strict``)."""


class MissingFieldError(SampleError):
    """A sample lacks a field that was asked for."""

    topic = "missing_field"


class DuplicateKeyError(SampleError):
    """A key already written from another input (or earlier in the run)
    comes back: shards made independently repeat keys. ``key``, ``first``
    (the input it was written from) and ``again`` (the input it came back
    in) are attributes, so a CLI can add the remedy it offers."""

    topic = "duplicate_key"

    def __init__(self, message: str, key: str = "", first: str = "", again: str = ""):
        super().__init__(message)
        self.key = key
        self.first = first
        self.again = again


class ExpressionError(DataError):
    """A filter expression (``tarcats --where``) failed on a sample and
    the policy says stop."""

    topic = "where_abort"


class SourceError(TarprocError):
    """An input could not be opened or a ``pipe:`` command failed."""


class OutputError(TarprocError):
    """An output could not be written."""


class CommandError(TarprocError):
    """A per-sample command failed and the error policy says stop."""


class UsageError(TarprocError):
    """A bad combination of options or arguments detected after parsing."""

    exit_status = ExitStatus.USAGE


class Interrupted(BaseException):
    """Raised in the main process when SIGTERM arrives (SIGINT raises
    :class:`KeyboardInterrupt`); the CLI exits with 143."""

    def __init__(self, signum: int = 15):
        super().__init__(signum)
        self.signum = signum


class InterruptRecord:
    """The signal that arrived while one run was open (an output being
    written, a run of samples), once a handler has raised for it
    (:func:`raise_interrupted`).

    An exception raised while a finaliser (``__del__``) runs is only printed
    by Python, so an output checks its record (:meth:`check`) before it is
    committed. The record belongs to that run alone: :meth:`close` drops it
    when the run ends, and a run opened after a caught interrupt (a
    notebook's Ctrl-C) starts with a clean one, so its output commits.

    :ivar signum: the first signal recorded, or None
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        _OPEN_RECORDS.add(self)

    def check(self) -> None:
        """Raise again for a signal whose exception was lost; nothing when
        none came while this run was open.

        :raises KeyboardInterrupt: SIGINT came
        :raises Interrupted: another signal came
        """
        if self.signum is not None:
            raise_interrupted(self.signum)

    def close(self) -> None:
        """The run has ended: later signals are not its business."""
        _OPEN_RECORDS.discard(self)


#: the records of the runs open now (weak: a run dropped without close() goes too)
_OPEN_RECORDS: weakref.WeakSet = weakref.WeakSet()


def raise_interrupted(signum: int) -> None:
    """What a handler of SIGINT or SIGTERM raises in the main process
    (:class:`KeyboardInterrupt`, :class:`Interrupted`), recorded first in
    the record of every run open now (:class:`InterruptRecord`).

    :raises KeyboardInterrupt: for SIGINT
    :raises Interrupted: for any other signal
    """
    for record in list(_OPEN_RECORDS):
        if record.signum is None:
            record.signum = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)
