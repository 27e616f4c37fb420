"""Write samples to ``-`` (stdout), a file or ``pipe:CMD``.

A file is written as ``NAME.partial`` and renamed to ``NAME`` only when the
stream is complete (end-of-archive marker written, compressor flushed), so a
crash or an error never leaves a complete-looking shard. Compression follows
the output name (``.gz``/``.tgz``, ``.bz2``, ``.xz``, ``.zst``) unless given.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import BinaryIO, NoReturn

from . import procs
from .compress import compressing_writer, compression_for_name, output_compression
from .errors import OutputError
from .samples import Sample, sample_members
from .tario import TarWriter

PARTIAL = ".partial"


class TarSink:
    """A tar output that takes samples; use as a context manager.

    On a clean exit of the ``with`` block the stream is finished (end marker,
    compressor trailer) and a file output is renamed into place; on an
    exception it is left incomplete: ``NAME.partial`` is removed (only
    SIGKILL or the OOM killer can leave one, and the next run replaces it)
    and stdout gets no end-of-archive marker.

    :param target: ``-`` for stdout, ``pipe:CMD`` (or ``|CMD``) or a file name
    :param compression: ``none``/``gzip``/``bzip2``/``xz``/``zstd``, or None
        to follow the file name
    :param mtime: modification time of every member, seconds
    :param mode: permission bits of every member
    :raises OutputError: the file cannot be created, or a ``pipe:`` command
        exits non-zero
    :raises UsageError: ``compression`` contradicts the file's name
        (:func:`tarproc.compress.output_compression`)
    """

    def __init__(self, target: str, compression: str | None = None, mtime: int = 0, mode: int = 0o444):
        target = pipe_spelling(target)
        self.target = target
        self.path: str | None = None
        self._proc: subprocess.Popen | None = None
        if target == "-" or target.startswith("pipe:"):
            compression = compression or "none"
        elif os.path.exists(target) and not os.path.isfile(target):  # a device or FIFO
            compression = compression or compression_for_name(target)
        else:
            compression = output_compression(target, compression)
        self.compression = compression
        if target == "-":
            self._raw: BinaryIO = sys.stdout.buffer
        elif target.startswith("pipe:"):
            try:
                # its own process group: abort() can stop the whole command, not just bash
                self._proc = procs.spawn_shell(target[5:], stdin=subprocess.PIPE, stdout=None)
            except OSError as exc:
                raise OutputError(f"{target}: cannot start: {exc.strerror}") from None
            self._raw = self._proc.stdin
        elif os.path.exists(target) and not os.path.isfile(target):
            # a device or FIFO (/dev/null, a named pipe): write to it directly
            try:
                self._raw = open(target, "wb")
            except OSError as exc:
                raise OutputError(f"{target}: cannot open: {exc.strerror}") from None
        else:
            self.path = target
            directory = os.path.dirname(os.path.abspath(target))
            try:
                # 64 KiB buffer: one write(2) per ~20 small members instead of ~3 (dir2tar: -8% time)
                self._raw = open(target + PARTIAL, "wb", buffering=1 << 16)
            except OSError as exc:
                if not os.path.isdir(directory):
                    raise OutputError(f"{target}: cannot create: no such directory {directory!r}") from None
                raise OutputError(f"{target}: cannot create: {exc.strerror}") from None
        self._stream = compressing_writer(self._raw, compression)
        self.writer = TarWriter(self._stream, mtime=mtime, mode=mode)
        self.samples = 0
        self.closed = False

    @property
    def bytes_written(self) -> int:
        """Uncompressed tar bytes written so far."""
        return self.writer.bytes_written

    def write(self, sample: Sample) -> None:
        """Write a sample's fields as members ``key.field``, in dict order
        (meta entries starting with ``__`` are not written)."""
        add = self.writer.add
        try:
            for name, data in sample_members(sample):
                add(name, data)
        except OSError as exc:
            self._write_failed(exc)
        self.samples += 1

    def _write_failed(self, exc: OSError) -> NoReturn:
        """Re-raise a failed write: a closed stdout pipe stays
        :class:`BrokenPipeError` (a quiet exit); anything else is an
        :class:`OutputError`, for ``pipe:CMD`` with the command's exit status
        (a command that exits early closes the pipe under us)."""
        if isinstance(exc, BrokenPipeError) and self.path is None and self._proc is None:
            raise exc
        if self._proc is None:
            raise OutputError(f"{self.target}: write failed: {exc.strerror or exc}") from None
        self.closed = True
        for stream in (self._stream, self._raw):
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        how = procs.describe_status(self._proc.wait())
        raise OutputError(f"{self.target}: command {how} before reading all of its input") from None

    def close(self) -> None:
        """Finish the stream and, for a file, rename ``NAME.partial`` to ``NAME``.

        :raises OutputError: a ``pipe:`` command failed or the file could not
            be written
        """
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.finish()
            if self._stream is not self._raw:
                self._stream.close()
            if self._proc is not None:
                self._raw.close()
                status = self._proc.wait()
                if status != 0:
                    raise OutputError(f"{self.target}: command {procs.describe_status(status)}")
            elif self.path is not None:
                self._raw.close()
                os.replace(self.path + PARTIAL, self.path)
            elif self._raw is sys.stdout.buffer:
                self._raw.flush()
            else:
                self._raw.close()
        except OSError as exc:
            self._write_failed(exc)

    def abort(self) -> None:
        """Stop without an end-of-archive marker; ``NAME.partial`` is
        removed (an unfinished output is never left to be taken for data); a
        ``pipe:`` command is terminated (SIGTERM) before its input is closed,
        so that it does not take the cut stream for a complete one (an upload
        is not completed)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._proc is not None:
                procs.kill_group(self._proc.pid, signal.SIGTERM)
                self._raw.close()
                self._proc.wait()
            elif self._raw is sys.stdout.buffer:
                self._raw.flush()
            else:  # a file (NAME.partial) or a device/FIFO opened by us, as in close()
                if self._stream is not self._raw:
                    self._stream.close()  # flush what was written before the error
                self._raw.close()
                if self.path is not None:
                    os.unlink(self.path + PARTIAL)
        except OSError:
            pass

    def __enter__(self) -> TarSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def pipe_spelling(target: str) -> str:
    """``|CMD`` (the spelling of the original tarproc and webdataset's
    writers) as ``pipe:CMD``; any other target unchanged."""
    return "pipe:" + target[1:].lstrip() if target.startswith("|") else target


def open_sink(target: str, compression: str | None = None, mtime: int = 0, mode: int = 0o444) -> TarSink:
    """Open a :class:`TarSink` (see there)."""
    return TarSink(target, compression, mtime, mode)
