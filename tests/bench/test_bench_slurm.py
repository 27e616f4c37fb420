"""tarmap on a real Slurm job array beside tarmap -j 2 and GNU parallel -j2, in one run.

    .venv/bin/pytest tests/bench/test_bench_slurm.py --benchmark-enable -p no:cacheprovider -s

The shards, the pipeline (``tarproc -c true -o -``) and the timing helpers
are those of test_bench_tarmap.py (148 shards of 200 small samples;
``TARPROC_BENCH_TARMAP_SHARDS``, ``TARPROC_BENCH_TARMAP_ROUNDS``). The Slurm
cluster is the tests' (tests/slurmcluster.py: slurmctld and slurmd on this
machine) with Slurm's default ``MaxArraySize`` of 1001, so that each task is
an array index of its own (the tests' ``MaxArraySize`` 5 packs 148 tasks on 5
indices, run 2 at a time: the last index then runs its 29 tasks alone); the
array runs at most 2 tasks at once (``--parallelism 2``: ``%2``), the
parallelism of the other two. Its timing is from
``tarmap --slurm-array ... --slurm-submit`` until ``squeue`` lists none of
its tasks (polled every 0.1 s), as a user waits for it.

The array runs once with one task per array index (Slurm's own unit:
each task its own ``sacct`` line, requeue and log) and once with
``--tasks-per-index 8`` (``TARPROC_BENCH_SLURM_PACK``): 19 array indices,
each running its 8 tasks one after another in one tarmap process, which
pays the array task's launch and the tool's start once per 8 tasks.

Each engine runs the N tasks and, separately, 1 task: start-up = the
1-task run's wall time; per-task cost = (wall(N) - wall(1)) / (N - 1) at
parallelism 2. Target: Slurm's per-task cost <= 1.3x the local pool's;
start-up is reported beside it, not in the target. The CPU column of the
Slurm runs counts only the submitting side (the tasks run under slurmd).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_bench_tarmap import (  # noqa: E402,F401 - fixtures and helpers of the tarmap benchmarks
    N_SHARDS, PIPELINE, ROUNDS, BIN, Runs, beside, gnu_parallel, report, scratch, shards, tarmap_args, verdict)

SLURM_MAX_ARRAY_SIZE = 1001  # Slurm's default
#: tasks per array index of the packed run (--tasks-per-index; 148 tasks: 19 indices)
PACK = int(os.environ.get("TARPROC_BENCH_SLURM_PACK", "8"))


@pytest.fixture(scope="module")
def slurm_1001(tmp_path_factory):
    """The tests' one-node cluster with ``MaxArraySize=1001``."""
    from slurmcluster import started_cluster

    yield from started_cluster(tmp_path_factory, SLURM_MAX_ARRAY_SIZE)


POLL = 'while [ -n "$(squeue -h -r -j "$job" 2>/dev/null)" ]; do sleep 0.1; done'


def slurm_runs(name: str, inputs, out: Path, *more: str) -> Runs:
    submit = " ".join(f"'{a}'" for a in tarmap_args(inputs, out, PIPELINE, "--slurm-array", "bench", "--slurm-submit",
                                                     "--parallelism", "2", "-q", *more))
    return Runs(name, ["bash", "-c", f"set -e; job=$({submit}); {POLL}; test $(ls {out}/*.tar | wc -l) = {len(inputs)}"],
                out)


def test_tarmap_on_a_slurm_array_beside_j2_and_gnu_parallel(benchmark, shards, scratch, gnu_parallel,  # noqa: F811
                                                            slurm_1001, monkeypatch):
    assert N_SHARDS <= SLURM_MAX_ARRAY_SIZE, "one array index per task"
    monkeypatch.setenv("SLURM_CONF", str(slurm_1001.conf))  # the runs' environment (tool_env copies os.environ)
    monkeypatch.chdir(scratch)
    ours = slurm_runs("Slurm array %2", shards, scratch / "out-slurm")
    one = slurm_runs("Slurm array, 1 task", shards[:1], scratch / "out-slurm-1")
    packed = slurm_runs(f"Slurm array %2, --tasks-per-index {PACK}", shards, scratch / "out-slurm-packed",
                        "--tasks-per-index", str(PACK))
    local = Runs("tarmap -j 2", tarmap_args(shards, scratch / "out-j2", PIPELINE, "-j", "2"), scratch / "out-j2")
    local1 = Runs("tarmap -j 2, 1 task", tarmap_args(shards[:1], scratch / "out-j2-1", PIPELINE, "-j", "2"),
                  scratch / "out-j2-1")
    par_out, par1_out = scratch / "out-parallel", scratch / "out-parallel-1"
    par = Runs("GNU parallel -j2", [gnu_parallel, "-j2", f"{PIPELINE} < {{}} > {par_out}/{{/.}}.tar", ":::", *shards],
               par_out)
    par1 = Runs("GNU parallel -j2, 1 task", [gnu_parallel, "-j2", f"{PIPELINE} < {{}} > {par1_out}/{{/.}}.tar", ":::",
                                             shards[0]], par1_out)
    loads = beside(benchmark, ours, [one, packed, local, local1, par, par1], rounds=ROUNDS)

    def per_task(n: Runs, first: Runs) -> float:
        return (n.best()[0] - first.best()[0]) / (N_SHARDS - 1) * 1000

    slurm_ms, local_ms, par_ms = per_task(ours, one), per_task(local, local1), per_task(par, par1)
    packed_ms = per_task(packed, one)
    ratio, packed_ratio = slurm_ms / local_ms, packed_ms / local_ms
    benchmark.extra_info.update(slurm_ms_per_task=slurm_ms, local_ms_per_task=local_ms, parallel_ms_per_task=par_ms,
                                slurm_over_local_per_task=ratio, slurm_packed_ms_per_task=packed_ms,
                                slurm_packed_over_local_per_task=packed_ratio, slurm_startup_s=one.best()[0],
                                local_startup_s=local1.best()[0], parallel_startup_s=par1.best()[0])
    report("a Slurm array beside -j 2 and GNU parallel -j2", [
        ours.line(), one.line(), packed.line(), local.line(), local1.line(), par.line(), par1.line(),
        f"per task at parallelism 2: Slurm {slurm_ms:.1f} ms (one task per array index), {packed_ms:.1f} ms"
        f" ({PACK} per index), tarmap -j 2 {local_ms:.1f} ms, GNU parallel {par_ms:.1f} ms",
        f"Slurm / -j 2 per task, one task per array index: {ratio:.2f}x (target <= 1.3x: {verdict(ratio, 1.3)})",
        f"Slurm / -j 2 per task, --tasks-per-index {PACK}: {packed_ratio:.2f}x"
        f" (target <= 1.3x: {verdict(packed_ratio, 1.3)})",
        f"start-up (1 task): Slurm {one.best()[0]:.2f} s, tarmap -j 2 {local1.best()[0]:.2f} s,"
        f" GNU parallel {par1.best()[0]:.2f} s",
    ], loads)
