"""A global shuffle as two phases of shard tasks (:mod:`tarproc.jobs.tasks`).

A :class:`ShuffleJob` turns M inputs and N output shards into M map tasks
and N reduce tasks, each a :class:`tarproc.jobs.tasks.Task` whose pipeline is
the shuffle worker (``tarshuffle-worker ...``, run as ``python -m
tarproc.jobs.shuffle`` by this interpreter, see
:func:`tarproc.jobs.shuffle.worker.worker_main`):

* map task i: input i, its staged file ``STAGING/staged-{i:06d}.tar`` as
  output, the record beside it;
* reduce task j: no input (``pipe:true``), output shard j as output (named
  by the tarsplit pattern, :class:`tarproc.io.shards.ShardPattern`), the record
  beside it or under a records directory.

They run on tarmap's engines (:mod:`tarproc.jobs.engines`: a local pool, Dask;
``--index`` in a Kubernetes Indexed Job or a Slurm array) with tarmap's
retry loop, skip check and completion records (:func:`tarproc.jobs.tasks.run_task`,
:mod:`tarproc.jobs.records`). One thing differs: an attempt
(:func:`run_attempt`) lets the worker read its input and write its output
itself, atomically (:class:`tarproc.io.sinks.AtomicOutput`), instead of
streaming the output through the scheduler, which would parse and hash every
byte again in one Python process (that made the shuffle 1.7x slower than the
one-machine pipe on 2 cores).

A task's pipeline names everything that changes its output's bytes (N, the
seed, ``--rekey``, ``--no-shuffle``, and for a reduce task a fingerprint of
the inputs' names and identities), so a completion record is valid exactly
when a re-run would write the same bytes; the memory budget and the spill
directory travel in the environment. :func:`run` runs the map phase (unless
every reduce task is already complete), then the reduce phase, then
removes the staging files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence

import socket
import subprocess
import time

from tarproc import procs
from tarproc.jobs import records, tasks
from tarproc.jobs.engines import Engine
from tarproc.jobs.phases import PhaseOutcome, all_complete, check_job, run_phases
from tarproc.errors import ExitStatus, TarprocError, UsageError
from tarproc.io.shards import ShardPattern
from tarproc.jobs.shuffle.staged import join, staged_name
from tarproc.jobs.shuffle.worker import ENV_BUFFER, ENV_INPUT, ENV_OUTPUT, ENV_PARENT, ENV_STORAGE, ENV_TMPDIR
from tarproc.io.sinks import remove_stale_attempts
from tarproc.ops.sort import DEFAULT_BUFFER
from tarproc.io.storage import filesystem, identity, is_url, local_path

#: the input of a reduce task: it reads the staged files itself
NO_INPUT = "pipe:true"
#: the first word of a shuffle task's pipeline: run as ``python -m tarproc.jobs.shuffle`` with this
#: interpreter (:func:`worker_argv`)
WORKER = "tarshuffle-worker"
#: every task worker :func:`run_attempt` runs: first word of the pipeline ->
#: (module run with ``python -m``, the tool whose ``TOOL: error:`` lines it prints)
WORKERS = {WORKER: ("tarproc.jobs.shuffle", "tarshuffle"), "tardedup-worker": ("tarproc.jobs.dedup", "tardedup")}
PHASES = ("map", "reduce")


def default_staging(pattern: str) -> str:
    """The staging area beside the outputs: ``DIR/tarshuffle-staging`` where
    DIR holds output shard 0 (a directory or URL prefix)."""
    first = ShardPattern(pattern).name(0)
    parent = first.rsplit("/", 1)[0] if "/" in first else "."
    return join(parent, "tarshuffle-staging")


def inputs_fingerprint(inputs: Sequence[str], storage_options=None) -> str:
    """SHA-256 (16 hex digits) of the inputs' names and identities (size and
    mtime or ETag, :func:`tarproc.io.storage.identity`): a changed input
    changes every reduce task's pipeline, so their records no longer match.

    :raises TarprocError: a store could not be asked
    """
    described = [[spec, identity(spec, storage_options)] for spec in inputs]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ShuffleJob:
    """The two phases of a shuffle (see the module docstring).

    :ivar inputs: the input shards, in order (task i is input i)
    :ivar pattern: the output pattern (tarsplit's: ``out-%04d.tar``,
        ``out-{shard:04d}.tar``, a plain prefix; a URL works too)
    :ivar partitions: N, the number of output shards
    :ivar staging: directory or URL prefix of the staged files
    :ivar seed: seed of the partition hash and of the order
    :ivar shuffle: False keeps input order inside each output (--no-shuffle)
    :ivar rekey: a :class:`tarproc.ops.stages.Rekeyer` format applied per input
    :ivar strict: members without a key are errors (exit 3), not warnings
    :ivar buffer_size: memory budget of each task, bytes
    :ivar tmpdir: where tasks spill (default ``$TMPDIR``)
    :ivar records_dir: records of the reduce tasks there, not beside outputs
    :ivar fingerprint: :func:`inputs_fingerprint` (computed when empty)
    """

    inputs: tuple[str, ...]
    pattern: str
    partitions: int
    staging: str
    seed: str = "0"
    shuffle: bool = True
    rekey: str | None = None
    strict: bool = False
    buffer_size: int = DEFAULT_BUFFER
    tmpdir: str | None = None
    records_dir: str | None = None
    fingerprint: str = ""

    def __post_init__(self):
        check_job(self.inputs, self.partitions, "output shards")
        names = [self.output(j) for j in range(min(self.partitions, 2))]
        if self.partitions > 1 and names[0] == names[1]:
            raise UsageError(f"output pattern {self.pattern!r} gives every shard the same name: use %04d or {{shard:04d}}",
                             topic="output_pattern")

    # -------------------------------------------------------- names
    def output(self, j: int) -> str:
        return ShardPattern(self.pattern).name(j)

    def staged(self, i: int) -> str:
        return staged_name(self.staging, i)

    def env(self) -> dict[str, str]:
        env = {ENV_BUFFER: str(self.buffer_size)}
        if self.tmpdir:
            env[ENV_TMPDIR] = self.tmpdir
        return env

    # -------------------------------------------------------- tasks
    def _worker(self, *args: str) -> str:
        # what the task does, not where its interpreter lives: records stay valid across machines
        return " ".join(shlex.quote(a) for a in (WORKER, *args))

    def map_task(self, i: int) -> tasks.Task:
        args = ["map", "--partitions", str(self.partitions), "--seed", self.seed]
        if self.rekey is not None:
            args += ["--rekey", self.rekey]
        if self.strict:
            args.append("--strict")
        staged = self.staged(i)
        return tasks.Task(i, self.inputs[i], staged, self._worker(*args), records.record_path(staged, i))

    def reduce_task(self, j: int) -> tasks.Task:
        if not self.fingerprint:
            raise UsageError("the job has no inputs fingerprint")
        args = ["reduce", "--partition", str(j), "--partitions", str(self.partitions), "--seed", self.seed,
                "--staging", self.staging, "--inputs", str(len(self.inputs))]
        if not self.shuffle:
            args.append("--no-shuffle")
        # the fingerprint is an argument the worker ignores: it ties the record to the inputs' content
        pipeline = self._worker(*args) + f" # inputs {self.fingerprint}"
        output = self.output(j)
        return tasks.Task(j, NO_INPUT, output, pipeline, records.record_path(output, j, self.records_dir))

    def map_tasks(self) -> list[tasks.Task]:
        return [self.map_task(i) for i in range(len(self.inputs))]

    def reduce_tasks(self) -> list[tasks.Task]:
        return [self.reduce_task(j) for j in range(self.partitions)]

    def tasks(self, phase: str) -> list[tasks.Task]:
        if phase not in PHASES:
            raise UsageError(f"unknown phase {phase!r} (map or reduce)")
        return self.map_tasks() if phase == "map" else self.reduce_tasks()

    def with_fingerprint(self, storage_options=None) -> ShuffleJob:
        """This job with :attr:`fingerprint` computed (stats every input)."""
        if self.fingerprint:
            return self
        return dataclasses.replace(self, fingerprint=inputs_fingerprint(self.inputs, storage_options))

    def options(self, policy: tasks.RetryPolicy, storage_options=None, quiet: bool = False,
                force: bool = False) -> tasks.TaskOptions:
        """The :class:`tarproc.jobs.tasks.TaskOptions` of this job's tasks."""
        return tasks.TaskOptions(policy=policy, force=force, storage_options=storage_options, quiet=quiet,
                                 env=self.env())

    # -------------------------------------------------------- staging
    def remove_staging(self, storage_options=None) -> int:
        """Remove every staged file, its record and leftover attempt files,
        then the staging directory when it is empty. Returns files removed.

        :raises TarprocError: a store could not be asked
        """
        removed = 0
        for i in range(len(self.inputs)):
            staged = self.staged(i)
            for path in (staged, records.record_path(staged, i)):
                if _remove(path, storage_options):
                    removed += 1
            if not is_url(staged):
                removed += len(remove_stale_attempts(local_path(staged)))
        if not is_url(self.staging):
            try:
                os.rmdir(local_path(self.staging))
            except OSError:
                pass  # not empty (someone else's files) or gone
        return removed


def _remove(spec: str, storage_options=None) -> bool:
    from tarproc.errors import OutputError

    try:
        if is_url(spec):
            fs, path = filesystem(spec, storage_options)
            if not fs.exists(path):
                return False
            fs.rm(path)
        else:
            os.unlink(local_path(spec))
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutputError(f"{spec}: cannot remove: {exc}") from None


#: lines of a worker's stderr kept for the failure report
STDERR_TAIL = 5


def worker_argv(pipeline: str) -> list[str]:
    """The argv of a shuffle (or dedup) task's pipeline (``tarshuffle-worker map ...
    [# inputs FINGERPRINT]``): this interpreter running ``-m tarproc.jobs.shuffle``
    (:data:`WORKERS`).

    :raises tarproc.jobs.tasks.TaskFailure: not a shuffle or dedup task's pipeline
    """
    words = shlex.split(pipeline, comments=True)
    if not words or words[0] not in WORKERS:
        raise tasks.TaskFailure(f"not a tarshuffle or tardedup task: {pipeline!r}", permanent=True)
    return [sys.executable or "python3", "-m", WORKERS[words[0]][0], *words[1:]]


def _topic(out: bytes) -> str | None:
    """The topic of a failed worker's error (its last stdout line,
    ``{"topic": ...}``), or None."""
    try:
        topic = json.loads(out.decode().strip().splitlines()[-1]).get("topic")
    except (ValueError, IndexError, AttributeError):
        return None
    return topic if isinstance(topic, str) else None


def run_attempt(task: tasks.Task, attempt: int, options: tasks.TaskOptions,
                context: tasks.TaskContext | None = None) -> dict:
    """One attempt of a shuffle task: its worker (the task's pipeline, in
    its own process group) reads the input itself and writes the output
    atomically (``TARSHUFFLE_INPUT``/``TARSHUFFLE_OUTPUT``), printing its
    statistics; then the completion record (:mod:`tarproc.jobs.records`) is
    written. The worker's stderr is copied to ours unless ``quiet``.

    Stopped on ``timeout`` and by :meth:`tarproc.jobs.tasks.TaskContext.cancel`
    like a tarmap pipeline (SIGTERM, a grace, SIGKILL): the worker removes
    its partial output and spill files on SIGTERM, and stops by itself when
    this process dies (:func:`tarproc.jobs.shuffle.worker.worker_main`).

    :raises tarproc.jobs.tasks.TaskFailure: the attempt failed (``permanent`` when
        the worker exited 3: bad input data, a duplicate key)
    """
    context = context or tasks.TaskContext()
    if context.cancelled.is_set():
        raise tasks.TaskFailure("cancelled")
    started = time.time()
    clock = time.monotonic()
    storage = dict(options.storage_options or {})
    try:
        source_identity = identity(task.input, storage)
    except TarprocError as exc:
        raise tasks.TaskFailure(str(exc)) from None
    if source_identity is None:
        raise tasks.TaskFailure(f"{task.input}: no such input")
    env = dict(os.environ)
    env.update(options.env or {})
    env.update({ENV_INPUT: task.input, ENV_OUTPUT: task.output, ENV_PARENT: str(os.getpid())})
    if storage:  # the worker opens the URLs itself: in its environment, not on its command line
        env[ENV_STORAGE] = json.dumps(storage)
    try:
        proc = procs.spawn(worker_argv(task.pipeline), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        raise tasks.TaskFailure(f"cannot start the task: {exc.strerror}") from None
    context.track(proc)
    interrupted = False
    try:
        try:
            out, err = proc.communicate(timeout=options.policy.timeout)
        except subprocess.TimeoutExpired:
            context.kill(proc)
            proc.communicate()
            raise tasks.TaskFailure(f"timed out after {options.policy.timeout:g} s (stopped)") from None
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception)  # KeyboardInterrupt, Interrupted: --index mode
        raise
    finally:
        if interrupted:
            context.terminate(proc)  # the grace to remove its partial output
        context.stop(proc)
    lines = err.decode("utf-8", "replace").splitlines()
    prefix = WORKERS[shlex.split(task.pipeline, comments=True)[0]][1] + ": error: "
    if not options.quiet:
        for line in lines:
            if not line.startswith(prefix):  # the error is the failure's message
                context.line_writer(line)  # above a progress bar (tarproc.cli.tool.Tool.say)
    if context.cancelled.is_set():
        raise tasks.TaskFailure("cancelled")
    if proc.returncode != 0:
        errors = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
        detail = errors[-1] if errors else (" | ".join(lines[-STDERR_TAIL:]) or procs.describe_status(proc.returncode))
        raise tasks.TaskFailure(detail, permanent=proc.returncode == ExitStatus.DATA, topic=_topic(out))
    try:
        stats = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise tasks.TaskFailure(f"the task's worker printed no statistics: {out[-200:]!r}") from None
    record = records.make_record(
        task,
        input_identity=source_identity,
        samples=stats["samples"],
        members=stats.get("members", 0),
        size=stats["bytes"],
        tar_bytes=stats["tar_bytes"],
        sha256=stats["sha256"],
        md5=stats["md5"],
        seconds=round(time.monotonic() - clock, 3),
        attempts=attempt,
        host=socket.gethostname(),
        started=started,
    )
    if stats.get("max_rss"):
        record["max_rss"] = stats["max_rss"]  # peak memory of the worker, bytes (--buffer-size bounds it)
    try:
        records.write_record(task.record, record, storage)
    except TarprocError as exc:
        raise tasks.TaskFailure(str(exc)) from None
    return record


def run_task(task: tasks.Task, options: tasks.TaskOptions, say=None,
             context: tasks.TaskContext | None = None) -> tasks.TaskResult:
    """:func:`tarproc.jobs.tasks.run_task` (skip when complete, retries, backoff)
    with :func:`run_attempt`; module-level, so Dask workers can run it."""
    return tasks.run_task(task, options, say, context, attempt_fn=run_attempt)


def run_task_quiet(task: tasks.Task, options: tasks.TaskOptions) -> tasks.TaskResult:
    """:func:`run_task` reporting retries on stderr (for Dask workers)."""
    return run_task(task, options, say=lambda m: print(f"tarshuffle: {m}", file=sys.stderr, flush=True))


def run(
    job: ShuffleJob,
    options: tasks.TaskOptions,
    pool_factory: Callable[[], Engine],
    *,
    fn: Callable | None = None,
    fn_args: tuple = (),
    keep_staging: bool = False,
    max_errors: int | None = None,
    halt_after: int = 3,
    on_phase: Callable[[str, int], None] | None = None,
    on_result: Callable[[str, tasks.Task, tasks.TaskResult], None] | None = None,
    context: tasks.TaskContext | None = None,
) -> list[PhaseOutcome]:
    """Run the shuffle: the map phase (skipped when every reduce task is
    complete already), then the reduce phase, each on a fresh pool from
    ``pool_factory`` (:func:`tarproc.jobs.phases.run_phases`);
    then remove the staging files unless ``keep_staging``. A phase with
    failed or unrun tasks ends the run (the next phase does not start).

    :param fn: runs one task on the engine (:func:`run_task`, or
        :func:`run_task_quiet` for Dask), called as
        ``fn(task, options, *fn_args)``
    :param on_phase: called with (phase, number of tasks) when a phase starts
    :param on_result: called with (phase, task, result) as tasks finish
    :param context: the run's :class:`tarproc.jobs.tasks.TaskContext`, cancelled
        on an interrupt (None: a new one); local tasks get it through
        ``fn_args`` (``(say, context)`` for :func:`run_task`; without ``fn``,
        :func:`run_task` gets it)
    :returns: the outcome of each phase that was considered
    :raises KeyboardInterrupt, Interrupted: running pipelines are stopped
        (:meth:`tarproc.jobs.tasks.TaskContext.cancel`) first
    """
    context = context or tasks.TaskContext()
    job = job.with_fingerprint(options.storage_options)
    outcomes = []
    reduce_list = job.reduce_tasks()
    map_list = job.map_tasks()
    phases = [("map", map_list), ("reduce", reduce_list)]
    if not options.force and all_complete(reduce_list, options):
        outcomes.append(PhaseOutcome("map", map_list))  # not needed: the reduce tasks will all be skipped
        phases = phases[1:]
    fn, fn_args = (fn, fn_args) if fn is not None else (run_task, (None, context))
    outcomes += run_phases(phases, options, pool_factory, fn, fn_args, max_errors=max_errors, halt_after=halt_after,
                           on_phase=on_phase, on_result=on_result, context=context)
    if outcomes[-1].ok and not keep_staging:
        job.remove_staging(options.storage_options)
    return outcomes


def run_here(job: ShuffleJob, phase: str, indices: Sequence[int], options: tasks.TaskOptions, say=None,
             line_writer: Callable[[str], None] | None = None) -> list[tasks.TaskResult]:
    """Run tasks of one phase here, one after another (``--phase P --index
    I``, or ``I::STEP`` for several: a Kubernetes pod, a Slurm array task),
    with retries (:func:`tarproc.jobs.tasks.run_here`). The last reduce task
    to complete does not remove the staging (it cannot know the others are
    done): run the whole command once more for that (every task is skipped).

    :raises UsageError: an index is out of range
    """
    task_list_len = len(job.inputs) if phase == "map" else job.partitions
    for index in indices:
        if not 0 <= index < task_list_len:
            raise UsageError(f"task {index}: the {phase} phase has {task_list_len} tasks (0..{task_list_len - 1})",
                             topic="task_index")
    if phase == "reduce":
        job = job.with_fingerprint(options.storage_options)
    return tasks.run_here([job.reduce_task(i) if phase == "reduce" else job.map_task(i) for i in indices], options,
                          say, line_writer, attempt_fn=run_attempt)


__all__ = ["NO_INPUT", "ShuffleJob", "default_staging", "inputs_fingerprint", "run", "run_here"]
