"""The per-sample executor: run a command (or a Python function) on every sample.

Seams, one module each:

- :mod:`.sandbox` prepares a sample's directory, executes the command
  (one process per sample, or a persistent shell per worker; one run per
  sample, or per batch of samples) and collects the outputs: the safety
  rules live there; every ``-c`` line runs in the shell (``bash -c CMD``),
  as GNU parallel and ``xargs sh -c`` do;
- :mod:`.pymap` runs a Python function on samples, with no directory and
  no process;
- :mod:`.schedule` hands self-contained work items to a job, in this
  process or in a pool of worker processes, and knows nothing about what
  the samples hold; :mod:`.wire` moves samples and results across the
  pipes as raw buffers;
- :mod:`.guard` is the signal safety (SIGINT/SIGTERM kill the running
  command's process group before anything else);
- :mod:`.policy` is the failure policy: a ``handler(result) -> action``
  callable (retry, skip, keep, abort) and the run-level limits (the one
  stop rule);
- :mod:`.runloop` is the run loop every caller shares (the ``tarproc``
  tool too): :func:`process` runs a job into a sink with the output-key
  ledger, held failure reports, a sink for failed inputs and the counts.

Only the parent writes output. :func:`run_samples` keeps at most ``window``
samples in flight, so the reader never runs more than a few samples per
worker ahead of the writer.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Iterator

from tarproc.samples import Sample, key_problem
from tarproc.executor.policy import (
    ABORT,
    KEEP,
    RETRY,
    SKIP,
    ErrorPolicy,
    abort_on_failure,
    keep_failed,
    skip_failed,
)
from tarproc import guard
from tarproc.executor.runloop import Summary, process
from tarproc.executor.results import Result
from tarproc.executor.sandbox import CommandJob, CommandSpec
from tarproc.executor.pool import run_pool, run_serial


def run_sample(spec: CommandSpec, sample: Sample, index: int) -> Result:
    """Run the command once for one sample, in this process (no retry).

    Never raises for a failing command or a sample directory that cannot be
    written: the failure is in the :class:`Result`.
    """
    job = CommandJob(spec)
    job.start()
    try:
        return job.run_one(index, sample)
    finally:
        job.stop()


def run_samples(
    job,
    samples: Iterable[Sample],
    parallel: int = 1,
    ordered: bool = True,
    window: int | None = None,
    handler=None,
    handle_signals: bool = False,
) -> Iterator[tuple[Sample, Result]]:
    """Run ``job`` for every sample; yield ``(input sample, result)``.

    :param job: a :class:`CommandSpec`, or a job (:class:`CommandJob`,
        :class:`tarproc.executor.pymap.MapJob`, anything with ``chunk``,
        ``start``, ``run``, ``stop``)
    :param parallel: worker processes; 1 runs in this process
    :param ordered: yield in input order (else in completion order)
    :param window: most samples in flight (default 2 per worker and batch)
    :param handler: the failure handler for a :class:`CommandSpec` (see
        :mod:`.policy`; default: skip failed samples); an
        :class:`ErrorPolicy` also stops the run on its limits
    :param handle_signals: while the run lasts, SIGINT and SIGTERM kill the
        running command's process group before they raise
        (:class:`KeyboardInterrupt`, :class:`tarproc.errors.Interrupted`):
        the tools ask for it. Only in the main thread (Python runs signal
        handlers there alone); by default the library leaves this process's
        handlers alone, so it runs in any thread (a thread pool, a Dask
        worker). Pool workers are processes of the run's own and always
        stop their commands on SIGTERM.

    A failing command, or a sample directory that cannot be written, gives a
    failed :class:`Result` (``result.action`` says what the handler
    decided); nothing is raised for them. The run-level checks happen when
    the consumer asks for the next result, so it can save the sample that
    stopped the run first.

    :raises CommandError: the handler aborted, or the policy's limits were
        reached (``--max-errors``, ``--halt-after``)
    :raises TarprocError: a worker process died (killed by the OOM killer,
        or by the command): its sample is lost, so the run stops
    """
    if isinstance(job, CommandSpec):
        job = CommandJob(job, handler)
    elif handler is not None:
        job.handler = handler
    policy = getattr(job, "handler", None)
    observe = getattr(policy, "observe", None)
    what = job.describe() if hasattr(job, "describe") else "the command"
    previous = None
    if handle_signals and threading.current_thread() is threading.main_thread():
        previous = guard.install_signal_handlers()
    try:
        if parallel <= 1:
            results = run_serial(job, samples)
        else:
            sys.stdout.flush()  # nothing buffered may be written twice by a forked worker
            sys.stderr.flush()
            results = run_pool(job, samples, parallel, ordered, window)
        try:
            for pair in results:
                yield pair
                if observe is not None:
                    observe(pair[1], what)
        finally:
            results.close()
    finally:
        if previous is not None:
            guard.restore_signal_handlers(previous)


def print_log(data: bytes) -> None:
    """Write one sample's command output to stderr in one piece."""
    if data:
        sys.stderr.flush()
        sys.stderr.buffer.write(data if data.endswith(b"\n") else data + b"\n")
        sys.stderr.flush()


__all__ = [
    "ABORT", "KEEP", "RETRY", "SKIP", "CommandJob", "CommandSpec", "ErrorPolicy", "Result",
    "Summary", "abort_on_failure", "keep_failed", "key_problem", "print_log", "process", "run_sample", "run_samples",
    "skip_failed",
]
