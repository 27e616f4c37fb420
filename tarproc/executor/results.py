"""What one sample's run gives back, and the retry loop every job shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tarproc.executor.policy import RETRY, decide


@dataclass
class Result:
    """The outcome of one sample.

    :ivar index: position of the input sample in the stream
    :ivar key: the input sample's key
    :ivar outputs: the output samples (dicts: ``__key__`` str, fields bytes), in order
    :ivar status: the command's exit status (negative: killed by that signal),
        None when it could not be run (or for a Python function)
    :ivar failed: whether the sample counts as failed
    :ivar reason: one-line description of the failure
    :ivar log: the command's stdout and stderr, interleaved as written (a
        function's traceback)
    :ivar warnings: messages about files that were not collected
    :ivar directory: the sample's directory when kept, else None
    :ivar attempts: how many times the sample ran (1 + retries)
    :ivar action: for a failed sample, what the failure handler decided
        (``"skip"``, ``"keep"``, ``"abort"``); None for a sample that did not fail
    :ivar leftovers: names the command left in the sample's directory that
        are not collected (not ``BASE.FIELD``; ``__key__`` and ``__source__``
        aside), in directory order
    """

    index: int
    key: str
    outputs: list = field(default_factory=list)
    status: int | None = None
    failed: bool = False
    reason: str = ""
    log: bytes = b""
    warnings: list = field(default_factory=list)
    directory: str | None = None
    attempts: int = 1
    action: str | None = None
    leftovers: list = field(default_factory=list)

    def fail(self, reason: str) -> None:
        """Mark the sample failed (the first reason given is kept)."""
        self.failed = True
        if not self.reason:
            self.reason = reason


def settle(run_once: Callable[[int], Result], handler) -> Result:
    """Run one sample (``run_once(attempt)``, attempt counting from 1) until
    it succeeds or ``handler`` stops retrying it; the result's ``action``
    holds the handler's decision."""
    attempt = 1
    while True:
        result = run_once(attempt)
        result.attempts = attempt
        if not result.failed:
            return result
        action = decide(handler, result)
        if action != RETRY:
            result.action = action
            return result
        attempt += 1
