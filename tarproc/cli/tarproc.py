"""tarproc: run a shell command on every sample of a tar stream."""

from __future__ import annotations

import enum
import gc
import os
import shutil
import tempfile
from typing import Annotated, Optional

import typer

from ..create import TEXT_MODES, iter_text_samples
from ..errors import CommandError, DuplicateKeyError, UsageError
from ..executor import CommandJob, CommandSpec, ErrorPolicy, print_log, run_samples
from ..executor.policy import HALT_AFTER, KEEP
from ..samples import KeyLedger, duplicate_message
from ..sinks import PARTIAL, open_sink
from ..storage import local_path
from ..tempdirs import make_run_dir
from .common import REPEATED_KEYS, Tool, command, make_app, refuse_terminal, run_app

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
the key read back from __key__ (so a command may rename a sample). The
command's stdout and stderr go to stderr (one sample's output together),
never to stdout, which carries only tar bytes.

The command runs in the sample's directory: give your own script with -s FILE
(or an absolute path), not -c ./script.sh. --persistent runs each sample's
command in a subshell of one long-lived shell per worker; --batch N runs it
once per N samples in a directory of sample directories 000000/, 000001/...;
--map runs a Python function sample -> dict | list | None instead.

A command of plain words joined by ';', '&&' or newlines (no quotes, $,
globs, redirections or pipes) whose programs bash finds as files runs
without a bash per sample, with bash 5.2's meaning (status, environment,
messages; as GNU make runs a line without shell syntax itself); give
--shell with bash's path (--shell /bin/bash) to start bash every time.

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
    """``--failed FILE``: a :class:`tarproc.sinks.TarSink` opened at the
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
    script: Annotated[Optional[str], typer.Option("-s", "--script", metavar="FILE", help="Script run (with --shell) in each sample's directory.")] = None,
    shell: Annotated[str, typer.Option("--shell", "--interpreter", metavar="SHELL", help="Shell that runs the command.")] = "bash",
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
            from ..executor.pymap import MapJob, load_function

            job = MapJob(load_function(map_function), map_batch or 0, policy, name=map_function)
            root = None
        else:
            if script is not None:
                if not os.path.isfile(script):
                    raise UsageError(f"--script {script!r}: no such file")
                argv = [shell, os.path.abspath(script)]
            else:
                argv = [shell, "-c", cmd]
            if shutil.which(shell) is None:
                raise UsageError(f"--shell {shell!r}: not found on PATH")
            workdir = workdir or tempfile.gettempdir()
            if not os.path.isdir(workdir):
                raise UsageError(f"--workdir {workdir!r}: no such directory (create it first)")
            root = make_run_dir("tarproc-", workdir)  # removes those of killed runs (tarproc.tempdirs)
            spec = CommandSpec(argv, root, base, timeout, add_log, subdirs, keep, collect=output is not None,
                               persistent=persistent, batch=batch or 0)
            job = CommandJob(spec, policy)
        stats = {"in": 0, "out": 0, "failed": 0, "retries": 0}
        written = KeyLedger()  # output keys and their inputs, to refuse one that comes back
        sink = failed_sink = results = log_file = None
        # failures of a run that has seen no success yet wait here: if the
        # first --halt-after samples all fail, one message replaces them
        held: list = []
        try:
            log_file = open(command_output, "ab") if command_output is not None else None
            sink = tool.open_output(output, terminal=False) if output is not None else None
            failed_sink = _FailedSamples(failed, tool.args.mtime, tool.storage_options) if failed else None
            text = mode != "tar"
            samples = tool.skip_count(iter_text_samples(specs, mode, tool.storage_options) if text else tool.read(specs))
            # the start-up's objects (typer, click, the job) live to the end: no
            # collection needs to scan them again, here or in the forked workers
            gc.freeze()
            results = run_samples(job, samples, tool.args.parallel, ordered=not unordered)
            for inp, result in tool.progress(results, describe=_describe_result):
                stats["in"] += 1
                stats["retries"] += result.attempts - 1
                for message in result.warnings:
                    tool.warn(message)
                # the usual case, one output with a new key, is checked here
                # once; the sink loop below then need not look it up again
                outputs = result.outputs
                fresh = False
                if sink is not None:
                    fresh = len(outputs) == 1 and written.first_source(outputs[0]["__key__"]) is None
                    if not fresh and _check_output_keys(result, written):
                        result.action = policy.final(result)
                if result.failed:
                    stats["failed"] += 1
                    if halt_after and stats["failed"] == stats["in"] <= halt_after:
                        held.append(result)
                    else:
                        _flush_held(tool, held, tool.verbose)
                        _report_failure(tool, result, tool.verbose)
                    if failed_sink is not None:
                        failed_sink.write(inp)
                    if result.action != KEEP:
                        continue
                else:
                    if held:
                        _flush_held(tool, held, tool.verbose)
                    if log_file is not None:
                        log_file.write(result.log)
                    elif result.log and not tool.quiet:
                        with tool.stderr():
                            print_log(result.log)
                if keep and result.directory:
                    tool.info(f"kept {result.directory}", 2)
                if sink is not None:
                    if fresh:
                        out = outputs[0]
                        written.add(out["__key__"], str(out.get("__source__", "-")))
                        sink.write(out)
                        stats["out"] += 1
                        continue
                    for out in outputs:
                        if written.first_source(out["__key__"]) is not None:
                            continue  # reported as a failure above (--errors ignore: still left out)
                        written.add(out["__key__"], str(out.get("__source__", "-")))
                        sink.write(out)
                        stats["out"] += 1
            _flush_held(tool, held, tool.verbose)
            if sink is not None:
                sink.close()
            if failed_sink is not None:
                failed_sink.close()
        except BaseException as exc:
            if not (isinstance(exc, CommandError) and exc.topic == "halt_after"):
                _flush_held(tool, held, tool.verbose)
            if sink is not None:
                sink.abort()
            if failed_sink is not None:
                if isinstance(exc, CommandError):
                    # stopped by --errors abort / --max-errors / --halt-after: the
                    # failed samples seen so far are all there is, so finish the file
                    failed_sink.close()
                else:
                    failed_sink.abort()
            raise
        finally:
            if log_file is not None:
                log_file.close()
            if results is not None:
                results.close()  # stops the workers and kills running commands before the cleanup
            if root is not None:
                if keep:
                    tool.info(f"sample directories kept in {root}", 0)
                else:
                    shutil.rmtree(root, ignore_errors=True)
            retried = f", {stats['retries']} retries" if stats["retries"] else ""
            tool.info(
                f"{stats['in']} samples in, {stats['out']} out, {stats['failed']} failed{retried}, {tool.elapsed():.2f} s"
            )
        if stats["failed"] and errors != "ignore":
            tool.error(f"{stats['failed']} of {stats['in']} samples failed")
            raise typer.Exit(1)


def _check_output_keys(result, written: KeyLedger) -> bool:
    """Stop on an output key already written from another input (shards made
    independently repeat keys: dropping samples would lose data); fail a
    result whose output key was already written from its own input (or
    repeats within its outputs): a key that comes back makes the output
    ungrouped, or repeats a field, and readers would reject the whole shard.
    Called for every result but the usual one (one output with a new key),
    which the CLI loop lets through itself.

    :raises DuplicateKeyError:
    """
    outputs = result.outputs
    keys = [out["__key__"] for out in outputs]
    for i, key in enumerate(keys):
        first = written.first_source(key)
        again = str(result.outputs[i].get("__source__", "-"))
        if first is not None and first != again:
            raise DuplicateKeyError(
                duplicate_message(key, first, again)
                + " (make them unique first: tarcats --rekey '{shard}/{key}' INPUTS -o - | tarproc ...)",
                key, first, again,
            )  # fmt: skip
        if first is not None or key in keys[:i]:
            if not result.failed:
                result.failed = True
                result.reason = f"output key {key!r} was already written"
                return True
            return False
    return False


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


def _flush_held(tool: Tool, held: list, verbose: int) -> None:
    while held:
        _report_failure(tool, held.pop(0), verbose)


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
