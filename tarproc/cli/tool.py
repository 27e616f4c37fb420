"""The per-run state of a tool: :class:`Tool`, made for each run by
:func:`tarproc.cli.app.command` with the values of the shared options
(:mod:`tarproc.cli.options`) the tool takes.

A :class:`Tool` prints the tool's messages on stderr (above a progress bar),
applies the shared options (:meth:`Tool.input_specs`, :meth:`Tool.read`,
:meth:`Tool.open_output`, :meth:`Tool.progress`...), and in :meth:`Tool.run`
turns library errors into ``tool: error: message`` on stderr and the exit
status of :class:`tarproc.errors.ExitStatus` (``--debug`` or
``TARPROC_DEBUG=1``: the traceback instead). Also the checks and helpers a
tool calls itself: :func:`refuse_terminal`, :func:`refuse_terminal_input`,
:class:`Counter`, :func:`fed_by`.

Imports :mod:`tarproc.cli.options`, never :mod:`tarproc.cli.app`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import SimpleNamespace
from typing import Optional
from collections.abc import Iterable, Iterator

import typer

from tarproc.cli.options import compression_name
from tarproc.errors import ExitStatus, Interrupted, TarprocError, UsageError, raise_interrupted


class Tool:
    """Per-run state of a command: messages on stderr and the exit status.

    :param name: the tool's name, used as the message prefix
    :param verbose: ``-v`` count
    :param quiet: suppress warnings
    :param debug: let tracebacks through
    :param args: the values of the shared options the tool takes
        (``tool.args.count`` ...; see :func:`tarproc.cli.app.command`)
    """

    def __init__(self, name: str, verbose: int = 0, quiet: bool = False, debug: bool = False,
                 args: SimpleNamespace | None = None):
        self.name = name
        self.args = args if args is not None else SimpleNamespace()
        self.verbose = verbose
        self.quiet = quiet
        self.debug = debug
        #: warnings about data that was skipped; any makes the exit status 1
        self.problems = 0
        self.started = time.monotonic()
        self._bar = None  # the tqdm bar on stderr while one is shown
        self._bytes_read = 0  # input bytes read (as stored), when counted
        self._bytes_total: int | None = None
        self._counting = False
        #: notes from the library, by kind: [count, example]
        self.notes: dict[str, list] = {}
        #: topic -> hint, given to :meth:`run`
        self.hints: dict[str, str] = {}

    def warn(self, message: str, problem: bool = True) -> None:
        """Print ``tool: warning: message``; a ``problem`` (data skipped or
        lost) makes the final exit status 1."""
        if problem:
            self.problems += 1
        if not self.quiet:
            self.say(f"{self.name}: warning: {message}")

    def info(self, message: str, level: int = 1) -> None:
        """Print ``tool: message`` when ``-v`` was given ``level`` times
        (level 0: unless ``-q``)."""
        if self.verbose >= level and not (level == 0 and self.quiet):
            self.say(f"{self.name}: {message}")

    def note(self, kind: str, count: int, example: str) -> None:
        """Collect a note from the library (:data:`tarproc.samples.META_NOTE`:
        members read as meta entries); :meth:`run` prints one line per kind."""
        entry = self.notes.setdefault(kind, [0, example])
        entry[0] += count

    def print_notes(self) -> None:
        """One line per kind of note, unless ``quiet``."""
        for kind, (count, example) in self.notes.items():
            if not self.quiet and kind == "meta":
                self.say(
                    f"{self.name}: read {count} meta members ({example!r}...: KEY.__FIELD, as the original tarproc"
                    " writes them) as the samples' meta entries"
                )
        self.notes.clear()

    def error(self, message: str) -> None:
        """Print ``tool: error: message`` (also with ``-q``)."""
        self.say(f"{self.name}: error: {message}")

    def say(self, line: str) -> None:
        """Print a line on stderr; while a progress bar is shown, on its own
        line above the bar (the bar is cleared and drawn again below it)."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def stderr(self) -> Iterator:
        """Write to ``sys.stderr`` (e.g. a command's output) with the
        progress bar, if any, cleared first and drawn again after."""
        if self._bar is None:
            yield sys.stderr
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            yield sys.stderr

    def wrote(self, sink, output: str, inputs: str = "", more: str = "") -> None:
        """The ``-v`` summary of a tool that wrote ``sink`` (a
        :class:`tarproc.io.sinks.TarSink`) to ``output``: ``wrote N samples (B
        bytes)[ from INPUTS] to OUTPUT in S s[; MORE]``."""
        source = f" from {inputs}" if inputs else ""
        self.info(f"wrote {sink.samples} samples ({sink.bytes_written} bytes){source} to {output}"
                  f" in {self.elapsed():.2f} s{'; ' + more if more else ''}")

    def elapsed(self) -> float:
        """Seconds since the tool started."""
        return time.monotonic() - self.started

    # ------------------------------------------ helpers using the shared options
    def input_specs(self, inputs: list[str] | None = None, terminal: bool = True) -> list[str]:
        """The inputs (``inputs``, else ``tool.args.inputs``, else ``-``) with
        brace patterns expanded, checked to exist.

        :param terminal: refuse stdin when it is a terminal (tar data)
        :raises UsageError: stdin is a terminal
        :raises tarproc.errors.InputError: an input file does not exist
        """
        from tarproc.io.sources import check_inputs_exist, expand_inputs

        given = inputs if inputs is not None else getattr(self.args, "inputs", None)
        specs = expand_inputs(given or ["-"])
        if terminal:
            refuse_terminal_input(specs)
        check_inputs_exist(specs)
        return specs

    def read(self, specs: list[str], warn=None, regroup: bool = False) -> Iterator:
        """The samples of ``specs``, one input after another, with
        ``--strict``, ``--lowercase-fields``, warnings through ``warn``
        (default :meth:`warn`) and notes (meta members) to :meth:`note`;
        ``regroup``: see :func:`tarproc.samples.group_samples`."""
        from tarproc.io.sources import iter_samples

        return iter_samples(specs, warn or self.warn, getattr(self.args, "strict", False),
                            on_read=self.count_input(specs), lowercase=self.lowercase, regroup=regroup,
                            note=self.note, storage_options=self.storage_options)

    def samples(self, specs: list[str], warn=None) -> Iterator:
        """The samples of ``specs`` as a tool that only reads them sees them
        (tarshow, tar2json): :meth:`read`, ``--skip``/``--count``, counted
        for :meth:`read_summary`, through :meth:`progress`."""
        self._read = Counter()
        return self.progress(self._read(self.skip_count(self.read(specs, warn))))

    def read_summary(self, specs: list[str]) -> None:
        """The ``-v`` summary of :meth:`samples`: ``read N samples from K
        inputs in S s``."""
        self.info(f"read {self._read.n} samples from {len(specs)} inputs in {self.elapsed():.2f} s")

    def count_input(self, specs: list[str]):
        """The ``on_read`` callback for :func:`tarproc.io.sources.open_source`
        that feeds the progress bar the bytes read of ``specs`` (their total:
        the sizes of local files), or None when no bar is shown."""
        from tarproc.io.sources import input_size

        if not self._progress_enabled():
            return None
        meter = _ByteMeter(self, {spec: input_size(spec) for spec in specs})
        self._counting = True
        return meter

    def _progress_enabled(self, enabled: Optional[bool] = None) -> bool:
        if enabled is None:
            enabled = getattr(self.args, "progress", None)
        if enabled is None:
            enabled = sys.stderr.isatty() and fed_by(sys.stdin) is None
        return bool(enabled)

    def new_bar(self, **kwargs):
        """A tqdm bar on stderr labelled with the tool's name (``tarsplit:
        45%|...``), redrawn in place (``dynamic_ncols``, not left behind)."""
        from tqdm import tqdm

        return tqdm(file=sys.stderr, desc=self.name, dynamic_ncols=True, leave=False, **kwargs)

    @property
    def storage_options(self) -> dict:
        """``--storage-option KEY=VALUE...`` as fsspec ``storage_options``
        (:func:`tarproc.io.storage.parse_storage_options`; checked when parsed)."""
        from tarproc.io.storage import parse_storage_options

        try:
            return parse_storage_options(getattr(self.args, "storage_options", None) or [])
        except ValueError as exc:  # items that conflict (each alone was checked when parsed)
            raise UsageError(f"--storage-option {exc}") from None

    @property
    def lowercase(self) -> bool:
        """``--lowercase-fields``."""
        return getattr(self.args, "lowercase_fields", False)

    def skip_count(self, samples: Iterable) -> Iterator:
        """``--skip`` and ``--count`` applied to ``samples``."""
        from tarproc.ops.stages import skip_count

        skip, count = getattr(self.args, "skip", 0), getattr(self.args, "count", None)
        return skip_count(samples, skip, count) if skip or count is not None else samples

    def open_output(self, output: str, terminal: bool = True):
        """A :class:`tarproc.io.sinks.TarSink` for ``output`` with ``--compress``
        and ``--mtime``.

        :param terminal: refuse ``-`` when stdout is a terminal
        :raises UsageError: stdout is a terminal
        """
        from tarproc.io.sinks import open_sink

        if terminal:
            refuse_terminal(output)
        return open_sink(output, compression_name(getattr(self.args, "compress", None)),
                         mtime=getattr(self.args, "mtime", 0), storage_options=self.storage_options)

    def progress(self, iterable: Iterable, enabled: Optional[bool] = None, unit: str = "sample",
                 total: int | None = None, describe=None):
        """Wrap ``iterable`` (samples, or what ``describe`` describes) for the
        progress bar and ``-vv``.

        The bar (tqdm, on stderr) is shown when ``enabled`` (None:
        ``--progress``/``--no-progress``, else when stderr is a terminal).
        When :meth:`read` counts the input's bytes it shows bytes, with a
        percentage, rate and ETA when the inputs' sizes are known, and the
        sample count and rate beside it; otherwise it counts samples. With
        ``-vv`` each item gets a line: ``describe(item)``, by default the
        sample's key, fields and bytes.
        """
        per_item = self.verbose >= 2
        if not self._progress_enabled(enabled) and not per_item:
            return iterable
        return self._progress(iterable, self._progress_enabled(enabled), unit, total, describe or _describe_sample)

    def _progress(self, iterable, shown: bool, unit: str, total, describe):
        bar = None
        if shown:
            if self._counting:
                bar = self.new_bar(total=self._bytes_total, unit="B", unit_scale=True, unit_divisor=1024)
            else:
                bar = self.new_bar(unit=unit, total=total)
            self._bar = bar
        n = 0
        try:
            for item in iterable:
                n += 1
                if self.verbose >= 2:
                    self.say(f"{self.name}: {describe(item)}")
                if bar is not None:
                    if self._counting:
                        bar.update(self._bytes_read - bar.n)
                        rate = n / max(time.monotonic() - self.started, 1e-9)
                        bar.set_postfix_str(f"{n} {unit}s, {rate:.1f} {unit}s/s", refresh=False)
                    else:
                        bar.update(1)
                yield item
        finally:
            if bar is not None:
                self._bar = None
                bar.close()

    def hinted(self, message: str, topic: str | None) -> str:
        """``message`` with the hint :meth:`run` was given for ``topic``
        (the :attr:`TarprocError.topic` of an error, also one reported by a
        task in another process: :attr:`tarproc.jobs.tasks.TaskResult.topic`)."""
        hint = self.hints.get(topic) if topic else None
        return f"{message}; {hint}" if hint else message

    @contextlib.contextmanager
    def run(self, hints: dict[str, str] | None = None) -> Iterator[Tool]:
        """Run the body of a command: map errors to messages and exit status.

        :param hints: topic of a library error (:attr:`TarprocError.topic`) ->
            what to add to its message, in the tool's words (``use --missing
            skip to drop such samples``)

        SIGTERM raises :class:`tarproc.errors.Interrupted` in the main thread
        so that ``finally`` blocks remove temporary files and kill children.
        """
        previous = None
        self.hints = dict(hints or {})
        with contextlib.suppress(ValueError):  # not in the main thread
            previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            yield self
        except TarprocError as exc:
            if self.debug:
                raise
            self.error(self.hinted(str(exc), exc.topic))
            raise typer.Exit(exc.exit_status) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(ExitStatus.SIGPIPE) from None
        except KeyboardInterrupt:
            self.error("interrupted")
            raise typer.Exit(ExitStatus.SIGINT) from None
        except Interrupted:
            self.error("terminated")
            raise typer.Exit(ExitStatus.SIGTERM) from None
        except OSError as exc:  # I/O failure outside the library's own checks
            if self.debug:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            self.error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(ExitStatus.ERROR) from None
        finally:
            self.print_notes()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if self.problems:
            if self.quiet:  # the summary still tells why the exit status is 1
                n = self.problems
                self.error(f"{n} warning{'s' if n > 1 else ''} about skipped or lost data (not shown with -q)")
            raise typer.Exit(ExitStatus.ERROR)


def fed_by(stream) -> str | None:
    """The name of the tool of the family that writes ``stream`` (our
    stdin) through a pipe, as in ``tarproc ... -o - | tarsplit ...``, or
    None (not a pipe, another program, not Linux).

    Only the first tool of such a pipeline draws a progress bar by default
    (two bars would redraw one terminal line): the one reading the files
    knows their sizes, so its bar has a percentage and an ETA. Found in
    /proc: the process whose stdout is the pipe on our stdin, a console
    script of the family (``python .../bin/TOOL``) not given ``--no-progress``.
    """
    from tarproc.cli import TOOLS

    try:
        mine = os.readlink(f"/proc/self/fd/{stream.fileno()}")
    except (OSError, ValueError, AttributeError):
        return None
    if not mine.startswith("pipe:"):
        return None
    me = os.getpid()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != me]
    except OSError:
        return None
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/fd/1") != mine:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:  # gone, or not ours to look at
            continue
        for arg in argv[:2]:
            name = os.path.basename(arg).decode("utf-8", "replace")
            if name in TOOLS:
                return None if b"--no-progress" in argv else name
    return None


class _ByteMeter:
    """Counts the input bytes read for a :class:`Tool`'s bar; sizes known
    only when an input is opened (HTTP Content-Length) come through
    :meth:`expect` (see :func:`tarproc.io.sources.open_source`)."""

    def __init__(self, tool: Tool, sizes: dict):
        self.tool = tool
        self.sizes = sizes
        self._total()

    def __call__(self, n: int) -> None:
        self.tool._bytes_read += n

    def expect(self, spec: str, size: int) -> None:
        if self.sizes.get(spec) is None:
            self.sizes[spec] = size
            self._total()

    def _total(self) -> None:
        sizes = list(self.sizes.values())
        total = None if None in sizes else sum(sizes)
        self.tool._bytes_total = total
        bar = self.tool._bar
        if bar is not None and total is not None and bar.total != total:
            bar.total = total
            bar.refresh()


def _describe_sample(sample) -> str:
    if not isinstance(sample, dict):
        return str(sample)
    fields = [k for k in sample if not k.startswith("__")]
    size = sum(len(sample[k]) for k in fields)
    return f"sample {sample.get('__key__')!r}: {', '.join(fields) or 'no fields'} ({size} bytes)"


def _raise_interrupted(signum, frame):
    raise_interrupted(signum)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final
    flush cannot fail again (Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        pass


def refuse_terminal(output: str) -> None:
    """Refuse to write tar bytes to a terminal, like GNU tar.

    :raises UsageError:
    """
    if output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write archive data to a terminal (use -o FILE or a pipe)")


def refuse_terminal_input(specs: list[str]) -> None:
    """Refuse to read tar data from a terminal on stdin, like GNU tar
    (the tool would wait for input that a user never meant to type).

    :raises UsageError:
    """
    if "-" in specs and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("refusing to read archive data from a terminal (give an INPUT or a pipe)")


class Counter:
    """Counts the items passing through :meth:`__call__` (for ``-v``
    summaries of tools that do not write a sink)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, items: Iterable) -> Iterator:
        for item in items:
            self.n += 1
            yield item

