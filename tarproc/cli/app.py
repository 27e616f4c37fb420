"""A tool's typer app and its process: :func:`make_app` (plain help,
``-h``, shell completion, an epilog of examples and exit statuses),
:func:`command` (registers the tool's function with the shared options it
names and makes its :class:`tarproc.cli.tool.Tool`), :func:`run_app` (the
console-script entry point: a usage error as one line, exit status 2; a
death by SIGINT or SIGTERM after the cleanup, :func:`die_of_signal`).

The top of the tools' base (options <- tool <- app): it imports
:mod:`tarproc.cli.options` and :mod:`tarproc.cli.tool`. How a tool uses the
three: :mod:`tarproc.cli`.
"""

from __future__ import annotations

import atexit
import inspect
import os
import re
import signal
import sys
import time
import typing
from types import SimpleNamespace

import typer
from typer.core import TyperArgument, TyperCommand
from typer.exceptions import TyperException

from tarproc.cli.options import SHARED, Shared, shared_names
from tarproc.cli.tool import Tool, _raise_interrupted, _silence_stdout
from tarproc.errors import ExitStatus

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

    :param shared: names of :data:`~tarproc.cli.options.SHARED` options or
        :data:`~tarproc.cli.options.GROUPS` the tool takes, separated by
        spaces (see :mod:`tarproc.cli`); :data:`~tarproc.cli.options.ALWAYS`
        is added. Used only when the function's first parameter is ``tool``.
    :param options: more options shared by a few tools (name:
        :class:`~tarproc.cli.options.Shared`; tarcats and tarpcat), listed
        before the function's own; their values are in ``tool.args`` too.
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
    """The shared options a tool's app takes from
    :data:`~tarproc.cli.options.SHARED` (empty for a tool declaring every
    option itself)."""
    return getattr(app.registered_commands[0].callback, "shared", ())



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
