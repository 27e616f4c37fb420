"""The shared base of the tool family: options every tool spells the same
way, declared once; the per-run :class:`Tool`; the one error wrapper.

How a tool declares its options (``tarproc/cli/<tool>.py``)::

    from .common import Tool, command, make_app, run_app

    app = make_app(HELP, EXAMPLES)

    @command(app, shared="read write count skip")
    def mytool(tool: Tool, output: Annotated[str, typer.Option("-o", "--output", metavar="OUT")] = "-"):
        with tool.run():
            specs = tool.input_specs()        # INPUT..., '-' by default, checked
            samples = tool.read(specs)        # iter_samples with --strict and tool.warn
            with tool.open_output(output) as sink:   # --compress and --mtime
                for sample in tool.progress(tool.skip_count(samples)):
                    sink.write(sample)

    def main() -> None:
        run_app(app, "mytool")

- The function's first parameter is ``tool``; its other parameters are the
  tool's OWN options, declared the typer way (``Annotated[...] = default``).
- ``shared=`` names options from :data:`SHARED` (or groups from
  :data:`GROUPS`, e.g. ``read`` = INPUT arguments + ``--strict``; ``write`` =
  ``--compress`` + ``--mtime``); :data:`ALWAYS` (``--progress``, ``-v``,
  ``-q``, ``--debug``, ``--version``) every tool gets without naming them.
  Their values are ``tool.args.<name>`` (e.g. ``tool.args.count``); an own
  parameter with the same name as a shared one replaces it (tarpcat's ``-p``
  with its own default, lines2tar's text INPUT).
- ``options=`` adds options a few tools share (name -> :class:`Shared`;
  tarcats and tarpcat share ``tarcats.CATS``, tarmap and tarshuffle the
  task engine's :data:`tarproc.cli.engine.ENGINE`; ``own_first=True`` lists
  the tool's own options before them); sizes use
  :func:`size_option` (an ``int`` of bytes, coreutils units).
- URLs: ``read`` and ``write`` include ``--storage-option``; its value as
  fsspec ``storage_options`` is ``tool.storage_options``, which
  :meth:`Tool.read` and :meth:`Tool.open_output` pass on (a tool opening
  inputs or outputs itself passes it too).
- Messages: :meth:`Tool.warn`, :meth:`Tool.info` (``-v`` level),
  :meth:`Tool.error` and :meth:`Tool.say` print on stderr above a progress
  bar; write a command's own output inside ``with tool.stderr():``.
  ``tool.run(hints={topic: text})`` adds the tool's words (an option to
  change) to a library error with that :attr:`TarprocError.topic`.
- A new shared option: one entry in :data:`SHARED` (and in a group if every
  tool of that kind takes it), used in one place (a :class:`Tool` helper such
  as :meth:`Tool.read`), so no tool module changes.
- A new tool: its module as above and its name in :data:`tarproc.cli.TOOLS`;
  ``make man`` writes its man page, the console script and data file entries
  of ``setup.cfg`` and its ``bin/`` launcher from that list (a test checks
  they are current).

A function whose first parameter is not ``tool`` is registered as it is
(every option declared by the function itself, the old way).

:class:`Tool` turns library errors into ``tool: error: message`` on stderr
and the exit status of :class:`tarproc.errors.ExitStatus`; ``--debug`` (or
``TARPROC_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import inspect
import os
import re
import signal
import sys
import time
import typing
from types import SimpleNamespace
from typing import Annotated, Any, NamedTuple, Optional
from collections.abc import Iterable, Iterator

import typer
from typer.core import TyperArgument, TyperCommand
from typer.exceptions import TyperException

from tarproc import __version__
from tarproc.io.compress import COMPRESSIONS
from tarproc.sizes import SIZE_HELP, parse_size
from tarproc.errors import ExitStatus, Interrupted, TarprocError, UsageError, raise_interrupted

EXIT_STATUS = """\
0    success.
1    a failure a retry may fix: I/O or network error, failed input or
     output command, failed samples, members skipped with a warning.
2    usage error: bad option or argument.
3    the input data is bad (corrupt or truncated archive, malformed
     samples): retrying cannot help.
130  interrupted by SIGINT; 143 by SIGTERM, as a shell reports it: the tool
     cleans up (temporary files removed, child processes killed, no
     complete-looking output left), then dies of the signal itself, so a
     shell loop or script stops on Ctrl-C.
141  the downstream pipe was closed (quiet, like coreutils killed by SIGPIPE)."""


class FamilyCommand(TyperCommand):
    """A tool's click command: arguments are shown as their name alone
    (``[INPUT]...``, ``DIR``), without typer's type (``<list[str]>``) or the
    braces it puts around a required one (``{DIR}``); ``--show-completion``
    and ``--install-completion`` take an optional SHELL (see
    :func:`_completion_option`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                shown = _usage_name(param)
                param.get_usage_pieces = lambda ctx, shown=shown: [shown()]
                param.display_type_rich = _no_type
                param._usage_display_name = shown

    def get_params(self, ctx):
        # typer appends its completion options after the command is made
        for i, param in enumerate(self.params):
            if param.name in _COMPLETION_OPTIONS and not getattr(param, "family", False):
                self.params[i] = _completion_option(param.name)
        return super().get_params(ctx)

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, args if ctx.resilient_parsing else _shell_given(args))


#: the shells typer writes completion scripts for
SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
#: the value of ``--show-completion`` given alone: detect the shell
_DETECT = "\0detect"
_COMPLETION_OPTIONS = {
    "show_completion": ("--show-completion", "Print the completion script for SHELL ({}) [default: the current"
                        " shell], to copy it or customize the installation."),
    "install_completion": ("--install-completion", "Install completion for SHELL ({}) [default: the current shell]."),
}


def _shell_given(args: list[str]) -> list[str]:
    """``args`` with ``--show-completion`` / ``--install-completion`` given
    a value: the word that follows (``--show-completion zsh``), else (none,
    or an option) :data:`_DETECT` (typer's own options are flags that detect
    the running shell and ignore a name that follows: ``--show-completion
    zsh`` printed bash's script)."""
    out: list[str] = []
    options = {opt for opt, _ in _COMPLETION_OPTIONS.values()}
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        out.append(arg)
        if arg in options and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(_DETECT)
    return out


def _completion_option(name: str):
    """``--show-completion [SHELL]`` or ``--install-completion [SHELL]``:
    typer's callbacks given the shell's name, or True to detect it; its
    values complete to :data:`SHELLS`."""
    from typer.completion import install_callback, show_callback
    from typer.core import TyperOption

    opt, help = _COMPLETION_OPTIONS[name]
    callback = show_callback if name == "show_completion" else install_callback

    def given(ctx, param, value):
        if value is None or ctx.resilient_parsing:
            return value
        if value != _DETECT and value not in SHELLS:
            raise typer.BadParameter(f"{value!r} must be {_one_of(list(SHELLS))}", ctx, param)
        return callback(ctx, param, True if value == _DETECT else value)

    option = TyperOption(param_decls=[opt, name], type=str, callback=given, expose_value=False, metavar="[SHELL]",
                         help=help.format(", ".join(SHELLS)), autocompletion=lambda ctx, args, incomplete: [
                             s for s in SHELLS if s.startswith(incomplete)])
    option.family = True
    return option


def _no_type(ctx) -> None:
    return None


def _usage_name(param: TyperArgument):
    name = param.metavar or param.name.upper()
    shown = name if param.required else f"[{name}]"
    shown += "..." if param.nargs != 1 else ""
    return lambda: shown


#: help paragraph of the tools that merge several inputs into one output
REPEATED_KEYS = """\
A key written from one input that comes back from another (shards made
independently, e.g. by two lines2tar runs) stops the run with an error naming
both inputs (exit 3) before the output is completed: no sample is dropped.
Exact for the first 1,000,000 keys (about 110 MB of memory with 30-character
keys); beyond that only a repeat of the previous key is caught. Members
named KEY.__FIELD (KEY.__source__, as the original tarproc writes) are read
as the samples' meta entries and reported in one line."""


def make_app(help: str, examples: str, exit_status: str = EXIT_STATUS) -> typer.Typer:
    """A single-command typer app with plain (non-rich) help, ``-h``, shell
    completion (``--install-completion``, ``--show-completion``), and an
    epilog holding ``examples`` and the exit status (:data:`EXIT_STATUS`, or
    the tool's own table: tarmap and tarshuffle count tasks)."""
    epilog = "\b\nExamples:\n" + examples.rstrip() + "\n\n\b\nExit status:\n" + exit_status
    app = typer.Typer(
        add_completion=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )
    app.info.help = help
    app.info.epilog = epilog
    return app


def command(app: typer.Typer, shared: str = "", options: dict[str, Shared] | None = None, own_first: bool = False):
    """Decorator registering a tool's function with the help and epilog
    given to :func:`make_app`.

    :param shared: names of :data:`SHARED` options or :data:`GROUPS` the tool
        takes, separated by spaces (see the module docstring); :data:`ALWAYS`
        is added. Used only when the function's first parameter is ``tool``.
    :param options: more options shared by a few tools (name: :class:`Shared`;
        tarcats and tarpcat), listed before the function's own; their values
        are in ``tool.args`` too.
    :param own_first: list the function's own options before ``options``
        (tarmap and tarshuffle: their own before the engine's).
    """
    short = app.info.help.split("\n", 1)[0].rstrip(".")
    register = app.command(cls=FamilyCommand, help=app.info.help, epilog=app.info.epilog, short_help=short)

    def decorate(func):
        if next(iter(inspect.signature(func).parameters), None) != "tool":
            return register(func)  # declares every option itself
        return register(_with_shared(func, shared, options or {}, own_first))

    return decorate


def _version_callback(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(f"{ctx.info_name} (tarproc) {__version__}")
        raise typer.Exit()


# ------------------------------------------------------------- shared options
Inputs = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Input shards: files, '-' for stdin, 'pipe:CMD', http(s):// URLs (one GET), s3:// or gs:// (with fsspec), brace patterns"
        " like 'shard-{0000..0147}.tgz'. Compression is detected. [default: -]",
        show_default=False,
        metavar="INPUT",
    ),
]
Verbose = Annotated[
    int, typer.Option("-v", "--verbose", count=True, show_default=False, help="Print a summary (and more with -vv) on stderr.")
]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print no warnings or command output on stderr.")]
Debug = Annotated[
    bool, typer.Option("--debug", envvar="TARPROC_DEBUG", help="Show a traceback on errors (env TARPROC_DEBUG=1).")
]
Version = Annotated[
    bool,
    typer.Option("--version", callback=_version_callback, is_eager=True, expose_value=False, help="Print the version and exit."),
]
Count = Annotated[Optional[int], typer.Option("--count", min=0, help="Stop after N samples.", metavar="N")]
Skip = Annotated[int, typer.Option("--skip", min=0, help="Skip the first N samples.", metavar="N")]
Strict = Annotated[bool, typer.Option("--strict", help="Members without a key are errors, not warnings.")]
LowercaseFields = Annotated[
    bool,
    typer.Option(
        "--lowercase-fields",
        help="Lowercase field names as webdataset (group_by_keys(lcase=True)) and the original tarproc do:"
        " img.JPG gives field jpg [default: case is kept].",
    ),
]
Parallel = Annotated[int, typer.Option("-p", "--parallel", min=1, help="Worker processes.", metavar="N")]
Progress = Annotated[
    Optional[bool],
    typer.Option("--progress/--no-progress", help="Progress bar on stderr, labelled with the tool's name [default: when"
                 " stderr is a terminal, unless another tool of the family writes our stdin: in 'tarproc ... -o - |"
                 " tarsplit ...' only tarproc draws one].", show_default=False),
]
Compression = enum.Enum("Compression", {name: name for name in COMPRESSIONS}, type=str)
Compress = Annotated[
    Optional[Compression],
    typer.Option(
        "--compress",
        help="Output compression [default: from the output name: .gz/.tgz, .bz2, .xz, .zst].",
        show_default=False,
    ),
]


def compression_name(value: Optional[Compression]) -> Optional[str]:
    """The ``--compress`` value as a plain string (None: follow the name)."""
    return None if value is None else value.value
Mtime = Annotated[int, typer.Option("--mtime", help="Modification time stored in every member (seconds).", metavar="SECONDS")]


def _size(value) -> int:
    if isinstance(value, int):
        return value
    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def size_option(*names: str, help: str, optional: bool = True):
    """A size option (``-s/--maxsize``...): its value is an ``int`` of bytes
    parsed by the one size parser, :func:`tarproc.sizes.parse_size`
    (coreutils units: ``K`` = 1024, ``KB`` = 1000, ``KiB``; ``1e9``).
    A bad size is a usage error naming the option."""
    return Annotated[Optional[int] if optional else int,
                     typer.Option(*names, help=f"{help} ({SIZE_HELP}).", metavar="SIZE", parser=_size)]


def _storage_item(value: str) -> str:
    from tarproc.io.storage import parse_storage_options

    try:
        parse_storage_options([value])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


StorageOptions = Annotated[
    Optional[list[str]],
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        parser=_storage_item,
        help="fsspec storage option for URL inputs and outputs (s3://, gs://...), repeatable: VALUE is JSON when it"
        " parses (true, 3, '{\"region_name\": \"x\"}'), else text; a dotted KEY nests (client_kwargs.region_name=x);"
        " merged over FSSPEC_<PROTOCOL>_<OPTION> (credentials: the store's environment, AWS_*, not a command line).",
    ),
]


def output_option(default: str | None, help: str):
    """``-o/--output`` with a per-tool default and help."""
    return Annotated[Optional[str] if default is None else str, typer.Option("-o", "--output", help=help, metavar="OUT")]


class Shared(NamedTuple):
    """A shared option: its typer annotation and its default."""

    annotation: Any
    default: Any


#: every shared option, by parameter name, in the order help lists them
SHARED: dict[str, Shared] = {
    "inputs": Shared(Inputs, None),
    "count": Shared(Count, None),
    "skip": Shared(Skip, 0),
    "strict": Shared(Strict, False),
    "lowercase_fields": Shared(LowercaseFields, False),
    "parallel": Shared(Parallel, 1),
    "compress": Shared(Compress, None),
    "mtime": Shared(Mtime, 0),
    "storage_options": Shared(StorageOptions, None),
    "progress": Shared(Progress, None),
    "verbose": Shared(Verbose, 0),
    "quiet": Shared(Quiet, False),
    "debug": Shared(Debug, False),
    "version": Shared(Version, False),
}
#: names a tool may give in ``shared=`` for several options at once
GROUPS: dict[str, tuple[str, ...]] = {
    "read": ("inputs", "strict", "lowercase_fields", "storage_options"),  # tools reading tar shards
    "write": ("compress", "mtime", "storage_options"),  # tools writing a tar stream
}
#: shared options every tool takes
ALWAYS = ("progress", "verbose", "quiet", "debug", "version")


def shared_names(shared: str) -> list[str]:
    """The option names ``shared`` stands for (groups expanded, plus
    :data:`ALWAYS`), in :data:`SHARED` order.

    :raises KeyError: an unknown name
    """
    wanted: set[str] = set(ALWAYS)
    for name in shared.split():
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SHARED:
            wanted.add(name)
        else:
            raise KeyError(f"no shared option or group {name!r}: see tarproc.cli.common.SHARED")
    return [name for name in SHARED if name in wanted]


def _with_shared(func, shared: str, extra: dict[str, Shared], own_first: bool = False):
    """``func(tool, **own)`` as a typer callback taking its own options and
    the shared ones; the shared values end up in ``tool.args``."""
    hints = typing.get_type_hints(func, include_extras=True)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
           for p in list(inspect.signature(func).parameters.values())[1:]]
    own_names = {p.name for p in own}
    common = [name for name in shared_names(shared) if name not in own_names]
    more = [name for name in extra if name not in own_names and name not in common]
    names = common + more
    table = {**SHARED, **extra}

    def param(name: str) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=table[name].annotation,
                                 default=table[name].default)

    arguments = [param(n) for n in names if n == "inputs"]  # INPUT... first, as before
    mine = [param(n) for n in more if n != "inputs"]
    options = (own + mine if own_first else mine + own) + [param(n) for n in common if n != "inputs"]

    def callback(**kwargs):
        values = {name: kwargs.pop(name) for name in names if name in kwargs}
        values.pop("version", None)  # handled by its callback
        tool = Tool(func.__name__, values.get("verbose", 0), values.get("quiet", False), values.get("debug", False),
                    args=SimpleNamespace(**values))
        return func(tool, **kwargs)

    callback.__name__ = func.__name__
    callback.__qualname__ = func.__qualname__
    callback.__module__ = func.__module__
    callback.__doc__ = func.__doc__
    callback.__signature__ = inspect.Signature(arguments + options)
    callback.shared = tuple(common)  # for tests: what the tool takes from the base
    return callback


def tool_shared(app: typer.Typer) -> tuple[str, ...]:
    """The shared options a tool's app takes from :data:`SHARED` (empty for
    a tool declaring every option itself)."""
    return getattr(app.registered_commands[0].callback, "shared", ())


class Tool:
    """Per-run state of a command: messages on stderr and the exit status.

    :param name: the tool's name, used as the message prefix
    :param verbose: ``-v`` count
    :param quiet: suppress warnings
    :param debug: let tracebacks through
    :param args: the values of the shared options the tool takes
        (``tool.args.count`` ...; see :func:`command`)
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


def usage_message(name: str, exc: TyperException) -> str:
    """A click usage error as one line, ``tool: error: message (see 'tool
    --help')``, in the form of every other error (click prints the usage,
    a hint and ``Error: ...`` on four lines). An unknown option suggests
    only options close to it (:func:`close_options`)."""
    if getattr(exc, "possibilities", None) and getattr(exc, "option_name", None):
        exc.possibilities = close_options(exc.option_name, exc.possibilities)
    message = " ".join(exc.format_message().split())
    # typer's words for a bad choice: "Value error, 'x' is not one of 'a', 'b'."
    message = message.replace("Value error, ", "")
    message = re.sub(r"is not one of ((?:'[^']*'(?:, )?)+)\.?",
                     lambda m: "must be " + _one_of(re.findall(r"'([^']*)'", m.group(1))), message)
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    message = message.rstrip(".")
    hint = f" (see '{name} --help')" if exc.exit_code == ExitStatus.USAGE else ""
    from tarproc.cli.original import hint as original_hint

    original = original_hint(name, message)
    if original is not None:
        message = re.sub(r" \(Possible options: [^)]*\)", "", message)
        hint = f" ({original}; see '{name} --help')"
    return f"{name}: error: {message}{hint}"


#: how alike (difflib's ratio, without the leading dashes) an option must be to be suggested
SUGGEST_CUTOFF = 0.75


def close_options(given: str, options) -> list[str]:
    """The ``options`` close enough to the unknown option ``given`` to be
    what was meant (``--outptu``: ``--output``), compared without their
    dashes: click's own cutoff (0.6 on the whole names) offered ``--strict``
    for ``--frobnicate``."""
    import difflib

    bare = {option.lstrip("-"): option for option in options}
    return [bare[name] for name in difflib.get_close_matches(given.lstrip("-"), list(bare), cutoff=SUGGEST_CUTOFF)]


def _one_of(choices: list[str]) -> str:
    return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]


def run_app(app: typer.Typer, name: str) -> None:
    """Console-script entry point: run ``app`` as ``name``; exits with the
    command's status. A usage error is one line on stderr, exit status 2."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_DFL:  # set by tarproc.cli; an inherited ignore stays
        signal.signal(signal.SIGINT, _raise_interrupted)  # KeyboardInterrupt from here on, recorded
    try:
        status = app(prog_name=name, standalone_mode=False)
    except TyperException as exc:  # click's UsageError and friends (typer vendors click)
        print(usage_message(name, exc), file=sys.stderr, flush=True)
        status = exc.exit_code
    except typer.Abort:  # EOF at a prompt; no tool prompts, but say something
        print(f"{name}: error: aborted", file=sys.stderr, flush=True)
        status = ExitStatus.ERROR
    except BrokenPipeError:  # raised while flushing at exit
        _silence_stdout()
        status = ExitStatus.SIGPIPE
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        status = ExitStatus.SIGPIPE
    if status in (ExitStatus.SIGINT, ExitStatus.SIGTERM):
        die_of_signal(status - 128)
    sys.exit(status if isinstance(status, int) else 0)


def die_of_signal(signum: int) -> None:
    """End this process by ``signum`` itself, once the cleanup is done: the
    default action restored, the signal raised again. A caller then sees a
    death by the signal (``WIFSIGNALED``; ``-2`` in Python, 130 in a shell),
    as from GNU tools and Python's own default: bash stops a loop or a
    script whose foreground child died of SIGINT ("wait and cooperative
    exit"), which a plain ``exit 130`` does not make it do. Returns only if
    the signal could not end the process (it is ignored or blocked in a way
    we cannot undo); the caller then exits with ``128 + signum``."""
    # what would run at a normal exit runs now (the spool directory of large
    # members, finalizers), since a death by a signal skips it
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        return
    time.sleep(1)  # the signal is delivered before kill(2) returns; this is only a guard
