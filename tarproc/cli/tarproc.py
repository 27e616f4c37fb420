"""tarproc: run a shell command on every sample of a tar stream."""

from __future__ import annotations

import enum
import gc
import os
import shutil
import tempfile
from typing import Annotated, Optional

import typer

from tarproc.ops.create import TEXT_MODES, iter_text_samples
from tarproc.errors import DuplicateKeyError, UsageError
from tarproc.executor import CommandJob, CommandSpec, ErrorPolicy, print_log
from tarproc.executor.policy import HALT_AFTER, KEEP
from tarproc.executor.runloop import Summary, process
from tarproc.executor.sandbox import script_argv
from tarproc.procs import SHELL
from tarproc.io.sinks import PARTIAL, open_sink
from tarproc.io.storage import local_path
from tarproc.tempdirs import make_run_dir
from tarproc.cli.app import REPEATED_KEYS, command, make_app, run_app
from tarproc.cli.tool import Tool, refuse_terminal

#: what tarproc adds to a library error about a rule its options change
HINTS = {
    "abort": "--errors abort stops at the first failure",
    "max_errors": "--max-errors N allows more",
    "halt_after": "--halt-after K sets how many (0: never)",
    "map_function": "given with --map",
}

HELP = """Run a shell command on every sample of tar shards and re-pack the results.

Each sample is extracted into a fresh directory as BASE.EXT files (sample.jpg,
sample.cls, ...) plus __key__ and __source__; the command runs there; every
regular file BASE.EXT left there becomes a field of the output sample, under
the key read back from __key__ (so a command may rename a sample). A sample
left with no field is not written (-v counts it); other files are not
collected (one warning per run counts the samples and names the files). The
command's stdout and stderr go to stderr (one sample's output together),
never to stdout, which carries only tar bytes.

The command runs in the sample's directory: give your own script with -s FILE
(or an absolute path), not -c ./script.sh. A script runs by its #! line, as
./script.sh would (bash when it has none; --shell names another).
--persistent runs each sample's command in a subshell of one long-lived shell
per worker; --batch N runs it once per N samples in a directory of sample
directories 000000/, 000001/...; --map runs a Python function
sample -> dict | list | None instead.

Every command line runs in the shell (--shell, default bash: one 'bash -c CMD'
per sample), as GNU parallel and the original tarproc do.

A failed sample (non-zero exit, --timeout) is run again up to --retries N
times, then left out and reported with its key, status and last lines of
output; the run goes on and exits 1 (like xargs and GNU parallel), unless
the first --halt-after K samples all failed: then one message names the
command and its output, and the run stops. --errors abort stops at the first
failure; --errors ignore keeps the sample as the command left it; --failed
FILE saves the failed input samples.

""" + REPEATED_KEYS

EXAMPLES = """\
  # convert every JPEG to PPM, 8 processes, output order = input order
  cat imagenet_train-0000.tgz | tarproc -p 8 -c 'convert sample.jpg sample.ppm; rm sample.jpg' -o out.tar
  # what does a sample directory hold?
  tarproc -c ls --count 3 shard.tar
  # the first three keys (command output goes to stderr)
  tarproc -c 'cat __key__; echo' --count 3 shard.tar
  # stream to a re-sharder, keeping failures for later
  tarproc -s resize.sh -o - --failed failed.tar 'train-{0000..0147}.tgz' | tarsplit -n 1000 -o 'out-%06d.tar'
  # one sample -> many: each subdirectory with __key__ and sample.* becomes a sample
  tarproc --subdirs -s crop.sh -o crops.tar shard.tar
  # many small samples: one shell per worker, or one md5sum per 64 samples
  tarproc -p 2 --persistent -c 'md5sum sample.jpg > sample.md5' -o out.tar shard.tar
  tarproc --batch 64 -c 'for d in 0*/; do md5sum < $d/sample.jpg > $d/sample.md5; done' -o out.tar shard.tar
  # a Python function in the workers
  tarproc -p 4 --map resize.py:resize -o out.tar shard.tar"""

app = make_app(HELP, EXAMPLES)


class _FailedSamples:
    """``--failed FILE``: a :class:`tarproc.io.sinks.TarSink` opened at the
    first failed sample, so that a run where none fails makes no empty FILE;
    closing it then removes a local FILE an earlier run left (it would list
    failures this run does not have)."""

    def __init__(self, target: str, mtime: int, storage_options: dict):
        self.target = target
        self.mtime = mtime
        self.storage_options = storage_options
        self.sink = None

    def write(self, sample) -> None:
        if self.sink is None:
            self.sink = open_sink(self.target, mtime=self.mtime, storage_options=self.storage_options)
        self.sink.write(sample)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
            return
        path = local_path(self.target)
        if path is not None and os.path.isfile(path):
            os.unlink(path)

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()

#: --mode: a choice, so shells complete its values
Mode = enum.Enum("Mode", {name: name for name in ("tar",) + TEXT_MODES}, type=str)



@command(app, shared="read count skip parallel write")
def tarproc(
    tool: Tool,
    cmd: Annotated[Optional[str], typer.Option("-c", "--command", metavar="CMD", help="Shell command run in each sample's directory.")] = None,
    script: Annotated[Optional[str], typer.Option("-s", "--script", metavar="FILE", help="Script run in each sample's directory: by its #! line (bash without one), or by --shell.")] = None,
    shell: Annotated[Optional[str], typer.Option("--shell", "--interpreter", metavar="SHELL", help="Shell that runs the command (and -s FILE, instead of its #! line). [default: bash]")] = None,
    output: Annotated[Optional[str], typer.Option("-o", "--output", metavar="OUT", help="Output: '-' for stdout, a file (compressed by suffix), 'pipe:CMD'. Omitted: no archive.")] = None,
    base: Annotated[str, typer.Option("-b", "--base", metavar="NAME", help="File stem of the fields in the sample directory.")] = "sample",
    unordered: Annotated[bool, typer.Option("--unordered", help="Write samples as they finish instead of in input order.")] = False,
    errors: Annotated[str, typer.Option("-e", "--errors", "--error-handling", metavar="abort|skip|ignore", help="What a failed sample does: stop the run, be left out, or be kept as the command left it.")] = "skip",
    max_errors: Annotated[Optional[int], typer.Option("--max-errors", min=0, metavar="N", help="Stop when more than N samples failed.")] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, metavar="N", help="Run a failed sample again up to N times, in a fresh directory, before it counts as failed.")] = 0,
    halt_after: Annotated[int, typer.Option("--halt-after", min=0, metavar="K", help="Stop (exit 1) when the first K samples to finish all failed; 0: never.")] = HALT_AFTER,
    persistent: Annotated[bool, typer.Option("--persistent", help="One long-lived shell per worker runs each sample's command in a subshell (cheaper than a new shell per sample; same contract).")] = False,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, metavar="N", help="Run the command once per N samples, in a directory of sample directories 000000/, 000001/, ...")] = None,
    map_function: Annotated[Optional[str], typer.Option("--map", metavar="PATH.py:NAME|MODULE:NAME", help="Run a Python function sample dict -> dict | list | None in the workers instead of a command.")] = None,
    map_batch: Annotated[Optional[int], typer.Option("--map-batch", min=1, metavar="N", help="Pass the --map function lists of N samples (it returns one entry per sample).")] = None,
    failed: Annotated[Optional[str], typer.Option("--failed", metavar="FILE", help="Write the failed input samples to this tar, made at the first failure: a run where no sample fails leaves no FILE (and removes one an earlier run left).")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=0, metavar="SECONDS", help="Kill a command's process group after this many seconds (the sample fails).")] = None,
    add_log: Annotated[Optional[str], typer.Option("--add-log", metavar="EXT", help="Also store the command's output in the sample as field EXT.")] = None,
    subdirs: Annotated[bool, typer.Option("-S", "--subdirs", help="Each subdirectory holding __key__ and BASE.* becomes an output sample (files directly in the sample directory are not collected).")] = False,
    workdir: Annotated[Optional[str], typer.Option("-w", "--workdir", metavar="DIR", help="Where sample directories are made [default: $TMPDIR].")] = None,
    keep: Annotated[bool, typer.Option("--keep", "--keepdir", help="Keep the sample directories (for debugging).")] = False,
    mode: Annotated[Mode, typer.Option("--mode", metavar="tar|lines|pages|keys", help="Input: tar shards; or text whose lines (lines) or form-feed pages (pages) become samples with a txt field and numbered keys, or whose lines are keys of samples with no field (keys).")] = Mode.tar,
    command_output: Annotated[Optional[str], typer.Option("-O", "--command-output", metavar="FILE", help="Append the commands' output to FILE instead of stderr.")] = None,
    working_dir: Annotated[Optional[str], typer.Option("--working_dir", "--working-dir", hidden=True)] = None,
) -> None:
    with tool.run(HINTS):
        if timeout is not None and timeout <= 0:
            raise UsageError("--timeout must be more than 0 seconds")
        if (cmd is not None) + (script is not None) + (map_function is not None) != 1:
            raise UsageError("give exactly one of -c/--command, -s/--script or --map")
        if errors not in ("abort", "skip", "ignore"):
            raise UsageError(f"--errors must be abort, skip or ignore, not {errors!r}")
        if not base or "/" in base or "." in base:
            raise UsageError(f"--base {base!r} must be a plain name without '/' or '.'")
        if add_log is not None and (not add_log or "/" in add_log):
            raise UsageError(f"--add-log {add_log!r} must be a field name")
        if map_function is None and map_batch is not None:
            raise UsageError("--map-batch goes with --map")
        if map_function is not None:
            for flag, given in (("--persistent", persistent), ("--batch", batch is not None), ("--timeout", timeout is not None),
                                ("--subdirs", subdirs), ("--add-log", add_log is not None), ("--keep", keep)):
                if given:
                    raise UsageError(f"{flag} applies to commands, not to --map")
        if working_dir is not None:
            raise UsageError(
                "--working_dir is the original tarproc's spelling: use -w/--workdir DIR"
                " (an existing directory: unlike the original, tarproc does not create it)"
            )
        mode = mode.value
        policy = ErrorPolicy(errors, retries, max_errors, halt_after)
        if output is not None:
            refuse_terminal(output)
        specs = tool.input_specs()
        _check_clashes(output, failed, specs)
        if map_function is not None:
            from tarproc.executor.pymap import MapJob, load_function

            job = MapJob(load_function(map_function), map_batch or 0, policy, name=map_function)
            root = None
        else:
            if script is not None:
                if not os.path.isfile(script):
                    raise UsageError(f"--script {script!r}: no such file")
                try:
                    argv = script_argv(script, shell)
                except (OSError, ValueError) as exc:
                    raise UsageError(f"--script {script!r}: {getattr(exc, 'strerror', None) or exc}") from None
                if shell is None and argv[0] not in (SHELL, argv[-1]) and shutil.which(argv[0]) is None:
                    raise UsageError(f"--script {script!r}: the interpreter of its #! line, {argv[0]!r}, is not found")
            else:
                argv = [shell or SHELL, "-c", cmd]
            shell = shell or SHELL
            if shutil.which(shell) is None:
                raise UsageError(f"--shell {shell!r}: not found on PATH")
            workdir = workdir or tempfile.gettempdir()
            if not os.path.isdir(workdir):
                raise UsageError(f"--workdir {workdir!r}: no such directory (create it first)")
            root = make_run_dir("tarproc-", workdir)  # removes those of killed runs (tarproc.tempdirs)
            spec = CommandSpec(argv, root, base, timeout, add_log, subdirs, keep, collect=output is not None,
                               persistent=persistent, batch=batch or 0, shell=shell)
            job = CommandJob(spec, policy)
        summary = Summary()
        sink = failed_sink = log_file = None

        def done(result) -> None:
            if not result.failed:
                if log_file is not None:
                    log_file.write(result.log)
                elif result.log and not tool.quiet:
                    with tool.stderr():
                        print_log(result.log)
            if keep and result.directory:
                tool.info(f"kept {result.directory}", 2)

        try:
            log_file = open(command_output, "ab") if command_output is not None else None
            sink = tool.open_output(output, terminal=False) if output is not None else None
            failed_sink = _FailedSamples(failed, tool.args.mtime, tool.storage_options) if failed else None
            text = mode != "tar"
            samples = tool.skip_count(iter_text_samples(specs, mode, tool.storage_options) if text else tool.read(specs))
            # the start-up's objects (typer, click, the job) live to the end: no
            # collection needs to scan them again, here or in the forked workers
            gc.freeze()
            process(job, samples, sink, failed=failed_sink, parallel=tool.args.parallel, ordered=not unordered,
                    handle_signals=True, report=lambda result: _report_failure(tool, result, tool.verbose),
                    done=done, warn=tool.warn, progress=lambda pairs: tool.progress(pairs, describe=_describe_result),
                    summary=summary)
        except DuplicateKeyError as exc:
            raise DuplicateKeyError(
                f"{exc} (make them unique first: tarcats --rekey '{{shard}}/{{key}}' INPUTS -o - | tarproc ...)",
                exc.key, exc.first, exc.again,
            ) from None
        except BaseException:
            if sink is not None:
                sink.abort()  # opened, and the run never started
            if failed_sink is not None:
                failed_sink.abort()
            raise
        finally:
            if log_file is not None:
                log_file.close()
            if root is not None:
                if keep:
                    tool.info(f"sample directories kept in {root}", 0)
                else:
                    shutil.rmtree(root, ignore_errors=True)
            leftover = summary.leftover_warning(base)
            if leftover is not None:
                tool.warn(leftover, problem=False)
            retried = f", {summary.retries} retries" if summary.retries else ""
            empty = f" ({summary.empty} left with no field: not written)" if summary.empty else ""
            tool.info(
                f"{summary.read} samples in, {summary.written} out{empty}, {summary.failed} failed{retried},"
                f" {tool.elapsed():.2f} s"
            )
        if summary.failed and errors != "ignore":
            tool.error(f"{summary.failed} of {summary.read} samples failed")
            raise typer.Exit(1)


def _local_path(spec: str) -> str | None:
    """The file an input or output names, or None (stdin/stdout, pipe:, URL, device)."""
    path = local_path(spec)
    if path is None:
        return None
    if os.path.exists(path) and not os.path.isfile(path):
        return None  # /dev/null, a FIFO: written directly, never replaced
    return os.path.realpath(path)


def _check_clashes(output: str | None, failed: str | None, specs: list[str]) -> None:
    """Refuse an output that is also an input (or the other output): the
    input would be replaced by the output at the end (or truncated, when it
    is OUT.partial), and two outputs would overwrite each other.

    :raises UsageError:
    """
    inputs = {p for p in map(_local_path, specs) if p is not None}
    seen: dict[str, str] = {}
    for option, target in (("-o/--output", output), ("--failed", failed)):
        path = _local_path(target) if target else None
        if path is None:
            continue
        for name in (path, path + PARTIAL):
            if name in inputs:
                raise UsageError(f"{option} {target!r} is also an input: write to another file")
        if path in seen:
            raise UsageError(f"--failed {target!r} is the same file as {seen[path]} {output!r}")
        seen[path] = option


def _describe_result(item) -> str:
    """The -vv line of one sample."""
    _, result = item
    outcome = f"failed: {result.reason}" if result.failed else f"{len(result.outputs)} output samples"
    return f"sample {result.key!r}: {outcome}"


def _report_failure(tool: Tool, result, verbose: int) -> None:
    """A failed sample's line and the last lines of its output; nothing with
    -q (the summary line and the exit status still tell)."""
    if tool.quiet:
        return
    action = "kept as is" if result.action == KEEP else "left out"
    if result.attempts > 1:
        action += f", after {result.attempts} attempts"
    lines = result.log.decode("utf-8", "replace").splitlines()
    tail = lines if verbose else lines[-5:]
    tool.say("\n".join([f"{tool.name}: sample {result.key!r} failed: {result.reason} ({action})"]
                       + [f"  | {line}" for line in tail]))


def main() -> None:
    run_app(app, "tarproc")


if __name__ == "__main__":
    main()
