"""Read many shards in parallel worker processes, merged into one stream.

``N`` worker processes (the ``multiprocess`` package, a dill-based
``multiprocessing``) each read whole shards: worker ``w`` reads shards
``w, w+N, w+2N, ...`` and sends their samples back through its own bounded
queue in chunks (at most ``queue_chunks`` chunks of about ``chunk_bytes``
each are in flight per worker, so a worker never runs far ahead of the
parent). The parent takes the shards in input order, so the merged stream
is exactly the serial stream: every sample of every shard appears once,
in order, while the next shards are already being read and decompressed.

A worker's :class:`TarprocError` is sent back after the samples read
before it and raised in the parent at that point of the stream, with the
same class and message; the worker goes on with its next shard, so
:class:`tarproc.ops.stages.BadShards` can skip the shard. Warnings (skipped
members) are forwarded to the parent's ``warn``.
"""

from __future__ import annotations

import queue as queue_module
import traceback
from collections.abc import Iterator, Sequence

from tarproc import errors
from tarproc.errors import TarprocError, UsageError, Warn
from tarproc.samples import Sample
from tarproc.io.sources import iter_source_samples


#: seconds between liveness checks of a worker the parent waits for
POLL_SECONDS = 0.5


def _context():
    import multiprocess

    try:
        return multiprocess.get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        return multiprocess.get_context()


def _worker(specs: Sequence[str], out, strict: bool, chunk_bytes: int, chunk_samples: int, lowercase: bool = False,
            storage_options: dict | None = None) -> None:
    """Read ``specs`` one after another and put ``(kind, payload)`` messages
    on ``out``: ``("s", [samples])``, ``("w", message)``, ``("end", spec)``
    after a shard, ``("error", (class name, message, compression))`` after a
    failed shard (:attr:`TarprocError.compression`),
    ``("crash", traceback)`` on an unexpected exception."""
    from tarproc import guard

    guard.enter_reader()  # the parent handles ^C and kills us

    def warn(message: str) -> None:
        out.put(("w", message))

    def note(kind: str, count: int, example: str) -> None:
        out.put(("n", (kind, count, example)))

    try:
        for spec in specs:
            chunk: list[Sample] = []
            size = 0
            try:
                for sample in iter_source_samples(spec, warn, strict, lowercase=lowercase, note=note,
                                                  storage_options=storage_options):
                    chunk.append(sample)
                    for value in sample.values():
                        size += len(value)
                    if size >= chunk_bytes or len(chunk) >= chunk_samples:
                        out.put(("s", chunk))
                        chunk = []
                        size = 0
            except TarprocError as exc:
                if chunk:
                    out.put(("s", chunk))
                out.put(("error", (type(exc).__name__, str(exc), exc.compression)))
                continue
            if chunk:
                out.put(("s", chunk))
            out.put(("end", spec))
    except Exception:  # noqa: BLE001 - a bug in a worker must reach the parent
        out.put(("crash", traceback.format_exc()))


def _error_class(name: str) -> type[TarprocError]:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, TarprocError):
        return cls
    return TarprocError


class ParallelReader:
    """Read shards in ``processes`` worker processes; see the module docs.

    Iterating :meth:`shards` yields ``(spec, samples)`` per input in input
    order; each ``samples`` iterator must be consumed (or the reader closed)
    before the next. :meth:`samples` chains them. Use as a context manager
    or call :meth:`close`: workers are terminated and joined.

    :param specs: expanded inputs (files, ``pipe:CMD``, URLs; not ``-``)
    :param processes: worker processes (at most one per input is started)
    :param warn: called in the parent with forwarded warnings
    :param strict: members without a key are errors
    :param chunk_bytes: a worker sends its samples in chunks of about this
        many bytes of field data...
    :param chunk_samples: ...or this many samples, whichever comes first
    :param queue_chunks: chunks a worker may have in flight
    :param lowercase: lowercase field names (see :func:`tarproc.samples.group_samples`)
    :param note: called in the parent with forwarded notes (meta members read)
    :param storage_options: fsspec options for URL inputs (:func:`tarproc.io.sources.open_source`)
    :raises UsageError: ``-`` among the inputs (stdin cannot be shared)
    """

    def __init__(
        self,
        specs: Sequence[str],
        processes: int,
        warn: Warn | None = None,
        strict: bool = False,
        chunk_bytes: int = 1 << 22,
        chunk_samples: int = 256,
        queue_chunks: int = 8,
        *,
        lowercase: bool = False,
        note=None,
        storage_options: dict | None = None,
    ):
        if "-" in specs:
            raise UsageError("stdin ('-') cannot be read by parallel workers: read it in this process")
        self.specs = list(specs)
        self.processes = max(1, min(processes, len(self.specs)))
        self.warn = warn
        self.note = note
        ctx = _context()
        self._queues = [ctx.Queue(queue_chunks) for _ in range(self.processes)]
        self._procs = [
            ctx.Process(
                target=_worker,
                args=(self.specs[w :: self.processes], self._queues[w], strict, chunk_bytes, chunk_samples, lowercase,
                      storage_options),
                daemon=True,
                name=f"tarproc-reader-{w}",
            )
            for w in range(self.processes)
        ]
        self._started = False
        self.closed = False

    def _start(self) -> None:
        if not self._started:
            self._started = True
            from tarproc import guard

            with guard.held_while_forking():  # a signal meanwhile acts once all are started
                for proc in self._procs:
                    proc.start()

    def _get(self, w: int):
        q = self._queues[w]
        proc = self._procs[w]
        while True:
            try:
                return q.get(timeout=POLL_SECONDS)
            except queue_module.Empty:
                if not proc.is_alive():
                    try:
                        return q.get(timeout=POLL_SECONDS)
                    except queue_module.Empty:
                        raise TarprocError(
                            f"reader worker {w} died (exit status {proc.exitcode}) while reading"
                        ) from None

    def _shard(self, i: int) -> Iterator[Sample]:
        w = i % self.processes
        warn = self.warn
        while True:
            kind, payload = self._get(w)
            if kind == "s":
                yield from payload
            elif kind == "w":
                if warn is not None:
                    warn(payload)
            elif kind == "n":
                if self.note is not None:
                    self.note(*payload)
            elif kind == "end":
                return
            elif kind == "error":
                name, message, compression = payload
                error = _error_class(name)(message)
                error.compression = compression
                raise error
            else:
                raise RuntimeError(f"reader worker {w} crashed:\n{payload}")

    def shards(self) -> Iterator[tuple[str, Iterator[Sample]]]:
        """``(spec, samples)`` for every input, in input order."""
        self._start()
        for i, spec in enumerate(self.specs):
            yield spec, self._shard(i)

    def samples(self) -> Iterator[Sample]:
        """Every sample of every input, in input order; closes the workers at the end."""
        try:
            for _, samples in self.shards():
                yield from samples
        finally:
            self.close()

    def close(self) -> None:
        """Terminate and join the workers (also after an early stop)."""
        if self.closed:
            return
        self.closed = True
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            if self._started:
                proc.join()
        for q in self._queues:
            q.cancel_join_thread()
            q.close()

    def __enter__(self) -> ParallelReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parallel_samples(
    specs: Sequence[str], processes: int, warn: Warn | None = None, strict: bool = False, **options
) -> Iterator[Sample]:
    """Every sample of ``specs`` read by ``processes`` workers, in input order
    (the same stream as :func:`tarproc.io.sources.iter_samples`); ``processes``
    of 1 reads in-process. Options: see :class:`ParallelReader`.

    :raises TarprocError: the first error of any shard, in stream order
    """
    if processes <= 1 or len(specs) <= 1:
        for spec in specs:
            yield from iter_source_samples(
                spec, warn, strict, lowercase=options.get("lowercase", False), note=options.get("note"),
                storage_options=options.get("storage_options"),
            )
        return
    reader = ParallelReader(specs, processes, warn, strict, **options)
    yield from reader.samples()


__all__ = ["ParallelReader", "parallel_samples"]
