"""tardedup: remove exact duplicates across a whole dataset (MapReduce over shards)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tarproc.jobs import dedup, tasks
from tarproc.errors import UsageError
from tarproc.io.sources import check_inputs_exist
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.tool import Tool
from tarproc.cli import engine

HELP = """\
Remove exact duplicates across a whole dataset: two samples are duplicates
when the fields given with --by (default: every data field) hold the same
bytes. The first occurrence in input order (input as given, then position
in it) is kept; each INPUT gets one output shard (-o, tarmap's pattern:
'dedup/{stem}.tar') holding its samples, bytes unchanged, without the
removed ones; the removed samples are listed as JSON lines (--removed
[default: DIR/removed.jsonl beside the outputs]): shard, key, position, and
the twin kept: twin_shard, twin_key, twin_position.

Content hash: BLAKE2b-256 of each compared field's name, length and bytes.
A sample without a field of --by stops the run (exit 3).

MapReduce over shards on tarmap's engines, in three phases: hash (one task
per input: its samples' hashes, grouped by partition hash mod P, into one
staged file), reduce (one task per partition: the first of each hash wins,
in input order; the others are written down per input), write (one task per
input: the input copied without its removed samples). Staged files go under
--staging [default: DIR/tardedup-staging beside the outputs] and are removed
at the end (--keep-staging keeps them); P is --partitions [default: the
inputs / 8, rounded up]. Memory per reduce task: about 300 bytes per sample
of its partition (8 shards of 10,000 samples: 24 MB).

Deterministic: the same inputs and --by give byte-identical outputs and
list whatever --partitions, the engine, -j, retries or interruptions. Each
task's output appears atomically with a completion record, as tarmap's; a
re-run skips complete tasks (kill it at any point and run it again).

Where tasks run: -j N local tasks at once [default: number of CPUs]; --dask
tcp://HOST:8786 or local:N; --phase hash|reduce|write --index I runs one
task of one phase here (--index env: JOB_COMPLETION_INDEX or
SLURM_ARRAY_TASK_ID), the phases in that order, then this command once more
(every task skipped) to write the list and remove the staging.
--slurm-array NAME prints a bash script submitting the three phases as
Slurm job arrays, each after the previous one succeeded (NAME-hash,
NAME-reduce, NAME-write; tarmap's Slurm options), or submits them with
--slurm-submit; then run this command once more, as above."""

EXAMPLES = """\
  tardedup 'train-{0000..0147}.tar' -o 'dedup/{stem}.tar' -j 8
  tardedup 'train-{0000..0147}.tar' --by jpg -o 'dedup/{stem}.tar' --removed dups.jsonl -v
  tardedup 's3://raw/part-{00000..39999}.tar' -o 's3://clean/{stem}.tar' --partitions 4000 --dask tcp://sched:8786
  tardedup 'in-{000..099}.tar' -o 'out/{stem}.tar' --phase hash --index env
  tardedup 'in-{000..099}.tar' -o 'out/{stem}.tar' --slurm-array dedup --slurm-submit"""

EXIT_STATUS_NOTE = """\
0    every task of the three phases is complete (done now or before) and
     the list of removed samples is written.
1    some tasks failed (each named on stderr) or were not run; a retry
     may fix them.
2    usage error.
3    a task failed permanently: bad input data, or a sample without a
     field of --by.
130  interrupted by SIGINT; 143 by SIGTERM (running tasks killed, no
     complete-looking output left, completed tasks keep their records)."""

app = make_app(HELP, EXAMPLES, EXIT_STATUS_NOTE)

HINTS = {"missing_field": "compare only fields every sample has (--by)"}


@command(app, shared="strict " + engine.ENGINE_SHARED, options=engine.ENGINE, own_first=True)
def tardedup(
    tool: Tool,
    output: Annotated[
        Optional[str],
        typer.Option("-o", "--output", metavar="PATTERN",
                     help="Output per input, tarmap's pattern: 'dedup/{stem}.tar' ({index}, {basename}, {stem})."),
    ] = None,
    by: Annotated[
        Optional[str], typer.Option("--by", metavar="FIELDS", help="Fields compared, e.g. 'jpg' or 'jpg cls' [default: every data field].")
    ] = None,
    removed: Annotated[
        Optional[str], typer.Option("--removed", metavar="FILE", help="List of removed samples, JSON lines ('-': stdout) [default: DIR/removed.jsonl].")
    ] = None,
    partitions: Annotated[
        Optional[int], typer.Option("--partitions", min=1, metavar="P", help="Reduce tasks [default: one per 8 inputs].")
    ] = None,
    staging: Annotated[
        Optional[str], typer.Option("--staging", metavar="DIR|URL", help="Staging area [default: DIR/tardedup-staging beside the outputs].")
    ] = None,
    keep_staging: Annotated[bool, typer.Option("--keep-staging", help="Keep the staged files at the end.")] = False,
    phase: Annotated[
        Optional[str], typer.Option("--phase", metavar="hash|reduce|write", help="With --index: run one task of this phase.")
    ] = None,
) -> None:
    a = tool.args
    with tool.run({**engine.HINTS, **HINTS}):
        if output is None:
            raise UsageError("missing -o PATTERN (e.g. -o 'dedup/{stem}.tar')")
        specs = engine.task_specs(tool)
        if "-" in specs:
            raise UsageError("tardedup reads its inputs itself: '-' (stdin) is not an input (use -T - for a list)")
        if (phase is None) != (a.index is None):
            raise UsageError("--phase and --index go together: --phase hash|reduce|write --index I")
        if phase is not None and phase not in dedup.PHASES:
            raise UsageError(f"--phase {phase!r}: use hash, reduce or write")
        if a.k8s_job is not None:
            raise UsageError("--k8s-job is not available for tardedup: run --phase P --index env in your own Jobs")
        engine.check_engine(tool)
        fields = dedup.parse_by(by)
        runner = engine.make_engine(tool)
        if runner.shares_filesystem and a.index is None:
            check_inputs_exist(specs)
        job = dedup.DedupJob(tuple(specs), output, removed or dedup.default_removed(output, specs),
                             staging or dedup.default_staging(output, specs), partitions or dedup.default_partitions(len(specs)), fields,
                             a.strict, a.records_dir)
        options = tasks.TaskOptions(policy=engine.retry_policy(tool), storage_options=tool.storage_options,
                                    quiet=tool.quiet)
        if a.slurm_array is not None:
            argv = engine.pod_argv(tool, "tardedup") + [
                "-o", job.pattern, "--removed", job.removed, "--staging", job.staging, "--partitions",
                str(job.partitions), *(["--by", ",".join(job.by)] if job.by else []), *(["--strict"] if job.strict else [])]
            engine.slurm_arrays(tool, [(f"{a.slurm_array}-{phase}", argv + ["--phase", phase],
                                        job.partitions if phase == "reduce" else len(specs)) for phase in dedup.PHASES])
            return
        say = (lambda m: None) if tool.quiet else (lambda m: tool.say(f"tardedup: {m}"))
        if a.index is not None:
            indices = engine.task_indices(a.index, len(specs) if phase != "reduce" else job.partitions, phase)
            if phase != "hash":
                job = job.with_fingerprint(tool.storage_options)
            results = tasks.run_here([job.task(phase, i) for i in indices], options, say, tool.say,
                                     attempt_fn=dedup.shufflejob.run_attempt)
            engine.report_here(tool, results, phase)
            return

        engine.warn_local_paths(tool, runner, ("output", job.pattern), ("removed list", job.removed),
                                ("staging", job.staging), ("records", a.records_dir))
        report = engine.PhaseReport(tool, lambda name, result: f"{name} {engine.task_line(result)}")
        outcome = report.run(dedup.run, job, options, runner, say, keep_staging=keep_staging)
        report.summarize(outcome.phases)
        if not outcome.phases:
            tool.info(f"every output was complete already ({len(specs)} shards)")
        tool.info(f"{outcome.removed} duplicate samples removed, listed in {job.removed};"
                  f" {outcome.kept} samples in {len(specs)} output shards, complete in {tool.elapsed():.2f} s")


def main() -> None:
    run_app(app, "tardedup")


if __name__ == "__main__":
    main()
