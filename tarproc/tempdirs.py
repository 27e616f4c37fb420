"""A run's temporary directory, named so that a later run can tell a dead
run's directory from a live one's and remove it.

A run killed with SIGKILL cannot remove its directory. Its name,
``PREFIX<host>.<pid>.<random>`` (:func:`make_run_dir`), says which process
made it on which machine, so the next run on the same machine removes the
directories of processes that are gone (:func:`remove_stale_run_dirs`),
the rule tarmap applies to its attempt files
(:func:`tarproc.io.sinks.remove_stale_attempts`). A live process's directory
is never removed, nor another host's on a shared ``$TMPDIR``, nor a
directory whose name does not carry a host and PID (one made by an older
version: its owner cannot be told).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from tarproc.procs import host_name, pid_alive


def make_run_dir(prefix: str, directory: str | None = None) -> str:
    """Create ``DIRECTORY/PREFIX<host>.<pid>.<random>`` (mode 0700,
    :func:`tempfile.mkdtemp`) and return its path, after removing the stale
    ones of this prefix there (:func:`remove_stale_run_dirs`).

    :param directory: where (None: :func:`tempfile.gettempdir`, from ``$TMPDIR``)
    :raises OSError: it cannot be created
    """
    directory = directory or tempfile.gettempdir()
    remove_stale_run_dirs(prefix, directory)
    return tempfile.mkdtemp(prefix=f"{prefix}{host_name()}.{os.getpid()}.", dir=directory)


def _owner(name: str, prefix: str) -> tuple[str, int] | None:
    """(host, pid) from a run directory's name, None when it is not one."""
    match = re.fullmatch(re.escape(prefix) + r"([^./]+)\.(\d+)\.[^./]+", name)
    return (match.group(1), int(match.group(2))) if match else None


def remove_stale_run_dirs(prefix: str, directory: str | None = None) -> list[str]:
    """Remove the run directories ``PREFIX<host>.<pid>.*`` in ``directory``
    whose host is this one and whose process is gone (killed with SIGKILL,
    say). Errors are ignored (another run may remove the same one at the
    same time). Returns the paths removed.

    :param directory: where (None: :func:`tempfile.gettempdir`)
    """
    directory = directory or tempfile.gettempdir()
    host = host_name()
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        owner = _owner(name, prefix)
        if owner is None or owner[0] != host or owner[1] == os.getpid() or pid_alive(owner[1]):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
