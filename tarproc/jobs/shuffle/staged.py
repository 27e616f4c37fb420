"""The staged file of a shuffle: what a map task writes for one input and
reduce tasks read a partition of.

A staged file is itself a tar stream (POSIX ustar, written by
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
appending an end-of-archive marker (:func:`iter_partition`: a seek on a local
file, a range request on an object store).

Staged files live under a staging area, a directory or URL prefix:
``STAGING/staged-{i:06d}.tar`` for input i (:func:`staged_name`).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from tarproc.errors import SourceError, TarprocError
from tarproc.io.sinks import AtomicOutput
from tarproc.io.storage import filesystem, is_url, local_path
from tarproc.io.tario import BLOCK, iter_members, member_header
from tarproc.samples import Sample, group_samples

#: version of the staged-file layout written in the index
STAGING_FORMAT = 1
#: name of the index member, the first member of every staged file
INDEX_MEMBER = "__tarshuffle_index__.json"
#: bytes read at once from a partition's range
RANGE_BUFFER = 1 << 18


class StagingError(TarprocError):
    """A staged file is missing, unreadable or from another run (other
    partition count, seed or input): exit status 1, a re-run of its map task
    rewrites it."""



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

    def member(self) -> bytes:
        """The index as the first member of its staged file
        (:data:`INDEX_MEMBER`: header, JSON, padding)."""
        data = self.to_json()
        return member_header(INDEX_MEMBER, len(data)) + data + bytes(-len(data) % BLOCK)

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
def open_staged(spec: str, storage_options: dict | None = None) -> Iterator[BinaryIO]:
    """A seekable binary stream of the staged file ``spec`` (a path or
    URL; a URL is read in blocks of :data:`RANGE_BUFFER` bytes), as a
    context manager.

    :raises StagingError: it is missing or cannot be opened
    """
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
    with open_staged(spec, storage_options) as handle:
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

def staged_name(staging: str, index: int) -> str:
    """The staged file of input ``index`` under ``staging`` (a directory or
    URL prefix): ``staged-{index:06d}.tar``."""
    return join(staging, f"staged-{index:06d}.tar")


# ---------------------------------------------------------------- a partition's range
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
    with open_staged(staged, storage_options) as handle:
        if index is None:
            index = _read_index(handle, staged)
        offset, length, count = index.ranges[partition]
        if not count:
            return
        handle.seek(index.data_start + offset)
        stream = io.BufferedReader(_RangeReader(handle, length), RANGE_BUFFER)
        where = f"{staged} (partition {partition})"
        yield from group_samples(iter_members(stream, where), index.input, strict=True)



__all__ = [
    "INDEX_MEMBER",
    "StagedIndex",
    "StagingError",
    "atomic_output",
    "iter_partition",
    "join",
    "open_staged",
    "read_staged_index",
    "staged_index_ok",
    "staged_name",
]
