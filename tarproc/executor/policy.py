"""The failure policy: what a failed sample does, and when the run stops.

A *handler* is a callable ``handler(result) -> action`` in the shape of
webdataset's ``handler=`` (``webdataset/handlers.py``), deciding per failed
sample, where it ran (in the worker process, so a retry costs no round
trip). ``result`` is the :class:`tarproc.executor.Result` of the attempt
(``result.attempts`` runs so far, ``result.reason``, ``result.log``...);
the action is one of:

``"retry"``
    run the sample again, in a fresh directory;
``"skip"``
    leave the sample out (the default);
``"keep"``
    keep the sample as the command left it;
``"abort"``
    stop the run (after the sample is reported).

:class:`ErrorPolicy` is the handler the ``tarproc`` tool builds from
``-e/--errors``, ``--retries``, ``--max-errors`` and ``--halt-after``, and
the one home of the stop rule: its :meth:`ErrorPolicy.observe` stops the run
on the counts (in the parent, which sees every result), and
:meth:`ErrorPolicy.holds` says when a failure's report waits for the rule
to decide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from tarproc.errors import CommandError

RETRY = "retry"
SKIP = "skip"
KEEP = "keep"
ABORT = "abort"
ACTIONS = (RETRY, SKIP, KEEP, ABORT)

Action = Literal["retry", "skip", "keep", "abort"]
Handler = Callable[["object"], str]

#: the ``-e/--errors`` spellings and the action each one takes
ERRORS = {"skip": SKIP, "ignore": KEEP, "abort": ABORT}

#: default of ``--halt-after``: stop when the first this many samples all failed
HALT_AFTER = 10


def skip_failed(result) -> str:
    """Handler: leave every failed sample out."""
    return SKIP


def keep_failed(result) -> str:
    """Handler: keep every failed sample as the command left it."""
    return KEEP


def abort_on_failure(result) -> str:
    """Handler: stop the run at the first failed sample."""
    return ABORT


class ErrorPolicy:
    """A handler (see the module docs) with run-level limits.

    :param errors: ``"skip"``, ``"ignore"`` (keep) or ``"abort"``: the action
        for a sample that failed all its attempts
    :param retries: run a failed sample again up to this many times
    :param max_errors: stop when more than this many samples failed (None:
        never)
    :param halt_after: stop when the first this many samples to finish all
        failed (0: never), like GNU parallel's ``--halt``
    :raises ValueError: an unknown ``errors`` or a negative count
    """

    def __init__(self, errors: str = "skip", retries: int = 0, max_errors: int | None = None,
                 halt_after: int = HALT_AFTER):
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {', '.join(ERRORS)}, not {errors!r}")
        if retries < 0 or halt_after < 0 or (max_errors is not None and max_errors < 0):
            raise ValueError("retries, max_errors and halt_after must not be negative")
        self.errors = errors
        self.retries = retries
        self.max_errors = max_errors
        self.halt_after = halt_after
        self.seen = 0
        self.failed = 0
        self.ok = 0
        self.first_failure = None

    def __call__(self, result) -> str:
        if result.attempts <= self.retries:
            return RETRY
        return ERRORS[self.errors]

    def final(self, result) -> str:
        """The action for a sample that failed where a retry cannot help
        (found in the parent, e.g. an output key already written)."""
        return ERRORS[self.errors]

    def holds(self) -> bool:
        """Whether a failure seen now (before :meth:`observe` counts it) may
        still be one of the first ``halt_after`` samples that all failed and
        stop the run: its report waits until a success, or the end, decides
        (:func:`tarproc.executor.runloop.process`)."""
        return bool(self.halt_after) and not self.ok and self.failed < self.halt_after

    def observe(self, result, what: str = "the command") -> None:
        """Count a finished sample (after its retries); raise to stop the run.

        :param what: names the command in the fail-fast message
        :raises CommandError: the sample's action is ``abort``; more than
            ``max_errors`` samples failed; the first ``halt_after`` samples
            all failed
        """
        self.seen += 1
        if not result.failed:
            self.ok += 1
            return
        self.failed += 1
        if self.first_failure is None:
            self.first_failure = result
        if result.action == ABORT:
            raise CommandError(f"sample {result.key!r} failed: {result.reason}", topic="abort")
        if self.max_errors is not None and self.failed > self.max_errors:
            raise CommandError(f"{self.failed} samples failed, more than the {self.max_errors} allowed", topic="max_errors")
        if self.halt_after and not self.ok and self.failed >= self.halt_after:
            first = self.first_failure
            message = f"the first {self.failed} samples all failed: {what}: {first.reason}"
            tail = [line for line in first.log.decode("utf-8", "replace").splitlines() if line.strip()][-3:]
            if tail:
                message += ": " + " | ".join(tail)
            raise CommandError(message, topic="halt_after")


def decide(handler, result) -> str:
    """Ask ``handler`` (None: :func:`skip_failed`) about a failed ``result``.

    :raises ValueError: the handler answered something else than an action
    """
    action = SKIP if handler is None else handler(result)
    if action not in ACTIONS:
        raise ValueError(f"a failure handler must return one of {', '.join(ACTIONS)}, not {action!r}")
    return action
