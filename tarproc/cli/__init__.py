"""The command-line tools of tarproc, one module per tool.

:data:`TOOLS` is the one list of them: the man pages (``make man``), the
console scripts and man page data files of ``setup.cfg`` and the ``bin/``
launchers are derived from it (``python -m tarproc.cli.man`` writes them, a
test checks they are current), and the consistency tests run over it.

The tools' shared base, three modules, each importing only those before it:

- :mod:`tarproc.cli.options`: the options every tool spells the same way,
  declared once (:data:`~tarproc.cli.options.SHARED`, its groups, the size
  and output option builders);
- :mod:`tarproc.cli.tool`: the per-run :class:`~tarproc.cli.tool.Tool`
  (messages, the shared options applied, library errors to exit statuses);
- :mod:`tarproc.cli.app`: the typer app, :func:`~tarproc.cli.app.command`
  and the console-script entry point :func:`~tarproc.cli.app.run_app`
  (help, usage errors, exit).

How a tool declares its options (``tarproc/cli/<tool>.py``)::

    from tarproc.cli.app import command, make_app, run_app
    from tarproc.cli.tool import Tool

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
- ``shared=`` names options from :data:`~tarproc.cli.options.SHARED` (or
  groups from :data:`~tarproc.cli.options.GROUPS`, e.g. ``read`` = INPUT
  arguments + ``--strict``; ``write`` = ``--compress`` + ``--mtime``);
  :data:`~tarproc.cli.options.ALWAYS` (``--progress``, ``-v``, ``-q``,
  ``--debug``, ``--version``) every tool gets without naming them. Their
  values are ``tool.args.<name>`` (e.g. ``tool.args.count``); an own
  parameter with the same name as a shared one replaces it (tarpcat's ``-p``
  with its own default, lines2tar's text INPUT).
- ``options=`` adds options a few tools share (name ->
  :class:`~tarproc.cli.options.Shared`; tarcats and tarpcat share
  ``tarcats.CATS``, tarmap and tarshuffle the task engine's
  :data:`tarproc.cli.engine.ENGINE`; ``own_first=True`` lists the tool's own
  options before them); sizes use :func:`~tarproc.cli.options.size_option`
  (an ``int`` of bytes, coreutils units).
- URLs: ``read`` and ``write`` include ``--storage-option``; its value as
  fsspec ``storage_options`` is ``tool.storage_options``, which ``tool.read``
  and ``tool.open_output`` pass on (a tool opening inputs or outputs itself
  passes it too).
- Messages: ``tool.warn``, ``tool.info`` (``-v`` level), ``tool.error`` and
  ``tool.say`` print on stderr above a progress bar; write a command's own
  output inside ``with tool.stderr():``. ``tool.run(hints={topic: text})``
  adds the tool's words (an option to change) to a library error with that
  :attr:`tarproc.errors.TarprocError.topic`.
- A new shared option: one entry in :data:`~tarproc.cli.options.SHARED`
  (and in a group if every tool of that kind takes it), used in one place (a
  :class:`~tarproc.cli.tool.Tool` helper such as ``tool.read``), so no tool
  module changes.
- A new tool: its module as above and its name in :data:`TOOLS`; ``make
  man`` writes its man page, the console script and data file entries of
  ``setup.cfg`` and its ``bin/`` launcher from that list (a test checks they
  are current).

A function whose first parameter is not ``tool`` is registered as it is
(every option declared by the function itself, the old way).

``tool.run()`` turns library errors into ``tool: error: message`` on stderr
and the exit status of :class:`tarproc.errors.ExitStatus`; ``--debug`` (or
``TARPROC_DEBUG=1``) shows the traceback instead.
"""

#: every tool, in the order of the README; ``tarproc/cli/<tool>.py`` has ``app`` and ``main()``
TOOLS = ["tarproc", "tarsplit", "tarcats", "tarpcat", "tarshow", "tarsort", "tar2json", "lines2tar", "tsv2tar",
         "dir2tar", "tarmap", "tarshuffle", "tarcheck", "tarmix", "tardedup"]


def _quiet_interrupt_at_start() -> None:
    """A tool's Ctrl-C before its own handlers are in place (while Python
    imports it) ends it as the signal does, without a traceback: SIGINT's
    default action until :func:`tarproc.cli.app.run_app` takes over.
    Only when this process is one of the tools (not a program importing
    the package)."""
    import os
    import signal
    import sys

    if sys.argv and os.path.basename(sys.argv[0]) in TOOLS and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # an inherited ignore (a background job of a script) stays


_quiet_interrupt_at_start()
