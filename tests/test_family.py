"""The tool family as its users meet it, table-driven over every tool: help
in the tools' own words, shell completion in a real bash, zsh and fish, man pages found by
`man`, -q/-v/-vv, the progress bar on a terminal."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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
    ("lines2tar", ["-s", ""]),
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
    quoted = " ".join(f"'{w}'" for w in [tool, *words])
    line = (f"source /dev/stdin; COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _{tool}_completion {tool};"
            " printf '%s\\n' \"${COMPREPLY[@]}\"")
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
    # the issue-18 tools (tarcheck, tarmix, tardedup): their own options and choices
    assert _complete("tarcheck", ["--repa"]) == ["--repair"]
    assert _complete("tarmix", ["--when-exhausted", ""]) == ["stop", "repeat", "renormalize"]
    assert _complete("tardedup", ["--remo"]) == ["--removed"]


@pytest.mark.parametrize("shell,marker", [("zsh", "compdef"), ("fish", "complete --command tarsplit")])
def test_completion_scripts_for_zsh_and_fish(shell, marker):
    out = run(["tarsplit", "--show-completion", shell],
              env={**tool_env(), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert out.returncode == 0 and marker in out.stdout.decode()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("shell,marker", [("zsh", "compdef _tarsplit_completion tarsplit"),
                                          ("fish", "complete --command tarsplit"),
                                          ("bash", "complete -o default -F _tarsplit_completion tarsplit")])
def test_show_completion_prints_the_script_of_the_shell_named(shell, marker):
    """From bash, with typer's shell detection on (as a user runs it): the
    name given wins (it printed bash's script for zsh and fish)."""
    out = run(["bash", "-c", f"tarsplit --show-completion {shell}"])
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout.decode(), out.stdout.decode()[:300]
    detected = run(["bash", "-c", "tarsplit --show-completion"])
    assert detected.returncode == 0 and "_tarsplit_completion" in detected.stdout.decode()


def test_show_completion_refuses_an_unknown_shell():
    out = run(["tarsplit", "--show-completion", "tcsh"])
    assert out.returncode == 2
    assert out.stderr.decode().startswith("tarsplit: error: invalid value for '--show-completion': 'tcsh' must be bash,")


def test_bash_completes_the_shell_names():
    assert _complete("tarsplit", ["--show-completion", "z"]) == ["zsh"]
    assert _complete("tarsplit", ["--install-completion", ""]) == ["bash", "zsh", "fish", "powershell", "pwsh"]


def _script(tool: str, shell: str, tmp_path: Path) -> Path:
    out = run([tool, "--show-completion", shell], env={**tool_env(), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert out.returncode == 0, out.stderr
    path = tmp_path / f"{tool}.{shell}"
    path.write_bytes(out.stdout)
    return path


#: types TYPED and a TAB into an interactive zsh (zsh/zpty, compinit) with the completion script
#: sourced, and prints the screen once it matches WANT (a zsh pattern) or after 30 s
ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z 'PS1="%% " TERM=dumb zsh -f -i'
zpty -w z "autoload -Uz compinit; compinit -u -D; source ${(q)SCRIPT}"
zpty -w -n z "$TYPED"$'\t'
out=""
for i in {1..300}; do
  if zpty -r -t z chunk; then out+=$chunk; else sleep 0.1; fi
  [[ $out == ${~WANT} ]] && break
done
zpty -d z
print -r -- "$out"
"""


def _zsh_complete(tool: str, typed: str, want: str, tmp_path: Path) -> str:
    """The screen of a real, interactive zsh after `TYPED<TAB>`."""
    # a short relative name: a long line scrolls sideways in zle, and its echo would hide what we look for
    env = {**tool_env(), "SCRIPT": _script(tool, "zsh", tmp_path).name, "TYPED": typed, "WANT": want}
    out = subprocess.run(["zsh", "-f", "-c", ZSH_DRIVER], capture_output=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.stdout.decode("utf-8", "replace").replace("\r", ""))  # no escapes


@pytest.mark.skipif(shutil.which("zsh") is None,
                    reason="needs zsh (make install installs it when root: .ci/debian-packages)")
def test_zsh_completes_options_in_a_real_zsh(tmp_path):
    screen = _zsh_complete("tarsplit", "tarsplit --maxs", "*--maxsize*", tmp_path)
    assert re.search(r"^--maxshards +-- Write at most N shards", screen, re.M), screen
    assert re.search(r"^--maxsize +-- Uncompressed tar bytes per shard", screen, re.M), screen
    screen = _zsh_complete("tarsort", "tarsort --hel", "*--help *", tmp_path)
    assert "% tarsort --help " in screen, screen  # the one candidate is inserted


def _fish_complete(tool: str, typed: str, tmp_path: Path) -> list[str]:
    """What a real fish completes for TYPED (``complete --do-complete``)."""
    script = _script(tool, "fish", tmp_path)
    out = subprocess.run(["fish", "--no-config", "-c", f"source {script}; complete --do-complete '{typed}'"],
                         capture_output=True, env=tool_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split("\t")[0] for line in out.stdout.decode().splitlines()]


@pytest.mark.skipif(shutil.which("fish") is None,
                    reason="needs fish (make install installs it when root: .ci/debian-packages)")
def test_fish_completes_options_and_choices_in_a_real_fish(tmp_path):
    assert _fish_complete("tarsplit", "tarsplit --maxs", tmp_path) == ["--maxshards", "--maxsize"]
    assert sorted(_fish_complete("tarsort", "tarsort --type ", tmp_path)) == ["float", "int", "str"]
    assert "--storage-option" in _fish_complete("tarmap", "tarmap --stor", tmp_path)


def test_bash_completes_tarprocs_modes():
    assert _complete("tarproc", ["--mode", ""]) == ["tar", "lines", "pages", "keys"]
    assert _complete("tarproc", ["--mode", "l"]) == ["lines"]


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


# ------------------------------------------------------- -q, -v, -vv, bars
def _inputs(tool: str, tmp_path, shard) -> list[str]:
    """Arguments that make ``tool`` read 40 samples and succeed."""
    if tool == "lines2tar":
        path = tmp_path / "lines.txt"
        path.write_text("".join(f"http://x/{i}.jpg caption {i}\n" for i in range(40)))
        return ["-k", "url txt", str(path), "-o", str(tmp_path / "o.tar")]
    if tool == "tsv2tar":
        path = tmp_path / "plan.tsv"
        path.write_text("__key__\ttxt\n" + "".join(f"k{i:03d}\ttext {i}\n" for i in range(40)))
        return [str(path), "-o", str(tmp_path / "o.tar")]
    if tool == "dir2tar":
        tree = tmp_path / "tree"
        tree.mkdir()
        for i in range(40):
            (tree / f"{i:03d}.txt").write_text(str(i))
        return [str(tree), "-o", str(tmp_path / "o.tar")]
    return {
        "tarproc": ["-c", "true", "-o", str(tmp_path / "o.tar")],
        "tarsplit": ["-n", "10", "-o", str(tmp_path / "s-%03d.tar")],
        "tarcats": ["-o", str(tmp_path / "o.tar")],
        "tarpcat": ["-p", "2", "-o", str(tmp_path / "o.tar")],
        "tarsort": ["-o", str(tmp_path / "o.tar")],
        "tarshow": [],
        "tar2json": [],
        "tarmap": ["-o", str(tmp_path / "out" / "{stem}.tar"), "-c", "cat"],
        "tarshuffle": ["-o", str(tmp_path / "out" / "%d.tar"), "--shards", "1"],
        "tarcheck": ["--report", str(tmp_path / "report.jsonl")],
        "tarmix": ["-n", "40", "-o", str(tmp_path / "mix-%03d.tar")],
        "tardedup": ["-o", str(tmp_path / "out" / "{stem}.tar")],
    }[tool] + [str(shard)]


@pytest.mark.parametrize("tool", TOOLS)
def test_quiet_verbose_and_very_verbose(tool, tmp_path, imagenet_shard):
    args = _inputs(tool, tmp_path, imagenet_shard)
    quiet = run([tool, "-q", *args])
    assert quiet.returncode == 0 and quiet.stderr == b""
    verbose = run([tool, "-v", *args])
    lines = verbose.stderr.decode().splitlines()
    assert verbose.returncode == 0 and lines and all(line.startswith(f"{tool}: ") for line in lines), lines
    # tarmap's items are tasks (here one, of 40 samples), every other tool's are samples
    # tarmap's items are tasks (here one, of 40 samples), tarshuffle's too (here, run again: one
    # reduce task, skipped, no map phase needed), every other tool's are samples
    # tarcheck's are shards (here one, of 40 samples)
    # tardedup's are tasks too (run again: every output complete, no task runs)
    item, items = {"tarmap": ("task", 1), "tarshuffle": ("task", 1), "tarcheck": ("shard", 1),
                   "tardedup": ("task", 0)}.get(tool, ("sample", 40))
    assert not any(f"{tool}: {item} " in line for line in lines)
    assert any("40 samples" in line for line in lines), lines
    very = run([tool, "-vv", *args])
    per_item = [line for line in very.stderr.decode().splitlines() if line.startswith(f"{tool}: {item} ")]
    assert very.returncode == 0 and len(per_item) == items, very.stderr.decode()


@pytest.mark.parametrize("tool", ["tarcats", "tarsplit", "tarshow", "tar2json", "tarsort"])
def test_quiet_still_says_why_the_exit_status_is_1(tool, tmp_path, imagenet_shard):
    import tarfile

    shard = tmp_path / "in.tar"
    with tarfile.open(imagenet_shard) as src, tarfile.open(shard, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        for name in ("README", "LICENSE"):  # no key: skipped with a warning each
            info = tarfile.TarInfo(name)
            dst.addfile(info, io.BytesIO(b""))
    args = [a if a != str(imagenet_shard) else str(shard) for a in _inputs(tool, tmp_path, imagenet_shard)]
    loud = run([tool, *args])
    assert loud.returncode == 1 and loud.stderr.count(b"warning: ") == 2
    quiet = run([tool, "-q", *args])
    assert quiet.returncode == 1
    assert quiet.stderr.decode() == f"{tool}: error: 2 warnings about skipped or lost data (not shown with -q)\n"


def test_keep_says_where_the_directories_are(tmp_path, imagenet_shard):
    work = tmp_path / "work"
    work.mkdir()
    out = run(["tarproc", "--keep", "-c", "true", "--count", "2", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0
    (root,) = list(work.iterdir())
    assert out.stderr.decode() == f"tarproc: sample directories kept in {root}\n"


def _on_a_terminal(argv: list[str], cwd, status: int = 1) -> str:
    """stderr of ``argv`` run with stderr on a pseudo-terminal 120 columns
    wide; it must exit with ``status``."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=cwd,
                            env=tool_env())
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=60) == status  # (1 in this module's tests: a member was skipped)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("tool", ["tarcats", "tarsplit", "tarproc", "tarcats-http"])
def test_terminal_shows_a_bar_with_percentage_and_warnings_on_their_own_lines(tool, tmp_path, imagenet_shard):
    """Regression: `8sample [00:00, 70.55sample/s]tarproc: sample ... failed`
    (a warning printed into the bar's line), and no percentage for a local file."""
    import tarfile

    shard = tmp_path / "in.tar"
    with tarfile.open(imagenet_shard) as src, tarfile.open(shard, "w") as dst:
        members = src.getmembers()
        for i, member in enumerate(members):
            dst.addfile(member, src.extractfile(member))
            if i == len(members) // 2:
                info = tarfile.TarInfo("README")  # no key: skipped with a warning
                info.size = 3
                dst.addfile(info, io.BytesIO(b"hi\n"))
    args = {"tarcats": ["-o", "/dev/null"], "tarsplit": ["-n", "10", "-o", "s-%d.tar"],
            "tarproc": ["-c", "true", "-o", "/dev/null", "-w", str(tmp_path)], "tarcats-http": ["-o", "/dev/null"]}[tool]
    if tool.endswith("-http"):  # the total from the response's Content-Length
        from test_interop import http_server

        tool = tool.removesuffix("-http")
        with http_server(tmp_path) as url:
            text = _on_a_terminal([tool, *args, f"{url}/in.tar"], tmp_path)
    else:
        text = _on_a_terminal([tool, *args, str(shard)], tmp_path)
    segments = re.split(r"[\r\n]+", text)
    assert any(re.search(r"\d+%\|", s) for s in segments), text  # a bar with a percentage
    warnings = [s for s in segments if "warning" in s]
    assert warnings and all(s.startswith(f"{tool}: warning: ") for s in warnings), text
    assert "README" in warnings[0]


def test_a_pipeline_of_the_family_draws_one_labelled_bar(tmp_path, imagenet_shard):
    """`tarcats ... -o - | tarsplit ...` on a terminal: tarcats (which knows
    the input's size) draws its bar, labelled; tarsplit, reading the pipe
    tarcats writes, draws none (both redrew one line, unlabelled)."""
    line = f"tarcats {imagenet_shard} -o - | tarsplit -n 10 -o s-%d.tar"
    text = _on_a_terminal(["bash", "-c", line], tmp_path, status=0)
    segments = [s for s in re.split(r"[\r\n]+", text) if "|" in s]
    assert segments and all(s.startswith("tarcats: ") for s in segments), text
    assert any(re.search(r"^tarcats: +\d+%\|", s) for s in segments), text
    assert len(list(tmp_path.glob("s-*.tar"))) == 4
    # asked for, the second one draws its own, labelled
    text = _on_a_terminal(["bash", "-c", line.replace("tarsplit", "tarsplit --progress")], tmp_path, status=0)
    assert any(s.startswith("tarsplit: ") for s in re.split(r"[\r\n]+", text)), text


# ------------------------------------------------------ output names
# tarmap and tarshuffle have no --compress: each output is compressed by its name (the pattern's suffix);
# tarcheck writes no tar stream (--repair copies keep their inputs' names)
@pytest.mark.parametrize("tool", [t for t in TOOLS if t not in ("tarshow", "tar2json", "tarsplit", "tarmap", "tarshuffle",
                                                                 "tarcheck", "tardedup")])
@pytest.mark.parametrize("compress,name", [("gzip", "out.tar"), ("none", "out.tgz"), ("xz", "out.tar.zst")])
def test_compression_contradicting_the_output_name_is_a_usage_error(tool, compress, name, tmp_path, imagenet_shard):
    args = [a for a in _inputs(tool, tmp_path, imagenet_shard)]
    i = args.index("-o")
    args[i + 1] = str(tmp_path / name)
    out = run([tool, "--compress", compress, *args])
    assert out.returncode == 2, out.stderr
    line = out.stderr.decode()
    assert line.startswith(f"{tool}: error: output ") and "was asked for" in line and line.count("\n") == 1, line
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


@pytest.mark.parametrize("args", [["-z", "-o", "x-%06d.tar"], ["--compress", "bzip2", "-o", "x-{shard:04d}.tgz"]])
def test_tarsplit_compression_contradicting_the_pattern_is_a_usage_error(args, tmp_path, imagenet_shard):
    out = run(["tarsplit", "-n", "10", *args, str(imagenet_shard)], cwd=tmp_path)
    assert out.returncode == 2
    assert "was asked for" in out.stderr.decode() and list(tmp_path.iterdir()) == []


def test_tarsplit_into_a_directory(tmp_path, imagenet_shard):
    existing = tmp_path / "adir"
    existing.mkdir()
    out = run(["tarsplit", "-n", "20", "-o", "adir", str(imagenet_shard)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in existing.iterdir()) == ["000000.tar", "000001.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]
    out = run(["tarsplit", "-n", "20", "-z", "-o", "new/", str(imagenet_shard)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["000000.tar.gz", "000001.tar.gz"]


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])
@pytest.mark.parametrize("tool", ["tarcats", "tarsplit", "tarproc", "lines2tar"])
def test_a_signal_removes_the_unfinished_output(tool, sig, status, tmp_path, imagenet_shard):
    """SIGINT/SIGTERM while OUT.partial is being written: the tool dies of the signal (130/143 in a shell), no
    OUT.partial left (only SIGKILL can leave one)."""
    data = imagenet_shard.read_bytes()
    args = {"tarcats": ["-o", "out.tar"], "tarsplit": ["-n", "1000", "-o", "out-%d.tar"],
            "tarproc": ["-c", "true", "-o", "out.tar", "-w", str(tmp_path)], "lines2tar": ["-k", "txt", "-o", "out.tar"]}
    if tool == "lines2tar":
        data = b"".join(b"line %d\n" % i for i in range(20000))
    proc = subprocess.Popen([tool, *args[tool]], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=tmp_path, env=tool_env())
    proc.stdin.write(data)  # all of it, but no EOF: the tool waits for more (a tar may follow the end marker)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("out*.partial")):
        assert time.monotonic() < deadline and proc.poll() is None, "no OUT.partial appeared"
        time.sleep(0.05)
    time.sleep(0.3)  # the tool is now waiting for more input
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    assert b"Traceback" not in err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("out")]


# the side outputs a user may send to /dev/null: a FIFO stands in for the device
SIDE_OUTPUTS = {
    "tarcheck --report": ["tarcheck", "{in}", "--report", "{side}", "-j", "1"],
    "tarcheck --index": ["tarcheck", "{in}", "--index", "{side}", "--report", "{tmp}/report.jsonl", "-j", "1"],
    "tarmap --manifest": ["tarmap", "{in}", "-o", "{tmp}/out/{{stem}}.tar", "-c", "cat", "--manifest", "{side}", "-j", "1"],
    "tarmap --shard-index": ["tarmap", "{in}", "-o", "{tmp}/out/{{stem}}.tar", "-c", "cat", "--shard-index", "{side}",
                             "-j", "1"],
    "tarsplit --manifest": ["tarsplit", "{in}", "-n", "4", "-o", "{tmp}/part-%04d.tar", "--manifest", "{side}"],
    "tarmix --manifest": ["tarmix", "{in}:1", "-n", "5", "-o", "{tmp}/mix-%04d.tar", "--manifest", "{side}"],
    "tardedup --removed": ["tardedup", "{in}", "{tmp}/copy.tar", "-o", "{tmp}/dd/{{stem}}.tar", "--removed", "{side}",
                           "-j", "1"],
}


@pytest.mark.parametrize("name", SIDE_OUTPUTS)
def test_a_side_output_on_a_device_is_written_there_never_replaced(name, tmp_path, imagenet_shard):
    """``--report /dev/null`` and the like: a rename into place (as root)
    would turn the device into a regular file; the FIFO standing in for it
    gets the output and stays a FIFO."""
    import stat

    from conftest import FifoReader

    fifo = FifoReader(tmp_path / "side")
    shutil.copyfile(imagenet_shard, tmp_path / "copy.tar")  # tardedup: every sample of it is a duplicate
    args = [a.format(**{"in": str(imagenet_shard), "side": str(fifo.path), "tmp": str(tmp_path)})
            for a in SIDE_OUTPUTS[name]]
    result = run(args)
    data = fifo.finish()
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo.path).st_mode)
    assert data.strip(), f"{name}: nothing reached the FIFO"
    assert not [p for p in os.listdir(tmp_path) if p.startswith("side")][1:], os.listdir(tmp_path)
