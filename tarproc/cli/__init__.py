"""The command-line tools of tarproc, one module per tool.

:data:`TOOLS` is the one list of them: the man pages (``make man``), the
console scripts and man page data files of ``setup.cfg`` and the ``bin/``
launchers are derived from it (``python -m tarproc.cli.man`` writes them, a
test checks they are current), and the consistency tests run over it.
"""

#: every tool, in the order of the README; ``tarproc/cli/<tool>.py`` has ``app`` and ``main()``
TOOLS = ["tarproc", "tarsplit", "tarcats", "tarpcat", "tarshow", "tarsort", "tar2json", "lines2tar", "tsv2tar",
         "dir2tar", "tarmap", "tarshuffle"]
