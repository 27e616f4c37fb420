"""Every tool behaves the same way where users expect it to: help, version,
usage errors, missing inputs, truncated input, closed pipes, terminals.

Real subprocesses (the installed console scripts) unless stated otherwise.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from conftest import REPO, run, tool_env
from tarproc.cli import TOOLS
from tarproc.cli.app import tool_shared

#: tools that read tar shards (the shared INPUT ..., '-' by default)
TAR_READERS = [t for t in TOOLS if "inputs" in tool_shared(importlib.import_module(f"tarproc.cli.{t}").app)]


def base_args(tool: str, tmp_path) -> list[str]:
    """The options a tool needs besides its input, writing to stdout where it can."""
    return {
        "tarproc": ["-c", "true", "-o", "-"],
        "tarsplit": ["-n", "1", "-o", str(tmp_path / "out-%06d.tar"), "--manifest", "-"],
        "tarcats": ["-o", "-"],
        "tarpcat": ["-o", "-"],
        "tarsort": ["-o", "-"],
        "lines2tar": ["-k", "url txt"],
        "tarmap": ["-o", str(tmp_path / "out" / "{index}.tar"), "-c", "cat", "--dry-run"],
        "tarshuffle": ["-o", str(tmp_path / "out" / "%04d.tar"), "--shards", "2"],
        "tarmix": ["-n", "5", "-o", f"{tmp_path / 'mix'}/"],
        "tardedup": ["-o", str(tmp_path / "out" / "{index}.tar")],
    }.get(tool, [])


def one_error_line(stderr: bytes, tool: str) -> str:
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith(f"{tool}: error: "), text
    return lines[0]


@pytest.mark.parametrize("tool", TOOLS)
def test_help_shows_description_and_examples(tool):
    out = run([tool, "-h" if tool == "tarcats" else "--help"])
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert text.startswith(f"Usage: {tool} ")
    assert "Examples:" in text and "Exit status:" in text
    assert tool in text.partition("Examples:")[2]
    assert out.stderr == b""


@pytest.mark.parametrize("tool", TOOLS)
def test_version(tool):
    out = run([tool, "--version"])
    assert out.returncode == 0
    assert re.fullmatch(rf"{tool} \(tarproc\) \S+\n", out.stdout.decode())


@pytest.mark.parametrize("tool", TOOLS)
def test_missing_input_is_one_error_line(tool, tmp_path):
    missing = str(tmp_path / "no-such-input")
    out = run([tool, *base_args(tool, tmp_path), missing])
    assert out.returncode == 1
    line = one_error_line(out.stderr, tool)
    assert "no-such-input" in line
    assert out.stdout == b""


@pytest.mark.parametrize("tool", TOOLS)
def test_bad_option_is_one_usage_line(tool):
    """Regression: click printed the usage, a hint and 'Error: ...' on four
    lines, unlike every other error."""
    out = run([tool, "--no-such-option"])
    assert out.returncode == 2
    line = one_error_line(out.stderr, tool)
    assert "--no-such-option" in line and f"'{tool} --help'" in line


@pytest.mark.parametrize("tool", ["tarcats", "tarsplit", "tarsort", "tarshow"])
def test_bad_option_value_is_one_usage_line(tool):
    out = run([tool, "--count" if tool in ("tarcats", "tarshow") else "--mtime", "many"])
    assert out.returncode == 2
    assert "invalid value" in one_error_line(out.stderr, tool)


@pytest.mark.parametrize("tool", ["tarcats", "tarsort", "lines2tar", "tsv2tar", "dir2tar", "tarsplit"])
def test_unwritable_output_is_one_error_line(tool, tmp_path, imagenet_shard):
    target = str(tmp_path / "no-such-dir" / ("out-%d.tar" if tool == "tarsplit" else "out.tar"))
    plan = tmp_path / "plan.tsv"
    plan.write_text("__key__\ttxt\na\thello\n")
    args = {
        "lines2tar": ["-k", "txt", str(plan)],
        "tsv2tar": [str(plan)],
        "dir2tar": [str(tmp_path)],
        "tarsplit": ["-n", "10", str(imagenet_shard)],
    }.get(tool, [str(imagenet_shard)])
    out = run([tool, *args, "-o", target])
    assert out.returncode == 1
    assert "no-such-dir" in one_error_line(out.stderr, tool)


@pytest.mark.parametrize("tool", TAR_READERS)
def test_truncated_stdin_is_one_error_line_with_offset(tool, tmp_path, imagenet_shard):
    data = imagenet_shard.read_bytes()
    cut = len(data) // 2 + 100  # inside some member's data
    out = run([tool, *base_args(tool, tmp_path)], input=data[:cut])
    assert out.returncode == 3
    line = one_error_line(out.stderr, tool)
    assert f"offset {cut}" in line and "last complete sample" in line


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory, imagenet_shard):
    """Inputs whose output is far larger than a pipe buffer, so a reader
    that goes away is always noticed."""
    base = tmp_path_factory.mktemp("big")
    lines = base / "lines.txt"
    lines.write_text("".join(f"http://example.com/{i}.jpg a caption number {i}\n" for i in range(3000)))
    plan = base / "plan.tsv"
    plan.write_text("__key__\ttxt\n" + "".join(f"k{i:06d}\tsome text {i}\n" for i in range(2000)))
    tree = base / "tree"
    for d in range(10):
        (tree / f"d{d}").mkdir(parents=True)
        for i in range(30):
            (tree / f"d{d}" / f"{i:04d}.txt").write_bytes(b"x" * 100)
    return {"shards": [str(imagenet_shard)], "lines": str(lines), "plan": str(plan), "tree": str(tree),
            # 40 x 20 manifest lines: more than a pipe buffer holds
            "many": [str(imagenet_shard)] * 20}


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_pipe_ends_quietly(tool, tmp_path, big_inputs):
    inputs = {"lines2tar": [big_inputs["lines"]], "tsv2tar": [big_inputs["plan"]],
              "dir2tar": [big_inputs["tree"]], "tarsplit": big_inputs["many"],
              # 20 copies: a report of 20 lines listing 40 repeated keys each, more than a pipe buffer
              "tarcheck": big_inputs["many"],
              }.get(tool, big_inputs["shards"])
    cwd = None
    if tool in ("tarmap", "tarshuffle"):
        # 2000 tasks, named relative to their folder: as absolute paths they
        # could pass the kernel's 128 KiB limit on one argument (bash -c's)
        cwd = Path(big_inputs["many"][0]).parent
        inputs = [Path(big_inputs["many"][0]).name] * 2000
    args = base_args(tool, tmp_path) + inputs
    if tool == "tarpcat":
        args += ["-p", "2", inputs[0]]
    if tool == "tarcheck":
        args += ["-q", "-j", "1"]  # -q: no totals on stderr
    if tool == "tarshow":
        args += ["-f", "jpg"]  # the listing of 40 samples could fit in the pipe buffer
    if tool == "tarshuffle":
        args += ["--k8s-job", "x", "--image", "i", "-q"]  # its only stdout: two Jobs naming 2000 inputs (-q: no warnings for local paths)
    if tool == "tarmix":  # its only stdout: the manifest, here of 800 one-sample shards
        args = base_args(tool, tmp_path) + big_inputs["many"] + ["-n", "800", "--maxcount", "1", "--rekey", "{index:09d}",
                                                                 "--manifest", "-"]
    if tool == "tardedup":  # its only stdout: the removed list, here every sample of 19 of the 20 copies
        args = base_args(tool, tmp_path) + big_inputs["many"] + ["--removed", "-", "-j", "2"]
    out = run(f"{shlex.join([tool, *args])} | head -c 100 >/dev/null; exit ${{PIPESTATUS[0]}}", shell=True, cwd=cwd)
    assert out.returncode == 141, out.stderr
    assert out.stderr == b""


@pytest.mark.parametrize("tool", TAR_READERS)
def test_refuses_to_read_tar_from_a_terminal(tool, tmp_path):
    """Like GNU tar: with stdin a terminal and no INPUT, say so instead of
    waiting for input nobody will type."""
    master, slave = os.openpty()
    try:
        out = subprocess.run([tool, *base_args(tool, tmp_path)], stdin=slave, capture_output=True, env=tool_env(),
                             timeout=30)
    finally:
        os.close(slave)
        os.close(master)
    assert out.returncode == 2
    assert "terminal" in one_error_line(out.stderr, tool)


def _option_names(tool: str) -> set[str]:
    command = typer.main.get_command(importlib.import_module(f"tarproc.cli.{tool}").app)
    names = set()
    for param in command.params:
        names.update(getattr(param, "opts", ()))
        names.update(getattr(param, "secondary_opts", ()))
    return names | {"-h", "--help"}


def _example_commands(text: str):
    """(tool, argv) of each tool invocation in example lines."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for word in words + ["|"]:
            if word in ("|", "&&", ";"):
                if command and command[0] in TOOLS:
                    yield command[0], command[1:]
                command = []
            else:
                command.append(word)


def _unknown_options(tool: str, argv: list[str]) -> list[str]:
    known = _option_names(tool)
    bad = []
    for word in argv:
        if word == "-" or not word.startswith("-") or re.fullmatch(r"-\d.*", word):
            continue
        name = word.split("=", 1)[0]
        if name in known:
            continue
        if re.fullmatch(r"-[a-zA-Z]{2,}", name) and all(f"-{c}" in known for c in name[1:]):
            continue  # -vv
        bad.append(word)
    return bad


@pytest.mark.parametrize("tool", TOOLS)
def test_help_examples_use_only_options_that_exist(tool):
    """Regression: tarsplit's help showed `tarproc ... -i jpg`, an option tarproc does not have."""
    text = run([tool, "--help"]).stdout.decode().partition("Examples:")[2].partition("Exit status:")[0]
    commands = list(_example_commands(text))
    assert commands
    for name, argv in commands:
        assert not _unknown_options(name, argv), f"{tool} --help example: {name} {shlex.join(argv)}"


def test_readme_examples_use_only_options_that_exist():
    text = (REPO / "README.md").read_text()
    commands = [(name, argv) for name, argv in _example_commands(text)]
    assert len(commands) > 20
    for name, argv in commands:
        assert not _unknown_options(name, argv), f"README: {name} {shlex.join(argv)}"


# ------------------------------------------------------------------ regressions


def test_tarpcat_reads_stdin_alone(imagenet_shard):
    """Regression: `cat shard | tarpcat -o -` was a usage error (stdin cannot
    go to a worker); a single input needs no worker and is read in-process."""
    data = imagenet_shard.read_bytes()
    pcat = run(["tarpcat", "-o", "-"], input=data)
    assert pcat.returncode == 0, pcat.stderr
    assert pcat.stdout == run(["tarcats", "-o", "-"], input=data).stdout
    both = run(["tarpcat", "-p", "2", "-o", "-", "-", str(imagenet_shard)], input=data)
    assert both.returncode == 2 and "stdin" in one_error_line(both.stderr, "tarpcat")


def test_tar2json_empty_field_list_is_a_usage_error(imagenet_shard):
    """Regression: -k '' was taken as "all fields"."""
    out = run(["tar2json", "-k", "", str(imagenet_shard)])
    assert out.returncode == 2 and out.stdout == b""
    one_error_line(out.stderr, "tar2json")


def test_tarcats_seed_takes_any_text_like_tarsort(imagenet_shard):
    args = ["tarcats", str(imagenet_shard), "--shuffle", "20", "-o", "-"]
    first = run(args + ["--seed", "epoch-3"])
    assert first.returncode == 0, first.stderr
    assert first.stdout == run(args + ["--seed", "epoch-3"]).stdout
    assert first.stdout != run(args + ["--seed", "epoch-4"]).stdout
    # a numeric seed is still the integer it always was
    assert run(args + ["--seed", "7"]).stdout == run(args + ["--seed", "007"]).stdout


@pytest.mark.parametrize("tool", ["tarshow", "tar2json", "tarcats", "tarsort"])
def test_verbose_prints_a_summary_on_stderr_only(tool, tmp_path, imagenet_shard):
    """Regression: -v printed nothing in tarshow and tar2json."""
    args = [tool, *base_args(tool, tmp_path), str(imagenet_shard)]
    quiet, verbose = run(args), run(args + ["-v"])
    assert verbose.returncode == 0 and verbose.stdout == quiet.stdout
    assert re.search(rb"^%s: (read|wrote) 40 samples .* in [\d.]+ s" % tool.encode(), verbose.stderr, re.M)


def test_dir2tar_says_when_nothing_was_written(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    out = run(["dir2tar", "--include", "*.JPEG", str(tmp_path), "-o", str(tmp_path / "out.tar")])
    assert out.returncode == 0
    assert b"dir2tar: warning: " in out.stderr and b"no sample" in out.stderr


def test_tarpcat_help_does_not_depend_on_the_machine():
    """Regression: `-p [default: 2]` was the CPU count of the machine that made
    man/tarpcat.1, so the man page was "stale" on any other machine."""
    import sys

    code = ("import os, sys; os.cpu_count = lambda: 64\n"
            "from tarproc.cli.man import man_page; sys.stdout.write(man_page('tarpcat'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (REPO / "man" / "tarpcat.1").read_text()
    assert "the number of CPUs" in out.stdout
