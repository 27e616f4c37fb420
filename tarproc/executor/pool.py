"""Schedulers: hand work items to a job, in this process or in a pool.

A scheduler knows nothing about what the samples hold: it takes an
iterator of samples, cuts it into work items of ``job.chunk`` samples
(``[(index, sample), ...]``), has ``job.run(item)`` turn each into one
:class:`Result` per sample, and yields ``(input sample, result)`` in input
order (or as they finish), with at most ``window`` samples taken from the
input and not yet yielded (bounded read-ahead).

A job is any object with ``chunk`` (int), ``start()``, ``run(item) ->
list[Result]`` and ``stop()`` (see :class:`tarproc.executor.CommandJob`).

:func:`run_pool` runs ``parallel`` worker processes of its own
(:mod:`multiprocess` ``fork`` processes, each with a task pipe and a result
pipe of its own); samples and results cross them as raw buffers
(:mod:`.wire`), a task's bytes through memory the worker shares with the
parent (:class:`.wire.Arena`) when they fit. The parent never blocks on one worker: it writes tasks and
reads results as the pipes allow (``poll(2)``). A worker that dies is an
error naming it (its samples are lost), never a hang: the end of its result
pipe says so at once, and the parent stops the other workers itself.
"""

from __future__ import annotations

import collections
import fcntl
import gc
import itertools
import os
import select
import signal
import traceback
from collections.abc import Iterable, Iterator

from tarproc.errors import TarprocError
from tarproc.procs import describe_status
from tarproc.samples import Sample
from tarproc import guard
from tarproc.executor import wire

#: work items queued per worker (one running, one waiting in its pipe)
PER_WORKER = 2
#: seconds the parent waits for a worker to exit after SIGTERM before SIGKILL
STOP_GRACE = 5.0
#: pipe buffer asked for (F_SETPIPE_SZ): a 1 MB sample in one write
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def work_items(samples: Iterable[Sample], chunk: int) -> Iterator[list[tuple[int, Sample]]]:
    """``[(index, sample), ...]`` of ``chunk`` samples (the last may be shorter)."""
    numbered = enumerate(samples)
    if chunk <= 1:
        for pair in numbered:
            yield [pair]
        return
    while True:
        item = list(itertools.islice(numbered, chunk))
        if not item:
            return
        yield item


def run_serial(job, samples: Iterable[Sample]) -> Iterator[tuple[Sample, object]]:
    """Run every work item in this process (with :mod:`.guard`'s handlers
    in place, SIGINT/SIGTERM kill the running command first)."""
    try:
        job.start()
        for item in work_items(samples, job.chunk):
            results = job.run(item)
            for (_, sample), result in zip(item, results):
                yield sample, result
    finally:
        job.stop()


# ------------------------------------------------------------------ pool


def _worker_main(job, task_fd: int, result_fd: int, inherited: list[int], arena: wire.Arena) -> None:
    """A worker: read tasks until end of file, answer each with its results."""
    for fd in inherited:  # the parent's ends of other workers' pipes
        try:
            os.close(fd)
        except OSError:
            pass
    guard.enter_worker()
    gc.freeze()  # what the worker inherited is never collected here: no collection scans it again
    try:
        job.start()
        while True:
            message = wire.receive(task_fd, arena)
            if message is None:
                return
            item = wire.unpack_items(*message)
            try:
                results = job.run(item)
            except Exception:  # noqa: BLE001 - a bug must reach the parent, not hang it
                wire.send(result_fd, wire.pack(("crash", traceback.format_exc()), [], []))
                return
            wire.send(result_fd, wire.pack_results(results, dict(item)))
    finally:
        job.stop()


class _Worker:
    def __init__(self, context, job, inherited: list[int]):
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        for fd in (task_w, result_w):
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # the default size works, with more system calls
        self.arena = wire.Arena()  # before the fork: the worker shares its pages
        self.process = context.Process(
            target=_worker_main, args=(job, task_r, result_w, inherited + [task_w, result_r], self.arena),
            daemon=True, name="tarproc-worker",
        )
        try:
            self.process.start()
        finally:
            os.close(task_r)
            os.close(result_w)
        os.set_blocking(task_w, False)
        os.set_blocking(result_r, False)
        self.task_fd, self.result_fd = task_w, result_r
        self.writer = wire.Writer(task_w)
        self.reader = wire.Reader(result_r)
        # one entry per work item sent and not yet answered: whether its bytes are in the arena
        self.pending: collections.deque = collections.deque()

    @property
    def pid(self) -> int:
        return self.process.pid

    def died(self) -> TarprocError:
        self.process.join(STOP_GRACE)
        code = self.process.exitcode
        how = "ended" if code is None else describe_status(code)
        return TarprocError(f"worker process {self.pid} {how}: its sample is lost, stopping")


def _stop_workers(workers: list[_Worker], clean: bool) -> None:
    """End the workers: at the end of the input they exit once their task
    pipe is closed; otherwise SIGTERM (each kills its running command's
    process group), then SIGKILL for one that does not exit in time."""
    for w in workers:
        try:
            os.close(w.task_fd)
        except OSError:
            pass
        if not clean and w.process.exitcode is None:
            try:
                os.kill(w.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for w in workers:
        w.process.join(STOP_GRACE if not clean else None)
        if w.process.exitcode is None:
            os.kill(w.pid, signal.SIGKILL)
            w.process.join()
        try:
            os.close(w.result_fd)
        except OSError:
            pass
        w.arena.close()


def run_pool(job, samples: Iterable[Sample], parallel: int, ordered: bool = True,
             window: int | None = None) -> Iterator[tuple[Sample, object]]:
    """Run the work items in ``parallel`` worker processes (see the module docs).

    :param window: most samples taken and not yet yielded (default
        ``2 * parallel * job.chunk``)
    :raises TarprocError: a worker process died or crashed
    """
    import multiprocess

    chunk = max(1, job.chunk)
    window = window or PER_WORKER * parallel * chunk
    context = multiprocess.get_context("fork")
    workers: list[_Worker] = []
    poller = select.poll()  # level-triggered, as wire.Reader needs
    by_fd: dict[int, _Worker] = {}  # result and task fds -> their worker
    clean = False
    try:
        inherited: list[int] = []
        with guard.held_while_forking():  # a Ctrl-C or SIGTERM meanwhile acts once all are started
            for _ in range(parallel):
                worker = _Worker(context, job, inherited)
                workers.append(worker)
                inherited += [worker.task_fd, worker.result_fd]
                poller.register(worker.result_fd, select.POLLIN)
                by_fd[worker.result_fd] = worker
        items = work_items(samples, chunk)
        exhausted = False
        inputs: dict[int, Sample] = {}
        done: dict[int, object] = {}
        finished: collections.deque = collections.deque()  # unordered: (index, result)
        next_index = 0
        outstanding = 0  # samples taken from the input and not yet yielded
        writing: set = set()
        limit = max(window, chunk)
        queues = [w.pending for w in workers]  # aligned with workers: the least loaded is found without a call per worker
        while True:
            # hand back what is ready
            if ordered:
                while next_index in done:
                    result = done.pop(next_index)
                    outstanding -= 1
                    yield inputs.pop(next_index), result
                    next_index += 1
            else:
                while finished:
                    index, result = finished.popleft()
                    outstanding -= 1
                    yield inputs.pop(index), result
            # hand out work while the window and a worker's queue allow
            while not exhausted and outstanding + chunk <= limit:
                loads = list(map(len, queues))
                least = min(loads)
                if least >= PER_WORKER:
                    break
                worker = workers[loads.index(least)]  # the first of the least loaded, as min() gave
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                for index, sample in item:
                    inputs[index] = sample
                outstanding += len(item)
                buffers, in_arena = wire.pack_items(item, worker.arena)
                worker.pending.append(in_arena)
                try:
                    worker.writer.put_message(buffers)
                except BrokenPipeError:  # not our stdout: the worker is gone
                    raise worker.died() from None
                if worker.writer.queue and worker not in writing:  # .pending, without the property call
                    poller.register(worker.task_fd, select.POLLOUT)
                    by_fd[worker.task_fd] = worker
                    writing.add(worker)
            if exhausted and outstanding == 0:
                break
            for fd, _ in poller.poll():
                worker = by_fd[fd]
                if fd == worker.task_fd:  # writable (or the worker is gone: flush says so)
                    try:
                        worker.writer.flush()
                    except BrokenPipeError:
                        raise worker.died() from None
                    if not worker.writer.pending:
                        poller.unregister(worker.task_fd)
                        del by_fd[worker.task_fd]
                        writing.discard(worker)
                    continue
                messages = worker.reader.read()
                if messages is None:
                    raise worker.died()
                for skeleton, lengths, raw in messages:
                    if skeleton and skeleton[0] == "crash":
                        raise TarprocError(f"worker process {worker.pid} crashed:\n{skeleton[1]}")
                    if worker.pending.popleft():
                        worker.arena.release()  # the worker is done with that task's bytes
                    for result in wire.unpack_results(skeleton, lengths, raw, inputs):
                        if ordered:
                            done[result.index] = result
                        else:
                            finished.append((result.index, result))
        clean = True
    finally:
        _stop_workers(workers, clean)
