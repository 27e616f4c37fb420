"""A Slurm job array that runs one shard task per task index.

:func:`array_script` builds an sbatch script (Slurm's ``sbatch``
``#SBATCH`` directives; Slurm >= 20.11) whose array tasks run
``tarmap ... --index I``: the task list is deterministic, so index I names
the same task on any node, and a task that runs twice (a requeue, a
re-submission) is harmless (skipped when complete).

**Several tasks per array index** (``tasks_per_index`` P > 1, or more
tasks than ``MaxArraySize``, Slurm's default 1001: the highest array index
is ``MaxArraySize - 1``): the array has M = min(ceil(tasks / P),
``max_array_size``) indices, and **array index k runs tasks k, k + M,
k + 2M ... one after another in one process** (``--index env::M``). One
array, so ``%N`` throttling (``--array=0-999%N``) still bounds the tasks
running at once. Packing pays where tasks are short: each array task costs
a launch by the controller and slurmd, and one start of the tool (about
0.2 s on one node, measured in ``tests/bench/test_bench_slurm.py``); the
price is that an array task runs P shard tasks in a row (its
``--time-limit`` must cover them all) and a requeue re-runs the index
(its complete tasks are skipped). With one task per index (the default),
index k runs task k alone (``--index env``: ``SLURM_ARRAY_TASK_ID``).

An array task exits 0 when all its tasks are complete, else with the last
failed task's status (1 retryable, 3 bad input data). A re-submission of
the same script runs only what is not complete.

:func:`submit_chain` submits scripts with ``sbatch --parsable``, each
after the previous one succeeded (tarshuffle's map then reduce arrays), and
returns the job ids; :func:`chain_script` is the same as a bash script;
:func:`max_array_size` asks the controller (``scontrol show config``).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence

from tarproc.errors import SourceError, UsageError

#: Slurm's default MaxArraySize (slurm.conf)
DEFAULT_MAX_ARRAY_SIZE = 1001
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TIME = re.compile(r"^(\d+|\d+:\d{2}(:\d{2})?|\d+-\d+(:\d{2}(:\d{2})?)?)$")
_MEMORY = re.compile(r"^\d+[KMGT]?$")


def array_script(
    name: str,
    command: Sequence[str],
    tasks: int,
    *,
    parallelism: int | None = None,
    time_limit: str | None = None,
    cpus: int | None = None,
    memory: str | None = None,
    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
    dependency: str | None = None,
    workdir: str | None = None,
    tasks_per_index: int = 1,
) -> str:
    """The sbatch script (bash) of a job array running ``command --index I``
    for I in ``0 .. tasks-1``.

    :param name: the job's name (``--job-name``)
    :param command: the task's command (argv) without ``--index``
    :param tasks: number of tasks
    :param parallelism: array tasks at once (``--array=...%N``; default: no limit)
    :param time_limit: per array task (``--time``: ``MM``, ``HH:MM:SS``, ``D-HH``...)
    :param cpus: ``--cpus-per-task``
    :param memory: ``--mem`` per node (``4G``, ``500M``; a number is MB)
    :param max_array_size: the cluster's ``MaxArraySize`` (indices
        ``0 .. max_array_size-1``)
    :param dependency: an sbatch ``--dependency`` (``afterok:123``)
    :param workdir: the tasks' working directory (``--chdir``; default:
        where sbatch runs)
    :param tasks_per_index: tasks each array index runs, one after another
        (more where ``tasks`` need more than ``max_array_size`` indices)
    :raises UsageError: a bad name, count, time or memory
    """
    if not _NAME.match(name):
        raise UsageError(f"Slurm job name {name!r}: letters, digits, '_', '.' and '-'", topic="slurm_name")
    if tasks < 1:
        raise UsageError(f"an array of {tasks} tasks: there is nothing to run")
    if max_array_size < 1:
        raise UsageError(f"MaxArraySize {max_array_size}: must be >= 1")
    if tasks_per_index < 1:
        raise UsageError(f"{tasks_per_index} tasks per array index: must be >= 1")
    if time_limit is not None and not _TIME.match(time_limit):
        raise UsageError(f"time limit {time_limit!r}: use MINUTES, HH:MM:SS or D-HH:MM (as sbatch takes it)",
                         topic="time_limit")
    if memory is not None:
        memory = slurm_memory(memory)
    if cpus is not None and cpus < 1:
        raise UsageError(f"{cpus} CPUs per task: must be >= 1", topic="cpu")
    size = min(-(-tasks // tasks_per_index), max_array_size)
    array = f"0-{size - 1}" + (f"%{parallelism}" if parallelism else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --array={array}"]
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    if cpus:
        lines.append(f"#SBATCH --cpus-per-task={cpus}")
    if memory:
        lines.append(f"#SBATCH --mem={memory}")
    if dependency:
        lines.append(f"#SBATCH --dependency={dependency}")
    if workdir:
        lines.append(f"#SBATCH --chdir={workdir}")
    lines.append("#SBATCH --requeue")
    run = shlex.join(command)
    if size == tasks:
        lines += [f"# {tasks} tasks: array index I runs task I", f"exec {run} --index env"]
    else:
        why = (f"MaxArraySize {max_array_size}" if size == max_array_size
               else f"up to {tasks_per_index} tasks per array index")
        lines += [f"# {tasks} tasks on {size} array indices ({why}): array index K runs tasks K, K+{size},"
                  f" K+{2 * size} ... one after another",
                  f"exec {run} --index env::{size}"]
    return "\n".join(lines) + "\n"


def slurm_memory(value: str) -> str:
    """A memory size for ``sbatch --mem``: ``4G``, ``500M``, a number of MB,
    or a Kubernetes quantity with a binary suffix (``4Gi`` -> ``4G``: Slurm's
    units are powers of 1024).

    :raises UsageError: anything else
    """
    converted = re.sub(r"^(\d+)([KMGT])i$", r"\1\2", value)
    if not _MEMORY.match(converted):
        raise UsageError(f"memory {value!r}: use a number with K, M, G or T (4G; 4Gi is taken as 4G)", topic="memory")
    return converted


def chain_script(scripts: Sequence[str]) -> str:
    """A bash script that submits ``scripts`` (sbatch scripts) in order, each
    after the previous one succeeded (``--dependency=afterok:JOB``: every task
    of its array), and prints their job ids: tarshuffle's map, then reduce.
    """
    lines = ["#!/bin/bash", "# submits the arrays in order, each after the previous one succeeded", "set -euo pipefail",
             "after=()"]
    for i, script in enumerate(scripts):
        marker = f"TARPROC_SBATCH_{i}"
        lines += [f"job=$(sbatch --parsable \"${{after[@]}}\" <<'{marker}'", script.rstrip("\n"), marker, ")",
                  'echo "${job%%;*}"', 'after=("--dependency=afterok:${job%%;*}")']
    return "\n".join(lines) + "\n"


def submit_chain(scripts: Sequence[str]) -> list[str]:
    """Submit ``scripts`` in order, each after the previous one succeeded
    (:func:`chain_script`); the job ids.

    :raises SourceError: sbatch is missing or refused a job
    """
    ids: list[str] = []
    for script in scripts:
        options = [f"--dependency=afterok:{ids[-1]}"] if ids else []
        ids.append(_slurm(["sbatch", "--parsable", *options], script).strip().split(";")[0])
    return ids


def _slurm(argv: Sequence[str], script: str | None = None) -> str:
    try:
        proc = subprocess.run(list(argv), input=script, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SourceError(f"{argv[0]}: not found (Slurm's client commands are needed: apt-get install slurm-client)") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{argv[0]}: no answer from the Slurm controller in 120 s") from None
    if proc.returncode != 0:
        raise SourceError(f"{argv[0]} failed: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    return proc.stdout


def max_array_size() -> int:
    """The controller's ``MaxArraySize`` (``scontrol show config``).

    :raises SourceError: scontrol is missing or the controller cannot be reached
    """
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", _slurm(["scontrol", "show", "config"]), re.M)
    return int(match[1]) if match else DEFAULT_MAX_ARRAY_SIZE
