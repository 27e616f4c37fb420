"""Shard tasks: run a shell pipeline once per input shard, exactly once.

A :class:`Task` is (index, input, output, pipeline). Running it
(:func:`run_task`) opens the input — a file, ``pipe:CMD`` or a URL (the
family's one URL reader, :func:`tarproc.io.sources.open_url`); its raw bytes, still compressed, go to the pipeline's stdin — and
runs the pipeline (``bash -c PIPELINE`` in its own process group, via
:mod:`tarproc.procs`) with ``TARMAP_INDEX``, ``TARMAP_INPUT`` and
``TARMAP_OUTPUT`` in its environment. The pipeline's stdout must be one
complete tar stream of WebDataset samples (compression detected from magic
bytes); it is verified on the fly by the strict reader
(:mod:`tarproc.io.tario`, :func:`tarproc.samples.group_samples`) while it is
written, compressed by the output's name, to an :class:`tarproc.io.sinks.AtomicOutput`
that appears at the output only when the pipeline exited 0 and the stream
was complete. A completion record (:mod:`tarproc.jobs.records`) is written after
the output; a task whose record matches is skipped.

Engines (a local pool, Dask, a Kubernetes Indexed Job, a Slurm array)
deliver a task at least once, maybe twice at the same time: the atomic
output, unique attempt files and the skip check make that harmless, without
locks.

The state of a run (its running pipelines, whether it was cancelled, where
lines go) lives in a :class:`TaskContext` passed to :func:`run_task`, not
in this module: two runs in one process do not share it. A pipeline
stopped early gets SIGTERM, :data:`tarproc.procs.TERM_GRACE` seconds, then
SIGKILL, so that a tarproc in it removes its sample directories.

Failures are classified by the exit-status contract of
:class:`tarproc.errors.ExitStatus`: a pipeline that exits 3 (bad input data)
fails its task permanently; any other non-zero exit, a signal, a timeout, an
invalid output stream, an input cut short or an I/O error of our own is retryable
(:class:`RetryPolicy`).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import io
import os
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from tarproc import procs
from tarproc.jobs import records
from tarproc.io.compress import compressing_writer, compression_for_name, decompressing_reader
from tarproc.errors import ExitStatus, TarprocError, UsageError
from tarproc.samples import group_samples
from tarproc.io.sinks import (
    AtomicOutput,
    HashingWriter,
    abort_stale_uploads,
    remove_stale_attempt_keys,
    remove_stale_attempts,
)
from tarproc.io.sources import open_url
from tarproc.io.storage import identity, is_url, local_path
from tarproc.io.tario import iter_members

#: suffixes removed from a file name to make ``{stem}``, longest first
STEM_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar.lz4", ".tgz", ".tbz2", ".tbz", ".txz",
                 ".tzst", ".tar")
#: lines of a pipeline's stderr kept for the failure report
STDERR_TAIL = 5
#: seconds a pipeline whose output stream went wrong gets to exit by itself
EXIT_GRACE = 5.0

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Task:
    """One shard task.

    :ivar index: its position in the task list (0-based), the same on every
        machine (``--index``, ``JOB_COMPLETION_INDEX``)
    :ivar input: file path, ``pipe:CMD`` or URL
    :ivar output: local path or fsspec URL of the output shard
    :ivar pipeline: a ``bash -c`` command: input shard on stdin, output shard
        (a tar stream) on stdout
    :ivar record: where its completion record lives (see :mod:`tarproc.jobs.records`)
    """

    index: int
    input: str
    output: str
    pipeline: str
    record: str


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and when a retryable failure is retried.

    :ivar retries: retries after the first attempt (total attempts = retries + 1)
    :ivar backoff: seconds before the first retry, doubled for each further
        one, at most :attr:`max_backoff`
    :ivar timeout: seconds an attempt may run before its pipeline's process
        group is stopped (SIGTERM, :data:`tarproc.procs.TERM_GRACE` seconds,
        SIGKILL; a retryable failure); None: no limit
    """

    retries: int = 2
    backoff: float = 1.0
    max_backoff: float = 60.0
    timeout: float | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2, 3, ...)."""
        return min(self.max_backoff, self.backoff * (2 ** max(0, attempt - 2)))


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Everything :func:`run_task` needs besides the task; picklable, so that
    Dask workers get the same settings (``storage_options`` included).

    :ivar policy: retries, backoff, timeout
    :ivar force: run even when the task is complete
    :ivar storage_options: fsspec options for URL inputs, outputs and records
    :ivar quiet: do not copy the pipeline's stderr to ours
    :ivar env: extra environment variables for the pipeline
    """

    policy: RetryPolicy = RetryPolicy()
    force: bool = False
    storage_options: Mapping | None = None
    quiet: bool = False
    env: Mapping[str, str] | None = None


class TaskFailure(Exception):
    """An attempt failed; ``permanent`` when retrying cannot help (exit 3);
    ``topic``: the rule a library error was about (:attr:`TarprocError.topic`),
    kept when the error crossed a process boundary as text."""

    def __init__(self, message: str, permanent: bool = False, topic: str | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.topic = topic


@dataclasses.dataclass
class TaskResult:
    """The outcome of :func:`run_task`.

    :ivar status: ``"complete"`` (done now), ``"skipped"`` (complete before)
        or ``"failed"``
    :ivar permanent: a failure that retrying cannot help (exit status 3)
    :ivar message: the failure, one line, with the pipeline's last stderr lines
    :ivar record: the completion record (complete and skipped tasks)
    :ivar topic: the failure's rule (:attr:`TarprocError.topic`), so a tool
        can add its option as a hint
    """

    index: int
    input: str
    output: str
    status: str
    attempts: int = 0
    permanent: bool = False
    message: str = ""
    record: dict | None = None
    topic: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("complete", "skipped")

    @property
    def exit_status(self) -> int:
        """The exit status of ``--index`` mode: 0, 3 (permanent) or 1."""
        if self.ok:
            return ExitStatus.OK
        return ExitStatus.DATA if self.permanent else ExitStatus.ERROR


# ------------------------------------------------------------ the task list
def stem(name: str) -> str:
    """A shard's file name without its tar/compression suffix
    (``imagenet-0001.tar.gz`` -> ``imagenet-0001``)."""
    lower = name.lower()
    for suffix in STEM_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def basename(spec: str) -> str:
    """The file name of an input (the last path part of a URL, without a query)."""
    if spec.startswith("pipe:"):
        return "pipe"
    path = spec.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1]


_FIELDS = {"index", "basename", "stem"}


def check_pattern(pattern: str) -> None:
    """Refuse an output pattern with unknown fields.

    :raises UsageError:
    """
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise UsageError(f"output pattern {pattern!r}: {exc}", topic="output_pattern") from None
    for _, field, _, _ in parsed:
        if field is not None and field not in _FIELDS:
            raise UsageError(f"output pattern {pattern!r}: unknown field {{{field}}}"
                             " (use {index}, {index:04d}, {basename}, {stem})", topic="output_pattern")


def output_name(pattern: str, index: int, spec: str) -> str:
    """Fill an output pattern: ``{index}``, ``{index:04d}``, ``{basename}``,
    ``{stem}``. :raises UsageError: a bad format"""
    name = basename(spec)
    try:
        return pattern.format(index=index, basename=name, stem=stem(name))
    except (ValueError, KeyError, IndexError) as exc:
        raise UsageError(f"output pattern {pattern!r}: {exc}", topic="output_pattern") from None


def _telling_apart(pattern: str, first: str, second: str) -> str:
    """What to put in an output pattern so that the outputs of inputs
    ``first`` and ``second`` differ: the fields whose values differ for
    them (``{index}`` always does), not those the pattern has already."""
    a, b = basename(first), basename(second)
    values = {"stem": (stem(a), stem(b)), "basename": (a, b)}
    same = [f"{{{field}}}" for field, (x, y) in values.items() if x == y and f"{{{field}" in pattern]
    fields = ["{index}"] + [f"{{{field}}}" for field, (x, y) in values.items() if x != y and f"{{{field}" not in pattern]
    use = fields[0] if len(fields) == 1 else ", ".join(fields[:-1]) + " or " + fields[-1]
    why = f"{' and '.join(same)} {'is' if len(same) == 1 else 'are'} the same for {first!r} and {second!r}; " if same else ""
    return f"{why}use {use}"


def make_tasks(inputs: Iterable[str], pattern: str, pipeline: str, records_dir: str | None = None) -> list[Task]:
    """The deterministic task list: task ``i`` is the ``i``-th input as given
    (brace patterns already expanded).

    :raises UsageError: a pattern with unknown fields, or one that maps two
        tasks to one output (found before anything runs)
    """
    check_pattern(pattern)
    tasks = []
    seen: dict[str, int] = {}
    inputs_seen: list[str] = []
    for index, spec in enumerate(inputs):
        if spec == "-":
            raise UsageError("'-' (stdin) is not an input of a task: each task reads its input itself", topic="stdin_input")
        output = output_name(pattern, index, spec)
        key = output if is_url(output) else os.path.abspath(local_path(output))
        if key in seen:
            other = inputs_seen[seen[key]]
            raise UsageError(
                f"output pattern {pattern!r} maps tasks {seen[key]} and {index} to the same output {output!r}"
                f" ({_telling_apart(pattern, other, spec)})", topic="output_pattern"
            )
        seen[key] = index
        inputs_seen.append(spec)
        tasks.append(Task(index, spec, output, pipeline, records.record_path(output, index, records_dir)))
    return tasks


# ------------------------------------------------------------ one attempt
class _Tee(io.RawIOBase):
    """A raw reader over a buffered ``reader`` that writes every chunk it
    reads to ``sink``. Under an :class:`io.BufferedReader` the strict
    reader's small reads (a header, a member) are served from the buffer
    while the output is written and hashed 64 KiB at a time (16 calls per
    MiB instead of two per member: 1,200 for a shard of 200 small samples)."""

    def __init__(self, reader, sink):
        self._read1 = reader.read1
        self._write = sink.write
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._read1(len(buffer))
        n = len(data)
        if n:
            self._write(data)
            self.bytes += n
            buffer[:n] = data
        return n


class _StderrPump(threading.Thread):
    """Copy a pipeline's stderr to ours, each line prefixed by the task,
    keeping the last lines for the failure report."""

    def __init__(self, stream, prefix: str, quiet: bool, line_writer: Callable[[str], None]):
        super().__init__(daemon=True)
        self.stream = stream
        self.prefix = prefix
        self.quiet = quiet
        self.line_writer = line_writer
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in self.stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.tail.append(line)
                if not self.quiet:
                    self.line_writer(f"{self.prefix}{line}")


class _Feeder(threading.Thread):
    """Copy an fsspec file into the pipeline's stdin."""

    def __init__(self, source, sink):
        super().__init__(daemon=True)
        self.source = source
        self.sink = sink
        self.error: str | None = None

    def run(self) -> None:
        try:
            while True:
                chunk = self.source.read(1 << 20)
                if not chunk:
                    break
                self.sink.write(chunk)
        except BrokenPipeError:
            pass  # the pipeline stopped reading: its exit status tells
        except Exception as exc:  # noqa: BLE001 - network errors of any fsspec backend
            self.error = f"reading the input failed: {exc}"
        finally:
            with contextlib.suppress(OSError, ValueError):
                self.sink.close()
            with contextlib.suppress(Exception):
                self.source.close()


def _print_line(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


class TaskContext:
    """The state of one run of tasks in this process, passed to
    :func:`run_task` and :func:`run_attempt`: two runs (two tools in one
    process, two threads) each have their own and never touch the other's
    pipelines. Not picklable: a Dask worker makes its own
    (:func:`run_task_quiet`).

    A pipeline stopped early (:meth:`cancel`, a task's ``timeout``, an
    interrupt in the thread running it) gets SIGTERM to its process group
    and ``grace`` seconds (:data:`tarproc.procs.TERM_GRACE`) to exit, so that
    a tarproc in it removes its sample directories; then SIGKILL.

    :param line_writer: where the lines of a pipeline's stderr and task
        warnings go, one line each (None: plain stderr); a CLI showing a
        progress bar passes a writer that keeps the bar intact
    :param grace: seconds between SIGTERM and SIGKILL
    """

    def __init__(self, line_writer: Callable[[str], None] | None = None, grace: float = procs.TERM_GRACE):
        self.line_writer: Callable[[str], None] = line_writer or _print_line
        self.grace = grace
        #: set by :meth:`cancel`: no new attempt starts
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        #: running attempts' pipelines (and their input commands) -> the
        #: monotonic deadline of their grace once they were sent SIGTERM
        self._running: dict[subprocess.Popen, float | None] = {}
        #: directories of fsspec outputs cleared of stale attempt keys (a
        #: listing of a store's directory costs requests: once per directory)
        self._cleared: set[str] = set()

    def __enter__(self) -> TaskContext:
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()  # kills something only when the run was interrupted

    def track(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running[proc] = None

    def terminate(self, proc: subprocess.Popen) -> float:
        """Send SIGTERM to ``proc``'s process group, once; returns the
        monotonic time its grace ends."""
        with self._lock:
            if proc not in self._running:  # stopped and reaped already: its PID may be another's now
                return time.monotonic()
            deadline = self._running[proc]
            if deadline is None:
                deadline = self._running[proc] = time.monotonic() + self.grace
                procs.kill_group(proc.pid, signal.SIGTERM)
        return deadline

    def kill(self, proc: subprocess.Popen) -> None:
        """:meth:`terminate`, wait for the group until the grace ends, then
        SIGKILL what is left of it (blocks up to ``grace`` seconds)."""
        if not procs.wait_group(proc, self.terminate(proc)):
            procs.kill_group(proc.pid)

    def stop(self, proc: subprocess.Popen) -> None:
        """Reap ``proc`` and stop tracking it; its group is killed at once,
        or, when it was sent SIGTERM, when it is gone or its grace ended."""
        with self._lock:
            deadline = self._running.get(proc)
        if deadline is not None:
            procs.wait_group(proc, deadline)
        procs.stop(proc)  # reaps it; kills what it left in its group
        with self._lock:
            self._running.pop(proc, None)

    def cancel(self) -> None:
        """Stop every pipeline of this run (:meth:`kill`, all at once) and
        start no new attempt: for SIGINT/SIGTERM of the scheduler. Their
        outputs are discarded; complete tasks keep their records. Blocks
        until they are gone, at most ``grace`` seconds."""
        self.cancelled.set()
        with self._lock:
            running = list(self._running)
        deadlines = [self.terminate(proc) for proc in running]
        for proc, deadline in zip(running, deadlines):
            if not procs.wait_group(proc, deadline):
                procs.kill_group(proc.pid)

    def remove_stale_keys_once(self, output: str, storage: Mapping) -> None:
        """:func:`tarproc.io.sinks.remove_stale_attempt_keys` in the directory
        of ``output``, once per directory in this run."""
        directory = output.rsplit("/", 1)[0]
        with self._lock:
            if directory in self._cleared:
                return
            self._cleared.add(directory)
        remove_stale_attempt_keys(directory, dict(storage))


def run_attempt(task: Task, attempt: int, options: TaskOptions, context: TaskContext | None = None) -> dict:
    """Run one attempt of ``task``: the output appears atomically and its
    completion record is written; returns the record.

    :param context: the run this attempt belongs to (None: one of its own)
    :raises TaskFailure: the attempt failed (``permanent`` when the pipeline
        exited 3; a URL input cut short is an I/O error, retryable); nothing
        appears at the output then
    """
    context = context or TaskContext()
    if context.cancelled.is_set():
        raise TaskFailure("cancelled")
    started = time.time()
    clock = time.monotonic()
    storage = dict(options.storage_options or {})
    label = f"task {task.index}"
    try:
        source_identity = identity(task.input, storage)
    except TarprocError as exc:  # the store or server could not be asked: retryable
        raise TaskFailure(str(exc)) from None
    if source_identity is None:
        raise TaskFailure(f"{task.input}: no such input")
    env = dict(os.environ)
    env.update(options.env or {})
    env.update(TARMAP_INDEX=str(task.index), TARMAP_INPUT=task.input, TARMAP_OUTPUT=task.output)

    stack = contextlib.ExitStack()
    source_proc = None
    feeder = None
    proc = None
    timed_out = threading.Event()
    timer = None
    interrupted = False
    try:
        # the input, raw: a file descriptor, an input command's stdout, or a feeder thread
        if task.input.startswith("pipe:"):
            source_proc = procs.spawn_shell(task.input[5:], stdout=subprocess.PIPE, env=env)
            context.track(source_proc)
            stdin = source_proc.stdout
        elif is_url(task.input):
            remote = open_url(task.input, storage)  # the family's one URL reader
            stack.callback(remote.close)
            stdin = subprocess.PIPE
        else:
            try:
                stdin = stack.enter_context(open(local_path(task.input), "rb"))
            except OSError as exc:
                raise TaskFailure(f"{task.input}: cannot open: {exc.strerror}") from None
        try:
            proc = procs.spawn_shell(task.pipeline, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            raise TaskFailure(f"cannot start the pipeline: {exc.strerror}") from None
        context.track(proc)
        if source_proc is not None:
            source_proc.stdout.close()  # the pipeline holds it now
        if stdin is subprocess.PIPE:
            feeder = _Feeder(remote, proc.stdin)
            feeder.start()
        pump = _StderrPump(proc.stderr, f"tarmap: {label}: ", options.quiet, context.line_writer)
        pump.start()
        if options.policy.timeout:
            def expire():  # SIGTERM, the grace, SIGKILL (TaskContext.kill)
                timed_out.set()
                if source_proc is not None:
                    context.terminate(source_proc)
                context.kill(proc)
                if source_proc is not None:
                    context.kill(source_proc)
            timer = threading.Timer(options.policy.timeout, expire)
            timer.daemon = True
            timer.start()

        def tail() -> str:
            pump.join(timeout=5)
            return ("; stderr: " + " | ".join(pump.tail)) if pump.tail else ""

        def input_failure() -> TaskFailure | None:
            """The input's own failure (a URL cut short), which explains a
            pipeline that saw a truncated stream: retryable."""
            if feeder is not None:
                feeder.join(timeout=EXIT_GRACE)
                if feeder.error:
                    return TaskFailure(feeder.error)
            return None

        def pipeline_failure(status: int, detail: str = "") -> TaskFailure:
            if timed_out.is_set():
                return TaskFailure(f"timed out after {options.policy.timeout:g} s (pipeline stopped){tail()}")
            if context.cancelled.is_set():
                return TaskFailure("cancelled")
            failure = input_failure()
            if failure is not None:
                return failure
            extra = f" ({detail})" if detail else ""
            return TaskFailure(f"pipeline {procs.describe_status(status)}{extra}{tail()}",
                               permanent=status == ExitStatus.DATA)

        if not is_url(task.output):
            remove_stale_attempts(local_path(task.output))
        else:
            context.remove_stale_keys_once(task.output, storage)
        out = AtomicOutput(task.output, storage, makedirs=True)
        samples = members = 0
        try:
            hashing = HashingWriter(out, ("sha256", "md5"))
            compression = compression_for_name(task.output)
            writer = compressing_writer(hashing, compression)
            tee = None
            try:
                stream = decompressing_reader(proc.stdout, f"{label} output")
                tee = _Tee(stream, writer)
                verified = io.BufferedReader(tee, 1 << 16)
                warn = (lambda m: None) if options.quiet else (lambda m: context.line_writer(f"tarmap: {label}: warning: {m}"))
                for sample in group_samples(iter_members(verified, f"{label} output", warn), f"{label} output", warn):
                    samples += 1
                    members += sum(1 for k in sample if not k.startswith("__"))
                while verified.read(1 << 20):  # the reader stops after the end marker's zero padding
                    pass
            except TarprocError as exc:
                # the stream is bad or cut: a pipeline that failed explains it best,
                # so give it a moment to exit on its own (our closed pipe stops a writer)
                with contextlib.suppress(OSError, ValueError):
                    proc.stdout.close()
                try:
                    status = proc.wait(timeout=EXIT_GRACE)
                except subprocess.TimeoutExpired:
                    context.kill(proc)
                    status = proc.wait()
                if status != 0 and not procs.died_of_sigpipe(status):
                    # a failed pipeline that wrote nothing is explained by its status alone
                    raise pipeline_failure(status, str(exc) if tee is not None and tee.bytes else "") from None
                raise input_failure() or TaskFailure(
                    f"the pipeline's output is not a complete tar stream: {exc}{tail()}") from None
            status = proc.wait()
            if status != 0:
                raise pipeline_failure(status)
            if timed_out.is_set() or context.cancelled.is_set():
                raise pipeline_failure(status)
            if source_proc is not None:
                source_status = source_proc.wait()
                if source_status != 0 and not procs.died_of_sigpipe(source_status):
                    raise TaskFailure(f"input command {procs.describe_status(source_status)}")
            if feeder is not None:
                feeder.join()
                if feeder.error:
                    raise TaskFailure(feeder.error)
            if writer is not hashing:
                writer.close()
            size = out.commit()
        except BaseException:
            out.discard()
            raise
        if not is_url(task.output):
            remove_stale_attempts(local_path(task.output))
        else:
            abort_stale_uploads(task.output, started, storage)
        record = records.make_record(
            task,
            input_identity=source_identity,
            samples=samples,
            members=members,
            size=size,
            tar_bytes=tee.bytes,
            sha256=hashing.hexdigest("sha256"),
            md5=hashing.hexdigest("md5"),
            seconds=round(time.monotonic() - clock, 3),
            attempts=attempt,
            host=socket.gethostname(),
            started=started,
        )
        records.write_record(task.record, record, storage)
        return record
    except TarprocError as exc:  # our own I/O (output, record, input store): retryable
        raise TaskFailure(str(exc)) from None
    except OSError as exc:
        raise TaskFailure(f"I/O error: {exc}") from None
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception)  # KeyboardInterrupt, Interrupted: in this thread (--index)
        raise
    finally:
        if timer is not None:
            timer.cancel()
        for p in (source_proc, proc):
            if p is not None and interrupted:
                context.terminate(p)  # the grace to clean up, as for a cancelled run
        for p in (proc, source_proc):
            if p is not None:
                context.stop(p)  # reaps it; kills what it left in its group
                for stream in (p.stdout, p.stderr, p.stdin):
                    if stream is not None:
                        with contextlib.suppress(OSError, ValueError):
                            stream.close()
        stack.close()


def is_complete(task: Task, options: TaskOptions) -> dict | None:
    """The task's completion record when the task is complete (see
    :func:`tarproc.jobs.records.check_record`), else None.

    :raises TarprocError: a store could not be asked
    """
    storage = dict(options.storage_options or {})
    return records.check_record(task, identity(task.input, storage), storage)


def task_state(task: Task, options: TaskOptions) -> tuple[str, dict | None]:
    """``(state, record)``: why the task is complete or not
    (:func:`tarproc.jobs.records.task_state`; ``complete`` exactly when
    :func:`is_complete` returns the record).

    :raises TarprocError: a store could not be asked
    """
    storage = dict(options.storage_options or {})
    return records.task_state(task, identity(task.input, storage), storage)


def client_sees_output(result: TaskResult, where: str) -> TaskResult:
    """``result``, or, when it says complete or skipped and its output is a
    local path that this machine cannot see, the same result marked failed
    (retryable, exit status 1): the task ran on a worker (``where``) with a
    file system of its own, so its output and record lie there only, and a
    re-run would skip it on that worker. :func:`tarproc.jobs.engines.run.run_all`
    applies it on engines whose workers do not share this file system."""
    path = local_path(result.output) if result.ok else None
    if path is None or os.path.exists(path):
        return result
    return dataclasses.replace(
        result, status="failed", record=None, topic="engine",
        message=(f"its output {result.output!r} is {result.status} on the {where} but not on this machine: the workers"
                 " do not share this file system; use an object-store URL or a path every worker and this machine"
                 " share"))


#: the :class:`TaskContext` of tasks whose caller cannot pass one: a Dask
#: worker's tasks (:mod:`tarproc.jobs.engines.dask` sets the worker's own, so an
#: interrupt there stops its pipelines). A context variable: each thread
#: (and each ``contextvars`` context) sees its own value, None by default.
CURRENT_CONTEXT: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("tarproc_task_context",
                                                                                    default=None)


def run_task(task: Task, options: TaskOptions = TaskOptions(), say: Say | None = None,
             context: TaskContext | None = None, *,
             attempt_fn: Callable[[Task, int, TaskOptions, TaskContext], dict] | None = None) -> TaskResult:
    """Run a task to the end: skip it when complete (unless ``force``), else
    attempt it with retries and backoff (:class:`RetryPolicy`). Never raises
    for a task's own failure; the caller reads :class:`TaskResult`.

    Module-level and picklable, so that Dask workers can run it.

    :param say: called with a one-line message for each retried failure
    :param context: the run this task belongs to, whose :meth:`TaskContext.cancel`
        stops it (None: one of its own, which nothing else can cancel)
    :param attempt_fn: ``attempt_fn(task, attempt, options, context)`` runs
        one attempt and returns its record, raising
        :class:`TaskFailure` (default :func:`run_attempt`; tarshuffle's tasks
        have their own, :func:`tarproc.jobs.shufflejob.run_attempt`)
    """
    result = TaskResult(task.index, task.input, task.output, "failed")
    try:
        if not options.force:
            record = is_complete(task, options)
            if record is not None:
                result.status = "skipped"
                result.record = record
                return result
    except TarprocError as exc:
        result.message = str(exc)
        result.topic = exc.topic
        return result
    context = context or CURRENT_CONTEXT.get() or TaskContext()
    policy = options.policy
    for attempt in range(1, policy.retries + 2):
        if attempt > 1:
            delay = policy.delay(attempt)
            if context.cancelled.wait(delay):
                result.message = result.message or "cancelled"
                return result
        result.attempts = attempt
        try:
            result.record = (attempt_fn or run_attempt)(task, attempt, options, context)
        except TaskFailure as exc:
            result.message = str(exc)
            result.permanent = exc.permanent
            result.topic = exc.topic
            if exc.permanent or context.cancelled.is_set():
                return result
            if say is not None and attempt <= policy.retries:
                say(f"task {task.index} ({task.input}): attempt {attempt} failed: {exc}; retrying")
            continue
        result.status = "complete"
        result.message = ""
        result.permanent = False
        result.topic = None
        return result
    return result


def run_task_quiet(task: Task, options: TaskOptions) -> TaskResult:
    """:func:`run_task` that reports retries on stderr, in a context of its
    own (for Dask workers, whose callers cannot pass a callback or a
    context)."""
    return run_task(task, options, say=lambda m: print(f"tarmap: {m}", file=sys.stderr, flush=True))


def run_here(task_list: Sequence[Task], options: TaskOptions = TaskOptions(), say: Say | None = None,
             line_writer: Callable[[str], None] | None = None, *,
             attempt_fn: Callable[[Task, int, TaskOptions, TaskContext], dict] | None = None) -> list[TaskResult]:
    """Run tasks one after another in this process, each as :func:`run_task`
    does (skip when complete, retries), in one :class:`TaskContext` whose
    exit stops what runs on an interrupt: ``--index``, in a Kubernetes pod or
    a Slurm array task running one task or several packed on its index
    (:func:`tarproc.jobs.slurm.array_script`). A failed task does not stop
    the next; an interrupt (KeyboardInterrupt, :class:`tarproc.errors.Interrupted`)
    stops them all.

    :returns: one result per task, in order
    """
    with TaskContext(line_writer) as context:
        return [run_task(task, options, say, context, attempt_fn=attempt_fn) for task in task_list]
