"""Fields too large to hold in memory: file-backed values.

A member larger than :data:`THRESHOLD` bytes is not read into memory: the
reader (:class:`tarproc.io.tario.TarReader`) copies it, in pieces, to a file in
this process's spool directory and the sample gets a :class:`LargeField`
for it instead of ``bytes``. The writers (:class:`tarproc.io.tario.TarWriter`,
so every sink and shard) copy it to their output in pieces, ``tarshow``
describes it from its head, and ``tarproc`` copies it into (and moves it out
of) the sample directory, so a 2 GiB member costs a few MB of memory, not
two copies of it. A stage that truly needs the bytes asks for them
explicitly: ``bytes(field)`` or :meth:`LargeField.read`.

The spool directory (``$TMPDIR/tarproc-spool-*``) is made on first use and
removed, with what it holds, when the process exits; a field's file is
removed as soon as the field is no longer referenced. Only a SIGKILL can
leave one behind.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Iterator

from tarproc.io.iov import write_out

#: the least :data:`THRESHOLD`: the tar writer joins members smaller than
#: this (:data:`tarproc.io.tario.SMALL_MEMBER`) and writes larger ones apart
MIN_THRESHOLD = 1 << 16
#: members larger than this many bytes (64 MiB) are file-backed
#: (:class:`LargeField`); the environment variable ``TARPROC_LARGE_FIELD``
#: (bytes, at least :data:`MIN_THRESHOLD`) sets another value for a run
#: (the tests use 1 MiB)
THRESHOLD = max(int(os.environ.get("TARPROC_LARGE_FIELD") or 64 << 20), MIN_THRESHOLD)
#: bytes per read when a field is copied or streamed
CHUNK = 1 << 22

#: this process's spool directory: named when the module is imported, made
#: on first use (:func:`directory`), removed at exit by this process only
_DIRECTORY = os.path.join(tempfile.gettempdir(), f"tarproc-spool-{os.getpid()}-{os.urandom(4).hex()}")  # os.urandom: as secrets.token_hex, without importing hashlib
_OWNER = os.getpid()
_made = 0  # the pid that last made sure _DIRECTORY exists


def directory() -> str:
    """The spool directory (``$TMPDIR/tarproc-spool-PID-TOKEN``), made on
    first use.

    Forked children (tarproc's workers) share their parent's (its name is
    inherited), so a file they move there (an output of a command) outlives
    them; the parent removes the directory at exit.

    :raises OSError: it cannot be made, or its name is taken by something
        that is not our directory
    """
    global _made
    pid = os.getpid()
    if _made != pid:
        try:
            os.mkdir(_DIRECTORY, 0o700)
        except FileExistsError:
            st = os.lstat(_DIRECTORY)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                raise OSError(errno.EEXIST, "spool directory name taken", _DIRECTORY) from None
        _made = pid
    return _DIRECTORY


@atexit.register
def _remove_directory() -> None:
    if os.getpid() == _OWNER:
        shutil.rmtree(_DIRECTORY, ignore_errors=True)


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked child that inherited the field
        try:
            os.unlink(path)
        except OSError:
            pass


def new_file() -> tuple[int, str]:
    """A new, empty file in the spool directory: ``(fd open for writing, path)``.

    :raises OSError:
    """
    return tempfile.mkstemp(prefix="field-", dir=directory())


class LargeField:
    """A field's bytes in a file: what a sample holds instead of ``bytes``
    for a member larger than :data:`THRESHOLD`.

    It supports what the tools do with a field without loading it:
    ``len()``, :meth:`chunks`, :meth:`write_to`, :meth:`copy_to_fd`,
    :meth:`head`, slicing (``field[:8]``, one ``pread`` of that range),
    ``startswith``/``endswith`` and comparison with bytes. ``bytes(field)``
    and :meth:`read` load it all (explicitly). Pickled, it becomes its
    ``bytes`` (another process cannot share the file's lifetime safely;
    tarproc's workers exchange the path instead:
    :mod:`tarproc.executor.wire`).

    :param path: the file; it must hold at least ``size`` bytes and must not
        change while the field is in use
    :param size: the field's length in bytes
    :param owned: remove the file when this object is garbage-collected (or
        at exit, in the process that made it)
    """

    __slots__ = ("path", "size", "_finalizer", "__weakref__")

    def __init__(self, path: str, size: int, owned: bool = True):
        self.path = path
        self.size = size
        self._finalizer = weakref.finalize(self, _remove, path, os.getpid()) if owned else None

    @property
    def owned(self) -> bool:
        """Whether this object removes its file when it goes."""
        return self._finalizer is not None and self._finalizer.alive

    def release(self) -> None:
        """Give up the file: it is no longer removed by this object (its
        receiver owns it now; see :func:`spool_file`)."""
        if self._finalizer is not None:
            self._finalizer.detach()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"LargeField({self.path!r}, {self.size} bytes)"

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The bytes in pieces of at most ``size`` bytes, in order.

        :raises OSError: the file cannot be read, or holds fewer bytes than
            :attr:`size` (``EIO``)
        """
        left = self.size
        with open(self.path, "rb", buffering=0) as handle:
            while left:
                chunk = handle.read(min(left, size))
                if not chunk:
                    raise OSError(errno.EIO, f"spooled field cut short: {left} of {self.size} bytes missing",
                                  self.path)
                left -= len(chunk)
                yield chunk

    def read(self) -> bytes:
        """All the bytes, in memory (``bytes(field)`` is the same).

        :raises OSError: see :meth:`chunks`
        """
        with open(self.path, "rb", buffering=0) as handle:
            data = handle.read(self.size) if self.size < (1 << 30) else handle.readall()[: self.size]
        if len(data) < self.size:
            data += b"".join(self._rest(len(data)))
        if len(data) != self.size:
            raise OSError(errno.EIO, f"spooled field cut short: {len(data)} of {self.size} bytes", self.path)
        return data

    def _rest(self, start: int) -> Iterator[bytes]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while start < self.size:
                chunk = os.pread(fd, min(self.size - start, CHUNK), start)
                if not chunk:
                    return
                start += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    __bytes__ = read

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes (fewer if the field is shorter)."""
        return self[:n]

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            if step != 1:
                return bytes(self)[index]
            if stop <= start:
                return b""
            return b"".join(self._range(start, stop))
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError("index out of range")
        return self[index : index + 1][0]

    def _range(self, start: int, stop: int) -> Iterator[bytes]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while start < stop:
                chunk = os.pread(fd, min(stop - start, CHUNK), start)
                if not chunk:
                    return
                start += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def startswith(self, prefix) -> bool:
        if isinstance(prefix, tuple):
            return any(self.startswith(p) for p in prefix)
        return self[: len(prefix)] == prefix

    def endswith(self, suffix) -> bool:
        if isinstance(suffix, tuple):
            return any(self.endswith(s) for s in suffix)
        if len(suffix) > self.size:
            return False
        return self[self.size - len(suffix) :] == suffix

    def decode(self, *args) -> str:
        """``bytes(self).decode(...)`` (loads the field)."""
        return self.read().decode(*args)

    def __eq__(self, other) -> bool:
        if isinstance(other, LargeField):
            if other.size != self.size:
                return False
            if other.path == self.path:
                return True
            return all(a == b for a, b in zip(self.chunks(), other.chunks()))
        if isinstance(other, (bytes, bytearray, memoryview)):
            view = memoryview(other).cast("B")
            if len(view) != self.size:
                return False
            pos = 0
            for chunk in self.chunks():
                if view[pos : pos + len(chunk)] != chunk:
                    return False
                pos += len(chunk)
            return True
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        return (bytes, (self.read(),))

    def write_to(self, write) -> None:
        """Give the bytes, piece by piece, to ``write`` (a stream's write
        method; short writes are resumed: :func:`tarproc.io.iov.write_out`).

        :raises OSError:
        """
        for chunk in self.chunks():
            write_out(write, chunk)

    def copy_to_fd(self, fd: int) -> None:
        """Append the bytes to the file open for writing at ``fd``, in the
        kernel where it can (``copy_file_range(2)``, then ``sendfile(2)``),
        resuming short copies; else through memory in pieces.

        :raises OSError:
        """
        src = os.open(self.path, os.O_RDONLY)
        try:
            left = self.size
            for copy in (_copy_file_range, _sendfile):
                try:
                    while left:
                        n = copy(src, fd, left)
                        if n == 0:
                            raise OSError(errno.EIO, "spooled field cut short", self.path)
                        left -= n
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                         errno.ENOTSUP, errno.EBADF):
                        raise
            while left:
                chunk = os.read(src, min(left, CHUNK))
                if not chunk:
                    raise OSError(errno.EIO, "spooled field cut short", self.path)
                write_out(lambda b: os.write(fd, b), chunk)
                left -= len(chunk)
        finally:
            os.close(src)


def _copy_file_range(src: int, dst: int, count: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise OSError(errno.ENOSYS, "no copy_file_range")
    return os.copy_file_range(src, dst, min(count, 1 << 30))


def _sendfile(src: int, dst: int, count: int) -> int:
    return os.sendfile(dst, src, None, min(count, 1 << 30))


def spool_file(path: str, size: int | None = None) -> LargeField:
    """Move the file ``path`` (a command's output in a sample directory)
    into the spool directory and return it as a :class:`LargeField` that
    owns it (a tarproc worker hands it over to its parent with
    :meth:`LargeField.release`, see :mod:`tarproc.executor.wire`); a file
    on another file system is copied in the kernel and removed.

    :raises OSError:
    """
    if size is None:
        size = os.stat(path).st_size
    fd, target = new_file()
    try:
        try:
            os.rename(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            LargeField(path, size, owned=False).copy_to_fd(fd)
            os.unlink(path)
    except BaseException:
        _remove(target, os.getpid())
        raise
    finally:
        os.close(fd)
    return LargeField(target, size)
