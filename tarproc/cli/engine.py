"""The options of the tools that run tasks on an engine (tarmap,
tarshuffle), declared once in :data:`ENGINE` (given to
:func:`tarproc.cli.common.command` as ``options=``), and the code that maps
them onto the library: the task list's inputs (INPUT... and ``-T``), the
engine (``-j`` a local pool, ``--dask``, ``--index``, ``--k8s-job``), the
retry policy, the options a pod's command line repeats, the Job manifest,
and the progress bar of tasks. Their values are in ``tool.args``."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Annotated, Optional

import typer

from .. import k8s, schedule, tasks
from ..errors import UsageError
from ..sources import expand_inputs, input_kind
from ..stages import read_filelist
from .common import Shared, Tool

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
    typer.Option("--index", metavar="I|env", help="Run task I only ('env': JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID)."),
]
K8S_ONLY = "--image, --parallelism, --cpu, --memory, --env, --env-from-secret go with --k8s-job"


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
    "parallelism": _opt(Optional[int], None, "--parallelism", min=1, metavar="P", help="--k8s-job: pods at once."),
    "backoff_limit_per_index": _opt(int, 2, "--backoff-limit-per-index", min=0, metavar="N",
                                    help="--k8s-job: pod retries per index."),
    "cpu": _opt(Optional[str], None, "--cpu", metavar="C", help="--k8s-job: CPU request and limit (2, 500m)."),
    "memory": _opt(Optional[str], None, "--memory", metavar="M", help="--k8s-job: memory request and limit (4Gi)."),
    "env": _opt(Optional[list[str]], None, "--env", metavar="NAME[=VALUE]",
                help="--k8s-job: environment variable for the pods (repeatable)."),
    "env_from_secret": _opt(Optional[list[str]], None, "--env-from-secret", metavar="SECRET",
                            help="--k8s-job: Secret whose keys become variables (credentials belong here)."),
}
#: what an engine tool adds to a library error (or a stopped run) about a
#: value one of these options gives (``Tool.run(hints)``, ``Tool.hinted``)
HINTS = {
    "output_pattern": "given with -o",
    "stdin_input": "use -T - to read the list of inputs from stdin",
    "task_index": "given with --index",
    "dask": "given with --dask",
    "job_name": "given with --k8s-job",
    "job_env": "given with --env",
    "max_errors": "--max-errors N allows more",
    "halt_after": "--halt-after K sets how many (0: never)",
}
#: the options of :data:`tarproc.cli.common.SHARED` every engine tool takes
ENGINE_SHARED = "storage_options"


def task_specs(tool: Tool) -> list[str]:
    """The task list's inputs: INPUT... then each ``-T`` file's lines
    (:func:`tarproc.stages.read_filelist`, as tarcats reads them), brace
    patterns expanded.

    :raises UsageError: none given
    :raises SourceError: a file list cannot be read
    """
    specs = expand_inputs(tool.args.inputs or [])
    for path in tool.args.input_list or []:
        specs.extend(expand_inputs(read_filelist(path)))
    if not specs:
        raise UsageError("no inputs (give INPUT... or -T FILE)")
    return specs


def check_engine(tool: Tool, *more: tuple[str, object]) -> None:
    """Refuse engines given together (``--dask``, ``--index``, ``--k8s-job``
    and the tool's ``more`` ``(flag, value)`` modes), ``-j`` beside one that
    does not run a local pool, and ``--k8s-job`` options without it.

    :raises UsageError:
    """
    a = tool.args
    engines = (("--dask", a.dask), ("--index", a.index), ("--k8s-job", a.k8s_job))
    modes = [name for name, on in (*engines, *more) if on]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(modes)} cannot be combined")
    if a.jobs is not None and modes and modes[0] in dict(engines):
        raise UsageError(f"-j and {modes[0]} cannot be combined")
    if a.k8s_job is None and (any(v is not None for v in (a.image, a.parallelism, a.cpu, a.memory))
                              or a.env or a.env_from_secret):
        raise UsageError(K8S_ONLY)
    if a.k8s_job is not None and not a.image:
        raise UsageError("--k8s-job needs --image IMAGE")


def task_index(value: str) -> int:
    """``--index I`` or ``--index env``. :raises UsageError:"""
    label, expected = "--index", "a number or 'env'"
    if value == "env":
        for name in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
            if os.environ.get(name, "") != "":
                label, expected, value = f"--index env: {name}", "a number", os.environ[name]
                break
        else:
            raise UsageError("--index env: neither JOB_COMPLETION_INDEX nor SLURM_ARRAY_TASK_ID is set")
    try:
        index = int(value)
    except ValueError:
        raise UsageError(f"{label} {value!r}: expected {expected}") from None
    if index < 0:
        raise UsageError(f"{label} {index}: must be >= 0")
    return index


def retry_policy(tool: Tool) -> tasks.RetryPolicy:
    """``--retries``, ``--backoff``, ``--timeout``."""
    a = tool.args
    return tasks.RetryPolicy(retries=a.retries, backoff=a.backoff, timeout=a.timeout)


def make_pool(tool: Tool):
    """The pool tasks run on: Dask (``--dask``) or local processes (``-j``,
    default: the number of CPUs)."""
    if tool.args.dask is not None:
        pool = schedule.DaskPool(tool.args.dask)
        return pool if dask_shares_filesystem(tool.args.dask) else SeenOutputs(pool)
    return schedule.LocalPool(tool.args.jobs or os.cpu_count() or 1)


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


def _local_paths(tool: Tool, paths) -> list[tuple[str, str]]:
    """``(what, path)`` of the inputs (INPUT..., one line for all, and
    ``-T`` files) and the given ``(what, path)`` pairs that are local paths."""
    a = tool.args
    local_inputs = [spec for spec in a.inputs or [] if input_kind(spec) == "file"]
    listed = [("-T file list", path) for path in a.input_list or []]
    if local_inputs:
        more = f" (and {len(local_inputs) - 1} more)" if len(local_inputs) > 1 else ""
        listed.insert(0, ("input", local_inputs[0] + more))
    return [(what, path) for what, path in [*listed, *paths] if path is not None and input_kind(path) == "file"]


def warn_pod_paths(tool: Tool, *paths: tuple[str, str | None]) -> None:
    """Warn, once per ``(what, path)``, for the inputs (INPUT..., ``-T``
    files) and the given paths that are local: each pod sees its own file
    system, so a local output or staging area is lost with the pod unless
    every pod mounts it (a shared volume); an object-store URL needs no
    volume. A warning, not an error: the path may be such a volume."""
    for what, path in _local_paths(tool, paths):
        tool.warn(f"{what} {path!r} is a local path: every pod must mount it (a shared volume), or use an"
                  " object-store URL", problem=False)


def dask_shares_filesystem(address: str) -> bool:
    """Whether the workers of the Dask scheduler at ``address`` can be
    assumed to see this machine's files: ``local:N`` (workers started here)
    and a scheduler on a loopback address (``127.0.0.0/8``, ``::1``,
    ``localhost``) do; any other address may have workers anywhere, with a
    ``/tmp`` and working directory of their own."""
    import ipaddress
    from urllib.parse import urlsplit

    if address.startswith("local:"):
        return True
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_worker_paths(tool: Tool, *paths: tuple[str, str | None]) -> None:
    """Before any task runs on an engine whose workers do not share this
    machine's file system (``--dask`` at an address that is not loopback,
    :func:`dask_shares_filesystem`): warn, as :func:`warn_pod_paths` does for
    pods, for each local input, ``-T`` list and given path (output, records,
    staging). A warning, not an error: the workers may mount the path too (a
    shared file system); when they do not, :class:`SeenOutputs` turns each
    output this machine cannot see into a failed task."""
    if tool.args.dask is None or dask_shares_filesystem(tool.args.dask):
        return
    for what, path in _local_paths(tool, paths):
        tool.warn(f"{what} {path!r} is a local path: the Dask workers at {tool.args.dask} have file systems of their"
                  " own, so every worker and this machine must share it (a shared file system), or use an"
                  " object-store URL", problem=False)


def client_sees_output(result, where: str):
    """``result`` (a :class:`tarproc.tasks.TaskResult`), or, when it says
    complete or skipped and its output is a local path that this machine
    cannot see, the same result marked failed (retryable, exit status 1):
    the task ran on a worker (``where``) with a file system of its own, so
    its output and record lie there only, and a re-run would skip it on
    that worker."""
    if not result.ok or input_kind(result.output) != "file":
        return result
    path = result.output[7:] if result.output.startswith("file://") else result.output
    if os.path.exists(path):
        return result
    return dataclasses.replace(
        result, status="failed", record=None, topic="dask",
        message=(f"its output {result.output!r} is {result.status} on the {where} but not on this machine: the workers"
                 " do not share this file system; use an object-store URL or a path every worker and this machine"
                 " share"))


class SeenOutputs:
    """A pool (:mod:`tarproc.schedule`) whose results pass through
    :func:`client_sees_output`: a task never counts as complete while its
    local output lies on a worker only."""

    def __init__(self, pool, where: str = "Dask worker"):
        self.pool = pool
        self.where = where

    @property
    def window(self) -> int:
        return self.pool.window

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def wait_any(self, futures: set) -> set:
        return self.pool.wait_any(futures)

    def outcome(self, future):
        return client_sees_output(self.pool.outcome(future), self.where)

    def close(self, cancel: bool = False) -> None:
        self.pool.close(cancel)


def job_manifest(tool: Tool, name: str, argv: list[str], completions: int) -> dict:
    """The Indexed Job (:func:`tarproc.k8s.job_manifest`) with the
    ``--k8s-job`` options."""
    a = tool.args
    return k8s.job_manifest(name, a.image, argv, completions, parallelism=a.parallelism,
                            backoff_limit_per_index=a.backoff_limit_per_index, cpu=a.cpu, memory=a.memory,
                            env=a.env or [], env_from_secrets=a.env_from_secret or [])


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
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True, leave=False)
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
