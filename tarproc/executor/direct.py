"""Plain command lines run without their shell, as GNU make runs a recipe
line that holds no shell syntax ("fast path", GNU make manual, 5.3
"Recipe Execution"; ``job.c``'s ``construct_command_argv_internal``).

A ``bash -c CMD`` costs about 1.5 ms of CPU per sample before CMD runs
(bash starts, forks the first program, execs the last), as much as a
small program itself. When CMD is nothing but plain words, ``;``,
``&&`` and newlines, for example::

    convert sample.jpg sample.ppm; rm sample.jpg

and bash itself says (``command -v``) that every program is a file, the
executor starts the programs itself, with the meaning bash gives the line:

- a word is literal: only ``[A-Za-z0-9_./:,+%@=-]`` (no quote, ``$``,
  glob, ``~``, redirection, ``#``, ``&``, ``|``, brackets or braces), and a
  command's first word has no ``=`` (an assignment);
- ``A; B`` runs B whatever A did, ``A && B`` only when A exited 0; the
  status is the last run program's;
- the environment is bash's for its children: ``PWD`` the directory
  (physical), ``_`` the program's path, ``OLDPWD`` removed unless it names a
  directory, ``SHLVL`` one up for a program bash would fork, unchanged for
  the last one (bash execs it);
- a program killed by a signal: the last one gives that signal as the
  status (bash exec'd it); an earlier one gives ``128 + N`` and the line
  bash writes about it in the command's output;
- a program that cannot be started (it went away, it is a script without
  ``#!``) is run by bash after all, for bash's own status and message.

Not used when the shell is not ``bash`` given by name (``--shell /bin/bash``
always starts the shell), or when ``BASH_ENV``, ``ENV``, ``SHELLOPTS`` or
``BASHOPTS`` is set (bash would read a file or change options first).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

from .. import procs

#: one token of a plain line: an operator, a run of blanks, a plain word, or anything else
_TOKEN = re.compile(r"(&&)|([;\n])|([ \t]+)|([A-Za-z0-9_./:,+%@=-]+)|(.)", re.S)
#: environment variables that make bash read a file or change its options at start
SHELL_ENV = ("BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS")
#: seconds bash may take to say what the programs are (else the line is bash's)
RESOLVE_TIMEOUT = 30.0


def plain_lists(text: str) -> list[list[tuple[int, list[str]]]] | None:
    """``text`` as its ``;``/newline-separated lists of ``&&``-joined
    commands, each command ``(line number, words)``; None when it holds
    anything else (see the module docs), a syntax error, or nothing.

    >>> plain_lists("convert a.jpg a.ppm; rm a.jpg")
    [[(1, ['convert', 'a.jpg', 'a.ppm'])], [(1, ['rm', 'a.jpg'])]]
    """
    lists: list = []
    current: list = []  # the && list being read
    words: list[str] = []
    line = first_line = 1
    after_and = False  # the last operator was '&&': a command must follow
    for m in _TOKEN.finditer(text):
        op_and, op_end, blank, word, other = m.groups()
        if other is not None:
            return None
        if blank is not None:
            continue
        if word is not None:
            if not words:
                if "=" in word:
                    return None  # an assignment, not a program
                first_line, after_and = line, False
            words.append(word)
            continue
        if words:
            current.append((first_line, words))
            words = []
        if op_and is not None:
            if not current or after_and:
                return None  # '&&' with no command before it
            after_and = True
        elif op_end == ";":
            if not current or after_and:
                return None  # ';' with no command before it
            lists.append(current)
            current = []
        else:  # a newline ends a list, except right after '&&'
            if current and not after_and:
                lists.append(current)
                current = []
            line += 1
    if words:
        current.append((first_line, words))
    elif after_and:
        return None  # the line ends in '&&'
    if current:
        lists.append(current)
    return lists or None


def resolve(shell: str, programs: list[str]) -> dict[str, str] | None:
    """Ask ``shell`` what each program name is (``command -v``, POSIX.1-2017
    ``command``): ``{name: path}`` when every one is a file it would run,
    else None (a builtin, function, keyword or alias prints its name, an
    unknown one nothing).
    """
    try:
        proc = procs.spawn([shell, "-c", 'command -v -- "$@"', shell, *programs],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    try:
        stdout, _ = proc.communicate(timeout=RESOLVE_TIMEOUT)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        return None
    paths = stdout.decode("utf-8", "surrogateescape").splitlines()
    if proc.returncode != 0 or len(paths) != len(programs):
        return None
    found = {}
    for name, path in zip(programs, paths):
        if not path.startswith("/") or ("/" in name and name != path):
            return None  # not a file, or a relative path (it would depend on the directory)
        found[name] = path
    return found


class Plan:
    """How to run one plain command line (see the module docs).

    :ivar lists: the line's lists (:func:`plain_lists`)
    :ivar paths: program name -> path, as bash resolved it
    """

    def __init__(self, shell: str, lists: list, paths: dict[str, str]):
        self.shell = shell
        self.lists = lists
        self.paths = paths
        self.last = lists[-1][-1]  # the command bash would exec rather than fork
        base = dict(os.environ)
        if not os.path.isdir(base.get("OLDPWD", "")):
            base.pop("OLDPWD", None)  # bash drops an OLDPWD that is not a directory
        try:
            level = int(base.get("SHLVL", "0"))
        except ValueError:
            level = 0
        self.env_forked = dict(base, SHLVL=str(level + 1))
        self.env_last = dict(base, SHLVL=str(level))

    def run(self, directory: str, spawn, wait, log_fd: int) -> int | None:
        """Run the lists in ``directory`` (given as a physical path) and
        return bash's status for them.

        :param spawn: ``spawn(argv, executable, env) -> Popen`` (raises OSError)
        :param wait: ``wait(proc) -> int | None``: the status, or None to stop
            (the deadline passed: the caller killed the group)
        """
        status = 0
        for and_list in self.lists:
            for command in and_list:
                line, words = command
                last = command is self.last
                env = self.env_last if last else self.env_forked
                path = self.paths[words[0]]
                env = dict(env, PWD=directory, _=path)
                try:
                    proc = spawn(words, path, env)
                except OSError:
                    # bash's own status and message (a vanished program, a script without #!)
                    proc = spawn(procs.shell_argv(" ".join(words), self.shell), None, None)
                status = wait(proc)
                if status is None:
                    return None
                if status < 0 and not last:
                    _note(log_fd, line, proc.pid, -status, words)
                    status = 128 - status
                if status != 0:
                    break  # the rest of this && list is skipped
        return status


def _note(fd: int, line: int, pid: int, signum: int, words: list[str]) -> None:
    """The line bash 5 writes for a child it forked that a signal killed
    (none for SIGINT and SIGPIPE, the bare name for SIGTERM)."""
    if signum in (signal.SIGINT, signal.SIGPIPE):
        return
    try:
        what = signal.strsignal(signum) or f"Signal {signum}"
    except ValueError:
        what = f"Signal {signum}"
    text = what if signum == signal.SIGTERM else f"bash: line {line}: {pid:5d} {what:<24}{' '.join(words)}"
    os.write(fd, text.encode("utf-8", "surrogateescape") + b"\n")


def plan(argv: list[str]) -> Plan | None:
    """The :class:`Plan` for ``[shell, "-c", CMD]``, or None when the shell
    must run it (see the module docs)."""
    if len(argv) != 3 or argv[0] != "bash" or argv[1] != "-c":
        return None
    if any(os.environ.get(name) for name in SHELL_ENV):
        return None
    lists = plain_lists(argv[2])
    if lists is None:
        return None
    shell = procs.resolve(argv[0])
    if shell is None:
        return None
    programs = sorted({words[0] for and_list in lists for _, words in and_list})
    paths = resolve(shell, programs)
    if paths is None:
        return None
    return Plan(shell, lists, paths)
