"""The per-sample sandbox: prepare a sample's directory, execute, collect.

For each sample a fresh directory is made under the run's root directory;
every field is written there as ``<base>.<field>`` (``sample.jpg``...) plus
``__key__`` and ``__source__``; the command runs there (stdin from
/dev/null, stdout and stderr captured together, in a new process group);
then every regular file ``<base>.<field>`` directly in the directory becomes
a field of the output sample (in sorted order), under the key read back from
``__key__``, and the directory is removed.

Safety: only regular files are collected, opened with ``O_NOFOLLOW`` and
checked with ``fstat``; symlinks, FIFOs and devices are reported, never
followed or opened. After the command exits its whole process group is
killed, so background children cannot outlive the sample (:mod:`.guard`
does the same on SIGINT/SIGTERM).

Two ways to execute, one contract (exit status, ``timeout`` kills the
command's process group, environment, collected files, captured output):

- :class:`Spawner`: one new ``shell -c CMD`` process per sample;
- :class:`PersistentShell`: one long-lived shell per worker runs each
  sample's command in a subshell (``( cd DIR && eval CMD )`` as a job of its
  own process group, ``set -m``), so a sample costs a fork, not a fork and
  an exec of the shell; nothing a command does to its shell (``cd``,
  variables, ``exit``, ``exec``) reaches the next sample.

With ``batch`` the command runs once per batch of samples, in a directory
holding one sample directory per sample (``000000/``, ``000001/``...), like
``xargs -n`` or GNU parallel ``-X``.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass

from tarproc import procs
from tarproc.samples import Sample, key_problem
from tarproc.io.spool import THRESHOLD as _LARGE
from tarproc.io.spool import LargeField, spool_file
from tarproc import guard
from tarproc.executor.results import Result, settle

KEY_FILE = "__key__"
SOURCE_FILE = "__source__"
#: name of the first sample directory inside a batch directory
BATCH_NAME = "{:06d}"


@dataclass
class CommandSpec:
    """What to run for each sample: a self-contained description of the
    job (everything a worker needs; nothing is read from globals).

    :ivar argv: the command, e.g. ``["bash", "-c", "convert sample.jpg sample.ppm"]``
        or ``["bash", "/abs/script.sh"]``
    :ivar root: directory in which the per-sample directories are made
    :ivar base: file name stem of the fields (``sample`` -> ``sample.jpg``)
    :ivar timeout: seconds before the command's process group is killed, or None
    :ivar add_log: field name under which the command's output is stored, or None
    :ivar subdirs: collect each subdirectory (with its own ``__key__``) as a sample
    :ivar keep: keep the per-sample directories
    :ivar collect: read the outputs back (False when there is no output archive)
    :ivar persistent: run the commands in one long-lived shell per worker
    :ivar batch: 0 for one run per sample; N >= 1 for one run per N samples
        in a directory of sample directories ``000000/``...
    :ivar shell: the shell of ``persistent`` (None: ``argv[0]``, when
        ``argv`` is the shell's: ``-c CMD``, or a script it runs)
    """

    argv: list[str]
    root: str
    base: str = "sample"
    timeout: float | None = None
    add_log: str | None = None
    subdirs: bool = False
    keep: bool = False
    collect: bool = True
    persistent: bool = False
    batch: int = 0
    shell: str | None = None

    def command_text(self) -> str:
        """The command as the shell runs it (``-c CMD``'s CMD; ``. SCRIPT``
        for a script the shell runs, how a persistent shell runs it; ``exec
        ARGV`` for any other program, e.g. a script run by its ``#!`` line)."""
        if len(self.argv) >= 3 and self.argv[1] == "-c":
            return self.argv[2]
        if len(self.argv) == 2 and self.argv[0] == (self.shell or self.argv[0]):
            return ". " + shlex.quote(self.argv[1])
        return "exec " + shlex.join(self.argv)

    def describe(self) -> str:
        if len(self.argv) >= 3 and self.argv[1] == "-c":
            return f"command {self.argv[2]!r}"
        return f"script {self.argv[-1]!r}"


def script_argv(path: str, shell: str | None = None) -> list[str]:
    """How to run the script ``path`` (made absolute) in every sample's
    directory, as a user expects of ``./script``:

    - ``shell`` given: ``[shell, path]`` (the shell or interpreter named);
    - a script whose first line is ``#!INTERPRETER [ARG]``: ``[path]`` when
      it is executable (the kernel runs it by that line, ``execve(2)``);
      else ``[INTERPRETER, ARG, path]``, the same line read here (one
      optional argument, the rest of the line, as Linux takes it);
    - a script without ``#!``: ``[bash, path]`` (as the original tarproc).

    :raises OSError: the script cannot be read
    :raises ValueError: its ``#!`` line names no interpreter
    """
    path = os.path.abspath(path)
    if shell is not None:
        return [shell, path]
    with open(path, "rb") as f:
        first = f.readline(4096)
    if not first.startswith(b"#!"):
        return [procs.SHELL, path]
    if os.access(path, os.X_OK):
        return [path]
    words = first[2:].decode("utf-8", "surrogateescape").strip().split(None, 1)
    if not words:
        raise ValueError(f"{path}: its #! line names no interpreter")
    return [*words, path]


# ------------------------------------------------------------- directories


def write_file(path: str, data) -> None:
    """Create the file ``path`` with ``data`` (bytes-like, or a
    :class:`tarproc.io.spool.LargeField`, copied from its file in the kernel);
    writes are resumed after a short one.

    :raises OSError:
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        if data.__class__ is LargeField:
            data.copy_to_fd(fd)
            return
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _as_bytes(value):
    if isinstance(value, (bytes, bytearray, memoryview)) or value.__class__ is LargeField:
        return value
    return str(value).encode("utf-8", "surrogateescape")


def write_sample(directory: str, sample: Sample, base: str) -> str:
    """Write a sample's fields, ``__key__`` and ``__source__`` into the
    (new, empty) ``directory``; returns the source.

    :raises OSError: a file cannot be written
    """
    prefix = f"{directory}/{base}."
    for name, value in sample.items():
        if name[:2] == "__":
            continue
        write_file(prefix + name, _as_bytes(value))
    write_file(f"{directory}/{KEY_FILE}", sample["__key__"].encode("utf-8", "surrogateescape"))
    source = sample.get("__source__", "-")
    if not isinstance(source, str):
        source = bytes(source).decode("utf-8", "surrogateescape")
    write_file(f"{directory}/{SOURCE_FILE}", source.encode("utf-8", "surrogateescape"))
    return source


def read_regular(path: str) -> bytes | LargeField | None:
    """The bytes of a regular file, or None if it is anything else (the
    file is opened without following symlinks or blocking on a FIFO). A
    file larger than :data:`tarproc.io.spool.THRESHOLD` bytes is moved to the
    spool directory and given as a :class:`tarproc.io.spool.LargeField`
    (never read into memory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > _LARGE:
            return spool_file(path)
        # ask for one byte more than the size: a short read is the end, so
        # the usual file takes a single read() and no extra one to see EOF
        data = os.read(fd, st.st_size + 1)
        if len(data) <= st.st_size:
            if len(data) < st.st_size and data:  # one read(2) takes at most 0x7ffff000 bytes
                return _read_rest(fd, [data])
            return data
        return _read_rest(fd, [data])  # the file grew meanwhile (a background writer)
    finally:
        os.close(fd)


def _read_rest(fd: int, chunks: list) -> bytes:
    """``chunks`` and the rest of ``fd`` to its end, joined."""
    while True:
        chunk = os.read(fd, 1 << 24)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def collect_sample(directory: str, base: str, source: str, warnings: list,
                   leftovers: list | None = None) -> tuple[Sample | None, str]:
    """Read ``__key__`` and the ``base.*`` regular files of one directory;
    the names of the other entries (but ``__key__`` and ``__source__``) are
    appended to ``leftovers``.

    :returns: (sample, "") or (None, reason)
    """
    raw_key = read_regular(os.path.join(directory, KEY_FILE))
    if raw_key is None:
        return None, f"{KEY_FILE} is missing or not a regular file"
    key = raw_key.decode("utf-8", "surrogateescape").rstrip("\n")
    problem = key_problem(key)
    if problem:
        return None, problem
    prefix = base + "."
    found = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if not name.startswith(prefix) or len(name) == len(prefix):
                if leftovers is not None and name != KEY_FILE and name != SOURCE_FILE:
                    leftovers.append(name)
                continue
            if name.startswith("__", len(prefix)):
                # a field "__key__" would be taken for a meta entry and never written
                warnings.append(f"sample {key!r}: not collecting {name!r}: field names starting with '__' are reserved")
                continue
            # d_type says "regular file" without a syscall; read_regular
            # still refuses anything else (O_NOFOLLOW, fstat) if it changed
            data = read_regular(entry.path) if entry.is_file(follow_symlinks=False) else None
            if data is None:
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                    # a regular file that could not be opened: chmod 000 by the command
                    kind = "unreadable file" if stat.S_ISREG(mode) else _kind(mode)
                except OSError:
                    kind = "vanished file"
                warnings.append(f"sample {key!r}: not collecting {kind} {name!r}")
                continue
            found[name[len(prefix) :]] = data
    sample = {"__key__": key, "__source__": source}
    for name in sorted(found):
        sample[name] = found[name]
    return sample, ""


def collect_outputs(spec: CommandSpec, directory: str, source: str, result: Result, log: bytes) -> None:
    """Collect the output samples of one sample directory into ``result``
    (each subdirectory with ``subdirs``)."""
    if spec.subdirs:
        with os.scandir(directory) as entries:
            subdirs = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
        for entry in subdirs:
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                if entry.is_symlink():
                    result.warnings.append(f"sample {result.key!r}: not following symlink {entry.name!r}")
                continue
            sample, reason = collect_sample(entry.path, spec.base, source, result.warnings, result.leftovers)
            if sample is None:
                result.fail(f"subdirectory {entry.name!r}: {reason}")
                continue
            if spec.add_log:
                sample[spec.add_log] = log
            result.outputs.append(sample)
        return
    sample, reason = collect_sample(directory, spec.base, source, result.warnings, result.leftovers)
    if sample is None:
        result.fail(reason)
        return
    if spec.add_log:
        sample[spec.add_log] = log
    result.outputs.append(sample)


def _remove_tree(path: str) -> None:
    """Remove a directory even if the command made parts of it unreadable
    or unwritable."""

    def fix(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def remove_dir(directory: str) -> None:
    """Remove a sample directory: the quick way for the usual flat
    directory, :func:`_remove_tree` for anything else."""
    try:
        for name in os.listdir(directory):
            os.unlink(directory + "/" + name)
        os.rmdir(directory)
    except FileNotFoundError:
        if os.path.lexists(directory):
            _remove_tree(directory)
    except OSError:
        _remove_tree(directory)


class LogFile:
    """One anonymous capture file per executor, truncated for each run
    (saves an open, a close and an unlink per sample)."""

    def __init__(self, root: str):
        path = os.path.join(root, f"log-{os.getpid()}-{id(self):x}")
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)  # anonymous from now on: nothing to clean up

    def reset(self) -> int:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        return self.fd

    def read(self) -> bytes:
        size = os.lseek(self.fd, 0, os.SEEK_END)
        return os.pread(self.fd, size, 0) if size else b""

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# -------------------------------------------------------------- executing


class Spawner:
    """Execute by spawning ``argv`` (``shell -c CMD``, or ``shell SCRIPT``)
    in the directory, a new process group per run (via :mod:`tarproc.procs`)."""

    def __init__(self, spec: CommandSpec):
        self.argv = spec.argv
        # resolved once: a PATH search per sample costs a failed execve(2) per
        # directory before the shell's (about 1 ms per sample on a long PATH)
        self.executable = procs.resolve(spec.argv[0])
        self.timeout = spec.timeout
        self.log = LogFile(spec.root)
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def execute(self, directory: str) -> tuple[int | None, str, bytes]:
        """Run the command in ``directory``: ``(status, reason, log)``;
        ``reason`` is "" for a run that exited 0."""
        log_fd = self.log.reset()
        with guard.spawning():
            try:
                proc = procs.spawn(self.argv, cwd=directory, stdin=self.devnull, stdout=log_fd, stderr=log_fd,
                                   executable=self.executable)
            except OSError as exc:
                return None, f"cannot run {self.argv[0]!r}: {exc.strerror}", b""
            guard.adopt(proc.pid)
        reason = ""
        with guard.running(proc.pid):
            try:
                status = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                procs.kill_group(proc.pid)
                status = proc.wait()
                reason = f"timed out after {self.timeout:g} s"
        return status, reason or status_reason(status), self.log.read()

    def close(self) -> None:
        self.log.close()
        os.close(self.devnull)


def status_reason(status: int) -> str:
    if status < 0:
        return f"killed by signal {-status}"
    if status:
        return f"exit status {status}"
    return ""


#: the persistent shell's loop: read a directory per line, run the command
#: there in a subshell that is a job of its own (set -m: its own process
#: group, which a timeout kills), report the job's pid, then its status
_LOOP = r"""set -m
__tarproc_cmd=$1
__tarproc_log=$2
cd -- "$3" || exit 1
while IFS= read -r __tarproc_dir; do
  ( cd -- "$__tarproc_dir" || exit 1; set --; eval "$__tarproc_cmd" ) </dev/null >&$__tarproc_log 2>&1 &
  echo "$!"
  wait "$!"
  echo "$?"
done
"""


class PersistentShell:
    """Execute in a subshell of one long-lived shell (see the module docs).

    A shell that dies (a command killed it) fails the sample it was running
    and is started again for the next one.
    """

    def __init__(self, spec: CommandSpec):
        self.shell = spec.shell or spec.argv[0]
        self.command = spec.command_text()
        self.timeout = spec.timeout
        self.log = LogFile(spec.root)
        self.root = spec.root
        self.proc: subprocess.Popen | None = None
        self.buffer = b""

    def _start(self) -> None:
        with guard.spawning():
            self.proc = procs.spawn(
                [self.shell, "-c", _LOOP, self.shell, self.command, str(self.log.fd), self.root],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                pass_fds=(self.log.fd,),
            )
        self.buffer = b""
        guard.check_pending()

    def _line(self, deadline: float | None) -> bytes | None:
        """The next line from the shell; None at the deadline; b"" at EOF."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            if deadline is not None:
                left = deadline - _now()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    return None
            chunk = os.read(fd, 256)
            if not chunk:
                return b""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def execute(self, directory: str) -> tuple[int | None, str, bytes]:
        if "\n" in directory:
            return None, "the sample directory's name holds a newline", b""
        if self.proc is None or self.proc.poll() is not None:
            try:
                self._start()
            except OSError as exc:
                self.proc = None
                return None, f"cannot run {self.shell!r}: {exc.strerror}", b""
        self.log.reset()
        # the shell reads its input a byte at a time: send the name under the root
        name = directory[len(self.root) + 1 :] if directory.startswith(self.root + "/") else directory
        with guard.spawning():
            try:
                self.proc.stdin.write(name.encode("utf-8", "surrogateescape") + b"\n")
                self.proc.stdin.flush()
                pid_line = self._line(None)
            except BrokenPipeError:
                pid_line = b""
            if pid_line.strip().isdigit():
                guard.adopt(int(pid_line))
        if not pid_line:
            self._lost()
            return None, "the persistent shell exited", self.log.read()
        pid = int(pid_line)
        reason = ""
        with guard.running(pid):
            deadline = None if self.timeout is None else _now() + self.timeout
            line = self._line(deadline)
            if line is None:
                procs.kill_group(pid)
                reason = f"timed out after {self.timeout:g} s"
                line = self._line(None)
        if not line:
            self._lost()
            return None, reason or "the persistent shell exited", self.log.read()
        status = int(line)
        if 128 < status < 128 + 65:
            status = 128 - status  # the shell's 128 + N: killed by signal N
        return status, reason or status_reason(status), self.log.read()

    def _lost(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.proc = None

    def close(self) -> None:
        self._lost()
        self.log.close()


def _now() -> float:
    import time

    return time.monotonic()


# ------------------------------------------------------------------- job


class CommandJob:
    """Run a command for samples: the work a scheduler hands to a worker.

    :param spec: what to run (see :class:`CommandSpec`)
    :param handler: the failure handler (:mod:`.policy`); None skips failures

    :meth:`start` and :meth:`stop` bracket a worker's life (they open and
    close its executor: a log file, a persistent shell); :meth:`run` takes
    a list of ``(index, sample)`` (one item, or a batch of ``spec.batch``)
    and returns one :class:`Result` per item, in order, after retries.
    """

    def __init__(self, spec: CommandSpec, handler=None):
        self.spec = spec
        self.handler = handler
        self.chunk = max(1, spec.batch)
        self.executor = None

    def describe(self) -> str:
        return self.spec.describe()

    def start(self) -> None:
        if self.executor is None:
            self.executor = PersistentShell(self.spec) if self.spec.persistent else Spawner(self.spec)

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.close()
            self.executor = None

    def run(self, items: list[tuple[int, Sample]]) -> list[Result]:
        self.start()
        if self.spec.batch and len(items) > 1:
            return self._run_batch(items)
        return [self._settle(index, sample) for index, sample in items]

    def _settle(self, index: int, sample: Sample) -> Result:
        return settle(lambda attempt: self.run_one(index, sample, attempt), self.handler)

    def run_one(self, index: int, sample: Sample, attempt: int = 1) -> Result:
        """One attempt at one sample (no retry); never raises for a failing
        command or a directory that cannot be written."""
        spec = self.spec
        result = Result(index, sample["__key__"])
        directory = f"{spec.root}/{index:09d}" if attempt == 1 else f"{spec.root}/{index:09d}-{attempt}"
        try:
            os.mkdir(directory, 0o700)
        except OSError as exc:
            result.fail(_oserror(exc))
            return result
        try:
            sample_dir = directory
            if spec.batch:
                sample_dir = f"{directory}/{BATCH_NAME.format(0)}"
                os.mkdir(sample_dir, 0o700)
            source = write_sample(sample_dir, sample, spec.base)
            status, reason, log = self.executor.execute(directory)
            result.status, result.log = status, log
            if reason:
                result.fail(self._explain(status, reason))
            if spec.collect:
                collect_outputs(spec, sample_dir, source, result, log)
            if spec.keep:
                result.directory = sample_dir
        except OSError as exc:
            result.fail(_oserror(exc))
        finally:
            if not spec.keep:
                remove_dir(directory)
        return result

    def _run_batch(self, items: list[tuple[int, Sample]]) -> list[Result]:
        spec = self.spec
        first = items[0][0]
        directory = f"{spec.root}/b{first:09d}"
        results = [Result(index, sample["__key__"]) for index, sample in items]
        try:
            os.mkdir(directory, 0o700)
        except OSError:
            return [self._settle(index, sample) for index, sample in items]
        rerun = False
        try:
            sources = []
            for j, (_, sample) in enumerate(items):
                sample_dir = f"{directory}/{BATCH_NAME.format(j)}"
                os.mkdir(sample_dir, 0o700)
                sources.append(write_sample(sample_dir, sample, spec.base))
            status, reason, log = self.executor.execute(directory)
            if reason:
                rerun = True  # every sample again on its own: find the one(s) that fail
            else:
                results[0].log = log
                for j, result in enumerate(results):
                    result.status = status
                    sample_dir = f"{directory}/{BATCH_NAME.format(j)}"
                    if spec.collect:
                        collect_outputs(spec, sample_dir, sources[j], result, log)
                    if spec.keep:
                        result.directory = sample_dir
        except OSError:
            rerun = True
        finally:
            if not spec.keep or rerun:
                remove_dir(directory)
        if rerun:
            return [self._settle(index, sample) for index, sample in items]
        return [self._settle(items[j][0], items[j][1]) if r.failed else r for j, r in enumerate(results)]

    def _explain(self, status: int | None, reason: str) -> str:
        if status == 127 and self.spec.argv[1:2] == ["-c"]:
            word = self.spec.argv[2].split(None, 1)[0] if self.spec.argv[2].strip() else ""
            if word.startswith(("./", "../")):
                return (f"{reason} (the command runs in the sample's directory, where there is no {word!r}:"
                        " give its absolute path, or run it as a script with -s)")
        return reason


def _oserror(exc: OSError) -> str:
    return f"{exc.filename or 'sample directory'}: {exc.strerror or exc}"
