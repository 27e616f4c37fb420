"""Plain command lines run without bash (tarproc.executor.direct): the same
bytes, exit status and messages as bash itself gives, which `--shell` with
bash's path (always the shell) shows side by side."""

from __future__ import annotations

import os
import shutil
import stat
import time

import pytest
from conftest import run, tool_env

from tarproc.executor import direct

BASH = shutil.which("bash")


def _program(bin_dir, name: str, body: str, shebang: bool = True):
    path = bin_dir / name
    path.write_text(("#!/bin/sh\n" if shebang else "") + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def bin_dir(tmp_path):
    """Programs for the tests, first on PATH."""
    d = tmp_path / "bin"
    d.mkdir()
    # which process started it: the worker (direct) or a bash (the shell)
    _program(d, "parentname", 'tr -d "\\n" < /proc/$PPID/comm > sample.parent\n')
    _program(d, "killme", 'kill -"$1" $$\n')
    _program(d, "fails", 'exit "$1"\n')
    _program(d, "noshebang", 'echo "run by a shell at SHLVL $SHLVL" > sample.nsb\n', shebang=False)
    # a background child that outlives it: bash keeps it until the line ends
    _program(d, "bgwriter", '(sleep 0.3; echo late > sample.bg) &\nexit 0\n')
    return d


def _both(args, shard, bin_dir, env_extra=None, **kw):
    """tarproc with the default `bash` (direct when plain) and with bash's
    path (always bash): (direct run, bash run)."""
    env = tool_env(str(bin_dir))
    env.update(env_extra or {})
    out = []
    for shell in ("bash", BASH):
        out.append(run(["tarproc", "--shell", shell, *args, str(shard)], env=env, **kw))
    return out


def _same(a, b):
    assert a.returncode == b.returncode, (a.stderr, b.stderr)
    assert a.stdout == b.stdout
    # bash names itself by its argv[0]: "bash" against its path
    assert a.stderr == b.stderr.replace(BASH.encode() + b":", b"bash:")


# ------------------------------------------------------------ the parser

A, B, C = ["a"], ["b"], ["c"]


@pytest.mark.parametrize("text, lists, execd", [
    ("convert sample.jpg sample.ppm; rm sample.jpg",
     [[(1, ["convert", "sample.jpg", "sample.ppm"])], [(1, ["rm", "sample.jpg"])]], (1, ["rm", "sample.jpg"])),
    ("a && b; c", [[(1, A), (1, B)], [(1, C)]], (1, C)),
    ("a; b && c", [[(1, A)], [(1, B), (1, C)]], None),  # bash forks c: the last top-level part is not simple
    ("a && b && c", [[(1, A), (1, B), (1, C)]], (1, C)),
    ("a &&\n  b", [[(2, A), (2, B)]], (2, B)),  # bash reports the line where the command ends
    ("a &&\n\n b", [[(3, A), (3, B)]], (3, B)),
    ("\n\na x=1 -f\n\nb;\n", [[(3, ["a", "x=1", "-f"])], [(5, B)]], (5, B)),
    ("a; b;", [[(1, A)], [(1, B)]], (1, B)),
    ("a\n", [[(1, A)]], (1, A)),
    ("a \t", [[(1, A)]], (1, A)),
    ("a\n\n", [[(1, A)]], None),  # bash forks a command that more text follows
    ("a\n ", [[(1, A)]], None),
    ("a;\n\n", [[(1, A)]], None),
    ("a\nb && c", [[(1, A)], [(2, B), (2, C)]], (2, C)),
    ("/usr/bin/md5sum sample.jpg", [[(1, ["/usr/bin/md5sum", "sample.jpg"])]], (1, ["/usr/bin/md5sum", "sample.jpg"])),
])
def test_plain_lines_are_parsed(text, lists, execd):
    assert direct.parse(text) == (lists, execd)


@pytest.mark.parametrize("text", [
    "", "  ", "\n", "a;;b", "; a", "a &&", "a && && b", "a\n;b", "x=1 a", "a $x", 'a "b"', "a 'b'", "a # c",
    "a & b", "a | b", "a > b", "a < b", "a *.jpg", "a ~/x", "a {1,2}", "(a)", "a `b`", "a\\ b", "! a", "a\r",
])
def test_other_lines_are_left_to_the_shell(text):
    assert direct.parse(text) is None


def test_only_programs_bash_runs_as_files(bin_dir):
    assert direct.resolve(BASH, ["ls"]) == {"ls": shutil.which("ls")}
    for word in ("true", "echo", "cd", "exit", "if", "time", "no-such-program-here"):
        assert direct.resolve(BASH, ["ls", word]) is None, word
    assert direct.plan(["bash", "-c", "ls; ls -l"]) is not None
    assert direct.plan(["bash", "-c", "ls; echo x"]) is None  # a builtin
    assert direct.plan([BASH, "-c", "ls"]) is None  # the shell by its path: always the shell
    assert direct.plan(["sh", "-c", "ls"]) is None


# ------------------------------------------------------ side by side with bash


def test_the_plain_line_runs_without_bash(imagenet_shard, bin_dir):
    fast, shell = _both(["-c", "parentname; /bin/ls", "--count", "1", "-o", "-"], imagenet_shard, bin_dir)
    assert fast.returncode == shell.returncode == 0
    parent = {out: dict((n, d) for n, d in _members(out.stdout))["n01440764_10000.parent"] for out in (fast, shell)}
    assert parent[shell] == b"bash"
    assert parent[fast] != b"bash"  # the worker (or tarproc at -p 1) started it


def _members(data):
    from conftest import tar_members

    return tar_members(data)


@pytest.mark.parametrize("line", [
    "printenv",  # PWD, SHLVL, _ and OLDPWD as bash gives them to the last program
    "printenv; /bin/ls",  # ... and to one it forks
    "fails 3; /bin/ls", "/bin/ls; fails 3", "fails 4 && /bin/ls", "/bin/ls && fails 5 && /bin/ls",
    "killme 9", "killme 9; /bin/ls", "killme 15 && /bin/ls", "killme 11; /bin/ls", "killme 2; /bin/ls", "killme 13; fails 0",
    "noshebang; /bin/ls",  # ENOEXEC: bash runs it as a script
    "/bin/true; /bin/true && killme 9", "/bin/true; /bin/true && printenv SHLVL",  # bash forks the last one here
    "killme 9\n\n", "printenv SHLVL\n ",  # ... and here (text follows the last command)
    "killme 9 &&\n/bin/true", "\nkillme 6;\n\nkillme 9 &&\n\n/bin/ls",  # line numbers in bash's messages
    "killme 32; /bin/true",  # a signal without a name
    "bgwriter; /bin/sleep 1",  # what a program leaves running lives until the line ends
    "cp sample.jpg sample.copy; rm sample.jpg sample.json",
])
def test_same_bytes_status_and_messages_as_bash(imagenet_shard, bin_dir, tmp_path, line):
    work = tmp_path / "work"
    work.mkdir()
    fast, shell = _both(["-c", line, "--count", "3", "-w", str(work), "-o", "-"], imagenet_shard, bin_dir,
                        env_extra={"OLDPWD": str(tmp_path), "SHLVL": "4"})
    for out in (fast, shell):
        out.stderr = out.stderr.replace(str(work).encode(), b"WORK")
        out.stderr = b"\n".join(_no_pid(x) for x in out.stderr.split(b"\n"))
        if line.startswith("printenv"):  # bash passes its environment in an order of its own
            out.stderr = b"\n".join(sorted(out.stderr.split(b"\n")))
    _same(fast, shell)
    assert list(work.iterdir()) == []


def _no_pid(line: bytes) -> bytes:
    """The line without what differs from run to run: a pid, the root's random name."""
    import re

    return re.sub(rb"tarproc-[\w.-]+", b"tarproc-ROOT", re.sub(rb"(line \d+: +)\d+", rb"\1PID", line))


def test_a_program_gone_after_the_start_gets_bashs_message(imagenet_shard, bin_dir):
    _program(bin_dir, "vanishing", "true\n")
    line = f"/bin/true\n/bin/rm -f {bin_dir}/vanishing; vanishing"
    fast = run(["tarproc", "-c", line, "--count", "1", "-o", "/dev/null", str(imagenet_shard)], env=tool_env(str(bin_dir)))
    assert fast.returncode == 1
    assert b"exit status 127" in fast.stderr and b"bash: line 2: vanishing: command not found" in fast.stderr


@pytest.mark.parametrize("env", [
    {"BASH_FUNC_helper%%": "() {  true\n}"}, {"BASH_XTRACEFD": "5"}, {"PPID": "1"}, {"IFS": ":"}, {"POSIXLY_CORRECT": "1"},
    {"SHLVL": "-5"}, {"SHLVL": "999"}, {"SHLVL": "1_0"}, {"OLDPWD": "bin"}, {"PATH": "."}, {"PATH": ""},
])
def test_what_bash_would_read_or_rewrite_sends_the_line_to_bash(imagenet_shard, bin_dir, env):
    env = dict(env)
    if "PATH" in env:
        env["PATH"] = f"{bin_dir}:{env['PATH']}:" + tool_env()["PATH"]
    fast, shell = _both(["-c", "parentname; /bin/ls", "--count", "1", "-o", "-"], imagenet_shard, bin_dir, env_extra=env)
    assert fast.returncode == shell.returncode == 0, fast.stderr
    assert dict(_members(fast.stdout))["n01440764_10000.parent"] == b"bash"


def test_programs_are_resolved_by_bash_whatever_their_directory_is_called(imagenet_shard, bin_dir, tmp_path):
    # a directory name with characters str.splitlines() would split at: bash's answer is NUL-separated
    odd = tmp_path / "q\x1cr\u2028s"
    odd.mkdir()
    _program(odd, "md5sum", "echo fake > sample.md5\n")
    env = {"PATH": f"{odd}:" + tool_env(str(bin_dir))["PATH"]}
    fast, shell = _both(["-c", "/bin/true; no-such-program-x; md5sum sample.cls", "--count", "1", "-o", "-"],
                        imagenet_shard, bin_dir, env_extra=env)
    assert fast.returncode == shell.returncode  # bash runs the line: a program is missing
    env["PATH"] = f"{odd}:" + tool_env(str(bin_dir))["PATH"]
    fast, shell = _both(["-c", "/bin/true; md5sum sample.cls", "--count", "1", "-o", "-"], imagenet_shard, bin_dir, env_extra=env)
    _same(fast, shell)
    assert dict(_members(fast.stdout))["n01440764_10000.md5"] == b"fake\n"


def test_timeout_covers_the_whole_line(imagenet_shard, bin_dir):
    t = time.monotonic()
    out = run(["tarproc", "-c", "/bin/sleep 0.2; /bin/sleep 30", "--timeout", "1", "--count", "1", "-o", "/dev/null",
               str(imagenet_shard)], env=tool_env(str(bin_dir)))
    assert time.monotonic() - t < 10
    assert out.returncode == 1
    assert b"timed out after 1 s" in out.stderr


def test_an_exported_function_is_bashs_to_run(imagenet_shard, bin_dir):
    # bash runs the function, not the program of that name: the shell is used
    env = {"BASH_FUNC_md5sum%%": "() {  /bin/cp sample.cls sample.fn\n}"}
    fast, shell = _both(["-c", "md5sum sample.jpg", "--count", "1", "-o", "-"], imagenet_shard, bin_dir, env_extra=env)
    _same(fast, shell)
    assert "n01440764_10000.fn" in [n for n, _ in _members(fast.stdout)]


def test_bash_env_sends_the_line_to_bash(imagenet_shard, bin_dir, tmp_path):
    rc = tmp_path / "rc.sh"
    rc.write_text("export FROM_BASH_ENV=yes\n")
    env = {"BASH_ENV": str(rc)}
    fast, shell = _both(["-c", "printenv FROM_BASH_ENV", "--count", "1", "-o", "/dev/null"], imagenet_shard, bin_dir, env_extra=env)
    _same(fast, shell)
    assert fast.stderr == b"yes\n"


def test_sigterm_leaves_no_program_of_a_plain_line(imagenet_shard, bin_dir, tmp_path):
    import signal
    import subprocess

    marker = f"{os.getpid()}{time.monotonic_ns() % 100000}"
    proc = subprocess.Popen(["tarproc", "-p", "2", "-c", f"/bin/true; /bin/sleep {marker}", "-o", "/dev/null", str(imagenet_shard)],
                            env=tool_env(str(bin_dir)), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _sleeping(marker):
        time.sleep(0.05)
    assert _sleeping(marker)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 143
    time.sleep(0.2)
    assert not _sleeping(marker)


def _sleeping(marker: str) -> bool:
    import subprocess

    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any(line.startswith(f"/bin/sleep {marker}") for line in ps.splitlines())
