"""Samples and results across a pipe, without pickling their bytes.

A message is ``[u64 skeleton length][u64 raw length][skeleton][raw]``: the
skeleton is a small :mod:`pickle` (the C pickler, protocol 5) of the
structure with every bytes value taken out, and the raw part is those
values back to back, written with one ``writev(2)`` straight from the
sample's own buffers (no join, no pickling of the bytes) and read into one
buffer. Receivers get :class:`memoryview` slices of that buffer (the worker
writes files from them) or, with ``copy``, bytes (what the parent hands on).

A :class:`tarproc.io.spool.LargeField` (a file-backed field) crosses as its
path and size in the skeleton, never as bytes: workers share the parent's
file system. The parent keeps owning the files of its tasks' fields; a
worker hands the files of its results' fields over to the parent (it
releases them when it packs them, the parent owns them when it unpacks).

A task's raw part may instead be in the worker's :class:`Arena`, memory it
shares with the parent: the message then carries only the skeleton and
where the bytes are (raw length 0), and the parent pays one ``memcpy``
instead of a ``write(2)`` into the pipe (the kernel's copy into pipe
pages, about 0.5 ms per MB here), the worker none.
"""

from __future__ import annotations

import collections
import mmap
import os
import pickle
import struct

from tarproc.io import iov
from tarproc.io.spool import LargeField
from tarproc.executor.results import Result

HEADER = struct.Struct("<QQ")
_RAW = None  # marks a value sent in the raw part
#: value types sent as a reference to the input's value when equal to it
#: (fields, and the key and source of an output that keeps them)
_SHARED = (bytes, str)


def _flatten(sample: dict, lengths: list, buffers: list, source: dict | None = None,
             hand_over: bool = False) -> list:
    """The entries of ``sample`` for a skeleton: ``(name, value)`` for a value
    sent inline (``(name, None, None)`` for None, which the raw marker would
    take for bytes), ``(name, None)`` for bytes in the raw part, ``(name,)`` for
    bytes equal to ``source``'s field of that name (not sent at all),
    ``(name, path, size, None)`` for a :class:`LargeField` (released when
    ``hand_over``: the receiver owns its file then). A
    sample whose every value is ``source``'s is a tuple of its names instead
    (the usual output of a command that leaves the fields alone)."""
    entries = []
    shared = 0
    for name, value in sample.items():
        if source is not None and type(value) in _SHARED and name in source and source[name] == value:
            entries.append((name,))
            shared += 1
        elif isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append(value)
            lengths.append(len(value) if type(value) is not memoryview else value.nbytes)
            entries.append((name, _RAW))
        elif value.__class__ is LargeField:
            if hand_over:
                value.release()
            entries.append((name, value.path, value.size, None))
        elif value is _RAW:
            entries.append((name, None, None))
        else:
            entries.append((name, value))
    if shared and shared == len(entries):
        return tuple(sample)
    return entries


def _rebuild(entries: list | tuple, raw: memoryview, lengths: list, pos: list, copy: bool,
             source: dict | None = None) -> dict:
    if entries.__class__ is tuple:  # names only: every value is source's
        return dict(zip(entries, map(source.__getitem__, entries)))
    sample = {}
    offset, i = pos
    for entry in entries:
        size = len(entry)
        if size == 1:
            sample[entry[0]] = source[entry[0]]
            continue
        if size == 3:  # an inline None
            sample[entry[0]] = None
            continue
        if size == 4:  # a file-backed field: the parent (copy) owns its file
            sample[entry[0]] = LargeField(entry[1], entry[2], owned=copy)
            continue
        name, value = entry
        if value is _RAW:
            n = lengths[i]
            view = raw[offset : offset + n]
            sample[name] = bytes(view) if copy else view
            offset += n
            i += 1
        else:
            sample[name] = value
    pos[0], pos[1] = offset, i
    return sample


def pack(skeleton, lengths: list, buffers: list, offset: int | None = None) -> list:
    """The buffers of one message (for :func:`send` or a non-blocking writer);
    with ``offset``, the raw part is in the receiver's :class:`Arena` there
    (``buffers`` is then ignored: the message has no raw part)."""
    if offset is not None:
        head = pickle.dumps((skeleton, lengths, offset), protocol=5)
        return [HEADER.pack(len(head), 0), head]
    head = pickle.dumps((skeleton, lengths), protocol=5)
    return [HEADER.pack(len(head), sum(lengths)), head, *buffers]


def pack_items(items: list, arena: Arena | None = None) -> tuple[list, bool]:
    """A task: ``[(index, sample), ...]``; returns ``(buffers, in_arena)``.

    With ``arena``, the samples' bytes are copied there when they fit
    (``in_arena``: the caller calls :meth:`Arena.release` once the task is
    answered), else they go in the message.
    """
    lengths: list = []
    buffers: list = []
    skeleton = [(index, _flatten(sample, lengths, buffers)) for index, sample in items]
    if arena is not None and buffers:
        offset = arena.put(buffers, sum(lengths))
        if offset is not None:
            return pack(skeleton, lengths, buffers, offset), True
    return pack(skeleton, lengths, buffers), False


def unpack_items(skeleton, lengths, raw: memoryview, copy: bool = False) -> list:
    pos = [0, 0]
    return [(index, _rebuild(entries, raw, lengths, pos, copy)) for index, entries in skeleton]


_FIELDS = ("index", "key", "status", "failed", "reason", "warnings", "directory", "attempts", "action", "leftovers")


def pack_results(results: list, inputs: dict | None = None) -> list:
    """A task's answer: ``[Result, ...]``. With ``inputs`` (index -> the
    input sample the worker got), an output field whose bytes equal the
    input's field of the same name is sent as a reference to it (and so
    are ``__key__`` and ``__source__`` when they are the input's): a command
    that leaves most fields alone costs the parent no copy of them."""
    lengths: list = []
    buffers: list = []
    skeleton = []
    for r in results:
        lengths.append(len(r.log))
        buffers.append(r.log)
        source = inputs.get(r.index) if inputs else None
        outputs = [_flatten(out, lengths, buffers, source, True) for out in r.outputs]
        skeleton.append((tuple(getattr(r, f) for f in _FIELDS), outputs))
    return pack(skeleton, lengths, buffers)


def unpack_results(skeleton, lengths, raw: memoryview, inputs: dict | None = None) -> list:
    """The results of :func:`pack_results`; ``inputs`` (index -> input
    sample) resolves the fields sent as references."""
    pos = [0, 0]
    results = []
    for fields, outputs in skeleton:
        n = lengths[pos[1]]
        log = bytes(raw[pos[0] : pos[0] + n]) if n else b""
        pos[0] += n
        pos[1] += 1
        index, key, status, failed, reason, warnings, directory, attempts, action, leftovers = fields  # _FIELDS
        if inputs:
            source = inputs[index]
            get = source.__getitem__
            # an output of names only (every value the input's) is rebuilt here, without a call
            outputs = [dict(zip(entries, map(get, entries))) if entries.__class__ is tuple
                       else _rebuild(entries, raw, lengths, pos, True, source) for entries in outputs]
        else:
            outputs = [_rebuild(entries, raw, lengths, pos, True) for entries in outputs]
        # positional, in the dataclass's field order (cheaper than keywords, once per sample)
        results.append(Result(index, key, outputs, status, failed, reason, log, warnings, directory, attempts, action,
                              leftovers))
    return results


def send(fd: int, buffers: list) -> None:
    """Write one message to a blocking ``fd`` (``writev``, resumed after a
    partial write: :func:`tarproc.io.iov.write_all`)."""
    iov.write_all(fd, buffers)


def _read_exact(fd: int, buf: bytearray | memoryview) -> bool:
    view = memoryview(buf)
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            if got == 0:
                return False
            raise EOFError("message cut short")
        got += n
    return True


def receive(fd: int, arena: Arena | None = None):
    """Read one message from a blocking ``fd``: ``(skeleton, lengths, raw)``
    or None at end of file. ``raw`` is a view of ``arena`` for a task
    :func:`pack_items` put there (valid until the task is answered)."""
    head = bytearray(HEADER.size)
    if not _read_exact(fd, head):
        return None
    skeleton_size, raw_size = HEADER.unpack(head)
    body = bytearray(skeleton_size + raw_size)
    if body and not _read_exact(fd, body):
        raise EOFError("message cut short")
    view = memoryview(body)
    parts = pickle.loads(view[:skeleton_size])
    if len(parts) == 3:  # the raw part is in the arena
        skeleton, lengths, offset = parts
        return skeleton, lengths, arena.view[offset : offset + sum(lengths)]
    skeleton, lengths = parts
    return skeleton, lengths, view[skeleton_size:]


#: bytes of each worker's arena: two tasks of up to 2 MB each in flight
ARENA_SIZE = 4 << 20


class Arena:
    """A worker's task bytes in memory shared with the parent: an anonymous
    ``MAP_SHARED`` mapping (``mmap(2)``, POSIX.1-2017) made before the
    worker is forked, so both see the same pages.

    The parent allocates in a ring, in the order it sends tasks, and
    frees in the same order (:meth:`release`, when a task's answer
    arrives: a worker answers its tasks in order), so a task's bytes are
    never overwritten before the worker is done with them. A task that
    does not fit goes through the pipe.

    :param size: bytes of the mapping (default :data:`ARENA_SIZE`; pages
        are touched as they are used)
    """

    def __init__(self, size: int | None = None):
        self.size = size = size or ARENA_SIZE
        self.map = mmap.mmap(-1, size)
        self.view = memoryview(self.map)
        self.live: collections.deque = collections.deque()  # (start, end) of tasks not yet answered

    def _place(self, n: int) -> int | None:
        if n > self.size:
            return None
        if not self.live:
            return 0
        first, last = self.live[0][0], self.live[-1][1]
        if first < last:  # in order: free space after the last and before the first
            if last + n <= self.size:
                return last
            return 0 if n <= first else None
        return last if last + n <= first else None  # wrapped: the gap between them

    def put(self, buffers: list, n: int) -> int | None:
        """Copy ``buffers`` (``n`` bytes in all, n > 0) into the ring: their
        offset, or None when they do not fit now."""
        offset = self._place(n)
        if offset is None:
            return None
        view = self.view
        pos = offset
        for b in buffers:
            if type(b) is memoryview:
                b = b.cast("B")
            size = len(b)
            view[pos : pos + size] = b
            pos += size
        self.live.append((offset, offset + n))
        return offset

    def release(self) -> None:
        """Free the oldest task's bytes (its answer has arrived)."""
        self.live.popleft()

    def close(self) -> None:
        """Unmap the parent's side (the worker's goes with it)."""
        try:
            self.view.release()
            self.map.close()
        except BufferError:
            pass  # a view of it is still alive (an error on the way): unmapped when that goes


class Reader:
    """Non-blocking reader of messages from one fd (the parent's side).

    Small messages (results whose fields are references) are read many at
    a time through one 64 KiB read; a large one is read straight into its
    own buffer once its header is known.
    """

    CHUNK = 1 << 16

    def __init__(self, fd: int):
        self.fd = fd
        self.pending = b""  # bytes read and not yet parsed
        self.body: bytearray | None = None  # a large message being filled
        self.got = 0
        self.skeleton_size = 0
        self.eof = False

    def _message(self, body) -> tuple:
        view = memoryview(body)
        skeleton, lengths = pickle.loads(view[: self.skeleton_size])
        return skeleton, lengths, view[self.skeleton_size :]

    def read(self) -> list | None:
        """Complete messages now readable, as ``(skeleton, lengths, raw)``;
        None once the writer is gone (end of file; a message it had begun
        is lost with it). Reads until a read comes back short (so at most
        one read per message in the usual case), not until ``EAGAIN``:
        the fd must be watched level-triggered (``poll(2)``, ``selectors``' default)."""
        if self.eof:
            return None
        messages = []
        while True:
            if self.body is not None:
                try:
                    n = os.readv(self.fd, [memoryview(self.body)[self.got :]])
                except BlockingIOError:
                    return messages
                if n == 0:
                    self.eof = True
                    return messages or None
                self.got += n
                if self.got == len(self.body):
                    messages.append(self._message(self.body))
                    self.body = None
                    continue
                return messages  # a short read: the pipe is empty for now
            try:
                data = os.read(self.fd, self.CHUNK)
            except BlockingIOError:
                return messages
            if not data:
                self.eof = True
                return messages or None
            pending = self.pending + data if self.pending else data
            start = 0
            size = len(pending)
            while size - start >= HEADER.size:
                skeleton_size, raw_size = HEADER.unpack_from(pending, start)
                end = start + HEADER.size + skeleton_size + raw_size
                self.skeleton_size = skeleton_size
                if end <= size:
                    messages.append(self._message(pending[start + HEADER.size : end]))
                    start = end
                    continue
                # a large message: the rest goes straight into its own buffer
                self.body = bytearray(end - start - HEADER.size)
                have = pending[start + HEADER.size :]
                self.body[: len(have)] = have
                self.got = len(have)
                start = size
                break
            self.pending = pending[start:] if start < size else b""
            if len(data) < self.CHUNK and self.body is None:
                # a short read: the pipe is empty for now (another read
                # would fail with EAGAIN); the selector says when there is more
                return messages


class Writer:
    """Non-blocking writer of messages to one fd (the parent's side)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.queue: list = []

    def put(self, buffers: list, size: int | None = None) -> None:
        """Queue ``buffers`` (any bytes-like objects) and write what the pipe
        takes now; ``size``: their total length in bytes when known
        (:meth:`put_message`)."""
        if not self.queue and len(buffers) <= iov.IOV_BATCH:
            # the usual case: the pipe takes the whole message at once
            try:
                n = os.writev(self.fd, buffers)
            except BlockingIOError:
                n = 0
            if size is None:
                size = sum(len(b) if type(b) is bytes else memoryview(b).nbytes for b in buffers)
            if n == size:
                return
            views = iov.byte_views(buffers)
            iov.consume(views, views[:], n)
        else:
            views = iov.byte_views(buffers)
        self.queue.extend(views)
        self.flush()

    def put_message(self, buffers: list) -> None:
        """:meth:`put` for one message of :func:`pack`, whose size its header
        gives (no pass over the buffers)."""
        skeleton_size, raw_size = HEADER.unpack(buffers[0])
        self.put(buffers, HEADER.size + skeleton_size + raw_size)

    def flush(self) -> None:
        """Write what the pipe takes now; what is left stays queued."""
        queue = self.queue
        while queue:
            batch = queue[:iov.IOV_BATCH]
            try:
                n = os.writev(self.fd, batch)
            except BlockingIOError:
                return
            if iov.consume(queue, batch, n) < len(batch):
                return

    @property
    def pending(self) -> bool:
        return bool(self.queue)
