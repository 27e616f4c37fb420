"""Global shuffle and re-shard of a sharded dataset, as MapReduce over shards.

Phase 1 (*map*, one task per input shard) reads the shard and writes **one**
staged file holding its samples grouped by partition
``hash(seed, key) mod N`` (:func:`partition_function`), with an index of each
partition's byte range, as Spark's sort-based shuffle does: the staging area
holds M files for M inputs, not M x N. Phase 2 (*reduce*, one task per output
shard) reads partition j's byte range from every staged file (a seek on a
local file, a range request on an object store), orders its samples by a
seeded hash of their keys (tarsort's shuffle order, :mod:`tarproc.ops.sort`: in
memory when they fit the buffer, else an external sort) and writes output
shard j.

**The staged file** is itself a tar stream (POSIX ustar, written by
:class:`tarproc.io.tario.TarWriter`), so ``tar tvf`` lists it:

* member 0, ``__tarshuffle_index__.json``: the index, a JSON object with
  ``format`` (1), ``input`` (the input shard as given), ``partitions`` (N),
  ``seed``, ``samples``, and ``ranges``: one ``[offset, length, samples]``
  per partition, ``offset`` counted in bytes from the end of the index
  member (so the index never depends on its own size);
* then the members of partition 0's samples, partition 1's, ..., each
  partition in input order, each sample's members adjacent;
* the end-of-archive marker.

A partition's byte range is a run of whole tar members, so a reducer parses
it with the ordinary strict reader (:class:`tarproc.io.tario.TarReader`) after
appending an end-of-archive marker.

Memory: a map task buffers serialized samples up to ``buffer_size`` bytes
and spills the excess to temporary *runs* (each grouped by partition) that
are merged range by range into the staged file; a reduce task's samples are
bounded by :class:`tarproc.ops.sort.ExternalSorter`'s buffer, plus one entry per
key of its partition (the duplicate-key check, about 100 bytes a key).

Determinism: the partition of a sample depends only on (seed, key, N) and
its position in an output shard only on (seed, key), or with
``shuffle=False`` on the order of the inputs and of the samples in them; so
the same inputs, N and seed give byte-identical outputs whatever runs the
tasks, in any order, any number of times.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from tarproc import errors
from tarproc.errors import OutputError, SourceError, TarprocError, UsageError, Warn
from tarproc.io.iov import whole_writes, write_out
from tarproc.io.spool import LargeField
from tarproc.samples import Sample, group_samples, member_parts, sample_members
from tarproc.io.sinks import PARTIAL, AtomicOutput, TarSink
from tarproc.io.storage import filesystem, is_url, local_path
from tarproc.ops.sort import DEFAULT_BUFFER, ExternalSorter, sort_key_function
from tarproc.io.sources import iter_source_samples, open_source
from tarproc.ops.stages import Rekeyer
from tarproc.io.tario import BLOCK, TarReader, TarWriter, iter_members, member_header


#: version of the staged-file layout written in the index
STAGING_FORMAT = 1
#: name of the index member, the first member of every staged file
INDEX_MEMBER = "__tarshuffle_index__.json"
#: bytes copied at once when merging spilled runs into the staged file
COPY_CHUNK = 1 << 20
#: bytes read at once from a partition's range
RANGE_BUFFER = 1 << 18



class StagingError(TarprocError):
    """A staged file is missing, unreadable or from another run (other
    partition count, seed or input): exit status 1, a re-run of its map task
    rewrites it."""


class DuplicateKeyError(errors.DuplicateKeyError):
    """A key occurs in two inputs (or twice in one): the reducer cannot keep
    both samples apart, so it fails permanently (exit status 3). Its
    :attr:`topic` is ``duplicate_key``, as for every repeated key: the tool
    adds its remedy (a per-input key prefix).

    :ivar key: the key
    :ivar sources: the two inputs it was read from
    """

    def __init__(self, key: str, first: str, second: str):
        where = f"in both {first} and {second}" if first != second else f"twice in {first}"
        super().__init__(f"key {key!r} occurs {where}: the samples would merge or one would be lost;"
                         " every input's keys need a prefix of their own (such as the input's name)",
                         key, first, second)
        self.sources = (first, second)


# ---------------------------------------------------------------- hashes
def _secret(seed: str, purpose: bytes) -> bytes:
    return hashlib.blake2b(str(seed).encode("utf-8", "surrogateescape"), digest_size=32, person=purpose).digest()


def partition_function(seed: str, partitions: int) -> Callable[[str], int]:
    """The function mapping a key to its partition, ``0 <= p < partitions``.

    The partition is BLAKE2b-64 of the key (UTF-8, surrogateescape), keyed
    with a secret derived from ``seed`` (RFC 7693), read big-endian, modulo
    ``partitions``. It is independent of tarsort's shuffle hash (another
    derived secret), so the order inside a partition is not correlated
    with the partition number.

    :raises UsageError: ``partitions`` is not positive
    """
    if partitions < 1:
        raise UsageError(f"the number of output shards must be positive, not {partitions}")
    secret = _secret(seed, b"tarshuf-part")
    blake2b = hashlib.blake2b

    def partition(key: str) -> int:
        digest = blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8, key=secret).digest()
        return int.from_bytes(digest, "big") % partitions

    return partition


def order_key_function(seed: str) -> Callable[[Sample], bytes]:
    """The shuffle order inside an output shard: tarsort's (BLAKE2b-128 of
    the key keyed with the seed, :func:`tarproc.ops.sort.sort_key_function`), so
    output shard j holds its samples in ``tarsort --shuffle --seed SEED``
    order."""
    return sort_key_function(shuffle=True, seed=seed)


# ---------------------------------------------------------------- the index
@dataclass
class StagedIndex:
    """The index of a staged file (see the module docstring).

    :ivar input: the input shard as given
    :ivar partitions: N
    :ivar seed: the seed of the partition hash
    :ivar ranges: ``(offset, length, samples)`` of each partition, offset in
        bytes from :attr:`data_start`
    :ivar data_start: byte offset of partition 0 in the staged file (after
        the index member); set when read back
    """

    input: str
    partitions: int
    seed: str
    ranges: list[tuple[int, int, int]]
    data_start: int = 0
    format: int = STAGING_FORMAT

    @property
    def samples(self) -> int:
        return sum(r[2] for r in self.ranges)

    @property
    def bytes(self) -> int:
        """Tar bytes of all partitions (headers and padding included)."""
        return sum(r[1] for r in self.ranges)

    def to_json(self) -> bytes:
        record = {
            "format": self.format,
            "input": self.input,
            "partitions": self.partitions,
            "seed": self.seed,
            "samples": self.samples,
            "ranges": [list(r) for r in self.ranges],
        }
        return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> StagedIndex:
        """:raises StagingError: not a staged-file index of this format"""
        try:
            record = json.loads(data)
            if record.get("format") != STAGING_FORMAT:
                raise StagingError(f"{where}: staged file of format {record.get('format')!r}, expected {STAGING_FORMAT}")
            ranges = [(int(o), int(n), int(c)) for o, n, c in record["ranges"]]
            index = cls(str(record["input"]), int(record["partitions"]), str(record["seed"]), ranges)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StagingError(f"{where}: bad staged-file index ({exc})") from None
        if len(ranges) != index.partitions:
            raise StagingError(f"{where}: index lists {len(ranges)} ranges for {index.partitions} partitions")
        return index

    def check(self, where: str, partitions: int, seed: str, input: str | None = None) -> None:
        """Check that this staged file belongs to the run described.

        :raises StagingError: another partition count, seed or input
        """
        problems = []
        if self.partitions != partitions:
            problems.append(f"{self.partitions} partitions, not {partitions}")
        if self.seed != str(seed):
            problems.append(f"seed {self.seed!r}, not {str(seed)!r}")
        if input is not None and self.input != input:
            problems.append(f"input {self.input!r}, not {input!r}")
        if problems:
            raise StagingError(
                f"{where}: staged by another run ({', '.join(problems)}): remove the staging area or use the same options"
            )


def _index_member(index: StagedIndex) -> bytes:
    data = index.to_json()
    return member_header(INDEX_MEMBER, len(data)) + data + bytes(-len(data) % BLOCK)


# ---------------------------------------------------------------- storage
def join(prefix: str, name: str) -> str:
    """``prefix/name`` for a directory or a URL prefix."""
    return prefix.rstrip("/") + "/" + name


def atomic_output(spec: str, storage_options: dict | None = None) -> AtomicOutput:
    """A binary output whose bytes appear at ``spec`` only if its ``with``
    block completes (:class:`tarproc.io.sinks.AtomicOutput`: a unique attempt
    file renamed into place, or an upload completed only on success).

    :raises OutputError: it cannot be created
    """
    return AtomicOutput(spec, storage_options, makedirs=True)


@contextlib.contextmanager
def _open_read(spec: str, storage_options: dict | None = None) -> Iterator[BinaryIO]:
    """A seekable binary stream of a staged file. :raises StagingError:"""
    try:
        if is_url(spec):
            fs, path = filesystem(spec, storage_options)
            handle = fs.open(path, "rb", block_size=RANGE_BUFFER)
        else:
            handle = open(local_path(spec), "rb", buffering=0)
    except FileNotFoundError:
        raise StagingError(f"{spec}: staged file is missing: run its map task again") from None
    except OSError as exc:
        raise StagingError(f"{spec}: cannot open staged file: {exc.strerror or exc}") from None
    with handle:
        yield handle


def _read_exactly(handle: BinaryIO, n: int, where: str) -> bytes:
    data = handle.read(n)
    if len(data) != n:
        raise StagingError(f"{where}: staged file is cut short (wanted {n} bytes, got {len(data)})")
    return data


def _read_index(handle: BinaryIO, where: str) -> StagedIndex:
    header = _read_exactly(handle, BLOCK, where)
    name = header[:100].split(b"\0", 1)[0]
    if name != INDEX_MEMBER.encode():
        raise StagingError(f"{where}: not a staged file (first member {name[:60]!r}, expected {INDEX_MEMBER})")
    try:
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise StagingError(f"{where}: bad index header") from None
    padded = (size + BLOCK - 1) & ~(BLOCK - 1)
    data = _read_exactly(handle, padded, where)[:size]
    index = StagedIndex.from_json(data, where)
    index.data_start = BLOCK + padded
    return index


def read_staged_index(spec: str, storage_options: dict | None = None) -> StagedIndex:
    """Read the index of a staged file (two small reads: on an object store
    a range request for the first block, then the index).

    :raises StagingError: missing, not a staged file, or cut short
    """
    with _open_read(spec, storage_options) as handle:
        return _read_index(handle, spec)


def staged_index_ok(spec: str, partitions: int, seed: str, input: str, storage_options: dict | None = None) -> bool:
    """True when ``spec`` is a complete staged file of this run (its map
    task need not run again)."""
    try:
        index = read_staged_index(spec, storage_options)
        index.check(spec, partitions, seed, input)
    except (StagingError, SourceError):
        return False
    return True


# ---------------------------------------------------------------- map
@dataclass
class MapResult:
    """What a map task did.

    :ivar input: the input shard
    :ivar staged: the staged file written
    :ivar samples: samples read (and staged)
    :ivar bytes: tar bytes staged (all partitions)
    :ivar spilled_runs: temporary runs spilled to disk (0 when it fit in memory)
    :ivar counts: samples per partition
    """

    input: str
    staged: str
    samples: int
    bytes: int
    spilled_runs: int = 0
    counts: list[int] = field(default_factory=list)


class _Buffers:
    """Serialized samples per partition, with spills to temporary runs."""

    def __init__(self, partitions: int, buffer_size: int, tmpdir: str | None):
        self.partitions = partitions
        self.buffer_size = buffer_size
        self.tmpdir = tmpdir
        self.parts = [bytearray() for _ in range(partitions)]
        self.counts = [0] * partitions
        self.used = 0
        self.directory: str | None = None
        #: (path, lengths per partition) of each spilled run, in input order
        self.runs: list[tuple[str, list[int]]] = []

    def add(self, partition: int, sample: Sample) -> None:
        part = self.parts[partition]
        before = len(part)
        for name, data in sample_members(sample):
            part += member_header(name, len(data))
            if data.__class__ is LargeField:  # staged in memory like any field: in pieces from its file
                data.write_to(part.extend)
            else:
                part += data
            pad = -len(data) % BLOCK
            if pad:
                part += bytes(pad)
        self.counts[partition] += 1
        self.used += len(part) - before
        if self.used >= self.buffer_size:
            self.spill()

    def spill(self) -> None:
        if self.directory is None:
            try:
                self.directory = tempfile.mkdtemp(prefix="tarshuffle-map-", dir=self.tmpdir)
            except OSError as exc:
                raise OutputError(f"cannot create a temporary directory: {exc.strerror}") from None
        path = os.path.join(self.directory, f"run-{len(self.runs):06d}")
        lengths = [len(p) for p in self.parts]
        try:
            with open(path, "wb", buffering=0) as handle:
                for part in self.parts:
                    write_out(handle.write, part)  # raw: a part over 2 GiB takes several write(2)s
        except OSError as exc:
            raise OutputError(f"{path}: cannot write spilled run: {exc.strerror}") from None
        self.runs.append((path, lengths))
        self.parts = [bytearray() for _ in range(self.partitions)]
        self.used = 0

    def lengths(self) -> list[int]:
        return [sum(run[1][j] for run in self.runs) + len(self.parts[j]) for j in range(self.partitions)]

    def write(self, out: BinaryIO) -> None:
        """Write every partition: its part of each run, then memory."""
        handles = []
        try:
            for path, _ in self.runs:
                handles.append(open(path, "rb", buffering=0))
            for j in range(self.partitions):
                for handle, (_, lengths) in zip(handles, self.runs):
                    left = lengths[j]
                    while left:
                        chunk = handle.read(min(left, COPY_CHUNK))
                        if not chunk:
                            raise OutputError(f"spilled run {handle.name} is cut short")
                        out.write(chunk)
                        left -= len(chunk)
                out.write(self.parts[j])
                self.parts[j] = bytearray()
        finally:
            for handle in handles:
                handle.close()

    def cleanup(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def write_staged(
    samples: Iterable[Sample],
    out: BinaryIO,
    partitions: int,
    seed: str = "0",
    input: str = "-",
    buffer_size: int = DEFAULT_BUFFER,
    tmpdir: str | None = None,
) -> MapResult:
    """Write ``samples`` to the binary stream ``out`` as one staged file
    grouped by partition (the work of a map task once its input is open).
    Nothing is written before the input is read to its end.

    :param samples: the samples of one input shard, in input order
    :param partitions: N, the number of output shards
    :param seed: seed of the partition hash
    :param input: the input's name, recorded in the index
    :param buffer_size: bytes of serialized samples held in memory before
        spilling a run to ``tmpdir``
    :raises OutputError: a run cannot be written
    :raises TarprocError: errors of the sample stream
    """
    partition = partition_function(seed, partitions)
    buffers = _Buffers(partitions, max(1, buffer_size), tmpdir)
    try:
        for sample in samples:
            buffers.add(partition(sample["__key__"]), sample)
        lengths = buffers.lengths()
        ranges = []
        offset = 0
        for j in range(partitions):
            ranges.append((offset, lengths[j], buffers.counts[j]))
            offset += lengths[j]
        index = StagedIndex(input, partitions, str(seed), ranges)
        out.write(_index_member(index))
        buffers.write(out)
        out.write(bytes(2 * BLOCK))
    finally:
        buffers.cleanup()
    return MapResult(input, "", index.samples, index.bytes, len(buffers.runs), list(buffers.counts))


def stage_samples(
    samples: Iterable[Sample],
    staged: str,
    partitions: int,
    seed: str = "0",
    input: str = "-",
    buffer_size: int = DEFAULT_BUFFER,
    tmpdir: str | None = None,
    storage_options: dict | None = None,
) -> MapResult:
    """:func:`write_staged` into the file or object ``staged``, atomically
    (:func:`atomic_output`). :raises OutputError: it cannot be written"""
    with atomic_output(staged, storage_options) as out:
        result = write_staged(samples, out, partitions, seed, input, buffer_size, tmpdir)
    result.staged = staged
    return result


def map_shard(
    input: str,
    staged: str,
    partitions: int,
    seed: str = "0",
    buffer_size: int = DEFAULT_BUFFER,
    tmpdir: str | None = None,
    rekey: str | None = None,
    warn: Warn | None = None,
    strict: bool = False,
    storage_options: dict | None = None,
) -> MapResult:
    """The map task of one input shard: read it (any input
    :func:`tarproc.io.sources.open_source` takes, with fsspec
    ``storage_options`` for URLs) and write its staged file.

    :param rekey: a :class:`tarproc.ops.stages.Rekeyer` format applied to the
        input's samples first (``'{shard}/{key}'``), so that keys made
        independently in two inputs become distinct
    :raises TarprocError: see :func:`stage_samples` and the sources;
        :class:`tarproc.errors.DataError` (exit 3) for a bad input
    """
    samples: Iterable[Sample] = iter_source_samples(input, warn, strict, storage_options=storage_options)
    if rekey is not None:
        samples = Rekeyer(rekey)(samples)
    return stage_samples(samples, staged, partitions, seed, input, buffer_size, tmpdir, storage_options)


# ---------------------------------------------------------------- reduce
class _RangeReader(io.RawIOBase):
    """``length`` bytes of ``handle`` from its current position, then an
    end-of-archive marker, so that a partition's range reads as a tar stream."""

    def __init__(self, handle: BinaryIO, length: int):
        self.handle = handle
        self.left = length
        self.tail = memoryview(bytes(2 * BLOCK))

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.left > 0:
            n = self.handle.readinto(memoryview(buf)[: min(len(buf), self.left)])
            if not n:
                raise StagingError("staged file ends inside a partition's range")
            self.left -= n
            return n
        n = min(len(buf), len(self.tail))
        buf[:n] = self.tail[:n]
        self.tail = self.tail[n:]
        return n


def iter_partition(staged: str, partition: int, index: StagedIndex | None = None,
                   storage_options: dict | None = None) -> Iterator[Sample]:
    """Yield the samples of one partition of a staged file, in input order;
    ``"__source__"`` is the original input shard.

    :raises StagingError: missing or bad staged file
    :raises TarprocError: the range does not parse (a damaged staged file)
    """
    with _open_read(staged, storage_options) as handle:
        if index is None:
            index = _read_index(handle, staged)
        offset, length, count = index.ranges[partition]
        if not count:
            return
        handle.seek(index.data_start + offset)
        stream = io.BufferedReader(_RangeReader(handle, length), RANGE_BUFFER)
        where = f"{staged} (partition {partition})"
        yield from group_samples(iter_members(stream, where), index.input, strict=True)


@dataclass
class ReduceResult:
    """What a reduce task did.

    :ivar partition: j
    :ivar output: the output shard written
    :ivar samples: samples written
    :ivar bytes: uncompressed tar bytes written
    :ivar runs: runs the external sort spilled (0: sorted in memory)
    """

    partition: int
    output: str
    samples: int
    bytes: int
    runs: int = 0


def _check_repeats(samples: Iterable[Sample]) -> Iterator[Sample]:
    """Pass samples on, raising :class:`DuplicateKeyError` at the first key
    seen before (from another input, or from the same one beyond the grouping
    check's memory, :data:`tarproc.samples.MAX_SEEN_KEYS`)."""
    seen: dict[str, str] = {}
    for sample in samples:
        key = sample["__key__"]
        source = sample.get("__source__", "-")
        if key in seen:
            raise DuplicateKeyError(key, seen[key], source)
        seen[key] = source
        yield sample


def reduce_partition(
    staged: list[str],
    partition: int,
    output: str,
    seed: str = "0",
    shuffle: bool = True,
    buffer_size: int = DEFAULT_BUFFER,
    tmpdir: str | None = None,
    compression: str | None = None,
    mtime: int = 0,
    storage_options: dict | None = None,
) -> ReduceResult:
    """The reduce task of output shard ``partition``: gather the partition
    from every staged file, order it, and write ``output`` atomically.

    Nothing is left at ``output`` (nor a ``.partial``) when it fails: a
    duplicate key is found before the first byte is written when shuffling
    (the sort reads all samples first), and the partial file is removed
    otherwise.

    :param staged: every staged file, in input order
    :param shuffle: order by the seeded hash (in memory within
        ``buffer_size``, else tarsort's external sort in ``tmpdir``); False
        keeps input order
    :param compression: of the output, None to follow its name
    :param storage_options: fsspec options for staged files and an output
        that are URLs
    :raises DuplicateKeyError: a key occurs twice in the partition (exit 3)
    :raises StagingError: a staged file is missing or from another run
    :raises OutputError: the output cannot be written
    """
    samples, sorter = ordered_partition(staged, partition, seed, shuffle, buffer_size, tmpdir, storage_options)
    return _write_output(samples, partition, output, compression, mtime, sorter, storage_options)


def ordered_partition(
    staged: list[str],
    partition: int,
    seed: str = "0",
    shuffle: bool = True,
    buffer_size: int = DEFAULT_BUFFER,
    tmpdir: str | None = None,
    storage_options: dict | None = None,
) -> tuple[Iterator[Sample], ExternalSorter | None]:
    """The samples of output shard ``partition`` in their output order
    (see :func:`reduce_partition`), and the sorter used (None without
    ``shuffle``); iterating raises what :func:`reduce_partition` does."""
    samples: Iterator[Sample] = _check_repeats(_gather(staged, partition, seed, storage_options))
    sorter = None
    if shuffle:
        sorter = ExternalSorter(order_key_function(seed), buffer_size=max(1, buffer_size), tmpdir=tmpdir)
        samples = sorter.sort(samples)
    return samples, sorter


def reduce_to_stream(
    staged: list[str],
    partition: int,
    out: BinaryIO,
    seed: str = "0",
    shuffle: bool = True,
    buffer_size: int = DEFAULT_BUFFER,
    tmpdir: str | None = None,
    mtime: int = 0,
    storage_options: dict | None = None,
) -> ReduceResult:
    """:func:`reduce_partition` onto a binary stream (uncompressed tar, end
    marker written only on success). With ``shuffle`` nothing is written
    before every sample was read and checked; without it a duplicate key may
    be found after some samples were written (the caller discards them, as
    :class:`tarproc.jobs.tasks` does with a pipeline's output)."""
    samples, sorter = ordered_partition(staged, partition, seed, shuffle, buffer_size, tmpdir, storage_options)
    sink = _StreamSink(out, "none", mtime)
    count = _drain(sink, None, iter(samples))
    return ReduceResult(partition, "-", count, sink.bytes_written, sorter.runs if sorter else 0)


def _gather(staged: list[str], partition: int, seed: str, storage_options: dict | None = None) -> Iterator[Sample]:
    partitions = None
    for spec in staged:
        index = read_staged_index(spec, storage_options)
        if partitions is None:
            partitions = index.partitions
        index.check(spec, partitions, seed)
        if not 0 <= partition < partitions:
            raise UsageError(f"partition {partition} out of range: the staged files hold {partitions}")
        yield from iter_partition(spec, partition, index, storage_options)


def _write_output(samples, partition, output, compression, mtime, sorter, storage_options=None) -> ReduceResult:
    it = iter(samples)
    try:
        first = next(it)
    except StopIteration:
        first = None
    if is_url(output):
        with atomic_output(output, storage_options) as raw:
            sink = _StreamSink(raw, compression or _compression(output), mtime)
            count = _drain(sink, first, it)
        return ReduceResult(partition, output, count, sink.bytes_written, sorter.runs if sorter else 0)
    sink = TarSink(output, compression, mtime)
    try:
        count = _drain(sink, first, it)
        sink.close()
    except BaseException:
        sink.abort()
        with contextlib.suppress(OSError):
            os.unlink(output + PARTIAL)  # never a half-written shard that looks like a result
        raise
    return ReduceResult(partition, output, count, sink.bytes_written, sorter.runs if sorter else 0)


def _compression(name: str) -> str:
    from tarproc.io.compress import compression_for_name

    return compression_for_name(name)


class _StreamSink:
    """A tar writer onto an already open (uploading) stream."""

    def __init__(self, raw: BinaryIO, compression: str, mtime: int):
        from tarproc.io.compress import compressing_writer

        self.raw = raw
        self.stream = compressing_writer(raw, compression)
        self.writer = TarWriter(self.stream, mtime=mtime)

    @property
    def bytes_written(self) -> int:
        return self.writer.bytes_written

    def write(self, sample: Sample) -> None:
        for name, data in sample_members(sample):
            self.writer.add(name, data)

    def close(self) -> None:
        self.writer.finish()
        if self.stream is not self.raw:
            self.stream.close()


def _drain(sink, first, it) -> int:
    count = 0
    if first is not None:
        sink.write(first)
        count = 1
    for sample in it:
        sink.write(sample)
        count += 1
    if isinstance(sink, _StreamSink):
        sink.close()
    return count


# ---------------------------------------------------------------- counting
def count_samples(input: str, warn: Warn | None = None, storage_options: dict | None = None) -> int:
    """Samples in one input shard, from its members' headers (member data is
    read but not kept); ``storage_options``: see
    :func:`tarproc.io.sources.open_source`. :raises TarprocError: as reading the input"""
    count = 0
    last = None
    with open_source(input, storage_options=storage_options) as stream:
        for member in TarReader(stream, input, warn or (lambda message: None)):
            parts = member_parts(member.name)  # the reader's rule: what it skips is not counted
            if parts.__class__ is str:
                continue
            key = parts[0]
            if key != last:
                count += 1
                last = key
    return count


def shard_count(total: int, maxcount: int) -> int:
    """N = ceil(total / maxcount), at least 1 (hash partitions then hold
    about ``maxcount`` samples each, not exactly)."""
    if maxcount < 1:
        raise UsageError("samples per shard must be positive")
    return max(1, -(-total // maxcount))


# ---------------------------------------------------------------- task worker
#: environment variables of a worker that do not change its output's bytes
#: (so they are not part of a task's pipeline and its completion record)
ENV_BUFFER = "TARSHUFFLE_BUFFER_SIZE"
ENV_TMPDIR = "TARSHUFFLE_TMPDIR"
#: the task's input and output: the worker writes its output atomically
#: itself and prints its statistics as one JSON line on stdout
ENV_INPUT = "TARSHUFFLE_INPUT"
ENV_OUTPUT = "TARSHUFFLE_OUTPUT"
#: fsspec storage options (JSON) for the URLs a worker opens: in its
#: environment, not on its command line (they may hold credentials)
ENV_STORAGE = "TARSHUFFLE_STORAGE_OPTIONS"
#: the PID of the process that started the worker: the worker stops
#: (as on SIGTERM) when that process dies (:func:`tarproc.procs.die_with_parent`)
ENV_PARENT = "TARSHUFFLE_PARENT_PID"


def staged_name(staging: str, index: int) -> str:
    """The staged file of input ``index`` under ``staging`` (a directory or
    URL prefix): ``staged-{index:06d}.tar``."""
    return join(staging, f"staged-{index:06d}.tar")


def worker_main(argv: list[str] | None = None) -> int:
    """The program a shuffle task runs as its pipeline
    (``python -m tarproc.jobs.shuffle``), under :mod:`tarproc.jobs.tasks`, which
    writes its stdout atomically to the task's output and keeps the record:

    * ``map --partitions N --seed S [--rekey FMT] [--strict]``: the input
      shard on stdin (any compression; its name in ``TARMAP_INPUT``), the
      staged file on stdout;
    * ``reduce --partition J --partitions N --seed S --staging PREFIX
      --inputs M [--no-shuffle] [--mtime T]``: output shard J (uncompressed
      tar) on stdout.

    ``TARSHUFFLE_BUFFER_SIZE`` (bytes) and ``TARSHUFFLE_TMPDIR`` set the
    memory budget and the spill directory; ``TARSHUFFLE_STORAGE_OPTIONS``
    (a JSON object) the fsspec options of the URLs it opens. Returns the exit status: 0, 1, 3
    for bad input data or a duplicate key (:class:`tarproc.errors.ExitStatus`),
    143 on SIGTERM and 130 on SIGINT, after removing its partial output and
    spill files. ``TARSHUFFLE_PARENT_PID``: the process that started it;
    when that process dies the worker stops as on SIGTERM, so a killed
    coordinator leaves no worker writing an output nobody records.
    """
    import argparse
    import sys

    from tarproc.io.compress import decompressing_reader
    from tarproc.errors import ExitStatus, Interrupted
    parser = argparse.ArgumentParser(prog="python -m tarproc.jobs.shuffle", description="one tarshuffle task")
    sub = parser.add_subparsers(dest="phase", required=True)
    m = sub.add_parser("map")
    r = sub.add_parser("reduce")
    for p in (m, r):
        p.add_argument("--partitions", type=int, required=True)
        p.add_argument("--seed", default="0")
    m.add_argument("--rekey")
    m.add_argument("--strict", action="store_true")
    r.add_argument("--partition", type=int, required=True)
    r.add_argument("--staging", required=True)
    r.add_argument("--inputs", type=int, required=True)
    r.add_argument("--no-shuffle", action="store_true")
    r.add_argument("--mtime", type=int, default=0)
    args = parser.parse_args(argv)
    buffer_size = int(os.environ.get(ENV_BUFFER) or DEFAULT_BUFFER)
    tmpdir = os.environ.get(ENV_TMPDIR) or None
    output = os.environ.get(ENV_OUTPUT) or None
    name = os.environ.get(ENV_INPUT) or os.environ.get("TARMAP_INPUT") or "-"
    storage = json.loads(os.environ.get(ENV_STORAGE) or "{}")

    def warn(message: str) -> None:
        print(f"tarshuffle: warning: {message}", file=sys.stderr, flush=True)

    try:
        if args.phase == "map":
            if output is None:  # a pipeline: the input on stdin, the staged file on stdout
                stream = decompressing_reader(sys.stdin.buffer, name)
                samples: Iterable[Sample] = group_samples(iter_members(stream, name, warn), name, warn, args.strict)
            else:
                samples = iter_source_samples(name, warn, args.strict, storage_options=storage)
            if args.rekey is not None:
                samples = Rekeyer(args.rekey)(samples)

            def work(out):
                return write_staged(samples, out, args.partitions, args.seed, name, buffer_size, tmpdir)
        else:
            staged = [staged_name(args.staging, i) for i in range(args.inputs)]

            def work(out):
                return reduce_to_stream(staged, args.partition, out, args.seed, not args.no_shuffle, buffer_size,
                                        tmpdir, args.mtime, storage)
        if output is None:
            work(whole_writes(sys.stdout.buffer))  # raw under PYTHONUNBUFFERED: resume short writes
            sys.stdout.buffer.flush()
        else:
            reduce = args.phase == "reduce"
            stats = write_output(output, work, compress=reduce, digests=("sha256",) if reduce else (),
                                 storage_options=storage)
            import resource

            stats["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
            print(json.dumps(stats, sort_keys=True), flush=True)
    except TarprocError as exc:
        print(f"tarshuffle: error: {exc}", file=sys.stderr, flush=True)
        if exc.topic:  # for the tool's hint: the topic crosses the process boundary on stdout
            print(json.dumps({"topic": exc.topic}), flush=True)
        return int(exc.exit_status)
    except BrokenPipeError:
        return int(ExitStatus.SIGPIPE)
    except KeyboardInterrupt:
        return int(ExitStatus.SIGINT)
    except Interrupted:
        return int(ExitStatus.SIGTERM)
    return 0


def write_output(target: str, work: Callable[[BinaryIO], object], compress: bool = True,
                 digests: Iterable[str] = ("sha256",), storage_options: dict | None = None) -> dict:
    """Run ``work(stream)`` onto ``target`` atomically
    (:class:`tarproc.io.sinks.AtomicOutput`, stale attempt files of dead
    processes removed), compressed by the target's name when ``compress``.

    :param digests: hashlib digests of the stored bytes to compute
        (``sha256``, ``md5``); at some 400 and 200 MB/s they are a large part
        of a shuffle's CPU time, so a staged file gets none
    :returns: ``samples``, ``tar_bytes`` (uncompressed), ``bytes`` (stored),
        ``sha256`` and ``md5`` (of the stored bytes, None when not computed):
        what a completion record holds
    :raises TarprocError: from ``work`` (nothing appears at ``target``)
    """
    from tarproc.io.compress import compressing_writer, compression_for_name
    from tarproc.io.sinks import HashingWriter, remove_stale_attempts

    if not is_url(target):
        remove_stale_attempts(local_path(target))
    with atomic_output(target, storage_options) as out:
        hashing = HashingWriter(out, digests)
        writer = compressing_writer(hashing, compression_for_name(target)) if compress else hashing
        result = work(writer)
        if writer is not hashing:
            writer.close()
    return {"samples": result.samples, "tar_bytes": result.bytes if compress else hashing.bytes, "bytes": hashing.bytes, "sha256": hashing.hexdigest("sha256"),
            "md5": hashing.hexdigest("md5")}


__all__ = [
    "DuplicateKeyError",
    "INDEX_MEMBER",
    "MapResult",
    "ReduceResult",
    "StagedIndex",
    "StagingError",
    "atomic_output",
    "count_samples",
    "iter_partition",
    "map_shard",
    "order_key_function",
    "partition_function",
    "read_staged_index",
    "reduce_partition",
    "shard_count",
    "reduce_to_stream",
    "stage_samples",
    "staged_index_ok",
    "staged_name",
    "worker_main",
    "write_staged",
]


def _worker_program() -> int:
    """``python -m tarproc.jobs.shuffle``: :func:`worker_main` as a program,
    whose SIGTERM (tarshuffle stopping its task, the death of the process in
    ``TARSHUFFLE_PARENT_PID``) unwinds, so that its partial output and spill
    files are removed."""
    from tarproc import guard, procs
    from tarproc.errors import ExitStatus, Interrupted

    guard.unwind_on_sigterm()
    parent = os.environ.get(ENV_PARENT, "")
    try:
        if parent.isdigit():
            procs.die_with_parent(int(parent))
    except Interrupted:  # the parent was gone already
        return int(ExitStatus.SIGTERM)
    return worker_main()


if __name__ == "__main__":
    raise SystemExit(_worker_program())
