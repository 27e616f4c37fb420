"""Open inputs and iterate their samples.

An input is ``-`` (stdin), a file path, ``pipe:CMD`` (the command's stdout,
its exit status checked when its output has been read), an ``http(s)://`` URL
(streamed with one GET, no range requests, so a plain ``python -m
http.server`` serves shards; see :class:`HTTPStream`), a URL that fsspec can
open (``s3://``, ``gs://``; extra ``tarproc[cloud]``), or a brace pattern that expands to several of those
(``imagenet_train-{0000..0147}.tgz``, via braceexpand). Compression is
detected from magic bytes (:mod:`tarproc.io.compress`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from typing import BinaryIO
from collections.abc import Callable, Iterable, Iterator, Mapping

import braceexpand

from tarproc import procs
from tarproc.io.compress import decompressing_reader, stream_compression
from tarproc.errors import SourceError, TarprocError, UsageError, Warn
from tarproc.samples import Note, Sample, group_samples
from tarproc.io.storage import filesystem, local_path, url_kind
from tarproc.io.tario import iter_members


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Expand brace patterns (``a-{000..002}.tar``, ``{a,b}.tar``) in order.

    ``pipe:`` inputs are passed through unexpanded, since the braces belong
    to the command.
    """
    out: list[str] = []
    for spec in inputs:
        if "{" not in spec or url_kind(spec) == "pipe":
            out.append(spec)
        else:
            out.extend(braceexpand.braceexpand(spec))
    return out


def read_filelist(path: str, stdin=None) -> list[str]:
    """Read inputs, one per line, from a file or ``-`` (stdin); blank lines
    and lines starting with ``#`` are ignored. :raises SourceError:"""
    if path == "-":
        text = (stdin or sys.stdin).read()
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogateescape")
    else:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read()
        except OSError as exc:
            raise SourceError(f"{path}: cannot open file list: {exc.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def input_urls(urls: Iterable[str], lists: Iterable[str] = (), stdin=None) -> list[str]:
    """The inputs of a run, in order: ``urls`` then each list file's lines
    (:func:`read_filelist`; ``-`` is stdin), brace patterns expanded
    (:func:`expand_inputs`). The one reader of input lists (tarcats' and the
    task tools' ``-T``).

    :raises UsageError: stdin is both an input and a list
    :raises SourceError: a list cannot be read
    """
    specs = expand_inputs(urls)
    for path in lists:
        if path == "-" and "-" in specs:
            raise UsageError("stdin is used both as an input and as the file list")
        specs += expand_inputs(read_filelist(path, stdin))
    return specs


class _PipeSource:
    """The stdout of ``bash -c CMD`` (in its own process group,
    :func:`tarproc.procs.spawn_shell`); :meth:`close` checks its exit status."""

    def __init__(self, command: str):
        self.command = command
        self.stopped = False
        try:
            self.proc = procs.spawn_shell(command, stdout=subprocess.PIPE)
        except OSError as exc:
            raise SourceError(f"pipe:{command}: cannot start: {exc.strerror}") from None
        self.stdout = self.proc.stdout

    def read(self, n: int = -1) -> bytes:
        return self.stdout.read(n)

    def readinto(self, buf) -> int:
        return self.stdout.readinto(buf)

    def close(self, complete: bool = True, grace: float = 0.0) -> int:
        """Wait for the command and return its exit status; raise
        :class:`SourceError` on a non-zero exit if its output was read to the
        end (``complete``). Otherwise a command still running after ``grace``
        seconds is stopped with its children (SIGTERM to its group): we
        stopped reading early, or were interrupted. Calling it again returns
        the same status."""
        self.stdout.close()
        if not complete and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=grace) if grace else None
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is None:
                self.stopped = True
                procs.kill_group(self.proc.pid, signal.SIGTERM)
        status = self.proc.wait()
        # when we stopped reading early the command may die of SIGPIPE
        if complete and status != 0:
            raise SourceError(self.status_message())
        return status

    def failed(self) -> bool:
        """True when the command exited non-zero for a reason other than
        SIGPIPE or our stopping it (we closed the pipe); used after a cut
        or invalid stream, so the command gets a moment to exit by itself."""
        status = self.close(False, grace=2.0)
        return not self.stopped and status != 0 and not procs.died_of_sigpipe(status)

    def status_message(self) -> str:
        return f"pipe:{self.command}: command {procs.describe_status(self.proc.returncode)}"


class _Counting:
    """A raw input whose reads are reported to ``on_read(nbytes)`` (for a
    progress bar in bytes of the input as stored, compressed or not)."""

    def __init__(self, raw, on_read: Callable[[int], None]):
        self.raw = raw
        self.on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.on_read(len(data))
        return data

    def readinto(self, buf) -> int:
        return self._into(buf, "readinto")

    def readinto1(self, buf) -> int:
        return self._into(buf, "readinto1")

    def _into(self, buf, method: str) -> int:
        into = getattr(self.raw, method, None) or getattr(self.raw, "readinto", None)
        if into is not None:
            n = into(buf) or 0
        else:  # a raw input with read() only (HTTPStream)
            data = self.raw.read(len(buf))
            n = len(data)
            buf[:n] = data
        self.on_read(n)
        return n

    def __getattr__(self, name):
        return getattr(self.raw, name)


class _StoreFile:
    """An object store's file (fsspec) whose read errors, whatever their
    class (botocore's, aiohttp's), are a :class:`SourceError` naming the
    input: a network failure mid-stream is one line, not a traceback."""

    def __init__(self, raw, spec: str):
        self.raw = raw
        self.spec = spec

    def read(self, n: int = -1) -> bytes:
        try:
            return self.raw.read(n)
        except Exception as exc:  # noqa: BLE001 - see the class
            raise SourceError(f"{self.spec}: read failed: {exc}") from None

    def readinto(self, buf) -> int:
        try:
            return self.raw.readinto(buf)
        except Exception as exc:  # noqa: BLE001 - see the class
            raise SourceError(f"{self.spec}: read failed: {exc}") from None

    def __getattr__(self, name):
        return getattr(self.raw, name)


def input_size(spec: str) -> int | None:
    """The size in bytes of an input as stored, when known before reading it
    (a local regular file); None otherwise (stdin, ``pipe:``, URLs)."""
    path = local_path(spec)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _expect(on_read, spec: str, size) -> None:
    """Tell a progress meter (an ``on_read`` with an ``expect(spec, size)``
    method) the size of an input known only once it is open (HTTP
    Content-Length, an object store's size)."""
    expect = getattr(on_read, "expect", None)
    if expect is not None and isinstance(size, int):
        expect(spec, size)


def _counted(raw, on_read):
    return raw if on_read is None else _Counting(raw, on_read)


#: connection attempts after the first for an http(s) input, before any byte was passed on
HTTP_RETRIES = 3
#: seconds before the first retry; doubled for each further one
HTTP_RETRY_DELAY = 0.5
#: seconds without data before a connection counts as failed
HTTP_TIMEOUT = 60.0


class HTTPStream:
    """An ``http(s)://`` input read with one GET (RFC 9110), sequentially:
    no range requests, so any server works (``python -m http.server``).

    Connection errors (refused, reset, timeout, a 5xx status, or a body cut
    short: the connection closed before Content-Length bytes came, which
    :mod:`http.client` reports as a plain end of data) are retried up to ``retries`` times, with ``delay`` doubling,
    as long as no byte was passed on to the reader; after that a cut is a
    :class:`SourceError` naming the number of bytes read, since the reader
    has consumed a prefix that a new GET could not resume without a range
    request.

    :param url: the URL
    :param retries: attempts after the first
    :param delay: seconds before the first retry
    :param timeout: seconds without data before a read fails
    :raises SourceError: the URL cannot be fetched (4xx, or still failing
        after the retries), or the connection fails after data was passed on
        (exit status 1, retryable: never a :class:`tarproc.errors.DataError`)
    """

    def __init__(
        self, url: str, retries: int = HTTP_RETRIES, delay: float = HTTP_RETRY_DELAY, timeout: float = HTTP_TIMEOUT
    ):
        self.url = url
        self.retries = retries
        self.delay = delay
        self.timeout = timeout
        self.passed = 0  # bytes passed on to the reader
        self.attempts = 0
        self.response = None
        self.expected: int | None = None  # Content-Length of the body, bytes
        self._connect()

    def _retry(self, why: str) -> None:
        """Sleep before another attempt, or raise when none is left."""
        if self.attempts > self.retries:
            raise SourceError(f"{self.url}: {why} (after {self.attempts} attempts)")
        time.sleep(self.delay * (1 << (self.attempts - 1)))

    def _connect(self) -> None:
        # imported here, not at the top: http.client, urllib.request, ssl and email cost every tool ~20 ms at start
        import http.client
        import urllib.error
        import urllib.request

        from tarproc import __version__

        request = urllib.request.Request(
            self.url, headers={"User-Agent": f"tarproc/{__version__}", "Accept-Encoding": "identity"}
        )
        while True:
            self.attempts += 1
            try:
                self.response = urllib.request.urlopen(request, timeout=self.timeout)
                self.expected = self.length
                return
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code < 500:
                    raise SourceError(f"{self.url}: cannot open: HTTP {exc.code} {exc.reason}") from None
                self._retry(f"HTTP {exc.code} {exc.reason}")
            except urllib.error.URLError as exc:
                self._retry(f"cannot connect: {exc.reason}")
            except (OSError, http.client.HTTPException) as exc:
                self._retry(f"cannot connect: {exc}")

    @property
    def length(self) -> int | None:
        """The body's size from the response's Content-Length, else None."""
        value = self.response.headers.get("Content-Length") if self.response is not None else None
        return int(value) if value is not None and value.isdigit() else None

    def read(self, n: int = -1) -> bytes:
        import http.client  # loaded by _connect already: only a lookup

        while True:
            try:
                data = self.response.read(n) if n is not None and n >= 0 else self.response.read()
            except (OSError, http.client.HTTPException) as exc:
                why = f"connection failed after {self.passed} bytes: {exc or type(exc).__name__}"
            else:
                if data or n == 0 or self.expected is None or self.passed >= self.expected:
                    self.passed += len(data)
                    return data
                why = f"connection closed after {self.passed} of {self.expected} bytes"
            if self.passed:
                raise SourceError(f"{self.url}: {why}") from None
            self.close()
            self._retry(why)
            self._connect()

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None

    def __enter__(self) -> HTTPStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_url(spec: str, storage_options: Mapping | None = None) -> BinaryIO:
    """The one reader of a URL input in the family: its bytes as stored
    (still compressed), read sequentially. ``http(s)://``: one GET
    (:class:`HTTPStream`, any server, a short body is an error); any other
    URL through fsspec (:func:`tarproc.io.storage.filesystem`), its read errors
    a :class:`SourceError` (:class:`_StoreFile`). Close it when done.

    :param storage_options: fsspec options for a URL other than http(s)
    :raises SourceError: it cannot be opened (exit status 1); reads raise
        it too when the connection fails
    """
    if spec.startswith(("http://", "https://")):
        return HTTPStream(spec)
    fs, path = filesystem(spec, storage_options)
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError:
        raise SourceError(f"{spec}: cannot open: no such object") from None
    except Exception as exc:  # noqa: BLE001 - each store raises its own errors (botocore's are not OSError)
        raise SourceError(f"{spec}: cannot open: {exc}") from None
    return _StoreFile(handle, spec)


@contextlib.contextmanager
def open_source(spec: str, on_read: Callable[[int], None] | None = None,
                storage_options: Mapping | None = None) -> Iterator[BinaryIO]:
    """Open one (already expanded) input as a decompressed binary stream.

    :param spec: ``-``, a path, ``pipe:CMD`` or a URL
    :param on_read: called with the number of bytes of each read of the
        input as stored (before decompression), for progress
    :param storage_options: fsspec options for a URL other than http(s)
        (:func:`tarproc.io.storage.filesystem`)
    :raises SourceError: the input cannot be opened, or a ``pipe:`` command
        exits non-zero after its output was read completely, or an
        ``http(s)://`` connection fails (see :class:`HTTPStream`)
    """
    if spec == "-":
        yield decompressing_reader(_counted(sys.stdin.buffer, on_read), "-")
        return
    if url_kind(spec) == "pipe":
        pipe = _PipeSource(spec[5:] if spec.startswith("pipe:") else spec[1:])
        complete = False
        try:
            yield decompressing_reader(_counted(pipe, on_read), spec)
            complete = True
        except TarprocError as exc:
            # a cut or empty stream is best explained by the command's failure
            if pipe.failed():
                message = str(exc).removeprefix(f"{spec}: ")
                raise SourceError(f"{pipe.status_message()} ({message})") from None
            raise
        finally:
            pipe.close(complete)
        return
    if url_kind(spec) == "url":
        handle = open_url(spec, storage_options)
        try:
            _expect(on_read, spec, handle.length if isinstance(handle, HTTPStream) else None)
            yield decompressing_reader(_counted(handle, on_read), spec)
        finally:
            handle.close()
        return
    path = spec[7:] if spec.startswith("file://") else spec
    try:
        handle = open(path, "rb", buffering=0)
    except OSError as exc:
        raise SourceError(f"{spec}: cannot open: {exc.strerror}") from None
    with handle:
        yield decompressing_reader(_counted(handle, on_read), spec)


def iter_source_samples(
    spec: str,
    warn: Warn | None = None,
    strict: bool = False,
    on_read: Callable[[int], None] | None = None,
    *,
    lowercase: bool = False,
    regroup: bool = False,
    note: Note | None = None,
    storage_options: Mapping | None = None,
) -> Iterator[Sample]:
    """Yield the samples of one input; ``"__source__"`` is ``spec``.

    ``lowercase``, ``regroup`` and ``note`` are those of
    :func:`tarproc.samples.group_samples`; ``storage_options`` that of
    :func:`open_source`.

    :raises TarprocError: see :func:`open_source`, :class:`tarproc.io.tario.TarReader`
        and :func:`tarproc.samples.group_samples`; an error raised while
        reading has :attr:`TarprocError.compression` set (whether the
        samples yielded before it were verified)
    """
    with open_source(spec, on_read, storage_options) as stream:
        try:
            yield from group_samples(
                iter_members(stream, spec, warn or _ignore), spec, warn, strict,
                lowercase=lowercase, regroup=regroup, note=note,
            )  # fmt: skip
        except TarprocError as exc:  # say whether what was read before it is verified
            if exc.compression is None:
                exc.compression = stream_compression(stream)
            raise


def iter_samples(
    inputs: Iterable[str],
    warn: Warn | None = None,
    strict: bool = False,
    on_read: Callable[[int], None] | None = None,
    *,
    lowercase: bool = False,
    regroup: bool = False,
    note: Note | None = None,
    storage_options: Mapping | None = None,
) -> Iterator[Sample]:
    """Yield the samples of several inputs one after another.

    Brace patterns are expanded (:func:`expand_inputs`); each input is opened
    only when the previous one is finished. A key that comes back inside one
    input is an error (:func:`tarproc.samples.group_samples`); one repeated
    across inputs is not checked here: a tool merging inputs into one output
    checks it with :class:`tarproc.samples.KeyLedger`.

    >>> from tarproc import iter_samples
    >>> for sample in iter_samples(["shard-{000..009}.tar"]):   # doctest: +SKIP
    ...     print(sample["__key__"], sorted(sample))
    """
    for spec in expand_inputs(inputs):
        yield from iter_source_samples(spec, warn, strict, on_read, lowercase=lowercase, regroup=regroup, note=note,
                                       storage_options=storage_options)


def _ignore(message: str) -> None:
    pass


def check_inputs_exist(specs: Iterable[str]) -> None:
    """Fail early, before any output is written, on local inputs that do not
    exist. :raises SourceError:"""
    for spec in specs:
        path = local_path(spec)
        if path is not None and not os.path.exists(path):
            raise SourceError(f"{spec}: cannot open: No such file or directory")


__all__ = [
    "expand_inputs",
    "input_urls",
    "read_filelist",
    "open_source",
    "HTTPStream",
    "iter_source_samples",
    "iter_samples",
    "check_inputs_exist",
    "input_size",
    "TarprocError",
]
