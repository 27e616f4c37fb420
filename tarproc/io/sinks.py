"""Write samples to ``-`` (stdout), a file, ``pipe:CMD`` or an fsspec URL.

A file is written as ``NAME.partial`` and renamed to ``NAME`` only when the
stream is complete (end-of-archive marker written, compressor flushed), so a
crash or an error never leaves a complete-looking shard. A URL (``s3://``,
``gs://``...) is written through :class:`AtomicOutput`: the object appears
only when the stream is complete (an s3fs multipart upload is completed on
success and aborted otherwise). Compression follows
the output name (``.gz``/``.tgz``, ``.bz2``, ``.xz``, ``.zst``) unless given.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, NoReturn, TextIO

from tarproc import procs
from tarproc.procs import host_name, pid_alive
from tarproc.io.compress import compressing_writer, compression_for_name, output_compression
from tarproc.errors import InterruptRecord, OutputError
from tarproc.io.iov import whole_writes
from tarproc.samples import Sample, sample_members
from tarproc.io.storage import filesystem, is_url, local_path
from tarproc.io.tario import TarWriter

PARTIAL = ".partial"


def not_a_file(path: str) -> bool:
    """True for a local path that exists and is not a regular file (a device
    such as ``/dev/null``, a FIFO, a socket): an output there is written
    directly, never as a temporary file renamed over it (which would replace
    the device with a regular file)."""
    return os.path.exists(path) and not os.path.isfile(path)


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
    :param storage_options: fsspec options for a URL target
        (:func:`tarproc.io.storage.filesystem`)
    :raises OutputError: the file cannot be created, or a ``pipe:`` command
        exits non-zero
    :raises UsageError: ``compression`` contradicts the file's name
        (:func:`tarproc.io.compress.output_compression`)
    """

    def __init__(self, target: str, compression: str | None = None, mtime: int = 0, mode: int = 0o444,
                 storage_options: dict | None = None):
        target = pipe_spelling(target)
        self.target = target
        #: the signals that come while this output is open (see :meth:`close`)
        self.interrupts = InterruptRecord()
        self.path: str | None = None
        self._proc: subprocess.Popen | None = None
        self._atomic: AtomicOutput | None = None
        self._stdout = target == "-"
        if target == "-" or target.startswith("pipe:"):
            compression = compression or "none"
        elif not_a_file(target):  # a device or FIFO
            compression = compression or compression_for_name(target)
        else:
            compression = output_compression(target, compression)
        self.compression = compression
        if target == "-":
            # raw (unbuffered) under PYTHONUNBUFFERED: its writes may be short (tarproc.io.iov)
            self._raw: BinaryIO = whole_writes(sys.stdout.buffer)
        elif target.startswith("pipe:"):
            try:
                # its own process group: abort() can stop the whole command, not just bash
                self._proc = procs.spawn_shell(target[5:], stdin=subprocess.PIPE, stdout=None)
            except OSError as exc:
                raise OutputError(f"{target}: cannot start: {exc.strerror}") from None
            self._raw = self._proc.stdin
        elif is_url(target):
            # an object store: nothing appears at the key unless close() finishes the stream
            self._atomic = AtomicOutput(target, storage_options)
            self._raw = self._atomic
        elif not_a_file(target):
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
        self.writer = TarWriter(self._stream, mtime=mtime, mode=mode, fd=self._gather_fd())
        self.samples = 0
        self.closed = False

    def _gather_fd(self) -> int | None:
        """The fd under an uncompressed buffered output (a file, a device,
        stdout, a ``pipe:`` command's stdin), for the tar writer's gathered
        writes; None for anything else (compression, an object store, a
        stdout that is not a file descriptor)."""
        if self._stream is not self._raw or not isinstance(self._raw, io.BufferedWriter):
            return None
        try:
            return self._raw.fileno()
        except (OSError, ValueError):
            return None

    @property
    def bytes_written(self) -> int:
        """Uncompressed tar bytes written so far."""
        return self.writer.bytes_written

    def write(self, sample: Sample) -> None:
        """Write a sample's fields as members ``key.field``, in dict order
        (meta entries starting with ``__`` are not written)."""
        try:
            self.writer.add_all(sample_members(sample))
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
        self.interrupts.check()  # a signal whose exception a finaliser swallowed: never commit the output
        self.interrupts.close()
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
            elif self._atomic is not None:
                self._atomic.commit()
            elif self._stdout:
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
        self.interrupts.close()
        if self.closed:
            return
        self.closed = True
        try:
            if self._proc is not None:
                procs.kill_group(self._proc.pid, signal.SIGTERM)
                self._raw.close()
                self._proc.wait()
            elif self._atomic is not None:
                self._atomic.discard()  # an object store: the upload is aborted, nothing at the key
            elif self._stdout:
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


def open_sink(target: str, compression: str | None = None, mtime: int = 0, mode: int = 0o444,
              storage_options: dict | None = None) -> TarSink:
    """Open a :class:`TarSink` (see there)."""
    return TarSink(target, compression, mtime, mode, storage_options)


def write_tar(samples: Iterable[Sample], stream: BinaryIO, mtime: int = 0, mode: int = 0o444) -> tuple[int, int]:
    """Write ``samples`` onto an open binary ``stream`` as one uncompressed
    tar stream (:class:`tarproc.io.tario.TarWriter`: the bytes a
    :class:`TarSink` writes), the end-of-archive marker only after the last
    sample: an exception from ``samples`` leaves the stream without one, so
    a reader never takes it for a whole archive. The stream is neither
    flushed nor closed (its owner commits or discards it).

    :param mtime: modification time of every member, seconds
    :param mode: permission bits of every member
    :returns: (samples written, tar bytes written)
    :raises OSError: a write failed (as the stream raises it)
    """
    writer = TarWriter(stream, mtime=mtime, mode=mode)
    count = 0
    for sample in samples:
        writer.add_all(sample_members(sample))
        count += 1
    writer.finish()
    return count, writer.bytes_written


# ------------------------------------------------------------ atomic outputs
#: the separator of a unique attempt file: ``NAME.partial.<host>.<pid>.<token>``
ATTEMPT = PARTIAL + "."
#: attempt files of another host (or not parseable) untouched for this long are stale
STALE_SECONDS = 3600


def attempt_suffix() -> str:
    """A suffix unique to this attempt: ``.partial.<host>.<pid>.<token>``
    (two attempts of one task, even on two machines at once, never write the
    same file)."""
    import secrets

    return f"{ATTEMPT}{host_name()}.{os.getpid()}.{secrets.token_hex(4)}"


def remove_stale_attempts(target: str, keep: str | None = None) -> list[str]:
    """Remove leftover attempt files ``TARGET.partial.*`` of a local
    ``target``: those of this host whose process is gone (killed with -9) and
    those of any host untouched for :data:`STALE_SECONDS`; ``keep`` (our own
    attempt) is never removed. Returns the paths removed."""
    import time

    directory = os.path.dirname(os.path.abspath(target))
    prefix = os.path.basename(target) + ATTEMPT
    host = host_name()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(directory, name)
        if keep is not None and os.path.abspath(keep) == path:
            continue
        try:
            if _stale(name[len(prefix):], host, lambda path=path: os.stat(path).st_mtime, now):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def _stale(suffix: str, host: str, mtime: Callable[[], float | None], now: float) -> bool:
    """Whether the attempt file with ``<host>.<pid>.<token>`` = ``suffix`` is
    stale: of this host with its process gone, or untouched (``mtime()``,
    Unix seconds, None when unknown) for :data:`STALE_SECONDS`."""
    owner, _, rest = suffix.partition(".")
    pid = rest.partition(".")[0]
    if owner == host and pid.isdigit() and not pid_alive(int(pid)):
        return True
    when = mtime()
    return when is not None and now - when > STALE_SECONDS


#: an attempt file's name: ``NAME.partial.<host>.<pid>.<token>`` (see :func:`attempt_suffix`)
_ATTEMPT_NAME = re.compile(re.escape(ATTEMPT) + r"([^./]+\.\d+\.[0-9a-f]{8})$")


def remove_stale_attempt_keys(directory: str, storage_options: dict | None = None) -> int:
    """:func:`remove_stale_attempts` for a directory of an fsspec store whose
    outputs are written through an attempt key and moved (every store but S3,
    see :class:`AtomicOutput`): every key ``NAME.partial.<host>.<pid>.<token>``
    in ``directory`` (a URL) that is stale by the same rules (the store's
    modification time, where it gives one). One listing of the directory, so
    a caller does it once per directory, not once per output. S3 URLs and
    errors are ignored (this is cleanup). Returns the number removed."""
    if directory.startswith(("s3://", "s3a://")):
        return 0
    import time

    removed = 0
    try:
        fs, path = filesystem(directory, storage_options)
        host = host_name()
        now = time.time()
        for info in fs.ls(path, detail=True):
            name = info.get("name", "")
            match = _ATTEMPT_NAME.search(name)
            if match and _stale(match[1], host, lambda info=info: _mtime(info), now):
                fs.rm(name)
                removed += 1
    except Exception:  # noqa: BLE001 - best effort: any store error leaves the keys as they are
        pass
    return removed


def _mtime(info: dict) -> float | None:
    """Unix seconds of an fsspec ``info()`` entry's modification time, if any."""
    for key in ("mtime", "LastModified", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
    return None


class HashingWriter:
    """A write-through stream: every write goes to ``stream`` while the named
    :mod:`hashlib` digests of the bytes (``sha256``, FIPS 180-4; ``md5``,
    RFC 1321) are computed and the bytes counted (:attr:`bytes`). Any other
    attribute (``flush``, ``fileno``...) is the stream's. The one home of this
    wrapper: completion records (:mod:`tarproc.jobs.tasks`, :mod:`tarproc.jobs.shuffle.worker`)
    and shard manifests (:mod:`tarproc.io.shards`) take their sizes and digests
    from it.

    :param stream: a binary stream with ``write``
    :param digests: hashlib names, none to only count
    """

    def __init__(self, stream, digests: Iterable[str] = ("sha256",)):
        self.stream = stream
        self.digests = {name: hashlib.new(name, usedforsecurity=False) for name in digests}
        self._updates = [digest.update for digest in self.digests.values()]
        self.bytes = 0

    def write(self, data) -> int:
        for update in self._updates:
            update(data)
        self.bytes += len(data)
        return self.stream.write(data)

    def hexdigest(self, name: str) -> str | None:
        """The hex digest ``name`` of the bytes written so far, None when not computed."""
        digest = self.digests.get(name)
        return digest.hexdigest() if digest is not None else None

    def __getattr__(self, name):
        return getattr(self.stream, name)


class AtomicOutput:
    """A binary output that appears at ``target`` only when :meth:`commit`
    is called: nothing, not even a prefix, is visible there after
    :meth:`discard`, an exception or a crash.

    - a local path is written as ``TARGET.partial.<host>.<pid>.<token>``
      (unique per attempt) and renamed into place (``rename(2)`` is atomic
      on POSIX file systems, also on NFS for one directory);
    - a local path that exists and is not a regular file (a device such as
      ``/dev/null``, a FIFO) is written directly and never renamed over: a
      rename would put a regular file in the device's place;
    - an S3 URL (s3fs) is written as one object whose multipart upload is
      completed by :meth:`commit` and aborted by :meth:`discard` (a small
      object is one PUT at commit); note that s3fs *completes* the upload
      when a ``with fs.open(...)`` block exits with an exception, which is
      why this class never uses one;
    - any other fsspec URL is written under a unique attempt key and moved
      (copied) to ``target`` on commit.

    Use as a context manager: a clean exit commits, an exception discards.

    :param target: a local path or an fsspec URL
    :param storage_options: fsspec options for a URL
    :param makedirs: create the target's directory (local paths, and fsspec
        stores that have directories)
    :raises OutputError: the output cannot be created
    """

    def __init__(self, target: str, storage_options: dict | None = None, makedirs: bool = False):
        self.target = target
        self.bytes = 0
        self.done = False
        self._fs = None
        self._mode = "local"
        if not is_url(target):
            path = local_path(target)
            self.path = path
            if not_a_file(path):
                self._mode = "direct"
                self.partial = None
                try:
                    self._file = open(path, "wb")
                except OSError as exc:
                    raise OutputError(f"{target}: cannot open: {exc.strerror}") from None
                return
            self.partial = path + attempt_suffix()
            directory = os.path.dirname(os.path.abspath(path))
            try:
                if makedirs:
                    os.makedirs(directory, exist_ok=True)
                self._file = open(self.partial, "wb", buffering=1 << 16)
            except OSError as exc:
                if not os.path.isdir(directory):
                    raise OutputError(f"{target}: cannot create: no such directory {directory!r}") from None
                raise OutputError(f"{target}: cannot create: {exc.strerror}") from None
            return
        try:
            fs, path = filesystem(target, storage_options)
        except Exception as exc:  # noqa: BLE001 - fsspec raises anything; one message
            raise OutputError(str(exc)) from None
        self._fs = fs
        self.path = path
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        if "s3" in protocols or "s3a" in protocols:
            self._mode = "discard"
            self.partial = None
            where = path
        else:
            self._mode = "move"
            self.partial = path + attempt_suffix()
            where = self.partial
            if makedirs:  # stores with directories (local://, sftp, hdfs); a no-op on object stores
                with contextlib.suppress(Exception):
                    fs.makedirs(fs._parent(path), exist_ok=True)
        try:
            self._file = fs.open(where, "wb")
        except (OSError, ValueError) as exc:
            raise OutputError(f"{target}: cannot create: {exc}") from None

    def write(self, data) -> int:
        """Write bytes. :raises OutputError:"""
        try:
            n = self._file.write(data)
        except (OSError, ValueError) as exc:
            raise OutputError(f"{self.target}: write failed: {getattr(exc, 'strerror', None) or exc}") from None
        self.bytes += len(data)
        return n

    def flush(self) -> None:
        pass

    def commit(self) -> int:
        """Make the output appear at its target; returns its size in bytes.

        :raises OutputError: the rename, upload or copy failed (the target
            is then left as it was)
        """
        try:
            if self._mode == "local":
                self._file.close()
                os.replace(self.partial, self.path)
            elif self._mode in ("discard", "direct"):
                self._file.close()
            else:
                self._file.close()
                self._fs.mv(self.partial, self.path)
        except (OSError, ValueError) as exc:
            self.discard()
            raise OutputError(f"{self.target}: cannot finish: {getattr(exc, 'strerror', None) or exc}") from None
        self.done = True
        return self.bytes

    def discard(self) -> None:
        """Throw the attempt away: nothing appears at the target. Safe to
        call twice or after a failed commit."""
        if self.done:
            return
        self.done = True
        with contextlib.suppress(Exception):
            if self._mode == "direct":  # a device or FIFO: what was written is gone already
                with contextlib.suppress(OSError):
                    self._file.close()
            elif self._mode == "local":
                with contextlib.suppress(OSError):
                    self._file.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.partial)
            elif self._mode == "discard":
                self._file.discard()  # s3fs: abort the multipart upload
                # fsspec's AbstractBufferedFile.close() (also called by __del__)
                # would upload what is buffered: mark the file closed instead
                self._file.closed = True
            else:
                with contextlib.suppress(Exception):
                    self._file.close()
                with contextlib.suppress(FileNotFoundError, OSError):
                    self._fs.rm(self.partial)

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def text_output(target: str, storage_options: dict | None = None, makedirs: bool = True) -> Iterator[TextIO]:
    """A UTF-8 text output (a report, a manifest, an index) that appears at
    ``target`` only when the ``with`` block ends without an exception (as
    :class:`AtomicOutput`: a file via a temporary name and ``rename(2)``, a
    device or FIFO written directly, an object in one upload); ``-`` is
    stdout, flushed at the end.

    :raises OutputError: the output cannot be created or written
    """
    if target == "-":
        try:
            yield sys.stdout
            sys.stdout.flush()
        except BrokenPipeError:
            raise  # the reader has gone: a quiet end, as for samples
        except OSError as exc:
            raise OutputError(f"-: write failed: {exc.strerror or exc}") from None
        return
    with AtomicOutput(target, storage_options, makedirs=makedirs) as out:
        handle = io.TextIOWrapper(_Unclosed(out), encoding="utf-8", write_through=True)
        yield handle
        handle.flush()


class _Unclosed(io.RawIOBase):
    """A writable raw stream over an :class:`AtomicOutput` whose close does
    not close it (its commit or discard does)."""

    def __init__(self, out: AtomicOutput):
        self.out = out

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.out.write(bytes(data))
        return len(data)


def write_bytes_atomic(target: str, data: bytes, storage_options: dict | None = None, makedirs: bool = True) -> None:
    """Write a small file (a completion record) so that readers see either
    the old content or the new, never a part: a local file via a unique
    attempt file and ``rename(2)``, an object with one PUT.

    :raises OutputError:
    """
    with AtomicOutput(target, storage_options, makedirs=makedirs) as out:
        out.write(data)


def abort_stale_uploads(target: str, before: float, storage_options: dict | None = None) -> int:
    """Abort the unfinished S3 multipart uploads to ``target``'s key that
    were started before ``before`` (Unix seconds): attempts of the same task
    that were killed (``kill -9``, a lost pod) before they could abort their
    own. Other stores and errors are ignored (this is cleanup). Returns the
    number aborted."""
    if not target.startswith(("s3://", "s3a://")):
        return 0
    try:
        fs, path = filesystem(target, storage_options)
        bucket, key, _ = fs.split_path(path)
        listing = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
        aborted = 0
        for upload in listing.get("Uploads", []):
            started = upload.get("Initiated")
            if upload.get("Key") != key or started is None or started.timestamp() >= before:
                continue
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            aborted += 1
        return aborted
    except Exception:  # noqa: BLE001 - best effort: any store error leaves the uploads as they are
        return 0
