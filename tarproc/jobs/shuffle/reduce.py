"""The reduce task of a shuffle: output shard j is partition j of every
staged file (:mod:`tarproc.jobs.shuffle.staged`), read in input order,
checked for repeated keys and ordered by a seeded hash of the keys
(tarsort's shuffle order, :mod:`tarproc.ops.sort`: in memory when the
samples fit the buffer, else an external sort).

Memory: a reduce task's samples are bounded by
:class:`tarproc.ops.sort.ExternalSorter`'s buffer, plus one entry per key of
its partition (the duplicate-key check, about 100 bytes a key).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from tarproc import errors
from tarproc.errors import UsageError
from tarproc.io.sinks import TarSink, write_tar
from tarproc.jobs.shuffle.partition import order_key_function
from tarproc.jobs.shuffle.staged import iter_partition, read_staged_index
from tarproc.ops.sort import DEFAULT_BUFFER, ExternalSorter
from tarproc.samples import Sample


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
    :raises UsageError: ``compression`` contradicts the output's name
        (:func:`tarproc.io.compress.output_compression`)
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
    count, size = write_tar(samples, out, mtime)
    return ReduceResult(partition, "-", count, size, sorter.runs if sorter else 0)


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


def _write_output(samples: Iterable[Sample], partition: int, output: str, compression: str | None, mtime: int,
                  sorter: ExternalSorter | None, storage_options: dict | None = None) -> ReduceResult:
    """``samples`` into ``output`` (:class:`tarproc.io.sinks.TarSink`: a
    file renamed into place, an upload completed, only on success). The
    first sample is read before the output is opened: when shuffling, the
    sort has then read and checked every sample."""
    it = iter(samples)
    first = next(it, None)
    with TarSink(output, compression, mtime, storage_options=storage_options) as sink:
        for sample in itertools.chain(() if first is None else (first,), it):
            sink.write(sample)
    return ReduceResult(partition, output, sink.samples, sink.bytes_written, sorter.runs if sorter else 0)


__all__ = ["DuplicateKeyError", "ReduceResult", "ordered_partition", "reduce_partition", "reduce_to_stream"]
