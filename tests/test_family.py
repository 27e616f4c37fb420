"""The tool family as its users meet it, table-driven over every tool: help
in the tools' own words, shell completion in a real bash, man pages found by
`man`, -q/-v/-vv, the progress bar on a terminal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, run, tool_env
from tarproc.cli import TOOLS

#: words of the framework that must not reach a user
FRAMEWORK_WORDS = [r"<list\[", r"<str>", r"<int>", r"\{[A-Z]+\}", r"Value error", r"is not one of", r"\)\s*\(",
                   r"Traceback", r"typer", r"click"]


@pytest.mark.parametrize("tool", TOOLS)
def test_help_is_in_the_tools_own_words(tool):
    out = run([tool, "--help"])
    assert out.returncode == 0
    text = out.stdout.decode()
    for word in FRAMEWORK_WORDS:
        assert not re.search(word, text), f"{tool} --help shows {word!r}"


@pytest.mark.parametrize("tool,args", [
    ("tar2json", ["--format", "jsonlines"]),
    ("tarsort", ["-S", "date"]),
    ("tarcats", ["--missing", "maybe"]),
    ("tarsplit", ["-s", "lots", "-n", "1"]),
    ("dir2tar", []),
    ("lines2tar", []),
])
def test_usage_errors_are_in_the_tools_own_words(tool, args):
    out = run([tool, *args], input=b"")
    assert out.returncode == 2
    text = out.stderr.decode()
    assert text.startswith(f"{tool}: error: ") and text.count("\n") == 1, text
    for word in FRAMEWORK_WORDS:
        assert not re.search(word, text), f"{tool} {args}: {text}"


def test_a_bad_choice_lists_the_choices():
    out = run(["tar2json", "--format", "jsonlines"], input=b"")
    assert out.stderr.decode() == ("tar2json: error: invalid value for '--format': 'jsonlines' must be jsonl or tsv"
                                   " (see 'tar2json --help')\n")


def test_tarpcat_help_lists_no_option_it_refuses():
    text = run(["tarpcat", "--help"]).stdout.decode()
    assert "--interleave" not in text.partition("Options:")[2]
    assert run(["tarpcat", "--interleave"]).returncode == 2


def test_lines2tar_input_is_described_as_text():
    text = run(["lines2tar", "--help"]).stdout.decode().partition("Arguments:")[2].partition("Options:")[0]
    assert "Text files" in text and "shards" not in text.lower() and "Compression" not in text


def _complete(tool: str, words: list[str]) -> list[str]:
    """What bash completes for `tool WORDS...` (the last word being typed),
    with the script `tool --show-completion bash` prints, in a real bash."""
    script = run([tool, "--show-completion", "bash"], env={**tool_env(), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0, script.stderr
    line = ("source /dev/stdin; COMP_WORDS=(%s); COMP_CWORD=%d; _%s_completion %s; printf '%%s\\n' \"${COMPREPLY[@]}\""
            % (" ".join(f"'{w}'" for w in [tool, *words]), len(words), tool, tool))
    out = subprocess.run(["bash", "-c", line], input=script.stdout, capture_output=True, env=tool_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("tool", TOOLS)
def test_bash_completes_options(tool):
    assert "--help" in _complete(tool, ["--hel"])
    assert "--version" in _complete(tool, ["--vers"])


def test_bash_completes_a_tools_own_options_and_choices():
    assert _complete("tarsplit", ["--maxs"]) == ["--maxsize", "--maxshards"]
    assert _complete("tarsort", ["--type", ""]) == ["str", "int", "float"]


@pytest.mark.parametrize("shell,marker", [("zsh", "compdef"), ("fish", "complete --command tarsplit")])
def test_completion_scripts_for_zsh_and_fish(shell, marker):
    out = run(["tarsplit", "--show-completion", shell],
              env={**tool_env(), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert out.returncode == 0 and marker in out.stdout.decode()


def test_man_finds_the_pages_installed_in_the_venv():
    """`make install` (and `pip install .`, from setup.cfg's data files) put
    the pages in PREFIX/share/man/man1, which man-db finds from PREFIX/bin on PATH."""
    if shutil.which("man") is None:
        pytest.skip("man-db is not installed (make install installs it when root: apt-get install man-db)")
    page = Path(sys.prefix) / "share" / "man" / "man1" / "tarproc.1"
    assert page.exists(), f"{page} missing: run `make install`"
    env = {k: v for k, v in tool_env().items() if k != "MANPATH"}
    out = subprocess.run(["man", "-w", "tarproc"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == page.resolve()
    assert page.read_bytes() == (Path(__file__).parent.parent / "man" / "tarproc.1").read_bytes(), "run `make install`"
    assert Path(BIN).resolve().parent == Path(sys.prefix).resolve()
