"""Whole writes: every byte given to a file descriptor or a stream is
written, resumed after a partial write.

Linux's ``write(2)`` and ``writev(2)`` move at most 0x7ffff000 bytes
(2,147,479,552) per call, and any of them may stop early after a signal; a
raw (unbuffered) stream's ``write`` -- :class:`io.FileIO`, such as
``sys.stdout.buffer`` under ``PYTHONUNBUFFERED``/``python -u``, or
``open(..., buffering=0)`` -- returns what that one call took. Code that
ignores the count loses the rest silently. This module is the one home of
the loops that resume:

- :func:`write_all`: many buffers in one ``writev(2)`` (POSIX ``writev``),
  with no join of the buffers (the executor's pipes,
  :mod:`tarproc.executor.wire`, and the tar writer's gathered samples,
  :class:`tarproc.io.tario.TarWriter`);
- :func:`write_out`: one buffer through a stream's ``write``;
- :func:`whole_writes`: a stream whose ``write`` always takes everything
  (a raw stream wrapped, a buffered one as it is).
"""

from __future__ import annotations

import io
import os

#: at most this many buffers per writev(2) (IOV_MAX is 1024 on Linux)
IOV_BATCH = 512


def consume(views: list, batch: list, n: int) -> int:
    """Remove from the front of ``views`` the ``n`` bytes that ``writev``
    wrote of ``batch`` (``views[:len(batch)]``, each a bytes object or a
    byte-format memoryview); a buffer written in part stays as the view of
    its rest. Returns how many buffers were written whole."""
    done = 0
    for b in batch:
        size = len(b)
        if n >= size:
            n -= size
            done += 1
        else:
            views[done] = memoryview(b)[n:]
            break
    del views[:done]
    return done


def byte_views(buffers: list) -> list:
    """``buffers`` as bytes objects or byte-format memoryviews (what
    :func:`consume` slices)."""
    return [b if type(b) is bytes else memoryview(b).cast("B") for b in buffers]


def write_all(fd: int, buffers: list, size: int | None = None) -> None:
    """Write ``buffers`` (bytes-like objects) to a blocking ``fd`` in order,
    ``IOV_BATCH`` at a time, resuming after a partial write.

    :param size: their total length in bytes, when the caller knows it: the
        usual whole write then costs one ``writev`` and no pass over them
    :raises OSError: from ``writev`` (``BrokenPipeError`` for a closed pipe)
    """
    if size is not None and len(buffers) <= IOV_BATCH:
        n = os.writev(fd, buffers)
        if n == size:
            return
        views = byte_views(buffers)
        consume(views, views[:], n)
    else:
        views = byte_views(buffers)
    while views:
        batch = views[:IOV_BATCH]
        consume(views, batch, os.writev(fd, batch))


def _nbytes(data) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


def write_out(write, data) -> None:
    """Give all of ``data`` (a bytes-like object) to ``write`` (a binary
    stream's ``write`` method), calling it again with the rest after a short
    write (a raw stream returns what one ``write(2)`` took). A ``write``
    that returns None (a file-like object that does not count) is taken to
    have written everything.

    :raises OSError: from ``write``
    """
    n = write(data)
    if n is None:
        return
    size = _nbytes(data)
    if n >= size:
        return
    view = memoryview(data).cast("B")[n:]
    while view:
        n = write(view)
        if n is None:
            return
        view = view[n:]


class WholeWrites:
    """A raw binary stream whose :meth:`write` writes everything (see
    :func:`write_out`) and returns the length; every other attribute is the
    stream's. Nothing is buffered, so nothing needs flushing."""

    def __init__(self, raw):
        self.raw = raw
        self._write = raw.write

    def write(self, data) -> int:
        write_out(self._write, data)
        return _nbytes(data)

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


def whole_writes(stream):
    """``stream`` itself when its ``write`` takes everything (a buffered
    stream: :class:`io.BufferedIOBase`, which resumes short raw writes
    itself), else a :class:`WholeWrites` around it (a raw stream,
    :class:`io.RawIOBase`, e.g. ``sys.stdout.buffer`` under
    ``PYTHONUNBUFFERED``). Other file-like objects are returned as they are."""
    if isinstance(stream, io.RawIOBase):
        return WholeWrites(stream)
    return stream
