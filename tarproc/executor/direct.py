"""Plain command lines run without their shell.

A ``bash -c CMD`` costs about 1.5 ms of CPU per sample before CMD runs
(bash starts, forks the first program, execs the last), as much as a
small program itself. GNU make saves that for a recipe line with no shell
syntax by running the program itself (GNU make manual, 5.3 "Recipe
Execution": make "may take shortcuts that do not affect the results";
``job.c``, ``construct_command_argv_internal``). This goes one step further
and also takes ``;``, ``&&`` and newlines, with bash's meaning. When CMD is
nothing but plain words and those operators, for example::

    convert sample.jpg sample.ppm; rm sample.jpg

and bash itself says (``command -v``) that every program is a file, the
executor starts the programs itself, as bash 5.2 would:

- a word is literal: only ``[A-Za-z0-9_./:,+%@=-]`` (no quote, ``$``,
  glob, ``~``, redirection, ``#``, ``&``, ``|``, brackets or braces), and a
  command's first word has no ``=`` (an assignment);
- ``A; B`` runs B whatever A did, ``A && B`` only when A exited 0; the
  status is the last run program's;
- bash execs the last program rather than forking it when the line's last
  top-level command is a simple command, or ends in ``; B`` or ``&& B``
  with B simple, and nothing but one newline follows (``a; b && c`` forks
  c): that program's death by signal N is the status -N; another's is
  ``128 + N`` with the line bash writes about it in the command's output
  (with the line number where its top-level command ends);
- the environment is bash's for its children, apart from its order:
  ``PWD`` the directory (physical), ``_`` the program's path, ``OLDPWD``
  removed unless it names a directory, ``SHLVL`` one up for a program bash
  forks, unchanged for one it execs; all of a sample's programs, and what
  they leave running, are killed when the sample ends (as bash's process
  group is), not before;
- a program that cannot be started (it went away, it is a script without
  ``#!``) is run by bash after all, with the same environment and line
  number, for bash's own status and message.

The line goes to bash when the shell is not ``bash`` given by name
(``--shell /bin/bash`` always starts it), when bash is older than 5.2,
when the environment holds something bash reads or rewrites at start
(:data:`BASH_READS`, any ``BASH*`` variable: exported functions, ``BASH_ENV``;
an ``SHLVL`` that is not a plain number below 999; a relative ``OLDPWD``),
or when ``PATH`` has a relative or empty entry (it would depend on the
sample's directory). Programs are looked up once per worker, not per sample.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

from .. import iov, procs

#: one token of a plain line: an operator, a run of blanks, a plain word, or anything else
_TOKEN = re.compile(r"(&&)|([;\n])|([ \t]+)|([A-Za-z0-9_./:,+%@=-]+)|(.)", re.S)
#: environment variables bash reads, drops or rewrites at start (besides any
#: ``BASH*`` one, and PWD, OLDPWD, SHLVL and ``_``, which are emulated)
BASH_READS = frozenset({
    "ENV", "SHELLOPTS", "POSIXLY_CORRECT", "IFS", "PS4", "LINENO", "OPTIND", "OPTERR", "PPID", "UID", "EUID",
    "GROUPS", "FUNCNAME", "DIRSTACK", "RANDOM", "SRANDOM", "SECONDS", "EPOCHSECONDS", "EPOCHREALTIME", "HISTCMD",
    "COMP_WORDBREAKS", "EXECIGNORE", "GLOBIGNORE", "CDPATH",
})
#: seconds bash may take to say what the programs are (else the line is bash's)
RESOLVE_TIMEOUT = 30.0
_SHLVL = re.compile(r"[ \t]*\+?[0-9]{1,3}[ \t]*")
#: what bash is asked: its version, then each program's path (empty when it is not a file), NUL-separated
_RESOLVE = 'printf "%s.%s\\0" "${BASH_VERSINFO[0]}" "${BASH_VERSINFO[1]}"; ' \
           'for p; do r=$(command -v -- "$p") || r=; printf "%s\\0" "$r"; done'


def parse(text: str):
    """``text`` as ``(lists, execd)``: its ``;``/newline-separated lists of
    ``&&``-joined commands, each command ``(line, words)`` (``line``: where
    its top-level command ends, the number bash reports), and the command
    bash would exec (one of them, or None). None when ``text`` holds
    anything but plain words and those operators (see the module docs), a
    syntax error, or nothing.

    >>> parse("convert a.jpg a.ppm; rm a.jpg")[0]
    [[(1, ['convert', 'a.jpg', 'a.ppm'])], [(1, ['rm', 'a.jpg'])]]
    """
    tops: list = []  # top-level commands: lists of && lists of words
    top: list = []
    current: list = []  # the && list being read
    words: list[str] = []
    line = 1
    after_and = False  # the last operator was '&&': a command must follow
    ended = False  # the last top-level command has ended at a newline
    trailing = False  # ... and something followed that newline
    for m in _TOKEN.finditer(text):
        op_and, op_end, blank, word, other = m.groups()
        if other is not None:
            return None
        if word is not None:
            if not words:
                if "=" in word:
                    return None  # an assignment, not a program
                after_and = ended = trailing = False
            words.append(word)
            continue
        if ended:
            trailing = True
        if blank is not None:
            continue
        if words:
            current.append(words)
            words = []
        if op_and is not None:
            if not current or after_and:
                return None  # '&&' with no command before it
            after_and = True
        elif op_end == ";":
            if not current or after_and:
                return None  # ';' with no command before it
            top.append(current)
            current = []
        else:  # a newline ends the top-level command, except right after '&&'
            if current and not after_and:
                top.append(current)
                current = []
            if top and not after_and:
                tops.append((line, top))
                top = []
                ended = True
            line += 1
    if words:
        current.append(words)
    elif after_and:
        return None  # the text ends in '&&'
    if current:
        top.append(current)
    if top:
        tops.append((line, top))
        ended, trailing = True, False
    if not tops:
        return None
    lists = [[(end, cmd) for cmd in and_list] for end, top in tops for and_list in top]
    execd = None
    if not trailing:
        last_top = tops[-1][1]
        if len(last_top) == 1 or len(last_top[-1]) == 1:
            execd = lists[-1][-1]
    return lists, execd


def resolve(shell: str, programs: list[str]) -> dict[str, str] | None:
    """Ask ``shell`` what each program name is (``command -v``, POSIX.1-2017
    ``command``): ``{name: path}`` when it is bash 5.2 or later and every
    name is a file it would run, else None (a builtin, function, keyword or
    alias is answered with its name, an unknown one with nothing).
    """
    try:
        proc = procs.spawn([shell, "-c", _RESOLVE, shell, *programs], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    try:
        stdout, _ = proc.communicate(timeout=RESOLVE_TIMEOUT)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        return None
    answers = stdout.decode("utf-8", "surrogateescape").split("\0")
    if proc.returncode != 0 or len(answers) != len(programs) + 2 or answers[-1]:
        return None
    try:
        major, minor = map(int, answers[0].split("."))
    except ValueError:
        return None
    if (major, minor) < (5, 2):
        return None  # older bash forks where 5.2 execs: the statuses would differ
    found = {}
    for name, path in zip(programs, answers[1:]):
        if not path.startswith("/") or ("/" in name and name != path):
            return None  # not a file, or a relative path (it would depend on the directory)
        found[name] = path
    return found


def _environment_is_plain(env) -> bool:
    """Whether bash would pass ``env`` on as it is, but for the variables
    :class:`Plan` emulates (see the module docs)."""
    for name in env:
        if name.startswith("BASH") or name in BASH_READS:
            return False
    level = env.get("SHLVL")
    if level is not None and not (_SHLVL.fullmatch(level) and int(level) < 999):
        return False
    old = env.get("OLDPWD")
    if old and not old.startswith("/"):
        return False
    return all(entry.startswith("/") for entry in env.get("PATH", "").split(":"))


class Plan:
    """How to run one plain command line (see the module docs).

    :ivar lists: the line's lists (:func:`parse`)
    :ivar execd: the command bash would exec rather than fork, or None
    :ivar paths: program name -> path, as bash resolved it
    """

    def __init__(self, shell: str, lists: list, execd, paths: dict[str, str]):
        self.shell = shell
        self.lists = lists
        self.execd = execd
        self.paths = paths
        base = dict(os.environ)
        if not os.path.isdir(base.get("OLDPWD", "")):
            base.pop("OLDPWD", None)  # bash drops an OLDPWD that is not a directory
        level = int(base.get("SHLVL", "0"))
        self.env_forked = dict(base, SHLVL=str(level + 1))
        self.env_execd = dict(base, SHLVL=str(level))

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
                execd = command is self.execd
                env = self.env_execd if execd else self.env_forked
                path = self.paths[words[0]]
                try:
                    proc = spawn(words, path, dict(env, PWD=directory, _=path))
                except OSError:
                    # bash's own status and message (a vanished program, a script without #!),
                    # at the same line; bash execs a lone command with the SHLVL it was given
                    argv = procs.shell_argv("\n" * (line - 1) + " ".join(words), self.shell)
                    proc = spawn(argv, None, env)
                status = wait(proc)
                if status is None:
                    return None
                if status < 0 and not execd:
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
        what = signal.strsignal(signum) or f"Unknown signal {signum}"
    except ValueError:
        what = f"Unknown signal {signum}"
    text = what if signum == signal.SIGTERM else f"bash: line {line}: {pid:5d} {what:<24}{' '.join(words)}"
    iov.write_all(fd, [text.encode("utf-8", "surrogateescape") + b"\n"])


def plan(argv: list[str]) -> Plan | None:
    """The :class:`Plan` for ``[shell, "-c", CMD]``, or None when the shell
    must run it (see the module docs)."""
    if len(argv) != 3 or argv[0] != "bash" or argv[1] != "-c":
        return None
    if not _environment_is_plain(os.environ):
        return None
    parsed = parse(argv[2])
    if parsed is None:
        return None
    lists, execd = parsed
    shell = procs.resolve(argv[0])
    if shell is None:
        return None
    programs = sorted({words[0] for and_list in lists for _, words in and_list})
    paths = resolve(shell, programs)
    if paths is None:
        return None
    return Plan(shell, lists, execd, paths)
