"""Generate ``man/<tool>.1`` from each tool's CLI with click-man, and the
parts of ``setup.cfg`` and ``bin/`` that list the tools, from
:data:`tarproc.cli.TOOLS`.

click-man writes NAME, SYNOPSIS, DESCRIPTION and OPTIONS from the click
command; the examples and the EXIT STATUS section are added here from the
same epilog that ``--help`` prints, so the two cannot drift apart.

Usage: ``python -m tarproc.cli.man [DIR]`` (default ``man``; run from the
repository root, ``make man``): writes the man pages into DIR, the
``console_scripts`` and ``share/man/man1`` lists of ``setup.cfg`` and the
``bin/<tool>`` launcher links.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys

import typer

from tarproc import __version__
from tarproc.cli import TOOLS

__all__ = ["TOOLS", "man_page", "write_man_pages", "setup_cfg_text", "write_launchers"]

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


def setup_cfg_text(text: str, tools: list[str] | None = None) -> str:
    """``text`` (setup.cfg) with its ``console_scripts`` and ``share/man/man1``
    lists made of ``tools`` (default :data:`TOOLS`); the rest is kept."""
    tools = tools or TOOLS
    scripts = "console_scripts =\n" + "".join(f"    {t} = tarproc.cli.{t}:main\n" for t in tools)
    pages = "share/man/man1 =\n" + "".join(f"    man/{t}.1\n" for t in tools)
    text = re.sub(r"^console_scripts =\n(?:[ \t]+\S.*\n)*", scripts, text, flags=re.M)
    return re.sub(r"^share/man/man1 =\n(?:[ \t]+\S.*\n)*", pages, text, flags=re.M)


#: the launcher every ``bin/<tool>`` links to
LAUNCHER = "tarproc-launch"


def write_launchers(directory: str = "bin", tools: list[str] | None = None) -> list[str]:
    """Make ``directory/<tool>`` a symlink to :data:`LAUNCHER` for each tool
    (replacing a wrong one); returns the links made."""
    made = []
    for tool in tools or TOOLS:
        path = os.path.join(directory, tool)
        if os.path.islink(path) and os.readlink(path) == LAUNCHER:
            continue
        if os.path.lexists(path):
            os.remove(path)
        os.symlink(LAUNCHER, path)
        made.append(path)
    return made


if __name__ == "__main__":
    for path in write_man_pages(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(path, file=sys.stderr)
    if os.path.exists("setup.cfg"):
        with open("setup.cfg", encoding="utf-8") as handle:
            old = handle.read()
        new = setup_cfg_text(old)
        if new != old:
            with open("setup.cfg", "w", encoding="utf-8") as handle:
                handle.write(new)
            print("setup.cfg", file=sys.stderr)
    if os.path.isdir("bin"):
        for path in write_launchers("bin"):
            print(path, file=sys.stderr)
