"""Generate ``man/<tool>.1`` from each tool's CLI with click-man.

click-man writes NAME, SYNOPSIS, DESCRIPTION and OPTIONS from the click
command; the examples and the EXIT STATUS section are added here from the
same epilog that ``--help`` prints, so the two cannot drift apart.

Usage: ``python -m tarproc.cli.man [DIR]`` (default ``man``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

import typer

from .. import __version__

#: every console script, in the order of the README
TOOLS = ["tarproc", "tarsplit", "tarcats", "tarpcat", "tarshow", "tarsort", "tar2json", "lines2tar", "tsv2tar", "dir2tar"]

#: fixed date, so regenerating gives the same bytes (SOURCE_DATE_EPOCH style)
MAN_DATE = "2026-11-21"


def _escape(text: str) -> str:
    lines = []
    for line in text.replace("\\", "\\\\").split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def man_page(tool: str) -> str:
    """The roff text of ``tool``'s man page.

    :raises ModuleNotFoundError: the tool's module does not exist
    """
    from click_man.man import ManPage

    module = importlib.import_module(f"tarproc.cli.{tool}")
    command = typer.main.get_command(module.app)
    # typer builds commands on its own copy of click, so click-man's
    # generate_man_page (which looks for click.Option) would drop every
    # option: fill click-man's ManPage from typer's command directly
    ctx = command.context_class(command, info_name=tool)
    man = ManPage(tool)
    man.version = __version__
    man.date = MAN_DATE
    man.short_help = command.short_help or ""
    man.description = _escape(inspect.cleandoc(command.help or ""))
    man.synopsis = " ".join(command.collect_usage_pieces(ctx))
    man.options = [
        (record[0], _escape(record[1]))
        for param in command.params
        if param.param_type_name in ("option", "argument") and not getattr(param, "hidden", False)
        for record in [param.get_help_record(ctx)]
        if record is not None
    ]
    page = str(man)
    epilog = command.epilog or ""
    sections = []
    for block in epilog.split("\n\n\b\n"):
        block = block.lstrip("\b\n")
        title, _, body = block.partition("\n")
        title = title.rstrip(":").upper()
        sections.append(f'.SH "{title}"\n.nf\n{_escape(body.rstrip())}\n.fi')
    return page.rstrip("\n") + "\n" + "\n".join(sections) + "\n"


def write_man_pages(directory: str = "man", tools: list[str] | None = None) -> list[str]:
    """Write ``directory/<tool>.1`` for each tool that exists; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for tool in tools or TOOLS:
        try:
            text = man_page(tool)
        except ModuleNotFoundError:
            continue
        path = os.path.join(directory, f"{tool}.1")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_man_pages(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(path, file=sys.stderr)
