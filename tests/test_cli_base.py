"""The shared base of the tools (tarproc/cli/options.py, tool.py and app.py):
a tool declares only its own options, the shared ones come from one table,
spelled the same in every tool."""

from __future__ import annotations

import importlib
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from tarproc.cli import TOOLS
from tarproc.cli.app import command, make_app, tool_shared
from tarproc.cli.options import ALWAYS, SHARED, shared_names
from tarproc.cli.tool import Tool


def _toy():
    app = make_app("Toy tool.", "  toy --count 2 in.tar")
    seen = {}

    @command(app, shared="read count")
    def toy(tool: Tool, name: Annotated[str, typer.Option("--name", help="A name.")] = "x") -> None:
        with tool.run():
            seen.update(vars(tool.args), name=name, tool=tool.name, verbose=tool.verbose)

    return app, seen


def test_a_tool_gets_the_shared_options_it_names_and_those_every_tool_takes():
    app, seen = _toy()
    result = CliRunner().invoke(app, ["--count", "2", "--strict", "-vv", "--name", "y", "a.tar", "b.tar"])
    assert result.exit_code == 0, result.output
    assert seen == {"inputs": ["a.tar", "b.tar"], "count": 2, "strict": True, "lowercase_fields": False,
                    "storage_options": None, "progress": None, "verbose": 2, "quiet": False, "debug": False, "name": "y", "tool": "toy"}
    assert tool_shared(app) == ("inputs", "count", "strict", "lowercase_fields", "storage_options", "progress", "verbose",
                                "quiet", "debug", "version")
    assert CliRunner().invoke(app, ["--skip", "1"]).exit_code == 2  # not asked for


def test_an_unknown_shared_name_is_refused_when_the_tool_is_defined():
    app = make_app("Toy tool.", "  toy")
    with pytest.raises(KeyError, match="no shared option"):
        command(app, shared="read cuont")(lambda tool: None)


def _params(tool: str) -> dict[str, tuple]:
    cmd = typer.main.get_command(importlib.import_module(f"tarproc.cli.{tool}").app)
    return {p.name: (tuple(p.opts), tuple(p.secondary_opts), p.help if hasattr(p, "help") else None)
            for p in cmd.params}


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_takes_its_shared_options_from_the_one_table(tool):
    shared = tool_shared(importlib.import_module(f"tarproc.cli.{tool}").app)
    assert set(ALWAYS) <= set(shared), "the tool declares its options the old way"
    params = _params(tool)
    reference = _params("tarproc")  # takes most shared options
    for name in shared:
        assert name in SHARED
        if name in reference:
            assert params[name] == reference[name], f"{tool} spells {name} differently"


def test_groups_expand_in_table_order():
    assert shared_names("write read") == ["inputs", "strict", "lowercase_fields", "compress", "mtime", "storage_options",
                                          *ALWAYS]


def test_ctrl_c_while_a_tool_starts_ends_it_quietly():
    """SIGINT's default action from the package's import until run_app takes
    over (a KeyboardInterrupt traceback otherwise); a program that imports
    the package keeps Python's handler."""
    import subprocess
    import sys

    probe = "import signal, sys; sys.argv[0] = {!r}; import tarproc.cli; print(signal.getsignal(signal.SIGINT) is signal.SIG_DFL)"
    tool = subprocess.run([sys.executable, "-c", probe.format("/x/bin/tarproc")], capture_output=True, text=True)
    other = subprocess.run([sys.executable, "-c", probe.format("myscript.py")], capture_output=True, text=True)
    assert (tool.stdout, other.stdout) == ("True\n", "False\n"), (tool.stderr, other.stderr)
    # once the tool runs, Ctrl-C is its own again (KeyboardInterrupt, recorded): exit 130 with the temporary files removed
    run_ = subprocess.run([sys.executable, "-c", "import signal, sys; sys.argv = ['tarsplit', '--help']\n"
                           "from tarproc.cli.tarsplit import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
                           "from tarproc.cli import tool\nprint(signal.getsignal(signal.SIGINT) is tool._raise_interrupted)"],
                          capture_output=True, text=True)
    assert run_.stdout.endswith("True\n"), run_.stderr
