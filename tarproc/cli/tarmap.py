"""tarmap: run a shell pipeline once per input shard, resumable and exactly once."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from .. import k8s, records, schedule, tasks
from ..errors import ExitStatus, UsageError
from ..sources import check_inputs_exist, expand_inputs
from ..storage import parse_storage_options
from .common import Tool, command, make_app, run_app

HELP = """\
Run a shell pipeline once per input shard, resumable and exactly once.

On a local pool, on Dask, or as a Kubernetes Indexed Job.

Task i is the i-th INPUT as given (brace patterns expanded, -T FILE read in
order). Each task feeds its input's bytes, as they are (the pipeline's tools
detect compression), to PIPELINE (bash -c, its own process group, with
TARMAP_INDEX, TARMAP_INPUT, TARMAP_OUTPUT in its environment) and streams its
stdout, which must be one complete tar stream of WebDataset samples, to the
output while verifying it (strict reader: samples, members, bytes, sha256).
The output is compressed by its name and appears atomically: a local output
is written as NAME.partial.<host>.<pid>.<token> and renamed; an s3:// output
is a multipart upload completed only on success; other URLs are written
under an attempt key and moved. Nothing appears unless the pipeline exited 0
and its stream was complete.

After the output, a completion record (JSON) is written beside it
(OUTPUT.tarmap.json) or under --records DIR. A task whose record names the
same input (size, mtime or ETag), pipeline and output, with the output of
the recorded size, is skipped: kill tarmap at any point and run it again.
Two runs of the same task at once (Dask, Kubernetes and Slurm may do that)
are harmless, without locks.

A pipeline that exits 3 (bad input data) fails its task at once; any other
failure (exit status, signal, --timeout, an incomplete stream, I/O) is
retried --retries times with backoff (1 s, 2 s, 4 s ...).

Where tasks run: -j N local tasks at once (default: the number of CPUs), in
threads of this process: each task's work is done by its pipeline's own
processes, the thread streams and verifies their output; --dask
tcp://HOST:8786 or --dask local:N (Client.submit/as_completed; a worker that
dies has its tasks re-run); --index I runs task I only (--index env: from
JOB_COMPLETION_INDEX, else SLURM_ARRAY_TASK_ID); --k8s-job NAME
--image IMAGE prints a Kubernetes Indexed Job (YAML) whose pods run this
command with --index env (podFailurePolicy: FailIndex on exit status 3).

Object stores take credentials and endpoints from their standard
environment (AWS_*, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS,
FSSPEC_<PROTOCOL>_<OPTION>) and --storage-option KEY=VALUE (fsspec
storage_options), which Dask workers get with each task; pods get
variables with --env and --env-from-secret."""

EXAMPLES = """\
  tarmap 'shards/train-{0000..0147}.tgz' -o 'out/{stem}.tar' -c "tarproc -c 'gm convert sample.jpg sample.ppm; rm sample.jpg' -o -"
  tarmap -T shards.txt -o 's3://bucket/ppm/{index:06d}.tar' -j 8 -c 'tarproc -p 2 -c "..." -o -' --shard-index ppm.json
  tarmap 'https://host/imagenet_train-{0000..0147}.tgz' -o 's3://bucket/ppm/{stem}.tar' --dask tcp://scheduler:8786 -c '...'
  tarmap 'gs://b/in-{0..99}.tar' -o 'gs://b/out/{stem}.tar' -c '...' --k8s-job ppm --image repo/tarproc:1 | kubectl apply -f -
  tarmap 'in-{0..99}.tar' -o 'out/{stem}.tar' -c 'tarproc -c true -o -' --dry-run
  tarmap 'in-{0..99}.tar' -o 'out/{stem}.tar' -c 'tarproc -c true -o -' --summary"""

EXIT_STATUS_NOTE = """\
0    every task is complete (done now or before).
1    some tasks failed (each named on stderr) or were not run.
2    usage error.
3    --index mode: the task failed permanently (bad input data).
130  interrupted by SIGINT; 143 by SIGTERM (running pipelines killed, no
     complete-looking output left, completed tasks keep their records)."""

app = make_app(HELP, EXAMPLES)
# tarmap's statuses differ from a filter's: replace the shared table
app.info.epilog = app.info.epilog.split("\n\n\b\nExit status:\n")[0] + "\n\n\b\nExit status:\n" + EXIT_STATUS_NOTE

MapInputs = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Input shards: files, 'pipe:CMD', URLs, brace patterns like 'shard-{0000..0147}.tgz'.",
        show_default=False,
        metavar="INPUT",
    ),
]


def read_list(path: str) -> list[str]:
    """Inputs from a file, one per line (``-``: stdin); blank lines and
    ``#`` comments are skipped. :raises UsageError:"""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise UsageError(f"-T {path}: cannot read: {exc.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def task_index(value: str) -> int:
    """``--index I`` or ``--index env``. :raises UsageError:"""
    if value == "env":
        for name in ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"):
            if os.environ.get(name, "") != "":
                value = os.environ[name]
                break
        else:
            raise UsageError("--index env: neither JOB_COMPLETION_INDEX nor SLURM_ARRAY_TASK_ID is set")
    try:
        index = int(value)
    except ValueError:
        raise UsageError(f"--index {value!r}: expected a number or 'env'") from None
    if index < 0:
        raise UsageError(f"--index {index}: must be >= 0")
    return index


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@command(app)
def tarmap(
    tool: Tool,
    inputs: MapInputs = None,
    output: Annotated[
        Optional[str],
        typer.Option("-o", "--output", metavar="PATTERN",
                     help="Output per task: {index}, {index:04d}, {basename}, {stem}; a path (directories created) or URL."),
    ] = None,
    pipeline: Annotated[
        Optional[str],
        typer.Option("-c", "--command", metavar="PIPELINE", help="Shell pipeline: input shard on stdin, output shard on stdout."),
    ] = None,
    input_list: Annotated[
        Optional[list[str]], typer.Option("-T", "--files-from", metavar="FILE", help="Read inputs from FILE, one per line ('-': stdin).")
    ] = None,
    jobs: Annotated[Optional[int], typer.Option("-j", "--jobs", min=1, metavar="N", help="Local tasks at once [default: number of CPUs].")] = None,
    dask: Annotated[
        Optional[str], typer.Option("--dask", metavar="ADDRESS", help="Run on Dask: tcp://HOST:8786, or local:N worker processes.")
    ] = None,
    index: Annotated[
        Optional[str], typer.Option("--index", metavar="I|env", help="Run task I only ('env': JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID).")
    ] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, metavar="N", help="Retries of a failed task (not for exit status 3).")] = 2,
    backoff: Annotated[float, typer.Option("--backoff", min=0, metavar="SECONDS", help="Wait before the first retry, doubled for each next.")] = 1.0,
    timeout: Annotated[
        Optional[float], typer.Option("--timeout", min=0.001, metavar="SECONDS", help="Kill a task's pipeline after this long (retryable).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Run tasks that are complete again.")] = False,
    records_dir: Annotated[
        Optional[str], typer.Option("--records", metavar="DIR", help="Completion records in DIR (path or URL) [default: OUTPUT.tarmap.json].")
    ] = None,
    manifest: Annotated[
        Optional[str], typer.Option("--manifest", metavar="FILE", help="At the end, one JSON line per complete task ('-': stdout).")
    ] = None,
    shard_index: Annotated[
        Optional[str], typer.Option("--shard-index", metavar="FILE", help="At the end, a wids shard index (wids-shard-index-v1) of the outputs.")
    ] = None,
    failed_list: Annotated[
        Optional[str], typer.Option("--failed-list", metavar="FILE", help="At the end, the failed tasks' inputs, one per line (for -T).")
    ] = None,
    max_errors: Annotated[
        Optional[int], typer.Option("--max-errors", min=0, metavar="N", help="Stop starting tasks when more than N failed.")
    ] = None,
    halt_after: Annotated[
        int, typer.Option("--halt-after", min=0, metavar="K", help="Stop when the first K tasks to finish all failed (0: never).")
    ] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the tasks (index, input, output, run/skip) and exit.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Print each task's state from its record and totals; run nothing.")] = False,
    storage_option: Annotated[
        Optional[list[str]], typer.Option("--storage-option", metavar="KEY=VALUE", help="fsspec storage option for URLs (repeatable).")
    ] = None,
    k8s_job: Annotated[Optional[str], typer.Option("--k8s-job", metavar="NAME", help="Print a Kubernetes Indexed Job running the tasks.")] = None,
    image: Annotated[Optional[str], typer.Option("--image", metavar="IMAGE", help="--k8s-job: container image with tarproc.")] = None,
    parallelism: Annotated[Optional[int], typer.Option("--parallelism", min=1, metavar="P", help="--k8s-job: pods at once.")] = None,
    backoff_limit_per_index: Annotated[
        int, typer.Option("--backoff-limit-per-index", min=0, metavar="N", help="--k8s-job: pod retries per index.")
    ] = 2,
    cpu: Annotated[Optional[str], typer.Option("--cpu", metavar="C", help="--k8s-job: CPU request and limit (2, 500m).")] = None,
    memory: Annotated[Optional[str], typer.Option("--memory", metavar="M", help="--k8s-job: memory request and limit (4Gi).")] = None,
    env: Annotated[
        Optional[list[str]], typer.Option("--env", metavar="NAME[=VALUE]", help="--k8s-job: environment variable for the pods (repeatable).")
    ] = None,
    env_from_secret: Annotated[
        Optional[list[str]], typer.Option("--env-from-secret", metavar="SECRET", help="--k8s-job: Secret whose keys become variables.")
    ] = None,
) -> None:
    quiet = tool.quiet
    progress = tool.args.progress
    with tool.run():
        if output is None:
            raise UsageError("missing -o PATTERN (e.g. -o 'out/{stem}.tar')")
        if pipeline is None:
            raise UsageError("missing -c PIPELINE (e.g. -c 'tarproc -c \"...\" -o -')")
        specs = expand_inputs(inputs or [])
        for path in input_list or []:
            specs.extend(expand_inputs(read_list(path)))
        if not specs:
            raise UsageError("no inputs (give INPUT... or -T FILE)")
        modes = [name for name, on in (("--dask", dask), ("--index", index), ("--k8s-job", k8s_job),
                                        ("--dry-run", dry_run), ("--summary", summary)) if on]
        if len(modes) > 1:
            raise UsageError(f"{' and '.join(modes)} cannot be combined")
        if jobs is not None and modes and modes[0] in ("--dask", "--index", "--k8s-job"):
            raise UsageError(f"-j and {modes[0]} cannot be combined")
        if k8s_job is None and any(v is not None for v in (image, parallelism, cpu, memory)) or (
                k8s_job is None and (env or env_from_secret)):
            raise UsageError("--image, --parallelism, --cpu, --memory, --env, --env-from-secret go with --k8s-job")
        storage = parse_storage_options(storage_option or [])
        task_list = tasks.make_tasks(specs, output, pipeline, records_dir)
        options = tasks.TaskOptions(
            policy=tasks.RetryPolicy(retries=retries, backoff=backoff, timeout=timeout),
            force=force,
            storage_options=storage,
            quiet=quiet,
        )

        if k8s_job is not None:
            if not image:
                raise UsageError("--k8s-job needs --image IMAGE")
            argv = ["tarmap", *(inputs or [])]
            for path in input_list or []:
                argv += ["-T", path]
            argv += ["-o", output, "-c", pipeline, "--index", "env", "--retries", str(retries), "--backoff", f"{backoff:g}"]
            if timeout is not None:
                argv += ["--timeout", f"{timeout:g}"]
            if records_dir is not None:
                argv += ["--records", records_dir]
            for item in storage_option or []:
                argv += ["--storage-option", item]
            manifest_dict = k8s.job_manifest(
                k8s_job, image, argv, len(task_list), parallelism=parallelism,
                backoff_limit_per_index=backoff_limit_per_index, cpu=cpu, memory=memory,
                env=env or [], env_from_secrets=env_from_secret or [],
            )
            sys.stdout.write(k8s.to_yaml(manifest_dict))
            return

        if dask is None and k8s_job is None and not summary:
            # inputs on this machine must exist (a Dask worker or a pod may see other files)
            check_inputs_exist([task_list[task_index(index)].input] if index is not None and
                               task_index(index) < len(task_list) else specs)

        if dry_run or summary:
            complete = 0
            samples = size = 0
            for task in task_list:
                record = tasks.is_complete(task, options)
                if record is not None:
                    complete += 1
                    samples += record["samples"]
                    size += record["bytes"]
                if dry_run:
                    state = "skip" if record is not None and not force else "run"
                    print(f"{task.index}\t{task.input}\t{task.output}\t{state}")
                else:
                    if record is None:
                        print(f"{task.index}\tmissing\t-\t-\t{task.output}")
                    else:
                        print(f"{task.index}\tcomplete\t{record['samples']}\t{record['bytes']}\t{task.output}")
            if summary:
                print(f"tarmap: {complete} of {len(task_list)} tasks complete, {samples} samples, {_human(size)}",
                      file=sys.stderr)
                if complete < len(task_list):
                    raise typer.Exit(ExitStatus.ERROR)
            else:
                tool.info(f"{len(task_list)} tasks, {len(task_list) - complete if not force else len(task_list)} to run")
            return

        say = (lambda m: None) if quiet else (lambda m: tool.say(f"tarmap: {m}"))
        tasks.set_line_writer(tool.say)
        if index is not None:
            i = task_index(index)
            if i >= len(task_list):
                raise UsageError(f"--index {i}: there are {len(task_list)} tasks (0..{len(task_list) - 1})")
            try:
                result = tasks.run_task(task_list[i], options, say)
            finally:
                tasks.cancel_all()  # only reached with running pipelines on an interrupt
                tasks.reset_cancel()
            _report(tool, [result])
            _finish(tool, [result], task_list, manifest, shard_index, failed_list, options)
            if not result.ok:
                tool.error(f"task {i} ({result.input}) failed: {result.message}")
                raise typer.Exit(result.exit_status)
            tool.info(_task_line(result), level=2)
            tool.info(f"task {i}: {result.status}")
            return

        if dask is not None:
            pool = schedule.DaskPool(dask)
            fn, args = tasks.run_task_quiet, (options,)
        else:
            pool = schedule.LocalPool(jobs or os.cpu_count() or 1)
            fn, args = tasks.run_task, (options, say)
        bar = _Bar(tool, progress, len(task_list))

        def on_result(task, result) -> None:
            bar.update(result)
            if result.ok:
                tool.info(_task_line(result), level=2)
            if not result.ok:
                tool.error(f"task {task.index} ({task.input}) failed{' permanently' if result.permanent else ''}:"
                           f" {result.message}")

        def on_error(task, exc) -> tasks.TaskResult:
            return tasks.TaskResult(task.index, task.input, task.output, "failed",
                                    message=f"{type(exc).__name__}: {exc}")

        try:
            run = schedule.run_all(task_list, fn, args, pool, max_errors=max_errors,
                                   halt_after=halt_after, on_result=on_result, on_error=on_error,
                                   on_interrupt=tasks.cancel_all)
        finally:
            bar.close()
            tasks.reset_cancel()
        if run.stopped:
            tool.error(f"stopped: {run.stopped}; {len(run.not_run)} tasks not run")
        _report(tool, run.results)
        _finish(tool, run.results, task_list, manifest, shard_index, failed_list, options)
        failed = run.failed
        if failed or run.not_run:
            if failed:
                names = ", ".join(str(r.index) for r in sorted(failed, key=lambda r: r.index)[:20])
                tool.error(f"{len(failed)} of {len(task_list)} tasks failed: {names}{' ...' if len(failed) > 20 else ''}")
            raise typer.Exit(ExitStatus.ERROR)


class _Bar:
    """tasks done/skipped/failed of total, samples and bytes, ETA (tqdm)."""

    def __init__(self, tool: Tool, enabled, total: int):
        self.tool = tool
        self.done = self.skipped = self.failed = self.samples = self.bytes = 0
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="task", file=sys.stderr, dynamic_ncols=True, leave=False)
            tool._bar = self.bar  # messages (Tool.say) go above the bar

    def update(self, result) -> None:
        if result.status == "complete":
            self.done += 1
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
        if result.record:
            self.samples += result.record.get("samples", 0)
            self.bytes += result.record.get("bytes", 0)
        if self.bar is not None:
            self.bar.set_postfix_str(f"done {self.done} skipped {self.skipped} failed {self.failed}"
                                     f" | {self.samples} samples {_human(self.bytes)}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.tool._bar = None
            self.bar.close()


def _task_line(result) -> str:
    """The -vv line of a finished task."""
    record = result.record or {}
    took = f", {record['seconds']:.2f} s" if result.status == "complete" and "seconds" in record else ""
    return (f"task {result.index} ({result.input}): {result.status}, {record.get('samples', 0)} samples,"
            f" {_human(record.get('bytes', 0))}{took} -> {result.output}")


def _report(tool: Tool, results) -> None:
    done = sum(1 for r in results if r.status == "complete")
    skipped = sum(1 for r in results if r.status == "skipped")
    failed = sum(1 for r in results if not r.ok)
    samples = sum(r.record.get("samples", 0) for r in results if r.record)
    size = sum(r.record.get("bytes", 0) for r in results if r.record)
    tool.info(f"{done} tasks done, {skipped} skipped (complete before), {failed} failed;"
              f" {samples} samples, {_human(size)} in {tool.elapsed():.2f} s")


def _finish(tool, results, task_list, manifest, shard_index, failed_list, options) -> None:
    """--manifest, --shard-index (from the records of every complete task),
    --failed-list."""
    if manifest or shard_index:
        by_index = {r.index: r.record for r in results if r.ok and r.record}
        for task in task_list:  # tasks complete before, not run this time (--index mode)
            if task.index not in by_index:
                record = tasks.is_complete(task, options)
                if record is not None:
                    by_index[task.index] = record
        recs = [by_index[i] for i in sorted(by_index)]
        if manifest:
            records.write_manifest(manifest, recs)
        if shard_index:
            records.write_shard_index(shard_index, recs)
    if failed_list:
        lines = "".join(f"{r.input}\n" for r in sorted(results, key=lambda r: r.index) if not r.ok)
        try:
            with open(failed_list, "w", encoding="utf-8") as handle:
                handle.write(lines)
        except OSError as exc:
            raise UsageError(f"--failed-list {failed_list}: {exc.strerror}") from None


def main() -> None:
    run_app(app, "tarmap")


if __name__ == "__main__":
    main()
