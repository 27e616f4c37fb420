"""Project-wide checks: library never imports the CLI framework, library
messages name no options, tools start without the modules of one path,
man pages are current, every tool has help with examples and --version."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tarproc.cli import TOOLS
from tarproc.cli.man import LAUNCHER, man_page, setup_cfg_text

REPO = Path(__file__).resolve().parent.parent
#: every library module, in every layer's package (tests/test_architecture.py names the layers)
LIBRARY = sorted(p for p in (REPO / "tarproc").rglob("*.py") if "cli" not in p.relative_to(REPO / "tarproc").parts)
EXISTING_TOOLS = [t for t in TOOLS if (REPO / "tarproc" / "cli" / f"{t}.py").exists()]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(REPO / "tarproc")))
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


# ------------------------------------------- library messages speak of data

#: a command-line option: ``-o``, ``--max-errors`` (not ``non-zero``, not ``'-'``)
FLAG = re.compile(r"(?<![\w}-])--?[a-zA-Z][\w-]*")
#: an option inside a whole command to run, ``tarsort {} -o OUT``: the remedy
#: names another tool, so its options are part of the data-level advice
COMMAND = re.compile(rf"\b(?:{'|'.join(TOOLS)})\b [^;()]*$")


def _text(node: ast.AST) -> str | None:
    """The message a string expression makes, ``{}`` for each value put in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        return None if left is None and right is None else (left or "{}") + (right or "{}")
    return None


def raised_messages(source: str) -> list[tuple[int, str]]:
    """(line, message) of every ``raise Error(message)`` in ``source``, a
    message built in a variable first included; and of every
    ``x.stopped = message`` (a run's reason to stop, printed by the tool)."""
    tree = ast.parse(source)
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
            continue
        built: dict[str, list[ast.AST]] = {}
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                built.setdefault(node.targets[0].id, []).append(node.value)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                built.setdefault(node.target.id, []).append(node.value)
        for node in ast.walk(func):
            values: list[ast.AST] = []
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                for arg in node.exc.args:
                    values += built.get(arg.id, []) if isinstance(arg, ast.Name) else [arg]
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr == "stopped":
                        values.append(node.value)
                    elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        values += [v for t, v in zip(target.elts, node.value.elts)
                                   if isinstance(t, ast.Attribute) and t.attr == "stopped"]
            for value in values:
                text = _text(value)
                if text is not None:
                    found.append((value.lineno, text))
    return sorted(set(found))


def flags_named(message: str) -> list[str]:
    """The options ``message`` names other than inside a command to run."""
    return [m.group() for m in FLAG.finditer(message) if not COMMAND.search(message[: m.start()])]


def test_flag_finder_finds_flags_in_raised_messages():
    source = '''
def f(pattern, n):
    if n:
        raise UsageError(f"-o {pattern!r}: bad")
    message = "more than " + str(n)
    message += " (--max-errors)"
    if pattern:
        raise CommandError(message)
    summary.stopped = f"the first {n} failed (--halt-after)"
    raise SampleError(f"not grouped: group it with tarsort {pattern} -o OUT; use '-' or a non-zero count")
'''
    found = raised_messages(source)
    assert [flags_named(text) for _, text in found] == [["-o"], [], ["--max-errors"], ["--halt-after"], []], found
    assert found[-1][1] == "not grouped: group it with tarsort {} -o OUT; use '-' or a non-zero count"


def test_library_messages_name_no_options():
    """Issue 11: library errors speak of data, not of flags. A flag belongs
    to the tool, which adds it as a hint to an error's ``topic``
    (``Tool.run(hints)``, ``Tool.hinted``)."""
    library = [p for p in (REPO / "tarproc").rglob("*.py") if "cli" not in p.relative_to(REPO / "tarproc").parts]
    offenders, count = [], 0
    for path in library:
        for line, text in raised_messages(path.read_text()):
            count += 1
            if flags_named(text):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {text}")
    assert count > 150, count  # the scan sees the library's messages
    assert not offenders, "\n".join(offenders)


#: modules only one path needs (http inputs, images, object stores, Dask,
#: Job YAML): no tool imports them at start, whatever its options
LAZY_MODULES = ["http.client", "urllib.request", "ssl", "PIL.Image", "fsspec", "yaml", "distributed", "multiprocess"]


def test_tools_start_without_the_modules_of_one_path():
    installed = [m for m in LAZY_MODULES if importlib.util.find_spec(m.split(".")[0]) is not None]
    assert {"http.client", "ssl", "PIL.Image"} <= set(installed)  # so their absence below means something
    code = (f"import sys\nfor t in {EXISTING_TOOLS!r}: __import__('tarproc.cli.' + t)\n"
            f"print(' '.join(m for m in {installed!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [], f"imported at start: {proc.stdout}"
