"""tarmap: run a shell pipeline once per input shard, resumable and exactly once."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from tarproc.jobs import k8s, records, tasks
from tarproc.jobs.engines.run import run_all
from tarproc.errors import ExitStatus, UsageError
from tarproc.io.sources import check_inputs_exist
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.tool import Tool
from tarproc.cli import engine

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
command with --index env (podFailurePolicy: FailIndex on exit status 3);
--slurm-array NAME prints a Slurm job array (an sbatch script: pipe it to
sbatch) whose array tasks run it with --index, or submits it with
--slurm-submit; with --tasks-per-index K, or more tasks than MaxArraySize,
array index I runs tasks I, I+M, I+2M ... one after another in one process
(--index env::M, M the array's size): for short tasks, where each array
task's launch (about 0.2 s) would count.

Object stores take credentials and endpoints from their standard
environment (AWS_*, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS,
FSSPEC_<PROTOCOL>_<OPTION>) and --storage-option KEY=VALUE (fsspec
storage_options), which Dask workers get with each task and pods on their
command line: credentials belong in a Secret (--env-from-secret), not in
--storage-option; other variables reach pods with --env."""

EXAMPLES = """\
  tarmap 'shards/train-{0000..0147}.tgz' -o 'out/{stem}.tar' -c "tarproc -c 'gm convert sample.jpg sample.ppm; rm sample.jpg' -o -"
  tarmap -T shards.txt -o 's3://bucket/ppm/{index:06d}.tar' -j 8 -c 'tarproc -p 2 -c "..." -o -' --shard-index ppm.json
  tarmap 'https://host/imagenet_train-{0000..0147}.tgz' -o 's3://bucket/ppm/{stem}.tar' --dask tcp://scheduler:8786 -c '...'
  tarmap 'gs://b/in-{0..99}.tar' -o 'gs://b/out/{stem}.tar' -c '...' --k8s-job ppm --image repo/tarproc:1 | kubectl apply -f -
  tarmap 'in-{0..99}.tar' -o 'out/{stem}.tar' -c 'tarproc -c true -o -' --slurm-array ppm --parallelism 8 | sbatch
  tarmap 'in-{0..999}.tar' -o 'out/{stem}.tar' -c '...' --slurm-array ppm --tasks-per-index 10 --slurm-submit
  tarmap 'in-{0..99}.tar' -o 'out/{stem}.tar' -c 'tarproc -c true -o -' --dry-run
  tarmap 'in-{0..99}.tar' -o 'out/{stem}.tar' -c 'tarproc -c true -o -' --summary"""

EXIT_STATUS_NOTE = """\
0    every task is complete (done now or before).
1    some tasks failed (each named on stderr) or were not run.
2    usage error.
3    --index mode: the task failed permanently (bad input data).
130  interrupted by SIGINT; 143 by SIGTERM, as a shell reports it: the tool
     cleans up (running pipelines get SIGTERM and 5 s to clean up, then
     SIGKILL; no complete-looking output left, completed tasks keep their
     records), then dies of the signal itself."""

app = make_app(HELP, EXAMPLES, EXIT_STATUS_NOTE)  # tarmap's statuses differ from a filter's

@command(app, shared=engine.ENGINE_SHARED, options=engine.ENGINE, own_first=True)
def tarmap(
    tool: Tool,
    output: Annotated[
        Optional[str],
        typer.Option("-o", "--output", metavar="PATTERN",
                     help="Output per task: {index}, {index:04d}, {basename}, {stem}; a path (directories created) or URL."),
    ] = None,
    pipeline: Annotated[
        Optional[str],
        typer.Option("-c", "--command", metavar="PIPELINE", help="Shell pipeline: input shard on stdin, output shard on stdout."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Run tasks that are complete again.")] = False,
    manifest: Annotated[
        Optional[str], typer.Option("--manifest", metavar="FILE", help="At the end, one JSON line per complete task ('-': stdout).")
    ] = None,
    shard_index: Annotated[
        Optional[str], typer.Option("--shard-index", metavar="FILE", help="At the end, a wids shard index (wids-shard-index-v1) of the outputs.")
    ] = None,
    failed_list: Annotated[
        Optional[str], typer.Option("--failed-list", metavar="FILE", help="At the end, the failed tasks' inputs, one per line (for -T).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the tasks (index, input, output, run/skip) and exit.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Print each task's state from its record (complete; missing: no record or output; stale: the input, pipeline or output changed; truncated or changed: the output's size differs; no-input) and totals; run nothing.")] = False,
) -> None:
    a = tool.args
    with tool.run(engine.HINTS):
        if output is None:
            raise UsageError("missing -o PATTERN (e.g. -o 'out/{stem}.tar')")
        if pipeline is None:
            raise UsageError("missing -c PIPELINE (e.g. -c 'tarproc -c \"...\" -o -')")
        specs = engine.task_specs(tool)
        engine.check_engine(tool, ("--dry-run", dry_run), ("--summary", summary))
        task_list = tasks.make_tasks(specs, output, pipeline, a.records_dir)
        options = tasks.TaskOptions(policy=engine.retry_policy(tool), force=force, storage_options=tool.storage_options,
                                    quiet=tool.quiet)

        if a.k8s_job is not None:
            engine.warn_pod_paths(tool, ("output", output), ("records", a.records_dir))
            argv = engine.pod_argv(tool, "tarmap") + ["-o", output, "-c", pipeline, "--index", "env"]
            sys.stdout.write(k8s.to_yaml(engine.job_manifest(tool, a.k8s_job, argv, len(task_list))))
            return

        runner = engine.make_engine(tool)
        if runner.shares_filesystem and not summary:
            # inputs on this machine must exist (a worker of another machine may see other files)
            check_inputs_exist(specs if a.index is None else
                               [task_list[i].input for i in engine.task_indices(a.index, len(task_list))])

        if a.slurm_array is not None:
            argv = engine.pod_argv(tool, "tarmap") + ["-o", output, "-c", pipeline]
            engine.slurm_arrays(tool, [(a.slurm_array, argv, len(task_list))])
            return

        if dry_run or summary:
            complete = 0
            samples = size = 0
            states: dict[str, int] = {}
            for task in task_list:
                state, record = tasks.task_state(task, options)
                states[state] = states.get(state, 0) + 1
                if state == "complete":
                    complete += 1
                    samples += record["samples"]
                    size += record["bytes"]
                if dry_run:
                    print(f"{task.index}\t{task.input}\t{task.output}\t{'skip' if state == 'complete' and not force else 'run'}")
                elif state == "complete":
                    print(f"{task.index}\tcomplete\t{record['samples']}\t{record['bytes']}\t{task.output}")
                else:
                    print(f"{task.index}\t{state}\t-\t-\t{task.output}")
            if summary:
                others = ", ".join(f"{n} {state}" for state, n in sorted(states.items()) if state != "complete")
                print(f"tarmap: {complete} of {len(task_list)} tasks complete{f' ({others})' if others else ''},"
                      f" {samples} samples, {engine.human(size)}", file=sys.stderr)
                if complete < len(task_list):
                    raise typer.Exit(ExitStatus.ERROR)
            else:
                tool.info(f"{len(task_list)} tasks, {len(task_list) - complete if not force else len(task_list)} to run")
            return

        say = (lambda m: None) if tool.quiet else (lambda m: tool.say(f"tarmap: {m}"))
        context = tasks.TaskContext(line_writer=tool.say)
        if a.index is not None:
            results = tasks.run_here([task_list[i] for i in engine.task_indices(a.index, len(task_list))], options, say,
                                     tool.say)
            _report(tool, results)
            _finish(tool, results, task_list, manifest, shard_index, failed_list, options)
            engine.report_here(tool, results, name=lambda result: result.input)
            return

        engine.warn_local_paths(tool, runner, ("output", output), ("records", a.records_dir))
        fn, args = (tasks.run_task, (options, say, context)) if runner.in_process else (tasks.run_task_quiet, (options,))
        bar = engine.TaskBar(tool, len(task_list))

        def on_result(task, result) -> None:
            bar.update(result)
            if result.ok:
                tool.info(engine.task_line(result), level=2)
            if not result.ok:
                tool.error(f"task {task.index} ({task.input}) failed{' permanently' if result.permanent else ''}:"
                           f" {tool.hinted(result.message, result.topic)}")

        def on_error(task, exc) -> tasks.TaskResult:
            return tasks.TaskResult(task.index, task.input, task.output, "failed",
                                    message=f"{type(exc).__name__}: {exc}")

        try:
            run = run_all(task_list, fn, args, runner, max_errors=a.max_errors,
                          halt_after=a.halt_after, on_result=on_result, on_error=on_error,
                          on_interrupt=context.cancel)
        finally:
            bar.close()
        if run.stopped:
            tool.error(f"stopped, {len(run.not_run)} tasks not run: {tool.hinted(run.stopped, run.stopped_topic)}")
        _report(tool, run.results)
        _finish(tool, run.results, task_list, manifest, shard_index, failed_list, options)
        failed = run.failed
        if failed or run.not_run:
            if failed:
                names = ", ".join(str(r.index) for r in sorted(failed, key=lambda r: r.index)[:20])
                tool.error(f"{len(failed)} of {len(task_list)} tasks failed: {names}{' ...' if len(failed) > 20 else ''}")
            raise typer.Exit(ExitStatus.ERROR)


def _report(tool: Tool, results) -> None:
    done = sum(1 for r in results if r.status == "complete")
    skipped = sum(1 for r in results if r.status == "skipped")
    failed = sum(1 for r in results if not r.ok)
    samples = sum(r.record.get("samples", 0) for r in results if r.record)
    size = sum(r.record.get("bytes", 0) for r in results if r.record)
    tool.info(f"{done} tasks done, {skipped} skipped (complete before), {failed} failed;"
              f" {samples} samples, {engine.human(size)} in {tool.elapsed():.2f} s")


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
