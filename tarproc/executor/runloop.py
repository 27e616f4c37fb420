"""One run of a job over samples into an output: the run loop every caller shares.

:func:`process` runs a job on every sample (:func:`tarproc.executor.run_samples`)
and writes what comes back to a sink, with the rules that keep the output
loadable and nothing lost:

- **output keys**: a key already written from another input stops the run
  (:class:`tarproc.errors.DuplicateKeyError`: shards made independently
  repeat keys, and dropping samples would lose data); a key written before
  from the same input (or repeated among one sample's outputs) fails that
  sample, whose action is then the handler's final one
  (:meth:`.policy.ErrorPolicy.final`): a key that comes back makes the
  output ungrouped, and readers reject the whole shard;
- **failed samples** go to ``failed`` (a second sink, the input samples) and
  to ``report``; while every sample so far has failed and the stop rule may
  still halt the run (:meth:`.policy.ErrorPolicy.holds`), their reports are
  held, so a run that halts says so in one message (the caller's, from the
  :class:`tarproc.errors.CommandError`), not in one per sample;
- **the sinks are committed only when the run ends well**: any exception
  aborts ``sink`` (``NAME.partial`` removed); ``failed`` is finished when the
  stop rule ended the run (a :class:`CommandError`: the failed samples seen
  are all there is), aborted otherwise;
- **counts**: :class:`Summary` counts the samples read, written, failed,
  retried, the output samples left with no field (nothing to write: not
  written, and not counted as written) and the samples whose directory held
  files that were not collected (:attr:`.results.Result.leftovers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from tarproc.errors import CommandError, DuplicateKeyError, Warn
from tarproc.samples import KeyLedger, Sample, duplicate_message
from tarproc.executor.policy import KEEP
from tarproc.executor.results import Result


@dataclass
class Summary:
    """What one :func:`process` run did (filled as it goes, so the counts
    are right also when it raises).

    :ivar read: input samples run
    :ivar written: output samples written to the sink
    :ivar failed: input samples that failed (after their retries)
    :ivar retries: runs beyond the first, all samples together
    :ivar empty: output samples with no field left (not written)
    :ivar leftover_samples: samples whose directory held files that were
        not collected (not ``BASE.*``)
    :ivar leftover_names: up to :data:`LEFTOVER_NAMES` distinct such names
    :ivar leftover_more: whether there were more names than those
    """

    read: int = 0
    written: int = 0
    failed: int = 0
    retries: int = 0
    empty: int = 0
    leftover_samples: int = 0
    leftover_names: list = field(default_factory=list)
    leftover_more: bool = False

    def leftover_warning(self, base: str = "sample") -> str | None:
        """The one line about files left uncollected, or None when there were none."""
        if not self.leftover_samples:
            return None
        n = self.leftover_samples
        names = " ".join(sorted(self.leftover_names)) + (" ..." if self.leftover_more else "")
        return (f"{n} sample{'s' if n > 1 else ''} left files that are not collected"
                f" (only {base}.* files are): {names}")


#: names of uncollected files a :class:`Summary` remembers for its warning
LEFTOVER_NAMES = 5


def _has_fields(sample: Sample) -> bool:
    return any(name[:2] != "__" for name in sample)


def process(
    job,
    samples: Iterable[Sample],
    sink=None,
    *,
    failed=None,
    parallel: int = 1,
    ordered: bool = True,
    handle_signals: bool = False,
    report: Callable[[Result], None] | None = None,
    done: Callable[[Result], None] | None = None,
    warn: Warn | None = None,
    progress: Callable[[Iterator], Iterator] | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Run ``job`` on every sample and write the outputs to ``sink`` (see
    the module docs).

    :param job: as for :func:`tarproc.executor.run_samples` (its handler, an
        :class:`.policy.ErrorPolicy`, is the stop rule)
    :param sink: where output samples go (``write(sample)``, ``close()``,
        ``abort()``: a :class:`tarproc.io.sinks.TarSink`), or None; closed (its
        output committed) when the run ends well, aborted otherwise
    :param failed: a sink for the failed input samples, or None
    :param parallel: worker processes (1: this process)
    :param ordered: outputs in input order (else as they finish)
    :param handle_signals: as for :func:`tarproc.executor.run_samples`
    :param report: called with each failed :class:`Result`, in order
        (held while the run may still halt: see the module docs)
    :param done: called with each result whose outputs are written (a
        sample that succeeded, or one kept by ``"keep"``), after ``report``
    :param warn: called with each message about files not collected from
        a sample's directory
    :param progress: wraps the iterator of ``(input, result)`` pairs (a
        progress bar); it must yield every pair it gets
    :param summary: the :class:`Summary` to fill (default: a new one)
    :returns: the summary
    :raises DuplicateKeyError: an output key was already written from
        another input
    :raises CommandError: the stop rule ended the run (``--errors abort``,
        ``--max-errors``, ``--halt-after``)
    :raises TarprocError: a worker process died, an output cannot be written
    :raises KeyboardInterrupt: SIGINT (tarproc.errors.Interrupted: SIGTERM)
    """
    from tarproc.executor import run_samples

    summary = summary if summary is not None else Summary()
    policy = getattr(job, "handler", None)
    holds = getattr(policy, "holds", None)
    final = getattr(policy, "final", None)
    written = KeyLedger()  # output keys and their inputs, to refuse one that comes back
    held: list[Result] = []
    results = None

    def flush_held() -> None:
        while held:
            result = held.pop(0)
            if report is not None:
                report(result)

    try:
        results = run_samples(job, samples, parallel, ordered=ordered, handle_signals=handle_signals)
        pairs = progress(results) if progress is not None else results
        for inp, result in pairs:
            summary.read += 1
            summary.retries += result.attempts - 1
            if warn is not None:
                for message in result.warnings:
                    warn(message)
            if result.leftovers:
                summary.leftover_samples += 1
                for name in result.leftovers:
                    if name not in summary.leftover_names:
                        if len(summary.leftover_names) < LEFTOVER_NAMES:
                            summary.leftover_names.append(name)
                        else:
                            summary.leftover_more = True
            # the usual case, one output with a new key, is checked here once;
            # the sink loop below then need not look it up again
            outputs = result.outputs
            fresh = False
            if sink is not None:
                fresh = len(outputs) == 1 and written.first_source(outputs[0]["__key__"]) is None
                if not fresh and _check_output_keys(result, written) and final is not None:
                    result.action = final(result)
            if result.failed:
                summary.failed += 1
                if holds is not None and holds():
                    held.append(result)
                else:
                    flush_held()
                    if report is not None:
                        report(result)
                if failed is not None:
                    failed.write(inp)
                if result.action != KEEP:
                    continue
            elif held:
                flush_held()
            if done is not None:
                done(result)
            if sink is None:
                continue
            if fresh:
                out = outputs[0]
                if _has_fields(out):
                    written.add(out["__key__"], str(out.get("__source__", "-")))
                    sink.write(out)
                    summary.written += 1
                else:
                    summary.empty += 1
                continue
            for out in outputs:
                if written.first_source(out["__key__"]) is not None:
                    continue  # reported as a failure above ("keep": still left out)
                if not _has_fields(out):
                    summary.empty += 1
                    continue
                written.add(out["__key__"], str(out.get("__source__", "-")))
                sink.write(out)
                summary.written += 1
        flush_held()
        if sink is not None:
            sink.close()
        if failed is not None:
            failed.close()
    except BaseException as exc:
        stopped = isinstance(exc, CommandError)
        if not (stopped and exc.topic == "halt_after"):
            flush_held()
        if sink is not None:
            sink.abort()
        if failed is not None:
            if stopped:
                failed.close()
            else:
                failed.abort()
        raise
    finally:
        if results is not None:
            results.close()  # stops the workers and kills running commands
    return summary


def _check_output_keys(result: Result, written: KeyLedger) -> bool:
    """Stop on an output key already written from another input; fail a
    result whose output key was already written from its own input (or
    repeats within its outputs). Called for every result but the usual one
    (one output with a new key). True when it failed the result now.

    :raises DuplicateKeyError:
    """
    outputs = result.outputs
    keys = [out["__key__"] for out in outputs]
    for i, key in enumerate(keys):
        first = written.first_source(key)
        again = str(outputs[i].get("__source__", "-"))
        if first is not None and first != again:
            raise DuplicateKeyError(duplicate_message(key, first, again), key, first, again)
        if first is not None or key in keys[:i]:
            if not result.failed:
                result.failed = True
                result.reason = f"output key {key!r} was already written"
                return True
            return False
    return False
