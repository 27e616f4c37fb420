"""The map task of a shuffle: one input shard's samples, grouped by
partition (:func:`tarproc.jobs.shuffle.partition.partition_function`), into
one staged file (:mod:`tarproc.jobs.shuffle.staged`).

Memory: a map task buffers serialized samples up to ``buffer_size`` bytes
and spills the excess to temporary *runs* (each grouped by partition) that
are merged range by range into the staged file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from tarproc.errors import OutputError, Warn
from tarproc.io.iov import write_out
from tarproc.io.sources import iter_source_samples
from tarproc.io.spool import LargeField
from tarproc.io.tario import BLOCK, member_header
from tarproc.jobs.shuffle.partition import partition_function
from tarproc.jobs.shuffle.staged import StagedIndex, atomic_output
from tarproc.ops.sort import DEFAULT_BUFFER
from tarproc.ops.stages import Rekeyer
from tarproc.samples import Sample, sample_members

#: bytes copied at once when merging spilled runs into the staged file
COPY_CHUNK = 1 << 20


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
        out.write(index.member())
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


__all__ = ["MapResult", "map_shard", "stage_samples", "write_staged"]
