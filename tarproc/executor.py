"""The per-sample executor: run a shell command in a directory per sample.

For each sample a fresh directory is made under the run's root directory;
every field is written there as ``<base>.<field>`` (``sample.jpg``...) plus
``__key__`` and ``__source__``; the command runs there (``bash -c CMD`` in a
new session, stdin from /dev/null, stdout and stderr captured together);
then every regular file ``<base>.<field>`` directly in the directory becomes
a field of the output sample (in sorted order), under the key read back from
``__key__``, and the directory is removed.

Safety: only regular files are collected, opened with ``O_NOFOLLOW`` and
checked with ``fstat``; symlinks, FIFOs and devices are reported, never
followed or opened. After the command exits its whole process group is
killed, so background children cannot outlive the sample. SIGINT/SIGTERM
kill the running command's process group before the process exits.

Parallelism uses a :mod:`multiprocess` pool; only the parent writes output.
:func:`run_samples` keeps at most ``window`` samples in flight, so the reader
never runs more than a few samples per worker ahead of the writer.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from collections.abc import Iterable, Iterator

from .errors import Interrupted, TarprocError
from .samples import Sample, key_problem

KEY_FILE = "__key__"
#: seconds between checks that no pool worker died while the parent waits
WORKER_POLL_SECONDS = 0.5
SOURCE_FILE = "__source__"


@dataclass
class CommandSpec:
    """What to run for each sample.

    :ivar argv: the command, e.g. ``["bash", "-c", "convert sample.jpg sample.ppm"]``
    :ivar root: directory in which the per-sample directories are made
    :ivar base: file name stem of the fields (``sample`` -> ``sample.jpg``)
    :ivar timeout: seconds before the command's process group is killed, or None
    :ivar add_log: field name under which the command's output is stored, or None
    :ivar subdirs: collect each subdirectory (with its own ``__key__``) as a sample
    :ivar keep: keep the per-sample directories
    :ivar collect: read the outputs back (False when there is no output archive)
    """

    argv: list[str]
    root: str
    base: str = "sample"
    timeout: float | None = None
    add_log: str | None = None
    subdirs: bool = False
    keep: bool = False
    collect: bool = True


@dataclass
class Result:
    """The outcome of one sample.

    :ivar index: position of the input sample in the stream
    :ivar key: the input sample's key
    :ivar outputs: the output samples (dicts), in order
    :ivar status: the command's exit status (negative: killed by that signal),
        None when it could not be run
    :ivar failed: whether the sample counts as failed
    :ivar reason: one-line description of the failure
    :ivar log: the command's stdout and stderr, interleaved as written
    :ivar warnings: messages about files that were not collected
    :ivar directory: the sample's directory when kept, else None
    """

    index: int
    key: str
    outputs: list = field(default_factory=list)
    status: int | None = None
    failed: bool = False
    reason: str = ""
    log: bytes = b""
    warnings: list = field(default_factory=list)
    directory: str | None = None


# ------------------------------------------------------------ signal safety


class _State:
    """The command this process is running, for the signal handler."""

    spawning = False
    pgid: int | None = None
    pending: int | None = None
    in_worker = False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _raise_for(signum: int):
    if _State.in_worker:
        raise SystemExit(128 + signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def _on_signal(signum, frame) -> None:
    """SIGINT/SIGTERM: kill the running command's group first, then raise
    once the command's bookkeeping is done (never leaves an orphan)."""
    if _State.spawning:
        _State.pending = signum
        return
    if _State.pgid is not None:
        _kill_group(_State.pgid)
        _State.pending = signum
        return
    _raise_for(signum)


def install_signal_handlers() -> dict:
    """Install :func:`_on_signal` for SIGINT and SIGTERM; returns the
    previous handlers for :func:`restore_signal_handlers`."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, _on_signal)
    return previous


def restore_signal_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _check_pending() -> None:
    if _State.pending is not None:
        signum, _State.pending = _State.pending, None
        _raise_for(signum)


# -------------------------------------------------------------- one sample


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _read_regular(path: str) -> bytes | None:
    """The bytes of a regular file, or None if it is anything else (the
    file is opened without following symlinks or blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        # ask for one byte more than the size: a short read is the end, so
        # the usual file takes a single read() and no extra one to see EOF
        data = os.read(fd, st.st_size + 1)
        if len(data) <= st.st_size:
            return data
        chunks = [data]
        while True:  # the file grew meanwhile (a background writer)
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


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


def _collect(directory: str, base: str, source: str, warnings: list) -> tuple[Sample | None, str]:
    """Read ``__key__`` and the ``base.*`` regular files of one directory.

    :returns: (sample, "") or (None, reason)
    """
    raw_key = _read_regular(os.path.join(directory, KEY_FILE))
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
                continue
            if name.startswith("__", len(prefix)):
                # a field "__key__" would be taken for a meta entry and never written
                warnings.append(f"sample {key!r}: not collecting {name!r}: field names starting with '__' are reserved")
                continue
            # d_type says "regular file" without a syscall; _read_regular
            # still refuses anything else (O_NOFOLLOW, fstat) if it changed
            data = _read_regular(entry.path) if entry.is_file(follow_symlinks=False) else None
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


def _remove_tree(path: str) -> None:
    """Remove a sample directory even if the command made parts of it
    unreadable or unwritable."""

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


class _LogFile:
    """One capture file per process, truncated for each sample (saves an
    open, a close and an unlink per sample)."""

    fd: int | None = None
    pid: int | None = None

    @classmethod
    def get(cls, root: str) -> int:
        if cls.fd is None or cls.pid != os.getpid():
            path = os.path.join(root, f"log-{os.getpid()}")
            cls.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            cls.pid = os.getpid()
            os.unlink(path)  # anonymous from now on: nothing to clean up
        os.ftruncate(cls.fd, 0)
        os.lseek(cls.fd, 0, os.SEEK_SET)
        return cls.fd

    @classmethod
    def read(cls) -> bytes:
        fd = cls.fd
        size = os.lseek(fd, 0, os.SEEK_END)
        if not size:
            return b""
        return os.pread(fd, size, 0)


def _remove_sample_dir(directory: str) -> None:
    """Remove a sample directory: the quick way for the usual flat
    directory, :func:`_remove_tree` for anything else."""
    try:
        for name in os.listdir(directory):
            os.unlink(directory + "/" + name)
        os.rmdir(directory)
    except OSError:
        _remove_tree(directory)


def run_sample(spec: CommandSpec, sample: Sample, index: int) -> Result:
    """Run the command for one sample (see the module docstring).

    Never raises for a failing command: the failure is in the :class:`Result`.

    :param spec: the command and options
    :param sample: the input sample dict
    :param index: its position in the stream, used for the directory name
    :raises OSError: the sample directory could not be made or written
    """
    key = sample["__key__"]
    result = Result(index, key)
    directory = f"{spec.root}/{index:09d}"
    os.mkdir(directory, 0o700)
    try:
        base = f"{directory}/{spec.base}."
        for name, value in sample.items():
            if name[:2] == "__":
                continue
            _write_file(base + name, value if isinstance(value, bytes) else str(value).encode())
        _write_file(f"{directory}/{KEY_FILE}", key.encode("utf-8", "surrogateescape"))
        source = str(sample.get("__source__", "-"))
        _write_file(f"{directory}/{SOURCE_FILE}", source.encode("utf-8", "surrogateescape"))
        log_fd = _LogFile.get(spec.root)
        _State.spawning = True
        try:
            proc = subprocess.Popen(
                spec.argv,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
            )
        except OSError as exc:
            result.failed = True
            result.reason = f"cannot run {spec.argv[0]!r}: {exc.strerror}"
            return result
        finally:
            _State.spawning = False
        _State.pgid = proc.pid
        try:
            if _State.pending is not None:
                _kill_group(proc.pid)
            try:
                result.status = proc.wait(timeout=spec.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
                result.failed = True
                result.reason = f"timed out after {spec.timeout:g} s"
        finally:
            _kill_group(proc.pid)  # background children of the command
            _State.pgid = None
        _check_pending()
        result.log = _LogFile.read()
        if result.status and not result.failed:
            result.failed = True
            if result.status < 0:
                result.reason = f"killed by signal {-result.status}"
            else:
                result.reason = f"exit status {result.status}"
        if spec.collect:
            _collect_outputs(spec, directory, source, result)
        if spec.keep:
            result.directory = directory
        return result
    finally:
        if not spec.keep:
            _remove_sample_dir(directory)


def _collect_outputs(spec: CommandSpec, directory: str, source: str, result: Result) -> None:
    if spec.subdirs:
        with os.scandir(directory) as entries:
            subdirs = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
        for entry in subdirs:
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                if entry.is_symlink():
                    result.warnings.append(f"sample {result.key!r}: not following symlink {entry.name!r}")
                continue
            sample, reason = _collect(entry.path, spec.base, source, result.warnings)
            if sample is None:
                result.failed = True
                result.reason = result.reason or f"subdirectory {entry.name!r}: {reason}"
                continue
            _add_log(spec, sample, result)
            result.outputs.append(sample)
        return
    sample, reason = _collect(directory, spec.base, source, result.warnings)
    if sample is None:
        result.failed = True
        result.reason = result.reason or reason
        return
    _add_log(spec, sample, result)
    result.outputs.append(sample)


def _add_log(spec: CommandSpec, sample: Sample, result: Result) -> None:
    if spec.add_log:
        sample[spec.add_log] = result.log


# ------------------------------------------------------------------ many


_SPEC: CommandSpec | None = None


def _init_worker(spec: CommandSpec) -> None:
    global _SPEC
    _SPEC = spec
    _State.in_worker = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates Ctrl-C
    signal.signal(signal.SIGTERM, _on_signal)


def _run_guarded(spec: CommandSpec, sample: Sample, index: int) -> Result:
    """:func:`run_sample`, with a sample directory that cannot be made or
    written (disk full, work dir gone) turned into a failed sample."""
    try:
        return run_sample(spec, sample, index)
    except OSError as exc:
        result = Result(index, sample["__key__"], failed=True)
        result.reason = f"{exc.filename or 'sample directory'}: {exc.strerror or exc}"
        return result


def _work(sample: Sample, index: int) -> Result:
    assert _SPEC is not None
    return _run_guarded(_SPEC, sample, index)


def run_samples(
    spec: CommandSpec,
    samples: Iterable[Sample],
    parallel: int = 1,
    ordered: bool = True,
    window: int | None = None,
) -> Iterator[tuple[Sample, Result]]:
    """Run the command for every sample; yield ``(input sample, result)``.

    :param parallel: worker processes; 1 runs in this process
    :param ordered: yield in input order (else in completion order)
    :param window: most samples in flight (default ``2 * parallel``)

    A failing command, or a sample directory that cannot be written, gives a
    failed :class:`Result`; nothing is raised for them.

    :raises TarprocError: a worker process died (killed by the OOM killer,
        or by the command): its sample is lost, so the run stops
    """
    if parallel <= 1:
        previous = install_signal_handlers()
        try:
            for index, sample in enumerate(samples):
                yield sample, _run_guarded(spec, sample, index)
        finally:
            restore_signal_handlers(previous)
        return
    yield from _run_pool(spec, samples, parallel, ordered, window or 2 * parallel)


def _run_pool(spec, samples, parallel, ordered, window):
    import multiprocess

    context = multiprocess.get_context("fork")
    pool = context.Pool(parallel, initializer=_init_worker, initargs=(spec,))
    # the pool silently replaces a worker that dies (OOM killer, kill -9) and
    # its task is lost: watch the original workers so the run cannot hang
    workers = list(pool._pool)
    clean = False
    try:
        if ordered:
            pending: collections.deque = collections.deque()
            for index, sample in enumerate(samples):
                pending.append((sample, pool.apply_async(_work, (sample, index))))
                if len(pending) >= window:
                    inp, handle = pending.popleft()
                    yield inp, _wait(handle.get, workers)
            while pending:
                inp, handle = pending.popleft()
                yield inp, _wait(handle.get, workers)
        else:
            done: queue.Queue = queue.Queue()
            inputs: dict[int, Sample] = {}
            in_flight = 0
            for index, sample in enumerate(samples):
                inputs[index] = sample
                pool.apply_async(_work, (sample, index), callback=done.put, error_callback=done.put)
                in_flight += 1
                if in_flight >= window:
                    yield _take(done, inputs, workers)
                    in_flight -= 1
            while in_flight:
                yield _take(done, inputs, workers)
                in_flight -= 1
        clean = True
    finally:
        if clean:
            pool.close()
        else:
            pool.terminate()  # SIGTERM: workers kill their commands' groups
        pool.join()


def _wait(get, workers: list):
    """``get(timeout=...)`` until it answers; raise :class:`TarprocError`
    when a worker process died meanwhile (its sample would never come)."""
    import multiprocess  # already loaded by _run_pool

    while True:
        try:
            return get(timeout=WORKER_POLL_SECONDS)
        except (queue.Empty, multiprocess.TimeoutError):
            pass
        for worker in workers:
            code = worker.exitcode
            if code is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                raise TarprocError(f"worker process {worker.pid} {how}: its sample is lost, stopping")


def _take(done: queue.Queue, inputs: dict, workers: list) -> tuple[Sample, Result]:
    item = _wait(done.get, workers)
    if isinstance(item, BaseException):
        raise item
    return inputs.pop(item.index), item


def print_log(data: bytes) -> None:
    """Write one sample's command output to stderr in one piece."""
    if data:
        sys.stderr.flush()
        sys.stderr.buffer.write(data if data.endswith(b"\n") else data + b"\n")
        sys.stderr.flush()
