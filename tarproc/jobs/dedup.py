"""Exact duplicates across a whole dataset, as MapReduce over shards (tardedup).

Two samples are duplicates when the chosen fields (``by``; default every
data field) hold the same bytes: the content hash of a sample is BLAKE2b-256
(RFC 7693) over, for each chosen field in sorted order of names, the name
(UTF-8), a NUL, its length (8 bytes big-endian) and its bytes. The first
occurrence in input order (input index, then position in the input) is
kept; every later one is removed and listed with its twin (the first).

Three phases of tasks, on tarshuffle's machinery (:mod:`tarproc.jobs.shufflejob`:
tarmap's engines, retries, completion records, atomic outputs):

* **hash** (task i per input i): the input's samples are hashed and the
  records ``[digest, position, key]`` are written to ONE staged file,
  ``STAGING/hashes-{i:06d}.jsonl``, grouped by partition
  ``digest mod P``;
* **reduce** (task j per partition j): partition j's records are read from
  every hash file in input order; the first of each digest is kept, the
  others are written to ``STAGING/removed-{j:06d}.jsonl`` grouped by input;
* **write** (task i per input i): input i is copied to its output
  (``-o 'dedup/{stem}.tar'``, tarmap's patterns) without the samples the
  reduce tasks removed from it (their positions, read from every removal file).

A staged file is a JSON header line (``format``, ``kind``, ``input`` or
``partition``, ``ranges``: one ``[offset, length, records]`` per part,
offsets counted from the end of the header line) and then JSON lines, each
part a contiguous byte range (one range request on an object store).

At the end the removed samples are listed as JSON lines (``shard``, ``key``,
``position``, ``twin_shard``, ``twin_key``, ``twin_position``), in input
order, written atomically; then the staging files are removed.

Determinism: a sample's partition depends only on its content, the order of
records in a partition only on the input order, so the same inputs (and
``by``) give byte-identical outputs and list whatever P and whatever runs the
tasks, in any order, any number of times. A task's pipeline names everything that
changes its output (the write and reduce tasks a fingerprint of every
input), so a completion record is valid exactly when a re-run would write
the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

from tarproc.jobs import records, shufflejob, tasks
from tarproc.jobs.phases import all_complete, check_job, run_phases
from tarproc.errors import MissingFieldError, TarprocError, UsageError
from tarproc.samples import Sample, is_meta
from tarproc.jobs.shuffle.staged import StagingError, atomic_output, join, open_staged
from tarproc.jobs.shuffle.worker import ENV_INPUT, ENV_OUTPUT, ENV_STORAGE, write_output
from tarproc.io.sinks import remove_stale_attempts, write_tar
from tarproc.io.sources import iter_source_samples
from tarproc.io.storage import is_url, local_path

#: the first word of a dedup task's pipeline (:data:`tarproc.jobs.shufflejob.WORKERS`)
WORKER = "tardedup-worker"
PHASES = ("hash", "reduce", "write")
FORMAT = 1


# ------------------------------------------------------------------ hashing
def parse_by(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """The fields to compare, from ``"jpg cls"`` or ``"jpg,cls"`` (or a
    list); empty: every data field. Sorted, without repeats.

    :raises UsageError: a meta field (``__key__``)
    """
    if text is None:
        return ()
    words = [text] if isinstance(text, str) else list(text)
    names = sorted({w for word in words for w in word.replace(",", " ").split()})
    for name in names:
        if is_meta(name):
            raise UsageError(f"field {name!r} is a meta entry, not a data field")
    return tuple(names)


def content_hash(sample: Sample, by: Sequence[str] = ()) -> bytes:
    """BLAKE2b-256 of the fields ``by`` (sorted names; empty: every data
    field) of ``sample`` (see the module docstring).

    :raises MissingFieldError: a field of ``by`` is missing
    """
    names = by or sorted(k for k in sample if not is_meta(k))
    digest = hashlib.blake2b(digest_size=32, person=b"tardedup")
    for name in names:
        value = sample.get(name)
        if value is None:
            raise MissingFieldError(f"{sample.get('__source__', '-')}: sample {sample['__key__']!r} has no field"
                                    f" {name!r} to compare", topic="missing_field")
        if isinstance(value, str):
            value = value.encode("utf-8")
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0" + len(value).to_bytes(8, "big"))
        digest.update(value)
    return digest.digest()


def partition_of(digest: bytes, partitions: int) -> int:
    """The partition of a content hash: its first 8 bytes, big-endian, mod P."""
    return int.from_bytes(digest[:8], "big") % partitions


# ------------------------------------------------------------- staged files
def write_parts(out: BinaryIO, header: dict, parts: Sequence[list[bytes]]) -> tuple[int, int]:
    """Write a staged file: ``header`` plus ``ranges`` as the first line,
    then each part's lines. Returns (records, bytes)."""
    ranges, offset = [], 0
    for lines in parts:
        length = sum(len(line) for line in lines)
        ranges.append([offset, length, len(lines)])
        offset += length
    head = json.dumps({**header, "format": FORMAT, "ranges": ranges}, sort_keys=True).encode() + b"\n"
    out.write(head)
    for lines in parts:
        out.write(b"".join(lines))
    return sum(r[2] for r in ranges), len(head) + offset


def read_part(spec: str, part: int, storage_options: dict | None = None) -> tuple[dict, list]:
    """The header and the JSON records of part ``part`` of a staged file
    (two reads: the header line, then the part's byte range).

    :raises StagingError: missing, not a staged file of this format, or cut short
    """
    with open_staged(spec, storage_options) as handle:
        head = handle.readline()
        try:
            header = json.loads(head)
            offset, length, count = header["ranges"][part]
        except (ValueError, KeyError, IndexError, TypeError):
            raise StagingError(f"{spec}: not a tardedup staged file with part {part}") from None
        if header.get("format") != FORMAT:
            raise StagingError(f"{spec}: staged file format {header.get('format')!r}, expected {FORMAT}")
        if not count:
            return header, []
        handle.seek(len(head) + offset)
        data = handle.read(length)
    if len(data) != length:
        raise StagingError(f"{spec}: staged file is cut short")
    lines = data.splitlines()
    if len(lines) != count:
        raise StagingError(f"{spec}: part {part} holds {len(lines)} records, its header says {count}")
    return header, [json.loads(line) for line in lines]


@dataclasses.dataclass
class _Stats:
    samples: int
    bytes: int


def hash_shard(samples: Iterable[Sample], out: BinaryIO, partitions: int, by: Sequence[str], input: str) -> _Stats:
    """The hash task: ``[digest, position, key]`` of every sample of one
    input onto ``out``, grouped by partition (a staged file)."""
    parts: list[list[bytes]] = [[] for _ in range(partitions)]
    for position, sample in enumerate(samples):
        digest = content_hash(sample, by)
        line = json.dumps([digest.hex(), position, sample["__key__"]]).encode()  # ASCII: any key round-trips
        parts[partition_of(digest, partitions)].append(line + b"\n")
    n, size = write_parts(out, {"kind": "hashes", "input": input, "partitions": partitions}, parts)
    return _Stats(n, size)


def reduce_hashes(hash_files: Sequence[str], partition: int, out: BinaryIO,
                  storage_options: dict | None = None) -> _Stats:
    """The reduce task: partition ``partition`` of every hash file, in input
    order; every occurrence of a digest after its first is a removal,
    written to ``out`` grouped by input (a staged file).

    :raises StagingError: a hash file is missing or bad
    """
    first: dict[str, tuple[int, int, str]] = {}
    parts: list[list[bytes]] = [[] for _ in hash_files]
    inputs: list[str] = []
    for i, spec in enumerate(hash_files):
        header, found = read_part(spec, partition, storage_options)
        if header.get("kind") != "hashes" or header.get("partitions") != len(header.get("ranges", ())):
            raise StagingError(f"{spec}: not a tardedup hash file: run its hash task again")
        inputs.append(header["input"])
        for digest, position, key in found:
            twin = first.get(digest)
            if twin is None:
                first[digest] = (i, position, key)
                continue
            record = {"shard": inputs[i], "key": key, "position": position, "twin_shard": inputs[twin[0]],
                      "twin_key": twin[2], "twin_position": twin[1]}
            parts[i].append(json.dumps(record).encode() + b"\n")
    n, size = write_parts(out, {"kind": "removed", "partition": partition}, parts)
    return _Stats(n, size)


def removed_from(removal_files: Sequence[str], i: int, storage_options: dict | None = None) -> list[dict]:
    """The removal records of input ``i`` from every reduce task's file,
    in position order."""
    found = []
    for spec in removal_files:
        found.extend(read_part(spec, i, storage_options)[1])
    return sorted(found, key=lambda r: r["position"])


def write_shard(samples: Iterable[Sample], out: BinaryIO, drop: set[int], mtime: int = 0) -> _Stats:
    """The write task: ``samples`` onto ``out`` (an uncompressed tar stream)
    without those at the positions ``drop``.

    :raises StagingError: a position to drop is beyond the input's end (the
        input changed since it was hashed)
    """
    def kept() -> Iterator[Sample]:
        seen = 0
        for position, sample in enumerate(samples):
            seen += 1
            if position not in drop:
                yield sample
        if drop and max(drop) >= seen:  # before the end-of-archive marker
            raise StagingError(f"the input has {seen} samples, fewer than when it was hashed: run again")

    return _Stats(*write_tar(kept(), out, mtime))


# ---------------------------------------------------------------- the job
def hash_name(staging: str, i: int) -> str:
    """The hash file of input ``i``: ``STAGING/hashes-{i:06d}.jsonl``."""
    return join(staging, f"hashes-{i:06d}.jsonl")


def removal_name(staging: str, j: int) -> str:
    """The removal file of partition ``j``: ``STAGING/removed-{j:06d}.jsonl``."""
    return join(staging, f"removed-{j:06d}.jsonl")


@dataclasses.dataclass(frozen=True)
class DedupJob:
    """The three phases of a dedup (see the module docstring).

    :ivar inputs: the input shards, in order (task i is input i)
    :ivar pattern: the outputs, tarmap's pattern (``dedup/{stem}.tar``)
    :ivar removed: where the list of removed samples goes (path or URL)
    :ivar staging: directory or URL prefix of the staged files
    :ivar partitions: P, reduce tasks
    :ivar by: the fields compared (empty: every data field)
    :ivar strict: members without a key are errors, not warnings
    :ivar records_dir: records of the write tasks there, not beside outputs
    :ivar fingerprint: :func:`tarproc.jobs.shufflejob.inputs_fingerprint`
    """

    inputs: tuple[str, ...]
    pattern: str
    removed: str
    staging: str
    partitions: int
    by: tuple[str, ...] = ()
    strict: bool = False
    records_dir: str | None = None
    fingerprint: str = ""

    def __post_init__(self):
        check_job(self.inputs, self.partitions, "partitions")
        tasks.make_tasks(self.inputs, self.pattern, "true")  # a bad pattern, two tasks to one output

    def output(self, i: int) -> str:
        return tasks.output_name(self.pattern, i, self.inputs[i])

    def hash_file(self, i: int) -> str:
        return hash_name(self.staging, i)

    def removal_file(self, j: int) -> str:
        return removal_name(self.staging, j)

    def _worker(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in (WORKER, *args))

    def _by(self) -> list[str]:
        return ["--by", ",".join(self.by)] if self.by else []

    def task(self, phase: str, k: int) -> tasks.Task:
        if phase == "hash":
            args = ["hash", "--partitions", str(self.partitions), *self._by()] + (["--strict"] if self.strict else [])
            out = self.hash_file(k)
            return tasks.Task(k, self.inputs[k], out, self._worker(*args), records.record_path(out, k))
        if not self.fingerprint:
            raise UsageError("the job has no inputs fingerprint")
        tail = f" # inputs {self.fingerprint}"  # ties the record to every input's content
        if phase == "reduce":
            args = ["reduce", "--partition", str(k), "--partitions", str(self.partitions), "--staging", self.staging,
                    "--inputs", str(len(self.inputs)), *self._by()]
            out = self.removal_file(k)
            return tasks.Task(k, shufflejob.NO_INPUT, out, self._worker(*args) + tail, records.record_path(out, k))
        if phase == "write":
            args = ["write", "--index", str(k), "--partitions", str(self.partitions), "--staging", self.staging,
                    *self._by()] + (["--strict"] if self.strict else [])
            out = self.output(k)
            return tasks.Task(k, self.inputs[k], out, self._worker(*args) + tail,
                              records.record_path(out, k, self.records_dir))
        raise UsageError(f"unknown phase {phase!r} (hash, reduce or write)")

    def tasks(self, phase: str) -> list[tasks.Task]:
        count = self.partitions if phase == "reduce" else len(self.inputs)
        return [self.task(phase, k) for k in range(count)]

    def with_fingerprint(self, storage_options=None) -> DedupJob:
        if self.fingerprint:
            return self
        return dataclasses.replace(self, fingerprint=shufflejob.inputs_fingerprint(self.inputs, storage_options))

    def write_removed_list(self, storage_options=None) -> int:
        """Gather the removal records of every input, in input order, into
        :attr:`removed` (atomically; ``-``: stdout). Returns their number.

        :raises StagingError: a removal file is missing or bad
        :raises BrokenPipeError: stdout was closed
        """
        files = [self.removal_file(j) for j in range(self.partitions)]

        def write(out) -> int:
            n = 0
            for i in range(len(self.inputs)):
                for record in removed_from(files, i, storage_options):
                    out.write(json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n")
                    n += 1
            return n

        if self.removed == "-":
            n = write(sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return n
        with atomic_output(self.removed, storage_options) as out:
            return write(out)

    def remove_staging(self, storage_options=None) -> None:
        """Remove every staged file, its record and leftover attempt files,
        then the staging directory when empty."""
        staged = [self.hash_file(i) for i in range(len(self.inputs))]
        staged += [self.removal_file(j) for j in range(self.partitions)]
        for k, spec in enumerate(staged):
            index = k if k < len(self.inputs) else k - len(self.inputs)
            for path in (spec, records.record_path(spec, index)):
                shufflejob._remove(path, storage_options)
            if not is_url(spec):
                remove_stale_attempts(local_path(spec))
        if not is_url(self.staging):
            try:
                os.rmdir(local_path(self.staging))
            except OSError:
                pass


#: inputs per reduce task by default (:func:`default_partitions`)
INPUTS_PER_PARTITION = 8


def default_partitions(inputs: int) -> int:
    """P when none is given: one reduce task per :data:`INPUTS_PER_PARTITION`
    inputs, rounded up (each holds about 300 bytes per sample of its
    partition; a task costs a process start, about 0.1 s)."""
    return max(1, -(-inputs // INPUTS_PER_PARTITION))


def default_staging(job_pattern: str, inputs: Sequence[str]) -> str:
    """``DIR/tardedup-staging`` where DIR holds the first output."""
    first = tasks.output_name(job_pattern, 0, inputs[0])
    parent = first.rsplit("/", 1)[0] if "/" in first else "."
    return join(parent, "tardedup-staging")


def default_removed(job_pattern: str, inputs: Sequence[str]) -> str:
    """``DIR/removed.jsonl`` where DIR holds the first output."""
    first = tasks.output_name(job_pattern, 0, inputs[0])
    parent = first.rsplit("/", 1)[0] if "/" in first else "."
    return join(parent, "removed.jsonl")


@dataclasses.dataclass
class DedupOutcome:
    """The outcome of each phase run (:class:`tarproc.jobs.phases.PhaseOutcome`)
    and the number of samples removed (None: the list was not written)."""

    phases: list
    removed: int | None = None
    #: samples in the deduplicated outputs, from the write tasks' completion records
    kept: int = 0

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.phases) and self.removed is not None


def _kept(writes, options: tasks.TaskOptions) -> int:
    """Samples in the outputs of the (complete) write tasks, by their records."""
    return sum((tasks.is_complete(task, options) or {}).get("samples", 0) for task in writes)


def run(job: DedupJob, options: tasks.TaskOptions, pool_factory: Callable[[], object], *, fn: Callable | None = None,
        fn_args: tuple = (), keep_staging: bool = False, max_errors: int | None = None, halt_after: int = 3,
        on_phase=None, on_result=None, context: tasks.TaskContext | None = None) -> DedupOutcome:
    """Run the three phases (each on a fresh pool from ``pool_factory``,
    :func:`tarproc.jobs.phases.run_phases`),
    then write the removed list and remove the staging files. When every
    write task is complete and the list exists, nothing runs. A phase with
    failed or unrun tasks ends the run.

    Arguments as :func:`tarproc.jobs.shufflejob.run` (``context`` too: the
    run's :class:`tarproc.jobs.tasks.TaskContext`, cancelled on an interrupt).
    """
    from tarproc.io.storage import size

    context = context or tasks.TaskContext()
    job = job.with_fingerprint(options.storage_options)
    outcome = DedupOutcome([])
    writes = job.tasks("write")
    if (not options.force and job.removed != "-" and all_complete(writes, options)
            and size(job.removed, options.storage_options) is not None):
        outcome.removed = sum(1 for _ in _lines(job.removed, options.storage_options))
        outcome.kept = _kept(writes, options)
        return outcome
    fn, fn_args = (fn, fn_args) if fn is not None else (shufflejob.run_task, (None, context))
    outcome.phases = run_phases(((phase, job.tasks(phase)) for phase in PHASES), options, pool_factory, fn, fn_args,
                                max_errors=max_errors, halt_after=halt_after, on_phase=on_phase, on_result=on_result,
                                context=context)
    if not outcome.phases[-1].ok:
        return outcome
    outcome.removed = job.write_removed_list(options.storage_options)
    outcome.kept = _kept(writes, options)
    if not keep_staging:
        job.remove_staging(options.storage_options)
    return outcome


def _lines(spec: str, storage_options=None) -> Iterator[bytes]:
    with open_staged(spec, storage_options) as handle:
        yield from handle


# ---------------------------------------------------------------- the worker
def worker_main(argv: list[str] | None = None) -> int:
    """The program a dedup task runs (``python -m tarproc.jobs.dedup``, see
    :func:`tarproc.jobs.shufflejob.run_attempt`): ``hash``, ``reduce`` or
    ``write``, its input and output in ``TARSHUFFLE_INPUT`` and
    ``TARSHUFFLE_OUTPUT``, the output written atomically, its statistics
    printed as one JSON line. Returns the exit status (0, 1, 3)."""
    import argparse

    from tarproc.errors import ExitStatus

    parser = argparse.ArgumentParser(prog="python -m tarproc.jobs.dedup", description="one tardedup task")
    sub = parser.add_subparsers(dest="phase", required=True)
    h, r, w = sub.add_parser("hash"), sub.add_parser("reduce"), sub.add_parser("write")
    for p in (h, r, w):
        p.add_argument("--partitions", type=int, required=True)
        p.add_argument("--by", default="")
    for p in (h, w):
        p.add_argument("--strict", action="store_true")
    for p in (r, w):
        p.add_argument("--staging", required=True)
    r.add_argument("--partition", type=int, required=True)
    r.add_argument("--inputs", type=int, required=True)
    w.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    name = os.environ.get(ENV_INPUT) or "-"
    output = os.environ[ENV_OUTPUT]
    storage = json.loads(os.environ.get(ENV_STORAGE) or "{}")
    by = parse_by(args.by)

    def warn(message: str) -> None:
        print(f"tardedup: warning: {message}", file=sys.stderr, flush=True)

    try:
        if args.phase == "hash":
            def work(out):
                return hash_shard(iter_source_samples(name, warn, args.strict, storage_options=storage), out,
                                  args.partitions, by, name)
            stats = write_output(output, work, compress=False, digests=(), storage_options=storage)
        elif args.phase == "reduce":
            hash_files = [hash_name(args.staging, i) for i in range(args.inputs)]

            def work(out):
                return reduce_hashes(hash_files, args.partition, out, storage)
            stats = write_output(output, work, compress=False, digests=(), storage_options=storage)
        else:
            files = [removal_name(args.staging, j) for j in range(args.partitions)]
            drop = {r["position"] for r in removed_from(files, args.index, storage)}

            def work(out):
                return write_shard(iter_source_samples(name, warn, args.strict, storage_options=storage), out, drop)
            stats = write_output(output, work, compress=True, digests=("sha256",), storage_options=storage)
        print(json.dumps(stats, sort_keys=True), flush=True)
    except TarprocError as exc:
        print(f"tardedup: error: {exc}", file=sys.stderr, flush=True)
        if exc.topic:
            print(json.dumps({"topic": exc.topic}), flush=True)
        return int(exc.exit_status)
    except BrokenPipeError:
        return int(ExitStatus.SIGPIPE)
    return 0


__all__ = ["DedupJob", "DedupOutcome", "content_hash", "parse_by", "run", "worker_main"]

if __name__ == "__main__":
    raise SystemExit(worker_main())
