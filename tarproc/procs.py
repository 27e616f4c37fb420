"""Child processes: the one home for spawning a shell command in its own
process group, killing that group, and describing how a process ended.

Every command tarproc runs for a user (a per-sample command, a ``pipe:``
source or sink, a post-shard command, a shard pipeline) goes through
:func:`spawn_shell`, so that it can be stopped with all of its children
(``killpg(2)``, POSIX.1-2017) and its exit status is reported the same way
everywhere (``subprocess`` return codes: ``-N`` for signal ``N``, as in
:attr:`subprocess.Popen.returncode`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

#: the shell every user command runs in (``bash -c CMD``, as the original tarproc)
SHELL = "bash"
#: seconds a command we stop early (an interrupted tarmap or tarshuffle, a
#: task's ``--timeout``) gets between SIGTERM to its process group and
#: SIGKILL: time for a tarproc in it to stop its own commands and remove its
#: sample directories (it takes milliseconds; a command that ignores SIGTERM
#: costs the whole grace)
TERM_GRACE = 5.0
#: seconds between two looks at a group that was sent SIGTERM
_POLL = 0.02


def shell_argv(command: str, shell: str = SHELL) -> list[str]:
    """``[shell, "-c", command]``: the argv of a user command."""
    return [shell, "-c", command]


def spawn(
    argv: Sequence[str],
    *,
    stdin=subprocess.DEVNULL,
    stdout=None,
    stderr=None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    executable: str | None = None,
) -> subprocess.Popen:
    """Start ``argv`` as the leader of a new session and process group
    (``setsid(2)``), so that :func:`kill_group` reaches every process it
    starts. Standard streams are as for :class:`subprocess.Popen`
    (``None`` inherits ours; stdin defaults to ``/dev/null``).
    ``executable``: the program's resolved path (``argv[0]`` stays what
    the program sees as its name), which spares a search of ``PATH`` (one
    failed ``execve(2)`` per directory before the program's) when the same
    program is started many times: see :func:`resolve`.

    :raises OSError: the program cannot be started (``ENOENT``, ``EACCES``)
    """
    return subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=None if env is None else dict(env),
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        executable=executable,
    )


def resolve(program: str) -> str | None:
    """The path :func:`spawn` would run for a bare ``program`` name
    (searched in ``PATH`` now, as ``execvp(3)`` would), or None: for a name
    with a ``/`` (run as given, relative to the child's ``cwd``), or one not
    found (the spawn then fails as it would have)."""
    import shutil

    if "/" in program:
        return None
    return shutil.which(program)


def spawn_shell(command: str, *, shell: str = SHELL, **kwargs) -> subprocess.Popen:
    """:func:`spawn` of ``shell -c command``; keyword arguments as there."""
    return spawn(shell_argv(command, shell), **kwargs)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group that is
    already gone (or not ours to signal) is not an error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pid: int) -> bool:
    """True while the process group led by ``pid`` has a member
    (``killpg(pid, 0)``; a member that is not ours to signal counts)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until ``proc`` has exited (it is reaped) and its process group
    is empty, or until ``deadline`` (:func:`time.monotonic` seconds).
    Returns True when the group is gone. Sends no signal."""
    while True:
        if proc.poll() is not None and not group_alive(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def stop(proc: subprocess.Popen, grace: float = 0.0) -> int:
    """Stop ``proc`` and its whole group and reap it; returns its exit status.

    With ``grace`` > 0 the group gets SIGTERM first and ``grace`` seconds to
    exit (every process of it, :func:`wait_group`), then SIGKILL; with 0,
    SIGKILL at once. Children the command left in its group are killed even
    when the command itself has already exited.
    """
    if grace > 0 and (proc.poll() is None or group_alive(proc.pid)):
        kill_group(proc.pid, signal.SIGTERM)
        wait_group(proc, time.monotonic() + grace)
    kill_group(proc.pid, signal.SIGKILL)
    return proc.wait()


def host_name() -> str:
    """This machine's name as the names of attempt files and run
    directories carry it (no dots: they separate the name's parts)."""
    import socket

    return socket.gethostname().replace(".", "_") or "host"


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs on this machine (a zombie, killed but
    not yet reaped, counts as gone: Linux ``/proc/PID/stat`` state ``Z``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


#: ``prctl(2)`` option: the signal this process gets when its parent dies (Linux)
_PR_SET_PDEATHSIG = 1
#: seconds between two looks at the parent where ``prctl`` is missing
_PARENT_POLL = 0.5


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Have ``sig`` sent to this process when ``parent`` (the PID that
    started it) dies, so that a worker whose coordinator was killed with
    SIGKILL stops instead of writing an output nobody records. Call it in
    the child, early, from its main thread. On Linux this is
    ``prctl(PR_SET_PDEATHSIG, sig)`` (the signal comes when the parent
    *thread* that started the child ends: start the child from a thread that
    waits for it); elsewhere a daemon thread looks at ``getppid()`` every
    half second. A parent already gone when this is called (the child was
    adopted) gets ``sig`` sent at once.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
        return
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(_PARENT_POLL)
            os.kill(os.getpid(), sig)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def describe_status(status: int) -> str:
    """How a process ended, from a :attr:`subprocess.Popen.returncode`:
    ``"exited with status 3"``, ``"was killed by signal 9 (SIGKILL)"``,
    ``"exited"`` for 0."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            return f"was killed by signal {-status}"
        return f"was killed by signal {-status} ({name})"
    if status:
        return f"exited with status {status}"
    return "exited"


def died_of_sigpipe(status: int) -> bool:
    """True when ``status`` says the process died of SIGPIPE (killed by the
    signal, or a shell that reports it as 128 + 13): a reader we stopped
    reading from early."""
    return status in (-signal.SIGPIPE, 128 + signal.SIGPIPE)
