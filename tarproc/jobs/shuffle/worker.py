"""The program a shuffle task runs (``python -m tarproc.jobs.shuffle``,
see :func:`worker_main`): one map or reduce task, its input, output and
budgets in its environment (:data:`ENV_INPUT`...), its output written
atomically (:func:`write_output`), its statistics printed as one JSON line.
:mod:`tarproc.jobs.shufflejob` builds the tasks and runs this program."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import BinaryIO

from tarproc.errors import TarprocError
from tarproc.io.iov import whole_writes
from tarproc.io.sources import iter_source_samples
from tarproc.io.storage import is_url, local_path
from tarproc.io.tario import iter_members
from tarproc.jobs.shuffle.map import write_staged
from tarproc.jobs.shuffle.reduce import reduce_to_stream
from tarproc.jobs.shuffle.staged import atomic_output, staged_name
from tarproc.ops.sort import DEFAULT_BUFFER
from tarproc.ops.stages import Rekeyer
from tarproc.samples import Sample, group_samples

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


def main() -> int:
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


__all__ = ["ENV_BUFFER", "ENV_INPUT", "ENV_OUTPUT", "ENV_PARENT", "ENV_STORAGE", "ENV_TMPDIR", "main", "worker_main",
           "write_output"]
