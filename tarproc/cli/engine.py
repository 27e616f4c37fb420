"""The options of the tools that run tasks on an engine (tarmap,
tarshuffle, tardedup), declared once in :data:`ENGINE` (given to
:func:`tarproc.cli.app.command` as ``options=``), and the code that maps
them onto the library: the task list's inputs (INPUT... and ``-T``), the
engine (``-j`` the local engine, ``--dask`` or any other engine of
:mod:`tarproc.jobs.engines`, whose option is named after its module;
``--index``, ``--k8s-job``), the
retry policy, the options a pod's command line repeats, the Job manifest,
the progress bar of tasks, and the report of a job of phases
(:class:`PhaseReport`). Their values are in ``tool.args``."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tarproc.jobs import engines  # tasks, k8s, slurm: where used (a tool's start-up stays short)
from tarproc.errors import ExitStatus, UsageError
from tarproc.jobs.phases import PhaseOutcome
from tarproc.io.sources import input_urls
from tarproc.io.storage import url_kind
from tarproc.cli.options import Shared
from tarproc.cli.tool import Tool

if TYPE_CHECKING:
    from tarproc.jobs import tasks

TaskInputs = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Input shards: files, 'pipe:CMD', URLs, brace patterns like 'shard-{0000..0147}.tgz'.",
        show_default=False,
        metavar="INPUT",
    ),
]
IndexOpt = Annotated[
    Optional[str],
    typer.Option("--index", metavar="I|env[::STEP]",
                 help="Run task I only ('env': JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID);"
                      " I::STEP: tasks I, I+STEP ... one after another."),
]
K8S_ONLY = "--image, --parallelism, --cpu, --memory, --env, --env-from-secret go with --k8s-job"
SLURM_ONLY = "--slurm-submit, --time-limit, --max-array-size, --tasks-per-index go with --slurm-array"


def _opt(annotation, default, *names: str, **kwargs) -> Shared:
    return Shared(Annotated[annotation, typer.Option(*names, **kwargs)], default)


#: the options of every tool running tasks on an engine (tarmap, tarshuffle)
ENGINE: dict[str, Shared] = {
    "inputs": Shared(TaskInputs, None),
    "input_list": _opt(Optional[list[str]], None, "-T", "--files-from", metavar="FILE",
                       help="Read inputs from FILE, one per line ('-': stdin)."),
    "jobs": _opt(Optional[int], None, "-j", "--jobs", min=1, metavar="N", help="Local tasks at once [default: number of CPUs]."),
    "dask": _opt(Optional[str], None, "--dask", metavar="ADDRESS",
                 help="Run on Dask: tcp://HOST:8786, or local:N worker processes."),
    "index": Shared(IndexOpt, None),
    "retries": _opt(int, 2, "--retries", min=0, metavar="N", help="Retries of a failed task (not for exit status 3)."),
    "backoff": _opt(float, 1.0, "--backoff", min=0, metavar="SECONDS", help="Wait before the first retry, doubled for each next."),
    "timeout": _opt(Optional[float], None, "--timeout", min=0.001, metavar="SECONDS",
                    help="Kill a task after this long (retryable)."),
    "records_dir": _opt(Optional[str], None, "--records", metavar="DIR",
                        help="Completion records in DIR (path or URL) [default: OUTPUT.tarmap.json]."),
    "max_errors": _opt(Optional[int], None, "--max-errors", min=0, metavar="N", help="Stop starting tasks when more than N failed."),
    "halt_after": _opt(int, 3, "--halt-after", min=0, metavar="K",
                       help="Stop when the first K tasks to finish all failed (0: never)."),
    "k8s_job": _opt(Optional[str], None, "--k8s-job", metavar="NAME",
                    help="Print the Kubernetes Indexed Job(s) running the tasks (YAML)."),
    "image": _opt(Optional[str], None, "--image", metavar="IMAGE", help="--k8s-job: container image with tarproc."),
    "parallelism": _opt(Optional[int], None, "--parallelism", min=1, metavar="P",
                        help="--k8s-job: pods at once; --slurm-array: array tasks at once (%P)."),
    "backoff_limit_per_index": _opt(int, 2, "--backoff-limit-per-index", min=0, metavar="N",
                                    help="--k8s-job: pod retries per index."),
    "cpu": _opt(Optional[str], None, "--cpu", metavar="C",
                help="--k8s-job: CPU request and limit (2, 500m); --slurm-array: CPUs per task (2)."),
    "memory": _opt(Optional[str], None, "--memory", metavar="M",
                   help="--k8s-job: memory request and limit (4Gi); --slurm-array: memory per task (4G, 4Gi)."),
    "env": _opt(Optional[list[str]], None, "--env", metavar="NAME[=VALUE]",
                help="--k8s-job: environment variable for the pods (repeatable)."),
    "env_from_secret": _opt(Optional[list[str]], None, "--env-from-secret", metavar="SECRET",
                            help="--k8s-job: Secret whose keys become variables (credentials belong here)."),
    "slurm_array": _opt(Optional[str], None, "--slurm-array", metavar="NAME",
                        help="Print the Slurm job array running the tasks (an sbatch script)."),
    "slurm_submit": _opt(bool, False, "--slurm-submit", help="--slurm-array: submit it (sbatch); print the job id(s)."),
    "time_limit": _opt(Optional[str], None, "--time-limit", metavar="TIME",
                       help="--slurm-array: time limit per array task (sbatch --time: 30, 2:00:00)."),
    "max_array_size": _opt(Optional[int], None, "--max-array-size", min=1, metavar="N",
                           help="--slurm-array: the cluster's MaxArraySize [default: scontrol's with --slurm-submit, else 1001]."),
    "tasks_per_index": _opt(Optional[int], None, "--tasks-per-index", min=1, metavar="K",
                            help="--slurm-array: tasks each array index runs one after another, for short tasks"
                                 " [default: 1; more past MaxArraySize]."),
}
#: what an engine tool adds to a library error (or a stopped run) about a
#: value one of these options gives (``Tool.run(hints)``, ``Tool.hinted``)
HINTS = {
    "output_pattern": "given with -o",
    "stdin_input": "use -T - to read the list of inputs from stdin",
    "task_index": "given with --index",
    "job_name": "given with --k8s-job",
    "job_env": "given with --env",
    "slurm_name": "given with --slurm-array",
    "time_limit": "given with --time-limit",
    "memory": "given with --memory",
    "cpu": "given with --cpu",
    "max_errors": "--max-errors N allows more",
    "halt_after": "--halt-after K sets how many (0: never)",
}
HINTS.update({name: f"given with {'--' + name.replace('_', '-')}" for name in engines.names()
              if name != engines.DEFAULT})  # an engine's errors carry its name as topic
#: the options of :data:`tarproc.cli.options.SHARED` every engine tool takes
ENGINE_SHARED = "storage_options"


def task_specs(tool: Tool) -> list[str]:
    """The task list's inputs: INPUT... then each ``-T`` file's lines
    (:func:`tarproc.io.sources.input_urls`, as tarcats reads them), brace
    patterns expanded.

    :raises UsageError: none given
    :raises SourceError: a file list cannot be read
    """
    specs = input_urls(tool.args.inputs or [], tool.args.input_list or [])
    if not specs:
        raise UsageError("no inputs (give INPUT... or -T FILE)")
    return specs


def _engine_options(tool: Tool) -> list[tuple[str, str, object]]:
    """``(engine name, --option, value)`` of every engine but the local one
    (:func:`tarproc.jobs.engines.names`; the option is named after the module)."""
    return [(name, "--" + name.replace("_", "-"), getattr(tool.args, name, None))
            for name in engines.names() if name != engines.DEFAULT]


def check_engine(tool: Tool, *more: tuple[str, object]) -> None:
    """Refuse engines given together (``--dask`` and the other engines'
    options, ``--index``, ``--k8s-job`` and the tool's ``more``
    ``(flag, value)`` modes), ``-j`` beside one that does not run a local
    pool, and ``--k8s-job`` options without it.

    :raises UsageError:
    """
    a = tool.args
    modes_of_engines = [(flag, value) for _, flag, value in _engine_options(tool)]
    modes_of_engines += [("--index", a.index), ("--k8s-job", a.k8s_job), ("--slurm-array", a.slurm_array)]
    modes = [name for name, on in (*modes_of_engines, *more) if on]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(modes)} cannot be combined")
    if a.jobs is not None and modes and modes[0] in dict(modes_of_engines):
        raise UsageError(f"-j and {modes[0]} cannot be combined")
    if a.k8s_job is None and (a.image is not None or a.env or a.env_from_secret or (
            a.slurm_array is None and any(v is not None for v in (a.parallelism, a.cpu, a.memory)))):
        raise UsageError(K8S_ONLY)
    if a.slurm_array is None and (a.slurm_submit or a.time_limit is not None or a.max_array_size is not None
                                  or a.tasks_per_index is not None):
        raise UsageError(SLURM_ONLY)
    if a.k8s_job is not None and not a.image:
        raise UsageError("--k8s-job needs --image IMAGE")


_NUMBER = re.compile(r"[0-9]+")


def task_indices(value: str, count: int, phase: str | None = None) -> list[int]:
    """The tasks ``--index`` names, of ``count`` (of ``phase``, for the
    message): ``I``; ``env`` (``JOB_COMPLETION_INDEX``, else
    ``SLURM_ARRAY_TASK_ID``: a Kubernetes Indexed Job's pod, a Slurm array
    task); ``I::STEP`` (``I`` a number or ``env``): tasks I, I+STEP,
    I+2*STEP ... below ``count``, as Python's ``range(I, count, STEP)``
    (:func:`tarproc.jobs.slurm.array_script` packs tasks on array indices so).

    :raises UsageError: not of that form, or I out of range
    """
    start, packed, step_text = value.partition("::")
    if start == "env":
        name = next((n for n in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID") if os.environ.get(n, "") != ""), None)
        if name is None:
            raise UsageError(f"--index {value}: neither JOB_COMPLETION_INDEX nor SLURM_ARRAY_TASK_ID is set")
        if not _NUMBER.fullmatch(os.environ[name]):
            raise UsageError(f"--index {value}: {name} {os.environ[name]!r}: expected a number")
        start = os.environ[name]
    if not _NUMBER.fullmatch(start) or (packed and not (_NUMBER.fullmatch(step_text) and int(step_text) >= 1)):
        raise UsageError(f"--index {value!r}: expected I, env or I::STEP (I a number >= 0 or env, STEP a number >= 1)")
    index = int(start)
    if index >= count:
        if phase:
            raise UsageError(f"task {index}: the {phase} phase has {count} tasks (0..{count - 1})", topic="task_index")
        raise UsageError(f"--index {index}: there are {count} tasks (0..{count - 1})")
    return list(range(index, count, int(step_text))) if packed else [index]


def report_here(tool: Tool, results: Iterable[tasks.TaskResult], phase: str | None = None,
                name: Callable[[tasks.TaskResult], str] | None = None) -> None:
    """The end of an ``--index`` run (one task, or several packed on one
    array index): for each task in order, ``[PHASE ]task I: STATUS`` on
    stderr (with ``-vv`` its :func:`task_line` too), or for a failed one an
    error naming it (``name(result)`` in parentheses) and why.

    :raises typer.Exit: with the last failed task's exit status (1 a retry
        may fix it, 3 bad input data) when any failed
    """
    prefix, status = f"{phase} " if phase else "", 0
    for result in results:
        if result.ok:
            tool.info(prefix + task_line(result), level=2)
            tool.info(f"{prefix}task {result.index}: {result.status}")
        else:
            named = f" ({name(result)})" if name else ""
            tool.error(f"{prefix}task {result.index}{named} failed: {tool.hinted(result.message, result.topic)}")
            status = result.exit_status
    if status:
        raise typer.Exit(status)


def retry_policy(tool: Tool) -> tasks.RetryPolicy:
    """``--retries``, ``--backoff``, ``--timeout``."""
    from tarproc.jobs import tasks

    a = tool.args
    return tasks.RetryPolicy(retries=a.retries, backoff=a.backoff, timeout=a.timeout)


def make_engine(tool: Tool) -> engines.Engine:
    """The engine tasks run on, not started yet: the one whose option is
    given (``--dask ADDRESS``...), else the local engine (``-j``, default:
    the number of CPUs). A fresh one at each call (tarshuffle's phases).

    :raises UsageError: a malformed engine value
    """
    for name, _, value in _engine_options(tool):
        if value is not None:
            return engines.create(name, value)
    return engines.create(engines.DEFAULT, str(tool.args.jobs or os.cpu_count() or 1))


def engine_flag(engine: engines.Engine) -> str:
    """The option that chose ``engine`` (``--dask``; ``-j`` for the local one)."""
    return "-j" if engine.name == engines.DEFAULT else "--" + engine.name.replace("_", "-")


#: storage option keys that hold credentials (s3fs key/secret/token, gcsfs token...)
_SECRET_KEY = re.compile(r"(^|[._])(key|secret|token|password|credentials?|session_token|sas_token)([._]|$)", re.I)


def pod_argv(tool: Tool, name: str) -> list[str]:
    """The start of a pod's command: ``name``, the inputs as given, ``-T``
    files and the options every task repeats (retries, backoff, timeout,
    records, storage options). Storage options that look like credentials
    get a warning: a Job's command line is readable by anyone who can read
    the Job; credentials belong in a Secret (``--env-from-secret``)."""
    a = tool.args
    argv = [name, *(a.inputs or [])]
    for path in a.input_list or []:
        argv += ["-T", path]
    argv += ["--retries", str(a.retries), "--backoff", f"{a.backoff:g}"]
    if a.timeout is not None:
        argv += ["--timeout", f"{a.timeout:g}"]
    if a.records_dir is not None:
        argv += ["--records", a.records_dir]
    for item in a.storage_options or []:
        key = item.partition("=")[0]
        if _SECRET_KEY.search(key):
            tool.warn(f"--storage-option {key}=... is written into the Job's command line, readable by anyone who"
                      " can read the Job: put credentials in a Secret and use --env-from-secret", problem=False)
        argv += ["--storage-option", item]
    return argv


def warn_pod_paths(tool: Tool, *paths: tuple[str, str | None]) -> None:
    """Warn, once per ``(what, path)``, for the inputs (INPUT..., ``-T``
    files) and the given paths that are local: each pod sees its own file
    system, so a local output or staging area is lost with the pod unless
    every pod mounts it (a shared volume); an object-store URL needs no
    volume. A warning, not an error: the path may be such a volume."""
    _warn_local(tool, "every pod must mount it (a shared volume), or use an object-store URL", paths)


def warn_local_paths(tool: Tool, engine: engines.Engine, *paths: tuple[str, str | None]) -> None:
    """Before any task runs on an engine whose workers do not share this
    machine's file system (:attr:`tarproc.jobs.engines.Engine.shares_filesystem`
    False): warn, as :func:`warn_pod_paths` does for pods, for the local
    inputs, ``-T`` files and ``paths`` (output, records, staging): each
    worker would read and write its own disk, and outputs would lie on the
    workers only. Nothing for an engine that shares the file system."""
    if engine.shares_filesystem:
        return
    where = f"{engine_flag(engine)} {getattr(engine, 'address', '')}".rstrip()
    _warn_local(tool, f"the workers of {where} do not share this machine's files: every worker must mount it"
                      " (a shared volume), or use an object-store URL", paths)


def _warn_local(tool: Tool, advice: str, paths) -> None:
    a = tool.args
    local_inputs = [spec for spec in a.inputs or [] if url_kind(spec) == "file"]
    listed = [("-T file list", path) for path in a.input_list or []]
    if local_inputs:
        more = f" (and {len(local_inputs) - 1} more)" if len(local_inputs) > 1 else ""
        listed.insert(0, ("input", local_inputs[0] + more))
    for what, path in [*listed, *paths]:
        if path is not None and url_kind(path) == "file":
            tool.warn(f"{what} {path!r} is a local path: {advice}", problem=False)


def job_manifest(tool: Tool, name: str, argv: list[str], completions: int) -> dict:
    """The Indexed Job (:func:`tarproc.jobs.k8s.job_manifest`) with the
    ``--k8s-job`` options."""
    from tarproc.jobs import k8s

    a = tool.args
    return k8s.job_manifest(name, a.image, argv, completions, parallelism=a.parallelism,
                            backoff_limit_per_index=a.backoff_limit_per_index, cpu=a.cpu, memory=a.memory,
                            env=a.env or [], env_from_secrets=a.env_from_secret or [])


def slurm_arrays(tool: Tool, phases: list[tuple[str, list[str], int]]) -> None:
    """``--slurm-array NAME``: print the sbatch script of each phase
    ``(name, argv, tasks)`` (one: the script itself, for ``| sbatch``; more:
    a bash script submitting them in order, for ``| bash``), or with
    ``--slurm-submit`` submit them and print the job ids
    (:mod:`tarproc.jobs.slurm`). Tasks run in this directory (``--chdir``).

    :raises UsageError: a bad name, ``--cpu``, ``--memory`` or ``--time-limit``
    :raises SourceError: sbatch or scontrol failed
    """
    from tarproc.jobs import slurm

    a = tool.args
    cpus = None
    if a.cpu is not None:
        if not a.cpu.isdigit() or int(a.cpu) < 1:
            raise UsageError(f"--cpu {a.cpu!r}: a Slurm task takes a whole number of CPUs (2)")
        cpus = int(a.cpu)
    size = a.max_array_size or (slurm.max_array_size() if a.slurm_submit else slurm.DEFAULT_MAX_ARRAY_SIZE)
    scripts = [slurm.array_script(name, argv, count, parallelism=a.parallelism, time_limit=a.time_limit, cpus=cpus,
                                  memory=a.memory, max_array_size=size, workdir=os.getcwd(),
                                  tasks_per_index=a.tasks_per_index or 1)
               for name, argv, count in phases]
    if a.slurm_submit:
        ids = slurm.submit_chain(scripts)
        for (name, _, count), job in zip(phases, ids):
            tool.info(f"submitted {name}: Slurm job {job} ({count} tasks)")
        sys.stdout.write("".join(f"{job}\n" for job in ids))
    else:
        sys.stdout.write(scripts[0] if len(scripts) == 1 else slurm.chain_script(scripts))


def human(n: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 MB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def task_line(result) -> str:
    """The ``-vv`` line of a finished task."""
    record = result.record or {}
    took = f", {record['seconds']:.2f} s" if result.status == "complete" and "seconds" in record else ""
    return (f"task {result.index} ({result.input}): {result.status}, {record.get('samples', 0)} samples,"
            f" {human(record.get('bytes', 0))}{took} -> {result.output}")


class TaskBar:
    """tasks done/skipped/failed of total, samples and bytes, ETA (tqdm), on
    stderr when ``--progress`` (default: stderr is a terminal); the tool's
    messages go above it."""

    def __init__(self, tool: Tool, total: int):
        self.tool = tool
        self.done = self.skipped = self.failed = self.samples = self.bytes = 0
        self.bar = None
        if tool._progress_enabled():
            self.bar = tool.new_bar(total=total, unit="task")
            tool._bar = self.bar  # messages (Tool.say) go above the bar

    def update(self, result) -> None:
        if result.status == "complete":
            self.done += 1
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
        if result.record:
            self.samples += result.record.get("samples", 0)
            self.bytes += result.record.get("bytes", 0)
        if self.bar is not None:
            self.bar.set_postfix_str(f"done {self.done} skipped {self.skipped} failed {self.failed}"
                                     f" | {self.samples} samples {human(self.bytes)}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.tool._bar = None
            self.bar.close()


class PhaseReport:
    """What a tool running a job of phases (tarshuffle, tardedup:
    :mod:`tarproc.jobs.phases`) shows while it runs and at the end: a
    progress bar of each phase's tasks (:class:`TaskBar`), at ``-vv`` a line
    per phase and per finished task, an error per failed task, then a
    summary line per phase, and for the first phase not ``ok`` its failed
    tasks and the exit status.

    :param tool: the running tool
    :param task_line: the ``-vv`` line of a finished task, from
        ``(phase, result)``
    :param sizes: the summary adds the samples and bytes the tasks wrote
    :param notes: an error line added when the phase named fails
    """

    def __init__(self, tool: Tool, task_line: Callable[[str, tasks.TaskResult], str], sizes: bool = False,
                 notes: dict[str, str] | None = None):
        self.tool = tool
        self.task_line = task_line
        self.sizes = sizes
        self.notes = notes or {}
        self.bars: list[TaskBar] = []

    def run(self, job_run: Callable, job, options: tasks.TaskOptions, runner: engines.Engine,
            say: Callable[[str], None], **kwargs):
        """``job_run(job, options, ...)`` (:func:`tarproc.jobs.shufflejob.run`,
        :func:`tarproc.jobs.dedup.run`) with this report's callbacks, each
        phase on a fresh engine of the tool's choice (:func:`make_engine`;
        ``runner`` is one), the tool's ``--max-errors`` and ``--halt-after``
        and ``kwargs``. Tasks of an in-process engine report retries with
        ``say`` and their pipelines' lines above the bar; others
        (Dask) on their own stderr. Returns what ``job_run`` returns."""
        from tarproc.jobs import tasks
        from tarproc.jobs.shufflejob import run_task, run_task_quiet

        a = self.tool.args
        context = tasks.TaskContext(line_writer=self.tool.say)
        fn, fn_args = (run_task, (say, context)) if runner.in_process else (run_task_quiet, ())
        try:
            return job_run(job, options, lambda: make_engine(self.tool), fn=fn, fn_args=fn_args,
                           max_errors=a.max_errors, halt_after=a.halt_after, on_phase=self._phase,
                           on_result=self._result, context=context, **kwargs)
        finally:
            for bar in self.bars:
                bar.close()

    def _phase(self, name: str, total: int) -> None:
        for bar in self.bars:
            bar.close()
        self.bars[:] = [TaskBar(self.tool, total)]
        self.tool.info(f"{name} phase: {total} tasks", level=2)

    def _result(self, name: str, task: tasks.Task, result: tasks.TaskResult) -> None:
        tool = self.tool
        self.bars[-1].update(result)
        if result.ok:
            tool.info(self.task_line(name, result), level=2)
        else:
            tool.error(f"{name} task {task.index} ({task.output if name == 'reduce' else task.input}) failed"
                       f"{' permanently' if result.permanent else ''}: {tool.hinted(result.message, result.topic)}")

    def summarize(self, outcomes: Iterable[PhaseOutcome]) -> None:
        """A line per phase run (tasks done, skipped, failed); for the first
        phase not ``ok``, its failed tasks, then the exit.

        :raises typer.Exit: 3 when a task failed permanently, else 1
        """
        tool = self.tool
        for outcome in outcomes:
            run = outcome.summary
            if run is None:  # the phase was not needed
                continue
            if run.stopped:
                tool.error(f"{outcome.phase} phase stopped, {len(run.not_run)} tasks not run:"
                           f" {tool.hinted(run.stopped, run.stopped_topic)}")
            line = f"{outcome.phase}: {run.count('complete')} tasks done, {run.count('skipped')} skipped, {len(run.failed)} failed"
            if self.sizes:
                samples = sum(r.record.get("samples", 0) for r in run.results if r.record)
                size = sum(r.record.get("bytes", 0) for r in run.results if r.record)
                line += f"; {samples} samples, {human(size)}"
            tool.info(line)
            if not outcome.ok:
                failed = sorted(r.index for r in run.failed)
                if failed:
                    names = ", ".join(map(str, failed[:20])) + (" ..." if len(failed) > 20 else "")
                    tool.error(f"{len(failed)} of {len(outcome.tasks)} {outcome.phase} tasks failed: {names}")
                if outcome.phase in self.notes:
                    tool.error(self.notes[outcome.phase])
                raise typer.Exit(ExitStatus.DATA if outcome.permanent else ExitStatus.ERROR)
