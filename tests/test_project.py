"""Project-wide checks: library never imports the CLI framework, man pages
are current, every tool has help with examples and --version."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tarproc.cli import TOOLS
from tarproc.cli.man import LAUNCHER, man_page, setup_cfg_text

REPO = Path(__file__).resolve().parent.parent
LIBRARY = [p for p in (REPO / "tarproc").glob("*.py")]
EXISTING_TOOLS = [t for t in TOOLS if (REPO / "tarproc" / "cli" / f"{t}.py").exists()]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_library_modules_do_not_import_typer_or_click(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"typer", "click", "rich"}, f"{path.name} imports {imported & {'typer', 'click', 'rich'}}"


@pytest.mark.parametrize("tool", EXISTING_TOOLS)
def test_man_page_is_current(tool):
    pytest.importorskip("click_man")
    committed = REPO / "man" / f"{tool}.1"
    assert committed.exists(), f"man/{tool}.1 missing: run `make man`"
    assert committed.read_text() == man_page(tool), f"man/{tool}.1 is stale: run `make man`"
    text = committed.read_text()
    assert '.SH "EXIT STATUS"' in text and '.SH "EXAMPLES"' in text
    assert ".SH OPTIONS" in text and "\\-\\-version" in text, "man page lists no options"
    requests = {line.split()[0] for line in text.splitlines() if line.startswith(".")}
    assert requests <= {".TH", ".SH", ".PP", ".TP", ".B", ".nf", ".fi"}, f"help text read as roff requests: {requests}"


@pytest.mark.parametrize("tool", EXISTING_TOOLS)
def test_help_has_examples_and_version(tool):
    app = importlib.import_module(f"tarproc.cli.{tool}").app
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    examples = result.stdout.partition("Examples:")[2]
    assert tool in examples, "--help shows no example of the tool"
    assert "Exit status:" in result.stdout
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.strip().endswith(importlib.import_module("tarproc").__version__)


def test_tool_list_is_defined_once():
    """setup.cfg (console scripts, man page data files) and bin/ are derived
    from tarproc.cli.TOOLS by `make man`; nothing else lists the tools."""
    assert EXISTING_TOOLS == TOOLS, "a tool in tarproc.cli.TOOLS has no module"
    setup = (REPO / "setup.cfg").read_text()
    assert setup_cfg_text(setup) == setup, "setup.cfg's tool lists are stale: run `make man`"
    links = {p.name for p in (REPO / "bin").iterdir() if p.is_symlink()}
    assert links == set(TOOLS)
    for tool in TOOLS:
        assert (REPO / "bin" / tool).readlink().name == LAUNCHER


@pytest.mark.parametrize("tool", EXISTING_TOOLS)
def test_console_script_declared(tool):
    setup = (REPO / "setup.cfg").read_text()
    assert f"{tool} = tarproc.cli.{tool}:main" in setup
    assert isinstance(importlib.import_module(f"tarproc.cli.{tool}").app, typer.Typer)


@pytest.mark.parametrize("tool", EXISTING_TOOLS)
def test_bin_launchers_run_each_tool(tool):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "bin" / tool), "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{tool} (tarproc) ")
