"""Split a sample stream into shards: name patterns, sizes, post commands.

:class:`ShardWriter` writes samples to a sequence of tar shards, starting a
new shard when the current one holds ``maxcount`` samples or when the next
sample would take it past ``maxsize`` bytes. A sample never straddles two
shards. Each file shard is written through :class:`tarproc.io.sinks.TarSink`
(``NAME.partial``, renamed when complete); a ``pipe:CMD`` pattern streams each
shard into a command. After a shard is complete an optional post command runs
(``gsutil cp {shard} gs://bucket/ && rm {shard}``) while the next shard is
being written, with a bounded number in flight; its exit status is checked.

The layout of the shards follows WebDataset (https://github.com/webdataset/webdataset):
a shard is a tar archive of samples whose members are ``key.field``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import IO
from collections.abc import Callable, Iterable

from tarproc import procs
from tarproc.io.compress import TAR_SUFFIX, compression_for_name, output_compression, split_tar_suffix
from tarproc.errors import OutputError, UsageError, Warn
from tarproc.samples import KeyLedger, Sample, duplicate_message, sample_members
from tarproc.io.sinks import HashingWriter, TarSink, pipe_spelling
from tarproc.io.tario import BLOCK, member_header


#: bytes of the end-of-archive marker (two zero blocks, POSIX ustar)
END_MARKER = 2 * BLOCK



_PRINTF = re.compile(r"%(%|[-0 +#]*[0-9]*d)")
_BRACE = re.compile(r"\{shard(?::([^{}]*))?\}")
#: something that looks like a format placeholder: ``{name}`` or ``{name:spec}``
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)(?::[^{}]*)?\}")


class ShardPattern:
    """Turn a shard number into a shard name.

    Accepted patterns:

    * printf style: ``out-%06d.tar`` (``%%`` is a literal ``%``);
    * format style: ``out-{shard:06d}.tar`` (``{shard}`` alone is ``%d``);
    * ``pipe:CMD`` (or ``|CMD``, the original tarproc's spelling): each shard is streamed into ``bash -c CMD``, with the
      same placeholders substituted in ``CMD`` (``pipe:gsutil cp - gs://b/out-%06d.tar``);
    * a plain prefix: ``out`` -> ``out-000000.tar``; a tar suffix of the prefix
      is kept at the end (``out.tgz`` -> ``out-000000.tgz``), and with
      ``compression="gzip"`` a plain prefix gives ``out-000000.tar.gz``.

    :param pattern: the pattern
    :param compression: the compression that will be used (only changes the
        suffix given to a plain prefix)
    :raises UsageError: an empty pattern, ``-`` (shards cannot go to stdout),
        a bad ``{shard:SPEC}``, and in a file pattern a ``%`` other than
        ``%d``-style or ``%%``, or a placeholder other than ``{shard}``
    """

    def __init__(self, pattern: str, compression: str | None = None):
        pattern = pipe_spelling(pattern)
        if not pattern or pattern == "-":
            raise UsageError("the shard pattern must be a file pattern or pipe:CMD, not stdout")
        self.pattern = pattern
        self.is_pipe = pattern.startswith("pipe:")
        self._kind = "plain"
        if _PRINTF.search(pattern) and any(m.group(1) != "%" for m in _PRINTF.finditer(pattern)):
            self._kind = "printf"
        elif _BRACE.search(pattern):
            self._kind = "brace"
        elif not self.is_pipe:
            if pattern.endswith("/") or os.path.isdir(pattern):  # a directory D: D/000000.tar
                stem, suffix = os.path.join(pattern, ""), ""
            else:
                stem, suffix = split_tar_suffix(pattern)
            suffix = suffix or TAR_SUFFIX[compression or "none"]
            sep = "" if stem.endswith("/") else "-"
            self._plain = (stem + sep, suffix)
        if not self.is_pipe:  # a shell command may hold any % or {...} of its own
            if "%" in _PRINTF.sub("", pattern):
                raise UsageError(
                    f"bad shard pattern {pattern!r}: use %d, %06d (or %% for a literal %), or {{shard:06d}}"
                )
            for match in _PLACEHOLDER.finditer(pattern):
                if match.group(1) != "shard":
                    raise UsageError(
                        f"bad shard pattern {pattern!r}: unknown placeholder {match.group(0)}; use {{shard}} or {{shard:06d}}"
                    )
        try:
            self.name(0)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"bad shard pattern {pattern!r}: {exc}") from None
        if not self.is_pipe:
            output_compression(pattern, compression)  # -z -o 'x-%06d.tar' would write gzip named .tar

    def name(self, index: int) -> str:
        """The name (or ``pipe:CMD``) of shard number ``index``."""
        if self._kind == "printf":
            return _PRINTF.sub(lambda m: "%" if m.group(1) == "%" else ("%" + m.group(1)) % index, self.pattern)
        if self._kind == "brace":
            return _BRACE.sub(lambda m: format(index, m.group(1) or "d"), self.pattern)
        if self.is_pipe:
            return self.pattern
        stem, suffix = self._plain
        return f"{stem}{index:06d}{suffix}"


def sample_tar_size(sample: Sample) -> int:
    """Bytes a sample takes in an uncompressed tar stream written by
    :class:`tarproc.io.tario.TarWriter`: headers (pax headers included) plus
    data padded to 512-byte blocks."""
    total = 0
    for name, data in sample_members(sample):
        size = len(data)
        if len(name) <= 100 and name.isascii() and size < 0o77777777777:
            total += BLOCK
        else:
            total += len(member_header(name, size))
        total += (size + BLOCK - 1) & ~(BLOCK - 1)
    return total


@dataclass
class ShardInfo:
    """A finished shard.

    :ivar index: the shard number
    :ivar name: its file name, or ``pipe:CMD``
    :ivar samples: samples written
    :ivar bytes: bytes of the file as written (compressed size); for a
        ``pipe:`` shard, bytes of the tar stream before any compression
    :ivar sha256: hex SHA-256 of those bytes (only when ``checksum`` was asked)
    """

    index: int
    name: str
    samples: int
    bytes: int
    sha256: str | None = None

    def manifest(self) -> dict:
        """The manifest record: name, samples, bytes, sha256 (and index)."""
        record = asdict(self)
        return {k: record[k] for k in ("name", "samples", "bytes", "sha256", "index")}


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (FIPS 180-4). :raises OSError:"""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            n = handle.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


_POST_FIELDS = re.compile(r"\{(shard|basename|index|abspath|dirname|base|ext)\}")
#: what looks like a placeholder in a post command (not ``${VAR}``)
_POST_LIKE = re.compile(r"(?<![$\\{])\{([A-Za-z_][A-Za-z0-9_]*)\}")
POST_FIELDS = ("shard", "basename", "index", "abspath", "dirname", "base", "ext")


def check_post_command(template: str) -> None:
    """Refuse an unknown ``{placeholder}`` in a post command (``${VAR}`` is
    the shell's and passes).

    :raises UsageError:
    """
    for match in _POST_LIKE.finditer(template):
        if match.group(1) not in POST_FIELDS:
            known = ", ".join(f"{{{f}}}" for f in POST_FIELDS)
            raise UsageError(f"unknown placeholder {match.group(0)} in the post command {template!r} (known: {known})")


def post_command(template: str, info: ShardInfo) -> str:
    """Substitute a finished shard into a post command.

    ``{shard}`` is the shard's path, ``{basename}`` its file name,
    ``{index}`` its number; as the original tarproc's ``tarsplit -C`` also
    ``{abspath}`` (the absolute path), ``{dirname}`` (the directory holding
    it, ``.`` when none; the original gave the basename here), ``{base}`` and
    ``{ext}`` (the basename split at its last dot, :func:`os.path.splitext`:
    ``out-000001`` and ``.tar``). When none of these appear, every
    printf-style ``%s`` is replaced by the path. Substituted values are
    shell-quoted (:func:`shlex.quote`), so names with spaces or quotes are safe.
    """
    basename = os.path.basename(info.name)
    base, ext = os.path.splitext(basename)
    values = {
        "shard": info.name,
        "basename": basename,
        "index": str(info.index),
        "abspath": os.path.abspath(info.name),
        "dirname": os.path.dirname(info.name) or ".",
        "base": base,
        "ext": ext,
    }
    if _POST_FIELDS.search(template):
        return _POST_FIELDS.sub(lambda m: shlex.quote(values[m.group(1)]), template)
    return template.replace("%s", shlex.quote(info.name))


def _stderr_fd() -> int | None:
    """Our stderr's file descriptor (None when stderr is not a real file)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        return None


class ShardWriter:
    """Write samples into a sequence of shards.

    A shard is finished when it holds ``maxcount`` samples, or before a
    sample that would take its uncompressed tar size (end-of-archive marker
    included) past ``maxsize`` bytes; a sample bigger than ``maxsize`` on its
    own gets a shard of its own and a warning. Use as a context manager: on a
    clean exit the last shard is finished and every post command waited for;
    on an error the current shard stays ``NAME.partial`` and no post command
    runs for it.

    :param pattern: a :class:`ShardPattern` or a pattern string
    :param maxcount: samples per shard, or None
    :param maxsize: uncompressed tar bytes per shard, or None
    :param start: number of the first shard
    :param maxshards: stop after this many shards: :meth:`write` returns
        False for samples that would need more
    :param compression: ``none``/``gzip``/... or None to follow each name
    :param mtime: modification time of every member, seconds
    :param post: a shell command run after each finished shard (see
        :func:`post_command`); it also gets ``SHARD``, ``BASENAME`` and
        ``INDEX`` in its environment
    :param post_parallel: post commands allowed to run at once; writing
        waits for the oldest when this many are running
    :param manifest: a text stream that gets one JSON line per finished
        shard (:meth:`ShardInfo.manifest`), in shard order
    :param checksum: compute ``sha256`` for every shard (implied by ``manifest``)
    :param warn: called with a message for every oversized sample, and
        once for the first key that comes back (from another input): the
        shard is then finished before it, so that every shard stays grouped
        (exact for :data:`tarproc.samples.MAX_SEEN_KEYS` keys per shard)
    :param on_shard: called with the :class:`ShardInfo` of every finished shard
    :param on_post_error: called with the shard and a message when a post
        command fails; the failure is also kept in :attr:`failures`
    :param storage_options: fsspec options for URL shards
        (:func:`tarproc.io.storage.filesystem`)
    :raises UsageError: neither or a non-positive ``maxcount``/``maxsize``
    :raises OutputError: a shard cannot be written, or a ``pipe:`` command fails
    """

    def __init__(
        self,
        pattern: ShardPattern | str,
        maxcount: int | None = None,
        maxsize: int | None = None,
        start: int = 0,
        maxshards: int | None = None,
        compression: str | None = None,
        mtime: int = 0,
        post: str | None = None,
        post_parallel: int = 2,
        manifest: IO[str] | None = None,
        checksum: bool = False,
        warn: Warn | None = None,
        on_shard: Callable[[ShardInfo], None] | None = None,
        on_post_error: Callable[[ShardInfo, str], None] | None = None,
        storage_options: dict | None = None,
    ):
        if maxcount is not None and maxcount <= 0:
            raise UsageError("maxcount must be positive")
        if maxsize is not None and maxsize <= 0:
            raise UsageError("maxsize must be positive")
        if post_parallel < 1:
            raise UsageError("post_parallel must be at least 1")
        if post is not None:
            check_post_command(post)
        self.pattern = pattern if isinstance(pattern, ShardPattern) else ShardPattern(pattern, compression)
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.index = start
        self.maxshards = maxshards
        self.compression = compression
        self.mtime = mtime
        self.post = post
        self.post_parallel = post_parallel
        self.manifest = manifest
        self.checksum = checksum or manifest is not None
        self.warn = warn
        self.on_shard = on_shard
        self.on_post_error = on_post_error
        self.storage_options = storage_options
        #: finished shards, in order
        self.shards: list[ShardInfo] = []
        #: (shard, message) of every failed post command
        self.failures: list[tuple[ShardInfo, str]] = []
        #: True once ``maxshards`` shards are finished and a sample was refused
        self.full = False
        #: key of the first sample refused because ``maxshards`` was reached
        self.refused: str | None = None
        self.samples = 0
        #: samples whose key was already in their shard (each started a new shard)
        self.repeated = 0
        self._keys = KeyLedger()
        self._sink: TarSink | None = None
        self._hasher: HashingWriter | None = None
        self._running: list[tuple[ShardInfo, subprocess.Popen]] = []

    # ------------------------------------------------------------ writing
    def write(self, sample: Sample) -> bool:
        """Write one sample, starting a new shard first if needed.

        :returns: False (and writes nothing) when ``maxshards`` shards are
            already finished
        """
        if self.full:
            return False
        size = sample_tar_size(sample) if self.maxsize is not None else 0
        sink = self._sink
        if sink is not None and self.maxsize is not None and sink.writer.bytes_written + size + END_MARKER > self.maxsize:
            self._finish()
            sink = None
        key = sample["__key__"]
        source = str(sample.get("__source__", "-"))
        if sink is not None:
            first = self._keys.first_source(key)
            if first is not None:
                # in the same shard it would make it ungrouped (or repeat fields)
                self.repeated += 1
                if self.repeated == 1 and self.warn is not None:
                    self.warn(
                        f"{duplicate_message(key, first, source)}: shard {sink.target} is finished before it,"
                        " so every shard stays grouped (further repeated keys are not reported)"
                    )
                self._finish()
                sink = None
        if sink is None:
            if self.maxshards is not None and len(self.shards) >= self.maxshards:
                self.full = True
                self.refused = sample["__key__"]
                return False
            sink = self._open()
        self._keys.add(key, source)
        if self.maxsize is not None and size + END_MARKER > self.maxsize and self.warn is not None:
            self.warn(
                f"sample {sample['__key__']!r} takes {size + END_MARKER} bytes, more than the shard size"
                f" limit of {self.maxsize}: it gets a shard of its own ({self.pattern.name(self.index)})"
            )
        sink.write(sample)
        self.samples += 1
        if self.maxcount is not None and sink.samples >= self.maxcount:
            self._finish()  # complete now: its post command can start at once
        return True

    def write_all(self, samples: Iterable[Sample]) -> int:
        """Write samples until they end or ``maxshards`` is reached.

        :returns: the number of samples written
        """
        before = self.samples
        for sample in samples:
            if not self.write(sample):
                break
        return self.samples - before

    def _open(self) -> TarSink:
        name = self.pattern.name(self.index)
        compression = self.compression
        if compression is None:
            compression = "none" if self.pattern.is_pipe else compression_for_name(name)
        sink = TarSink(name, compression, self.mtime, storage_options=self.storage_options)
        self._keys = KeyLedger()
        self._hasher = None
        if self.checksum and self.pattern.is_pipe:
            # there is no file to read back: hash the stream as it is written
            self._hasher = HashingWriter(sink.writer.stream)
            sink.writer.stream = self._hasher
        self._sink = sink
        return sink

    def _finish(self) -> None:
        sink = self._sink
        assert sink is not None
        self._sink = None
        sink.close()
        name = sink.target
        if sink.path is not None:
            try:
                size = os.path.getsize(sink.path)
                digest = file_sha256(sink.path) if self.checksum else None
            except OSError as exc:
                raise OutputError(f"{sink.path}: cannot read back: {exc.strerror}") from None
        else:
            hasher = self._hasher
            size = hasher.bytes if hasher is not None else sink.bytes_written
            digest = hasher.hexdigest("sha256") if hasher is not None else None
        info = ShardInfo(self.index, name, sink.samples, size, digest)
        self.index += 1
        self.shards.append(info)
        if self.manifest is not None:
            self.manifest.write(json.dumps(info.manifest()) + "\n")
            self.manifest.flush()
        if self.on_shard is not None:
            self.on_shard(info)
        if self.post:
            self._start_post(info)

    # ------------------------------------------------------- post commands
    def _start_post(self, info: ShardInfo) -> None:
        self._reap(block=False)
        while len(self._running) >= self.post_parallel:
            self._reap(block=True)
        command = post_command(self.post, info)
        env = dict(os.environ, SHARD=info.name, BASENAME=os.path.basename(info.name), INDEX=str(info.index))
        try:
            # its own process group, so that an interrupt kills the command's children too
            # the command's stdout goes to our stderr: our stdout may carry --manifest - or tar bytes
            proc = procs.spawn_shell(command, stdout=_stderr_fd(), env=env)
        except OSError as exc:
            self._failed(info, f"post command cannot start: {exc.strerror}")
            return
        self._running.append((info, proc))

    def _reap(self, block: bool) -> None:
        """Collect finished post commands; with ``block``, wait for the oldest."""
        if block and self._running:
            info, proc = self._running[0]
            status = proc.wait()  # still listed while waiting: an interrupt here must kill it
            self._running.pop(0)
            self._check(info, status)
        still = []
        for info, proc in self._running:
            status = proc.poll()
            if status is None:
                still.append((info, proc))
            else:
                self._check(info, status)
        self._running = still

    def _check(self, info: ShardInfo, status: int) -> None:
        if status != 0:
            self._failed(info, f"post command {procs.describe_status(status)}")

    def _failed(self, info: ShardInfo, message: str) -> None:
        self.failures.append((info, message))
        if self.on_post_error is not None:
            self.on_post_error(info, message)

    def wait_posts(self) -> None:
        """Wait for every running post command and check its status."""
        while self._running:
            self._reap(block=True)

    def kill_posts(self) -> None:
        """Kill running post commands and their children (on interrupt)."""
        for _, proc in self._running:
            if proc.poll() is None:
                procs.kill_group(proc.pid)
        for _, proc in self._running:
            proc.wait()
        self._running = []

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        """Finish the current shard and wait for every post command; on an
        error or interrupt meanwhile, :meth:`abort` (post commands killed on
        an interrupt)."""
        try:
            if self._sink is not None:
                self._finish()
            self.wait_posts()
        except BaseException as exc:
            self.abort(interrupted=not isinstance(exc, Exception))
            raise

    def abort(self, interrupted: bool = False) -> None:
        """Leave the current shard as ``NAME.partial``; wait for the post
        commands of finished shards (kill them when ``interrupted``)."""
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        if interrupted:
            self.kill_posts()
        else:
            self.wait_posts()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(interrupted=not issubclass(exc_type, Exception))


def split_samples(samples: Iterable[Sample], pattern: str, **options) -> list[ShardInfo]:
    """Write ``samples`` into shards with a :class:`ShardWriter` (same
    keyword options) and return the finished shards."""
    with ShardWriter(pattern, **options) as writer:
        writer.write_all(samples)
    return writer.shards


def open_manifest(path: str) -> IO[str]:
    """Open a manifest output: ``-`` is stdout. :raises OutputError:"""
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot create: {exc.strerror}") from None


__all__ = [
    "ShardInfo",
    "ShardPattern",
    "ShardWriter",
    "file_sha256",
    "open_manifest",
    "post_command",
    "sample_tar_size",
    "split_samples",
]
