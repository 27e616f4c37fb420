"""External sort and deterministic shuffle of a sample stream.

Samples are sorted by key (the default), by a field's content read as
``str`` (its bytes, i.e. the order of ``LC_ALL=C sort``), ``int`` or
``float``, or shuffled by a keyed hash of their key (BLAKE2b keyed with the
seed), which gives the same permutation for the same seed and keys whatever
the input order, so sorting the concatenation of all shards by it is a true
cross-shard shuffle.

Memory stays bounded for inputs far larger than RAM: samples are gathered
up to a memory budget, sorted, and spilled as a *run* (a tar file written
with :class:`tarproc.io.tario.TarWriter`, one member per sample) to a private
temporary directory; the runs are then merged with :func:`heapq.merge`
(several passes when there are more runs than :data:`FAN_IN`). Every sort key
carries the sample's input index, so the sort is stable: samples with equal
sort keys are all kept, in input order, also with ``reverse``. Temporary
files are always removed, on errors and interrupts too.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tarproc.errors import OutputError, SampleError, UsageError
from tarproc.samples import Sample
from tarproc.io.tario import TarWriter, iter_members

#: most runs merged at once (each holds one open file and one sample)
FAN_IN = 64
#: read buffer of each run file during a merge, bytes
RUN_BUFFER = 1 << 18
#: default memory budget for buffered samples, bytes
DEFAULT_BUFFER = 256 << 20
#: estimated Python overhead of a buffered sample and of each of its fields, bytes
SAMPLE_OVERHEAD = 400
FIELD_OVERHEAD = 120

SORT_TYPES = ("str", "int", "float")



def _nan_last(value: float) -> tuple:
    return (1, 0.0) if math.isnan(value) else (0, value)


def sort_key_function(
    field: str | None = None, type: str = "str", shuffle: bool = False, seed: str = "0"
) -> Callable[[Sample], Any]:
    """The function that maps a sample to its sort key.

    :param field: sort by this field's content; None: by ``__key__``
    :param type: ``"str"`` (bytes of the field, or the key as text),
        ``"int"`` or ``"float"`` (the text parsed as a number; NaN sorts last, first when reversed)
    :param shuffle: sort by BLAKE2b-128 of the key, keyed with ``seed``
    :param seed: the shuffle seed, any text
    :raises UsageError: an unknown type, or ``shuffle`` with ``field``
    :returns: a function raising :class:`SampleError` when a sample lacks the
        field or its content does not parse as ``type``
    """
    if type not in SORT_TYPES:
        raise UsageError(f"unknown sort type {type!r} (use str, int or float)")
    if shuffle:
        if field is not None:
            raise UsageError("a shuffle orders by a hash of the key: it cannot be combined with a sort field")
        secret = hashlib.blake2b(str(seed).encode("utf-8", "surrogateescape"), digest_size=32).digest()

        def shuffled(sample: Sample) -> bytes:
            key = sample["__key__"].encode("utf-8", "surrogateescape")
            return hashlib.blake2b(key, digest_size=16, key=secret).digest()

        return shuffled

    if field is None:
        if type == "str":
            return lambda sample: sample["__key__"]
        parse = int if type == "int" else float

        def by_key(sample: Sample):
            key = sample["__key__"]
            try:
                value = parse(key)
            except ValueError:
                raise SampleError(f"key {key!r} is not an {type} (sorting keys as {type})") from None
            return _nan_last(value) if type == "float" else value

        return by_key

    def by_field(sample: Sample):
        try:
            value = sample[field]
        except KeyError:
            raise SampleError(f"sample {sample['__key__']!r} has no field {field!r} to sort by") from None
        if isinstance(value, str):
            value = value.encode("utf-8")
        if type == "str":
            return value
        try:
            number = int(value) if type == "int" else float(value)
        except ValueError:
            raise SampleError(
                f"sample {sample['__key__']!r}: field {field!r} is not an {type}: {value[:40]!r}"
            ) from None
        return _nan_last(number) if type == "float" else number

    return by_field


def estimate_size(sample: Sample) -> int:
    """Estimated memory held by a buffered sample, in bytes."""
    total = SAMPLE_OVERHEAD
    for value in sample.values():
        total += FIELD_OVERHEAD + (len(value) if isinstance(value, (bytes, str)) else 8)
    return total


class ExternalSorter:
    """Sort samples with bounded memory.

    >>> sorter = ExternalSorter(sort_key_function(), buffer_size=64 << 20)
    >>> for sample in sorter.sort(samples):        # doctest: +SKIP
    ...     sink.write(sample)

    :param keyfunc: sample -> sort key (see :func:`sort_key_function`)
    :param reverse: descending order; equal keys still keep input order
    :param buffer_size: memory budget for buffered samples, bytes (at least
        one sample is always buffered)
    :param tmpdir: where the private temporary directory is made (default:
        ``$TMPDIR`` or ``/tmp``)
    :param fan_in: most runs merged at once

    :ivar samples: samples read so far
    :ivar runs: sorted runs spilled to disk
    :ivar spilled_bytes: bytes written to run files (all passes)
    """

    def __init__(
        self,
        keyfunc: Callable[[Sample], Any],
        reverse: bool = False,
        buffer_size: int = DEFAULT_BUFFER,
        tmpdir: str | None = None,
        fan_in: int = FAN_IN,
    ):
        self.keyfunc = keyfunc
        self.reverse = reverse
        self.buffer_size = buffer_size
        self.tmpdir = tmpdir
        self.fan_in = max(2, fan_in)
        self.samples = 0
        self.runs = 0
        self.spilled_bytes = 0
        self.directory: str | None = None

    # -- runs on disk
    def _new_run_path(self) -> str:
        if self.directory is None:
            try:
                self.directory = tempfile.mkdtemp(prefix="tarsort-", dir=self.tmpdir)
            except OSError as exc:
                raise OutputError(
                    f"cannot create a temporary directory in {self.tmpdir or tempfile.gettempdir()!r}: {exc.strerror}"
                ) from None
        self.runs += 1
        return os.path.join(self.directory, f"run-{self.runs:06d}.tar")

    def _write_run(self, entries: Iterable[tuple]) -> str:
        """Write (sortkey, index, sample) entries, already in order, as a tar
        file of pickled records; returns its path."""
        path = self._new_run_path()
        try:
            with open(path, "wb", buffering=1 << 20) as handle:
                writer = TarWriter(handle)
                for n, entry in enumerate(entries):
                    writer.add(f"{n:012d}.rec", pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL))
                writer.finish()
        except OSError as exc:
            raise OutputError(f"{path}: cannot write sorted run: {exc.strerror or exc}") from None
        self.spilled_bytes += writer.bytes_written
        return path

    @staticmethod
    def _read_run(path: str, remove: bool = True) -> Iterator[tuple]:
        """The entries of a run file; the file is deleted once read."""
        with open(path, "rb", buffering=RUN_BUFFER) as handle:
            loads = pickle.loads
            for member in iter_members(handle, path):
                data = member.data
                yield loads(data if data.__class__ is bytes else data.read())  # a spooled record: loaded
        if remove:
            os.unlink(path)

    def _merge(self, sources: list[Iterable[tuple]]) -> Iterator[tuple]:
        if len(sources) == 1:
            return iter(sources[0])
        return heapq.merge(*sources, reverse=self.reverse)

    # -- the sort
    def sort(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """Yield ``samples`` in sorted order.

        Nothing is yielded before the input is exhausted. The temporary
        directory is removed when the generator finishes, fails or is
        closed.

        :raises SampleError: from the key function
        :raises OutputError: a run file cannot be written (disk full...)
        """
        try:
            yield from self._sort(samples)
        finally:
            self.cleanup()

    def _sort(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        keyfunc = self.keyfunc
        reverse = self.reverse
        sign = -1 if reverse else 1
        budget = self.buffer_size
        buffer: list[tuple] = []
        used = 0
        runs: list[str] = []
        index = 0
        for sample in samples:
            # (sort key, signed input index) is unique, so samples are never compared
            buffer.append((keyfunc(sample), sign * index, sample))
            index += 1
            used += estimate_size(sample)
            if used >= budget:
                buffer.sort(reverse=reverse)
                runs.append(self._write_run(buffer))
                buffer = []
                used = 0
        self.samples = index
        buffer.sort(reverse=reverse)
        # merge passes until the runs on disk plus the in-memory tail fit one merge
        while len(runs) + 1 > self.fan_in:
            group, runs = runs[: self.fan_in], runs[self.fan_in :]
            runs.append(self._write_run(self._merge([self._read_run(p) for p in group])))
        sources: list[Iterable[tuple]] = [self._read_run(p) for p in runs]
        if buffer:
            sources.append(buffer)
        for entry in self._merge(sources):
            yield entry[2]

    def cleanup(self) -> None:
        """Remove the temporary directory and every run file in it."""
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def merge_fragments(samples: Iterable[Sample]) -> Iterator[Sample]:
    """Merge adjacent samples with the same key into one (the fragments of
    an ungrouped shard once sorted by key, see :func:`group_by_key`).

    :raises SampleError: two fragments of a key hold the same field; the
        message names the key, the field and the inputs of both
    """
    current: Sample | None = None
    for sample in samples:
        if current is not None and sample["__key__"] == current["__key__"]:
            for name, value in sample.items():
                if name.startswith("__"):
                    continue
                if name in current:
                    key = current["__key__"]
                    first = current.get("__source__", "-")
                    again = sample.get("__source__", "-")
                    where = f"twice in {first}" if first == again else f"in both {first} and {again}"
                    raise SampleError(
                        f"key {key!r} has field {name!r} {where}: two samples share the key, so grouping"
                        " members by key cannot repair it (make keys unique instead: tarcats --rekey '{shard}/{key}')"
                    )
                current[name] = value
            continue
        if current is not None:
            yield current
        current = sample
    if current is not None:
        yield current


#: meta entry holding a sample's input position while an ungrouped stream is regrouped
ORDER = "__order__"


def group_by_key(
    samples: Iterable[Sample], buffer_size: int = DEFAULT_BUFFER, tmpdir: str | None = None
) -> Iterator[Sample]:
    """Group the members of every key into one sample, in key order: the
    repair of an ungrouped stream (read with ``regroup=True``, see
    :func:`tarproc.samples.group_samples`). Memory as :class:`ExternalSorter`.

    :raises SampleError: see :func:`merge_fragments`
    """
    return merge_fragments(ExternalSorter(sort_key_function(), buffer_size=buffer_size, tmpdir=tmpdir).sort(samples))


def regroup_and_sort(
    samples: Iterable[Sample], sorter: ExternalSorter, buffer_size: int = DEFAULT_BUFFER, tmpdir: str | None = None
) -> Iterator[Sample]:
    """Group an ungrouped stream by key (:func:`group_by_key`), then sort it
    with ``sorter`` keeping the sort stable with respect to the *input*
    order: samples with equal sort keys come out in the order of their first
    member. Two passes over the spilled runs.

    :raises SampleError: see :func:`merge_fragments` and the sort key function
    """
    keyfunc = sorter.keyfunc
    sign = -1 if sorter.reverse else 1

    def numbered() -> Iterator[Sample]:
        for index, sample in enumerate(samples):
            sample[ORDER] = index
            yield sample

    sorter.keyfunc = lambda sample: (keyfunc(sample), sign * sample[ORDER])
    for sample in sorter.sort(group_by_key(numbered(), buffer_size, tmpdir)):
        del sample[ORDER]
        yield sample


def sort_samples(
    samples: Iterable[Sample],
    field: str | None = None,
    type: str = "str",
    reverse: bool = False,
    shuffle: bool = False,
    seed: str = "0",
    buffer_size: int = DEFAULT_BUFFER,
    tmpdir: str | None = None,
) -> Iterator[Sample]:
    """Sort (or shuffle) a sample stream with bounded memory; see
    :func:`sort_key_function` for the orders and :class:`ExternalSorter`
    for memory use, stability and temporary files."""
    sorter = ExternalSorter(sort_key_function(field, type, shuffle, seed), reverse, buffer_size, tmpdir)
    return sorter.sort(samples)
