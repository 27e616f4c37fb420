"""Verify and index a dataset of shards (the library of ``tarcheck``).

:func:`check_shard` reads one shard with the strict reader
(:class:`tarproc.io.tario.TarReader`, :func:`tarproc.samples.group_samples`)
to its end and returns a :class:`ShardReport`: its status (``ok``, ``bad``:
the data is bad; ``error``: it could not be read), samples, bytes, first and
last key, and every problem found, each with its kind, the byte offset in
the (decompressed) tar stream of the sample or fault, the key and a message.
It goes on after the faults it can go on after (an ungrouped key, a missing
field, a field that does not decode, a member without a key) and stops at
those that end the stream (a cut, a bad header, a corrupt compressed
stream, a field repeated in a sample).

:func:`check_dataset` runs it over many shards on an engine of
:func:`tarproc.jobs.engines.run.run_all` (a :class:`ProcessPool` of ``jobs`` processes, or
Dask), then checks that no key is repeated across shards: every shard
returns its keys, which go into a SQLite table in a temporary directory (on
disk, so memory stays bounded whatever the dataset's size); a key found in
an earlier shard (input order) is a ``duplicate_key`` problem of the later
one.

Problem kinds: ``truncated`` (the stream ends early: cut tar, truncated
compressed stream, empty input), ``corrupt`` (bad header, checksum, size,
garbage after the end marker, corrupt compressed data), ``malformed`` (a
field repeated in a sample), ``ungrouped`` (a key that comes back after
other keys), ``skipped_member`` (a member without a key, a link or device:
readers skip it), ``missing_field``, ``decode``, ``duplicate_key``, ``io``
(the shard could not be opened or read: status ``error``, retryable).

Repair (``repair_dir``): where a fix loses nothing silently a fixed copy is
written to ``repair_dir`` under the shard's basename: a shard whose only
problem is ``truncated`` is cut at its last complete sample (the partial
sample after it is named in the report; one cut before any sample is
complete gets no copy, the report says so); a shard whose only problem is
``ungrouped`` is grouped by key (:func:`tarproc.ops.sort.group_by_key`, what
``tarsort`` does). The copy has the family's deterministic headers
(mtime 0), the members' names and bytes of the complete samples, and
appears atomically (``NAME.partial``, then renamed).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import os
import posixpath
import re
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from tarproc.errors import (
    ArchiveError,
    CompressionError,
    SampleError,
    SourceError,
    TarprocError,
    TruncatedError,
    UsageError,
)
from tarproc import guard
from tarproc.samples import JSON_EXTENSIONS, TEXT_EXTENSIONS, field_extension, group_samples
from tarproc.io.compress import MAGIC_LEN, detect
from tarproc.io.sources import open_source
from tarproc.io.storage import is_url, local_path
from tarproc.io.tario import TarReader

#: problem kinds that make a shard ``bad`` (every kind but ``io``)
DATA_KINDS = ("truncated", "corrupt", "malformed", "ungrouped", "skipped_member", "missing_field", "decode",
              "duplicate_key")
#: problems listed per shard; more are counted in ``ShardReport.more_problems``
MAX_PROBLEMS = 100

#: field extensions (the last part of the field name) :func:`decode_problem` decodes with Pillow
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm"})


def check_decodable(fields: Iterable[str]) -> tuple[str, ...]:
    """The ``decode`` fields, checked to be of a kind :func:`decode_problem` knows.

    :raises UsageError: a field whose extension is not an image, text or JSON one
    """
    known = IMAGE_EXTENSIONS | TEXT_EXTENSIONS | JSON_EXTENSIONS
    out = []
    for field in fields:
        if field_extension(field) not in known:
            raise UsageError(f"cannot decode field {field!r}: known kinds are images ({', '.join(sorted(IMAGE_EXTENSIONS))}),"
                             f" text ({', '.join(sorted(TEXT_EXTENSIONS))}) and JSON (json)", topic="decode")
        out.append(field)
    return tuple(out)


def decode_problem(field: str, data: bytes) -> str | None:
    """Why ``data`` of ``field`` does not decode, or None when it does.

    Images are opened and fully decoded with Pillow (``Image.open(...).load()``,
    with ``LOAD_TRUNCATED_IMAGES`` off, so a truncated JPEG fails); text must be
    UTF-8; JSON must parse (RFC 8259, UTF-8).
    """
    ext = field_extension(field)
    if ext in IMAGE_EXTENSIONS:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad data
            return f"{type(exc).__name__}: {exc}"
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc}"
    if ext in JSON_EXTENSIONS:
        try:
            json.loads(text)
        except ValueError as exc:
            return f"not JSON: {exc}"
    return None


def parse_require(specs: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """``--require`` specs: fields separated by spaces, alternatives by ``,``
    (``'jpg,png cls'``: cls, and jpg or png).

    :raises UsageError: an empty spec or an empty alternative
    """
    rules = []
    for spec in specs:
        for token in spec.split():
            alternatives = tuple(token.split(","))
            if not all(alternatives):
                raise UsageError(f"bad required field {token!r}: expected FIELD or A,B (alternatives)")
            rules.append(alternatives)
    if not rules and list(specs):
        raise UsageError("empty list of required fields")
    return tuple(rules)


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """What :func:`check_shard` checks besides the reader's rules.

    :ivar require: fields every sample must have: each rule a tuple of
        alternatives (:func:`parse_require`)
    :ivar decode: fields that must decode when present (:func:`decode_problem`)
    :ivar lowercase: lowercase field names (``--lowercase-fields``)
    :ivar storage_options: fsspec options for URL inputs and ``repair_dir``
    :ivar repair_dir: where fixed copies are written (None: no repair)
    :ivar max_problems: problems listed per shard (the rest are counted)
    """

    require: tuple[tuple[str, ...], ...] = ()
    decode: tuple[str, ...] = ()
    lowercase: bool = False
    storage_options: Mapping | None = None
    repair_dir: str | None = None
    max_problems: int = MAX_PROBLEMS


@dataclasses.dataclass
class ShardReport:
    """One shard's result (one line of the JSON-lines report, :meth:`line`).

    :ivar index: position in the input list (0-based)
    :ivar shard: the input as given
    :ivar status: ``ok``, ``bad`` (bad data) or ``error`` (could not be read)
    :ivar samples: complete samples read (distinct keys)
    :ivar bytes: bytes of the shard as stored (compressed when it is)
    :ivar problems: dicts ``kind``, ``offset`` (byte offset in the tar stream,
        or None), ``key`` (or None), ``message``
    :ivar more_problems: problems beyond ``max_problems``, counted only
    :ivar keys: ``(key, offset)`` of every sample, in stream order, for the
        dataset-wide check (dropped once used)
    :ivar repair: what ``repair_dir`` received (``output``, ``samples``,
        ``bytes``, ``action``), or None
    """

    index: int
    shard: str
    status: str = "ok"
    samples: int = 0
    bytes: int = 0
    first_key: str | None = None
    last_key: str | None = None
    problems: list = dataclasses.field(default_factory=list)
    more_problems: int = 0
    keys: list | None = None
    repair: dict | None = None
    max_problems: int = MAX_PROBLEMS

    @property
    def ok(self) -> bool:
        """False only when the shard could not be read (a retry may help)."""
        return self.status != "error"

    def add(self, kind: str, offset: int | None, key: str | None, message: str) -> None:
        """Record a problem; the status becomes ``bad`` (``error`` for ``io``)."""
        if kind == "io":
            self.status = "error"
        elif self.status == "ok":
            self.status = "bad"
        if len(self.problems) < self.max_problems:
            self.problems.append({"kind": kind, "offset": offset, "key": key, "message": message})
        else:
            self.more_problems += 1

    def kinds(self) -> set[str]:
        return {p["kind"] for p in self.problems}

    def line(self) -> dict:
        """The report line: shard, status, samples, bytes, first_key,
        last_key, problems (and more_problems, repair when there are)."""
        out = {"shard": self.shard, "status": self.status, "samples": self.samples, "bytes": self.bytes,
               "first_key": self.first_key, "last_key": self.last_key, "problems": self.problems}
        if self.more_problems:
            out["more_problems"] = self.more_problems
        if self.repair is not None:
            out["repair"] = self.repair
        return out


_OFFSET = re.compile(r"at offset (\d+)")


def _fault_offset(message: str, fallback: int | None) -> int | None:
    found = _OFFSET.search(message)
    return int(found.group(1)) if found else fallback


def _strip_source(message: str, spec: str) -> str:
    return message[len(spec) + 2:] if message.startswith(spec + ": ") else message


class _SkimReader(TarReader):
    """The strict reader over a local uncompressed file that seeks over the
    members' data instead of reading it (the members' ``data`` is ``b""``):
    every header, checksum, size and the end marker are checked as by
    :class:`TarReader`, a size beyond the file's end is the same cut, at
    the same offset; the cost is that of ``tar tf``. For checks that need
    no field's bytes."""

    def __init__(self, raw, source: str, warn, size: int):
        super().__init__(raw, source, warn)
        self._seek = raw.seek
        self._size = size

    def _read_exact(self, n: int, what: str, start: int) -> bytes:
        if what != "data":
            return super()._read_exact(n, what, start)
        end = self.offset + n
        if end > self._size:
            raise TruncatedError(f"{self.source}: stream is cut inside {what} at offset {self._size}"
                                 f" (member header at offset {start})")
        self._seek(end)
        self.offset = end
        return b""


@contextlib.contextmanager
def _open_members(spec: str, options: CheckOptions, on_read, warn):
    """A :class:`TarReader` over ``spec``: a :class:`_SkimReader` when
    ``spec`` is a local uncompressed file and no field must decode (the
    bytes as stored go to ``on_read`` at the end), else the reader over
    :func:`tarproc.io.sources.open_source`."""
    path = local_path(spec)
    if path is not None and not options.decode:
        try:
            raw = open(path, "rb", buffering=0)
        except OSError as exc:
            raise SourceError(f"{spec}: cannot open: {exc.strerror}") from None
        with raw:
            size = os.fstat(raw.fileno()).st_size
            if stat.S_ISREG(os.fstat(raw.fileno()).st_mode) and detect(raw.read(MAGIC_LEN)) == "none":
                raw.seek(0)
                try:
                    yield _SkimReader(raw, spec, warn, size)
                finally:
                    on_read(size)
                return
        # compressed, or not a regular file: read it all
    with open_source(spec, on_read, options.storage_options) as stream:
        yield TarReader(stream, spec, warn)


def _fragment(report: ShardReport, key: str, sample: dict, first: int, fieldsets: dict) -> None:
    """A key that comes back after other keys: ``ungrouped``, and ``malformed``
    for each field its earlier fragments already have."""
    offset = sample["__offset__"]
    report.add("ungrouped", offset, key,
               f"key {key!r} comes back after other keys (first at offset {first}):"
               " the shard is not grouped by key (tarsort groups it)")
    have = fieldsets[key]
    for name in sample:
        if not name.startswith("__") and name in have:
            report.add("malformed", offset, key, f"field {name!r} of sample {key!r} is repeated")
    fieldsets[key] = have + tuple(sample)


def _stream_problem(report: ShardReport, exc: TarprocError, spec: str, offset: int | None, last_key: str | None) -> None:
    """The problem that ended the stream: ``truncated``, ``corrupt``,
    ``malformed`` (bad data) or ``io`` (the shard could not be read)."""
    message = _strip_source(str(exc), spec)
    if isinstance(exc, CompressionError):
        report.add("truncated" if "is truncated" in message else "corrupt", offset, last_key, message)
    elif isinstance(exc, SourceError):
        report.add("io", offset, last_key, message)
    else:
        kind = "truncated" if isinstance(exc, TruncatedError) else "corrupt" if isinstance(exc, ArchiveError) else "malformed"
        report.add(kind, _fault_offset(message, offset), last_key, message)


def check_shard(index: int, spec: str, options: CheckOptions = CheckOptions()) -> ShardReport:
    """Check one shard (see the module docs) and repair it when asked.

    Never raises for bad data or a shard that cannot be read: they are in
    the report (``bad``, ``error``).

    :param index: the shard's position in the input list
    :param spec: a path, URL (fsspec, http) or ``-``
    :raises UsageError: (repair) an output that cannot be named
    """
    report = ShardReport(index, spec, max_problems=options.max_problems)
    read = [0]

    def on_read(n: int) -> None:
        read[0] += n

    def warn(message: str) -> None:  # the reader's and group_samples' messages name the member's offset
        message = _strip_source(message, spec)
        report.add("skipped_member", _fault_offset(message, None), None, message)

    seen: dict[str, int] = {}  # key -> offset of its first member, in stream order
    fieldsets: dict[str, tuple] = {}  # key -> the entries of its sample (its first fragment's, then all)
    reader = None
    require, decode = options.require, set(options.decode)
    try:
        with _open_members(spec, options, on_read, warn) as reader:
            for sample in group_samples(reader, spec, warn, False, lowercase=options.lowercase, regroup=True,
                                        offsets=True):
                key = sample["__key__"]
                if key in seen:
                    _fragment(report, key, sample, seen[key], fieldsets)
                else:
                    seen[key] = sample["__offset__"]
                    fieldsets[key] = tuple(sample)
                if decode:
                    for name in [f for f in sample if f in decode]:
                        why = decode_problem(name, sample[name])
                        if why is not None:
                            report.add("decode", sample["__offset__"], key,
                                       f"field {name!r} of sample {key!r} does not decode: {why}")
    except (ArchiveError, CompressionError, SampleError, SourceError) as exc:
        _stream_problem(report, exc, spec, reader.offset if reader else None, next(reversed(seen), None))
    except OSError as exc:
        report.add("io", reader.offset if reader else None, next(reversed(seen), None), f"cannot read: {exc}")
    report.bytes = read[0]
    report.samples = len(seen)
    if seen:
        report.first_key, report.last_key = next(iter(seen)), next(reversed(seen))
    if require:
        for key, entries in fieldsets.items():
            names = {f for f in entries if not f.startswith("__")}
            for alternatives in require:
                if not names.intersection(alternatives):
                    wanted = " or ".join(repr(a) for a in alternatives)
                    report.add("missing_field", seen[key], key,
                               f"sample {key!r} has no field {wanted} (it has {', '.join(sorted(names)) or 'none'})")
    report.keys = list(seen.items())
    if options.repair_dir is not None and report.status == "bad":
        report.repair = repair_shard(spec, report, options)
    return report


def repair_target(spec: str, repair_dir: str) -> str:
    """Where the fixed copy of ``spec`` goes: ``repair_dir`` / its basename."""
    name = posixpath.basename(spec.rstrip("/").split("?", 1)[0]) or "stdin.tar"
    if spec == "-":
        name = "stdin.tar"
    join = posixpath.join if is_url(repair_dir) else os.path.join
    return join(repair_dir, name)


def _until_cut(samples: Iterator) -> Iterator:
    """The complete samples before a fault that ends the stream."""
    try:
        yield from samples
    except (TruncatedError, CompressionError):
        return


def repair_shard(spec: str, report: ShardReport, options: CheckOptions) -> dict | None:
    """Write a fixed copy of a ``bad`` shard when its only problem kind is
    ``truncated`` (cut at the last complete sample) or ``ungrouped``
    (grouped by key); returns the report's ``repair`` entry, or None when
    nothing can be fixed without losing data silently (or the shard
    changed since it was checked: then ``error`` says so). A shard cut
    before its first sample is complete gets no copy: its entry has
    ``output`` None and says why in ``action``.

    :raises OutputError: the copy cannot be written
    """
    kinds = report.kinds()
    if report.more_problems or kinds not in ({"truncated"}, {"ungrouped"}) or spec == "-":
        return None
    if report.samples == 0:  # cut before its first sample was complete: a copy would be an empty archive
        return {"output": None, "samples": 0, "bytes": 0,
                "action": f"none: the stream is cut at offset {report.problems[0]['offset']} before any sample is"
                          " complete; no copy written (an empty archive would look like a complete shard)"}
    from tarproc.io.sinks import open_sink
    from tarproc.io.sources import iter_source_samples

    target = repair_target(spec, options.repair_dir)
    samples = iter_source_samples(spec, None, False, lowercase=options.lowercase, regroup=True,
                                  storage_options=options.storage_options)
    if kinds == {"truncated"}:
        samples = _until_cut(samples)
        cut = report.problems[0]
        action = (f"cut after the last complete sample {report.last_key!r}: the partial sample at offset"
                  f" {cut['offset']} and everything after it dropped")
    else:
        from tarproc.ops.sort import group_by_key

        samples = group_by_key(samples)
        action = "grouped by key (as tarsort does): every member kept"
    if not is_url(target):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    try:
        with open_sink(target, storage_options=options.storage_options) as sink:
            for sample in samples:
                sink.write(sample)
    except TarprocError as exc:
        return {"output": None, "error": _strip_source(str(exc), spec)}
    if sink.samples != report.samples:
        return {"output": target, "samples": sink.samples, "bytes": sink.bytes_written, "action": action,
                "error": f"the copy has {sink.samples} samples, the check found {report.samples}"}
    return {"output": target, "samples": sink.samples, "bytes": sink.bytes_written, "action": action}


class KeyIndex:
    """Every key of the dataset with its shard, in a SQLite table on disk
    (a temporary directory, removed by :meth:`close`), to find keys repeated
    across shards with bounded memory.

    :param tmpdir: where the temporary directory goes (None: the system's)
    """

    def __init__(self, tmpdir: str | None = None):
        self._dir = tempfile.TemporaryDirectory(prefix="tarcheck-", dir=tmpdir)
        self.db = sqlite3.connect(os.path.join(self._dir.name, "keys.sqlite"))
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE keys (key TEXT NOT NULL, shard INTEGER NOT NULL, offset INTEGER)")

    def add(self, shard: int, keys: Iterable[tuple[str, int | None]]) -> None:
        """Record the ``(key, offset)`` pairs of shard ``shard`` (its index)."""
        # the shard index as a literal: the pairs go to SQLite as they are, no tuple made per key here
        self.db.executemany(f"INSERT INTO keys (key, offset, shard) VALUES (?, ?, {int(shard)})", keys)

    def duplicates(self) -> Iterator[tuple[str, int, int | None, int, int | None]]:
        """``(key, shard, offset, first_shard, first_offset)`` for every
        occurrence of a key after its first (lowest shard index), by key."""
        self.db.execute("CREATE INDEX keys_key ON keys (key, shard)")
        rows = self.db.execute(
            "SELECT key, shard, offset FROM keys WHERE key IN"
            " (SELECT key FROM keys GROUP BY key HAVING count(*) > 1) ORDER BY key, shard, rowid")
        first = None
        for key, shard, offset in rows:
            if first is None or first[0] != key:
                first = (key, shard, offset)
                continue
            yield key, shard, offset, first[1], first[2]

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()


@dataclasses.dataclass
class DatasetReport:
    """What :func:`check_dataset` found: ``shards`` (a :class:`ShardReport`
    per input, in input order; None for one never run) and the totals."""

    shards: list
    duplicates: int = 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.shards if r is not None and r.status == status)

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.shards if r is not None)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.shards if r is not None)

    @property
    def exit_status(self) -> int:
        """1 when a shard could not be read (the check is incomplete, a
        retry may help), else 3 when the data is bad, else 0."""
        if any(r is None or r.status == "error" for r in self.shards):
            return 1
        return 3 if self.count("bad") else 0


class _Future:
    """A task of a :class:`ProcessPool`: ``done``, then ``value`` or ``error``."""

    __slots__ = ("done", "value", "error")

    def __init__(self):
        self.done = False
        self.value = None
        self.error: BaseException | None = None


def _send(fd: int, payload: bytes) -> None:
    """Write one message (its length, 8 bytes little-endian, then ``payload``)."""
    view = memoryview(len(payload).to_bytes(8, "little") + payload)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int) -> bytes | None:
    """Read one message of :func:`_send`; None at the end of the pipe.

    :raises EOFError: the pipe ends inside a message (the writer died)
    """
    size = None
    want, parts, got = 8, [], 0
    while True:
        while got < want:
            chunk = os.read(fd, min(want - got, 1 << 20))
            if not chunk:
                if size is None and got == 0:
                    return None
                raise EOFError("the pipe ends inside a message")
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        if size is not None:
            return data
        size = int.from_bytes(data, "little")
        want, parts, got = size, [], 0


def _serve(task_fd: int, result_fd: int) -> None:
    """A worker's loop: run each task ``(fn, args)`` read from ``task_fd``,
    write ``(True, result)`` or ``(False, exception)`` to ``result_fd``,
    until ``task_fd`` ends."""
    import pickle

    while True:
        data = _receive(task_fd)
        if data is None:
            return
        fn, args = pickle.loads(data)
        try:
            out = (True, fn(*args))
        except Exception as exc:  # noqa: BLE001 - raised again in the parent, by outcome()
            out = (False, exc)
        try:
            payload = pickle.dumps(out, pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its class and message
            payload = pickle.dumps((False, TarprocError(f"{type(out[1]).__name__}: {out[1]}")), pickle.HIGHEST_PROTOCOL)
        _send(result_fd, payload)


@dataclasses.dataclass
class _Worker:
    pid: int
    task_fd: int  # the parent's end of the pipe of tasks
    result_fd: int  # the parent's end of the pipe of results


def _fork_worker(others: list) -> _Worker:
    """A worker process forked from this one (its signals are held: see
    :func:`tarproc.guard.held_while_forking`); ``others``: the workers
    forked before, whose pipe ends it closes."""
    task_r, task_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: it ends here, whatever happens (no finalizer of the parent's runs)
        status = 0
        try:
            os.close(task_w)
            os.close(result_r)
            for other in others:
                os.close(other.task_fd)
                os.close(other.result_fd)
            guard.enter_reader()  # SIGINT ignored: the parent handles it and stops us
            _serve(task_r, result_w)
        except BaseException:  # noqa: BLE001 - a worker that fails says why on stderr and ends
            import traceback

            status = 1
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(task_r)
    os.close(result_w)
    return _Worker(pid, task_w, result_r)


class ProcessPool:
    """``jobs`` tasks at once in worker processes forked from this one
    (``fork(2)``: a worker imports nothing again and starts in about a
    millisecond), for CPU-bound tasks in Python
    (:mod:`tarproc.jobs.engines.local` runs threads, for tasks whose work is
    done by child processes); an engine (:class:`tarproc.jobs.engines.Engine`)
    that is no option of its own. Each worker reads tasks from a pipe and
    writes results to another (pickled, one message each); a task waits
    here until a worker is idle. Workers ignore SIGINT (the parent handles
    it and stops them with SIGTERM).

    :raises UsageError: ``jobs`` < 1
    """

    name = "processes"
    label = "local process"
    shares_filesystem = True
    in_process = False

    def __init__(self, jobs: int):
        if jobs < 1:
            raise UsageError(f"a process pool runs at least 1 task at once, not {jobs}")
        self.jobs = jobs
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._waiting: collections.deque = collections.deque()  # (future, task message) not handed out yet
        self._busy: dict[int, tuple[_Worker, _Future]] = {}  # result fd -> its worker and task

    def start(self) -> None:
        """Fork the workers. The objects made so far are frozen meanwhile
        (:func:`gc.freeze`), so a worker's garbage collections never touch
        them: their pages stay shared instead of being copied into each worker."""
        import gc

        gc.freeze()
        try:
            with guard.held_while_forking():  # a Ctrl-C or SIGTERM meanwhile acts once all are started
                while len(self._workers) < self.jobs:
                    self._workers.append(_fork_worker(self._workers))
        finally:
            gc.unfreeze()
        self._idle = list(self._workers)

    @property
    def window(self) -> int:
        return 2 * self.jobs

    def submit(self, fn: Callable, *args) -> _Future:
        import pickle

        future = _Future()
        self._waiting.append((future, pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)))
        self._hand_out()
        return future

    def _hand_out(self) -> None:
        while self._idle and self._waiting:
            worker = self._idle.pop()
            future, message = self._waiting.popleft()
            self._busy[worker.result_fd] = (worker, future)
            _send(worker.task_fd, message)

    def wait_any(self, futures: set) -> set:
        import pickle
        import select

        while True:
            done = {f for f in futures if f.done}
            if done or not self._busy:
                return done
            ready, _, _ = select.select(list(self._busy), [], [])
            for fd in ready:
                worker, future = self._busy.pop(fd)
                future.done = True
                try:
                    message = _receive(fd)
                except EOFError:
                    message = None
                if message is None:
                    future.error = TarprocError(f"a worker process died while running a task ({self._reap(worker)})")
                    continue
                ok, value = pickle.loads(message)
                if ok:
                    future.value = value
                else:
                    future.error = value
                self._idle.append(worker)
            self._hand_out()

    def _reap(self, worker: _Worker) -> str:
        """Wait for a dead worker; how it ended, in words."""
        self._workers.remove(worker)
        os.close(worker.task_fd)
        os.close(worker.result_fd)
        _, status = os.waitpid(worker.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def outcome(self, future: _Future):
        if future.error is not None:
            raise future.error
        return future.value

    def close(self, cancel: bool = False) -> None:
        """Stop the workers: at once (SIGTERM) when ``cancel`` (and those
        still running a task), else once their task pipe ends."""
        import signal

        for worker in self._workers:
            if cancel or worker.result_fd in self._busy:  # a busy worker could block writing its result
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
            os.close(worker.task_fd)
        for worker in self._workers:
            os.waitpid(worker.pid, 0)
            os.close(worker.result_fd)
        self._workers = self._idle = []
        self._busy = {}
        self._waiting.clear()


def _check_item(item: tuple[int, str], options: CheckOptions) -> ShardReport:
    return check_shard(item[0], item[1], options)


def check_dataset(specs: Sequence[str], options: CheckOptions = CheckOptions(), pool=None,
                  on_shard: Callable[[ShardReport], None] | None = None, tmpdir: str | None = None) -> DatasetReport:
    """Check every shard of ``specs`` on ``pool`` (default: this process,
    one at a time), then the keys across shards; returns the
    :class:`DatasetReport` with a :class:`ShardReport` per input, in input order.

    :param pool: an engine (:class:`tarproc.jobs.engines.Engine`: local
        threads, Dask) or a :class:`ProcessPool`
    :param on_shard: called in this process with each shard's report as it
        finishes (before the dataset-wide key check), e.g. for progress
    :param tmpdir: where the key table goes (see :class:`KeyIndex`)
    :raises KeyboardInterrupt, Interrupted: running shards are stopped
    """
    from tarproc.jobs.engines.run import run_all

    reports: list = [None] * len(specs)
    index = KeyIndex(tmpdir)
    try:
        def collect(item, report: ShardReport) -> None:
            reports[report.index] = report
            index.add(report.index, report.keys or [])
            report.keys = None
            if on_shard is not None:
                on_shard(report)

        run_all(list(enumerate(specs)), _check_item, (options,), pool, max_errors=None, halt_after=0,
                on_result=collect)
        dataset = DatasetReport(reports)
        for key, shard, offset, first_shard, first_offset in index.duplicates():
            dataset.duplicates += 1
            where = f" at offset {first_offset}" if first_offset is not None else ""
            reports[shard].add("duplicate_key", offset, key,
                               f"key {key!r} is also in {specs[first_shard]}{where}: keys repeat across shards")
    finally:
        index.close()
    return dataset


def shard_index_records(dataset: DatasetReport) -> list[dict]:
    """The records :func:`tarproc.jobs.records.shard_index` takes, one per shard
    that was read to its end and is grouped (the index of a cut or
    ungrouped shard would give a sample count other readers do not see)."""
    out = []
    for report in dataset.shards:
        if report is None or report.kinds() & {"io", "truncated", "corrupt", "malformed", "ungrouped"}:
            continue
        out.append({"index": report.index, "output": report.shard, "samples": report.samples, "bytes": report.bytes})
    return out


def write_report(path: str, dataset: DatasetReport) -> None:
    """The JSON-lines report (one line per shard, in input order) to
    ``path`` (``-``: stdout; a file appears only complete,
    :func:`tarproc.io.sinks.text_output`).

    :raises OutputError:
    """
    from tarproc.io.sinks import text_output

    with text_output(path) as handle:
        for report in dataset.shards:
            if report is not None:
                handle.write(json.dumps(report.line()) + "\n")


__all__ = ["CheckOptions", "DatasetReport", "KeyIndex", "ProcessPool", "ShardReport", "check_dataset",
           "check_shard", "decode_problem", "parse_require", "repair_shard", "shard_index_records",
           "write_report"]
