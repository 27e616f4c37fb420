"""The command-line tools of tarproc, one module per tool.

:data:`TOOLS` is the one list of them: the man pages (``make man``), the
console scripts and man page data files of ``setup.cfg`` and the ``bin/``
launchers are derived from it (``python -m tarproc.cli.man`` writes them, a
test checks they are current), and the consistency tests run over it.
"""

#: every tool, in the order of the README; ``tarproc/cli/<tool>.py`` has ``app`` and ``main()``
TOOLS = ["tarproc", "tarsplit", "tarcats", "tarpcat", "tarshow", "tarsort", "tar2json", "lines2tar", "tsv2tar",
         "dir2tar", "tarmap", "tarshuffle", "tarcheck", "tarmix", "tardedup"]


def _quiet_interrupt_at_start() -> None:
    """A tool's Ctrl-C before its own handlers are in place (while Python
    imports it) ends it as the signal does, without a traceback: SIGINT's
    default action until :func:`tarproc.cli.common.run_app` takes over.
    Only when this process is one of the tools (not a program importing
    the package)."""
    import os
    import signal
    import sys

    if sys.argv and os.path.basename(sys.argv[0]) in TOOLS and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # an inherited ignore (a background job of a script) stays


_quiet_interrupt_at_start()
