"""Gathered writes: many buffers in one ``writev(2)`` (POSIX ``writev``),
resumed after a partial write, with no join of the buffers.

The one home of that loop: the executor's pipes (:mod:`tarproc.executor.wire`)
and the tar writer's large samples (:class:`tarproc.tario.TarWriter`) use it.
"""

from __future__ import annotations

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
