"""tarshuffle: a global shuffle and re-shard of a whole dataset (MapReduce over shards)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from tarproc.jobs import k8s, shufflejob
from tarproc.errors import UsageError
from tarproc.io.shards import ShardPattern
from tarproc.jobs.shuffle.partition import count_samples, shard_count
from tarproc.ops.sort import DEFAULT_BUFFER
from tarproc.io.sources import check_inputs_exist
from tarproc.ops.stages import Rekeyer
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.options import size_option
from tarproc.cli.tool import Tool
from tarproc.cli import engine

HELP = """\
Shuffle a whole dataset across shards and re-shard it: every sample of the
INPUT shards ends up in exactly one of N output shards, in a seeded random
order, as MapReduce over shards on the same engines as tarmap.

Phase 1 (map, one task per input): the input's samples are grouped by
partition BLAKE2b(seed, key) mod N into ONE staged file per input (a tar
whose first member indexes each partition's byte range), under --staging
[default: DIR/tarshuffle-staging beside the outputs]: M files, not M x N.
Phase 2 (reduce, one task per output shard j): partition j's byte range is
read from every staged file (a seek, or a range request on an object store),
its samples are ordered by tarsort --shuffle's seeded hash (in memory within
--buffer-size, else an external sort in --tmpdir) and written to shard j.
When every output is complete the staging files are removed (--keep-staging
keeps them). --no-shuffle keeps input order inside each output (an even
re-shard).

--shards N gives N outputs; -n K gives N = ceil(total / K) from a counting
pass over the inputs first: hash partitions then hold ABOUT K samples each,
not exactly K (use tarsplit for exact counts). Output names follow
tarsplit's patterns (out-%04d.tar, out-{shard:04d}.tar, a plain prefix);
a URL (s3://, gs://) works for outputs and staging.

Deterministic: the same inputs, N (or -n K) and --seed give byte-identical
outputs whatever the engine, -j, retries or interruptions. Each task's
output appears atomically with a completion record, as tarmap's; a re-run
skips complete tasks (kill it at any point and run it again).

A key found in two inputs (shards made independently) fails its reduce
task permanently (exit 3), naming the key and both inputs, and writes
nothing for that shard: give keys a prefix with --rekey '{shard}/{key}' (or
tarcats --rekey). Nothing is ever merged or dropped silently.

Where tasks run: -j N local tasks at once [default: number of CPUs]; --dask
tcp://HOST:8786 or local:N; --phase map|reduce --index I runs one task of
one phase here (--index env: JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID);
--k8s-job NAME --image IMAGE prints two Kubernetes Indexed Jobs, NAME-map
and NAME-reduce: apply the reduce Job once the map Job has completed, then
run this command once more to check every output and remove the staging.
--slurm-array NAME prints a bash script submitting two Slurm job arrays,
NAME-map then NAME-reduce (sbatch --dependency=afterok), or submits them
with --slurm-submit; run this command once more at the end, as for Kubernetes.
Object stores are configured as for tarmap: their environment (AWS_*,
FSSPEC_<PROTOCOL>_<OPTION>) and --storage-option, which every task gets
(pods on their command line: credentials belong in --env-from-secret)."""

EXAMPLES = """\
  tarshuffle 'in-{0000..0147}.tar' --shards 300 -o 'train-%04d.tar' --seed 7 -j 8
  tarshuffle 'gs://raw/part-{00000..39999}.tgz' -n 10000 -o 'gs://ds/train-{shard:05d}.tar' --dask tcp://sched:8786
  tarshuffle 'a-{00..09}.tar' 'b-{00..09}.tar' --shards 8 -o out/train-%02d.tar --rekey '{shard}/{key}'
  tarshuffle 'in-{000..099}.tar' --shards 40 -o 's3://b/out-{shard:03d}.tar' --k8s-job shuf --image repo/tarproc:1 > jobs.yaml
  tarshuffle 'in-{000..099}.tar' --shards 40 -o out/%03d.tar --phase map --index env"""

EXIT_STATUS_NOTE = """\
0    every task of both phases is complete (done now or before).
1    some tasks failed (each named on stderr) or were not run; a retry
     may fix them.
2    usage error.
3    a task failed permanently: bad input data, or a key found in two
     inputs (see --rekey).
130  interrupted by SIGINT; 143 by SIGTERM, as a shell reports it: the tool
     cleans up (running tasks get SIGTERM and 5 s to remove their partial
     files, then SIGKILL; no complete-looking output left, completed tasks
     keep their records), then dies of the signal itself."""

app = make_app(HELP, EXAMPLES, EXIT_STATUS_NOTE)

#: what tarshuffle adds to a library error about a rule its options change
HINTS = {"duplicate_key": "use tarshuffle --rekey '{shard}/{key}' (or tarcats --rekey '{shard}/{key}' before)"}

BufferSize = size_option("--buffer-size", help="Memory budget of each task for buffered samples", optional=False)


@command(app, shared="strict " + engine.ENGINE_SHARED, options=engine.ENGINE, own_first=True)
def tarshuffle(
    tool: Tool,
    output: Annotated[
        Optional[str],
        typer.Option("-o", "--output", metavar="PATTERN",
                     help="Output shards: out-%04d.tar, out-{shard:04d}.tar, a plain prefix; a path or URL."),
    ] = None,
    shards: Annotated[Optional[int], typer.Option("--shards", min=1, metavar="N", help="Number of output shards.")] = None,
    maxcount: Annotated[
        Optional[int],
        typer.Option("-n", "--maxcount", min=1, metavar="K",
                     help="About K samples per output shard: N = ceil(total/K) from a counting pass (not exactly K)."),
    ] = None,
    seed: Annotated[str, typer.Option("--seed", metavar="S", help="Seed of the partitions and of the order (any text).")] = "0",
    no_shuffle: Annotated[bool, typer.Option("--no-shuffle", help="Keep input order inside each output shard.")] = False,
    staging: Annotated[
        Optional[str], typer.Option("--staging", metavar="DIR|URL", help="Staging area [default: DIR/tarshuffle-staging beside the outputs].")
    ] = None,
    keep_staging: Annotated[bool, typer.Option("--keep-staging", help="Keep the staged files at the end.")] = False,
    buffer_size: BufferSize = f"{DEFAULT_BUFFER >> 20}M",
    tmpdir: Annotated[
        Optional[str], typer.Option("--tmpdir", metavar="DIR", help="Where tasks spill runs [default: $TMPDIR or /tmp].")
    ] = None,
    rekey: Annotated[
        Optional[str], typer.Option("--rekey", metavar="FORMAT", help="New keys per input, as tarcats --rekey: '{shard}/{key}'.")
    ] = None,
    phase: Annotated[
        Optional[str], typer.Option("--phase", metavar="map|reduce", help="With --index: run one task of this phase.")
    ] = None,
) -> None:
    a = tool.args
    with tool.run({**engine.HINTS, **HINTS}):
        if output is None:
            raise UsageError("missing -o PATTERN (e.g. -o 'out/train-%04d.tar')")
        if (shards is None) == (maxcount is None):
            raise UsageError("give either --shards N or -n K (samples per shard)")
        pattern = ShardPattern(output)
        if pattern.is_pipe:
            raise UsageError("-o pipe:CMD is not an output of tarshuffle: outputs must be files or URLs")
        specs = engine.task_specs(tool)
        if "-" in specs:
            raise UsageError("tarshuffle reads its inputs itself: '-' (stdin) is not an input (use -T - for a list)")
        if (phase is None) != (a.index is None):
            raise UsageError("--phase and --index go together: --phase map|reduce --index I")
        if phase is not None and phase not in shufflejob.PHASES:
            raise UsageError(f"--phase {phase!r}: use map or reduce")
        engine.check_engine(tool)
        if rekey is not None:
            Rekeyer(rekey)  # a bad format is a usage error now, not in every task
        if tmpdir is not None and not os.path.isdir(tmpdir):
            raise UsageError(f"--tmpdir {tmpdir!r} is not a directory")
        storage = tool.storage_options

        runner = engine.make_engine(tool)
        if runner.shares_filesystem and a.k8s_job is None:
            check_inputs_exist(specs if a.index is None or phase == "reduce" or maxcount else
                               [specs[i] for i in engine.task_indices(a.index, len(specs), phase)])
        if shards is None:
            total = 0
            for spec in specs:
                total += count_samples(spec, tool.warn, storage)
            shards = shard_count(total, maxcount)
            tool.info(f"{total} samples in {len(specs)} inputs: {shards} output shards of about {maxcount}")
        job = shufflejob.ShuffleJob(
            tuple(specs), output, shards, staging or shufflejob.default_staging(output), seed, not no_shuffle,
            rekey, a.strict, buffer_size, tmpdir, a.records_dir,
        )
        options = job.options(engine.retry_policy(tool), storage, tool.quiet)

        if a.k8s_job is not None:
            _print_jobs(tool, job)
            return
        if a.slurm_array is not None:
            argv = _phase_argv(tool, job)
            engine.slurm_arrays(tool, [(f"{a.slurm_array}-{phase}", argv + ["--phase", phase], count)
                                       for phase, count in (("map", len(job.inputs)), ("reduce", job.partitions))])
            return

        say = (lambda m: None) if tool.quiet else (lambda m: tool.say(f"tarshuffle: {m}"))
        if a.index is not None:
            count = len(job.inputs) if phase == "map" else job.partitions
            results = shufflejob.run_here(job, phase, engine.task_indices(a.index, count, phase), options, say, tool.say)
            engine.report_here(tool, results, phase, lambda result: _name(phase, result))
            return

        engine.warn_local_paths(tool, runner, ("output", job.pattern), ("staging", job.staging),
                                ("records", a.records_dir))
        report = engine.PhaseReport(tool, lambda name, result: f"task {name} {engine.task_line(result).removeprefix('task ')}",
                                    sizes=True, notes={"map": "the reduce phase did not start"})
        outcomes = report.run(shufflejob.run, job, options, runner, say, keep_staging=keep_staging)
        report.summarize(outcomes)
        if outcomes[0].summary is None:
            tool.info(f"map phase not needed: every output shard was complete already ({job.partitions} shards)")
        tool.info(f"{job.partitions} output shards complete in {tool.elapsed():.2f} s")


def _name(phase: str, result) -> str:
    return result.input if phase == "map" else result.output


def _print_jobs(tool: Tool, job) -> None:
    """The two Indexed Jobs: NAME-map (one pod per input) and NAME-reduce
    (one pod per output shard), as one YAML stream."""
    # the reduce pods read what the map pods staged: a local staging area works only on a shared volume
    engine.warn_pod_paths(tool, ("output", job.pattern), ("staging", job.staging), ("records", tool.args.records_dir))
    argv = _phase_argv(tool, job)
    documents = []
    for phase, count in (("map", len(job.inputs)), ("reduce", job.partitions)):
        manifest = engine.job_manifest(tool, f"{tool.args.k8s_job}-{phase}", argv + ["--phase", phase, "--index", "env"], count)
        documents.append(k8s.to_yaml(manifest))
    # line by line: one huge write(2) cut short by a closed pipe is not an error
    for line in "---\n".join(documents).splitlines(keepends=True):
        sys.stdout.write(line)


def _phase_argv(tool: Tool, job) -> list[str]:
    """The command every task of either phase repeats (without --phase and --index)."""
    argv = engine.pod_argv(tool, "tarshuffle")
    argv += ["-o", job.pattern, "--shards", str(job.partitions), "--seed", job.seed, "--staging", job.staging,
             "--buffer-size", str(job.buffer_size)]
    if not job.shuffle:
        argv.append("--no-shuffle")
    if job.rekey is not None:
        argv += ["--rekey", job.rekey]
    if job.strict:
        argv.append("--strict")
    return argv


def main() -> None:
    run_app(app, "tarshuffle")


if __name__ == "__main__":
    main()
