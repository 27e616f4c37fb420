"""Shard tasks on a real Slurm cluster (tests/slurmcluster.py: slurmctld and
slurmd on 127.0.0.1, MaxArraySize 5): sbatch --array running tarmap and
tarshuffle tasks with --index env; an array task cancelled mid-run, then the
array submitted again, completes every task exactly once; --slurm-array
scripts (12 tasks on an array of 5 indices) and --slurm-submit. Outputs are
byte-identical to a local run."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run
from makeshards import write_shard
from slurmcluster import MAX_ARRAY_SIZE

pytestmark = pytest.mark.slow

PIPELINE = "tarproc -c 'rm sample.json' -o -"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("slurm-in")
    return [Path(write_shard(str(root / f"in-{i:02d}.tar"), 3, seed=i)) for i in range(12)]


def local_tarmap(inputs, out: Path) -> dict[str, bytes]:
    result = run(["tarmap", *map(str, inputs), "-o", f"{out}/{{stem}}.tar", "-c", PIPELINE, "-j", "2"])
    assert result.returncode == 0, result.stderr
    return {p.name: p.read_bytes() for p in out.glob("*.tar")}


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.glob("*.tar")}


def logs(where: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(where.glob("*.log")))


def test_sbatch_array_runs_tarmap_and_tarshuffle_tasks_with_index_env(slurm, shards, tmp_path):
    inputs = shards[:4]
    expected = local_tarmap(inputs, tmp_path / "local")
    args = " ".join(str(p) for p in inputs)
    script = (f"#!/bin/bash\n#SBATCH --array=0-3\n#SBATCH --output={tmp_path}/%A_%a.log\n"
              f"tarmap {args} -o '{tmp_path}/out/{{stem}}.tar' -c \"{PIPELINE}\" --index env -v\n")
    job = slurm.submit(script)
    slurm.wait(job)
    assert outputs(tmp_path / "out") == expected, logs(tmp_path)
    assert logs(tmp_path).count(": complete") == 4

    # tarshuffle: the map array, then the reduce array after it
    local = run(["tarshuffle", *map(str, inputs), "--shards", "2", "--rekey", "{shard}/{key}", "-o",
                 f"{tmp_path}/shuf-local/train-{{shard}}.tar", "-j", "2"])
    assert local.returncode == 0, local.stderr
    common = (f"tarshuffle {args} --shards 2 --rekey '{{shard}}/{{key}}' -o '{tmp_path}/shuf/train-{{shard}}.tar'"
              f" --staging {tmp_path}/staging")
    mapped = slurm.submit(f"#!/bin/bash\n#SBATCH --array=0-3\n#SBATCH --output={tmp_path}/map-%a.log\n"
                          f"{common} --phase map --index env\n")
    reduced = slurm.submit(f"#!/bin/bash\n#SBATCH --array=0-1\n#SBATCH --output={tmp_path}/reduce-%a.log\n"
                           f"{common} --phase reduce --index env\n", f"--dependency=afterok:{mapped}")
    slurm.wait(mapped, reduced)
    assert outputs(tmp_path / "shuf") == outputs(tmp_path / "shuf-local") != {}, logs(tmp_path)


def test_a_cancelled_array_task_then_a_resubmission_completes_each_task_once(slurm, shards, tmp_path):
    inputs = shards[:3]
    expected = local_tarmap(inputs, tmp_path / "local")
    started = tmp_path / "started"
    started.mkdir()
    # task 1's first run sleeps (to be cancelled); the pipeline's text stays the same for the re-submission
    slow = (f"touch {started}/$TARMAP_INDEX.$$; if [ $TARMAP_INDEX = 1 ] && mkdir {tmp_path}/slept 2>/dev/null;"
            f" then sleep 60; fi; {PIPELINE}")
    args = " ".join(str(p) for p in inputs)
    script = (f"#!/bin/bash\n#SBATCH --array=0-2\n#SBATCH --output={tmp_path}/%A_%a.log\n"
              f"tarmap {args} -o '{tmp_path}/out/{{stem}}.tar' -c {shlex.quote(slow)} --index env -v\n")
    job = slurm.submit(script)
    deadline = time.monotonic() + 60
    while not list(started.glob("1.*")):
        assert time.monotonic() < deadline, logs(tmp_path)
        time.sleep(0.1)
    slurm.cmd("scancel", f"{job}_1")
    slurm.wait(job)
    first = outputs(tmp_path / "out")
    assert sorted(first) == ["in-00.tar", "in-02.tar"], logs(tmp_path)
    assert not [p.name for p in (tmp_path / "out").iterdir() if ".partial" in p.name]
    records = {name: (tmp_path / "out" / f"{name}.tarmap.json").read_text() for name in first}

    again = slurm.submit(script)
    slurm.wait(again)
    assert outputs(tmp_path / "out") == expected
    # tasks 0 and 2 were skipped (their records untouched), task 1 ran to completion once more
    assert {name: (tmp_path / "out" / f"{name}.tarmap.json").read_text() for name in first} == records
    text = logs(tmp_path)
    assert text.count("task 0: skipped") == 1 and text.count("task 2: skipped") == 1, text
    assert json.loads((tmp_path / "out" / "in-01.tar.tarmap.json").read_text())["status"] == "complete"
    assert len(list(started.glob("1.*"))) == 2 and len(list(started.glob("0.*"))) == 1


def test_slurm_array_script_with_more_tasks_than_max_array_size(slurm, shards, tmp_path):
    expected = local_tarmap(shards, tmp_path / "local")
    printed = run(["tarmap", *map(str, shards), "-o", f"{tmp_path}/out/{{stem}}.tar", "-c", PIPELINE,
                   "--slurm-array", "ppm", "--max-array-size", str(MAX_ARRAY_SIZE), "--parallelism", "2",
                   "--cpu", "1", "--memory", "100M", "--time-limit", "10"])
    assert printed.returncode == 0, printed.stderr
    script = printed.stdout.decode()
    assert f"#SBATCH --array=0-{MAX_ARRAY_SIZE - 1}%2" in script and "#SBATCH --mem=100M" in script
    job = slurm.submit(script, f"--output={tmp_path}/%A_%a.log")
    slurm.wait(job)
    assert len(shards) > MAX_ARRAY_SIZE and outputs(tmp_path / "out") == expected, logs(tmp_path)

    # --slurm-submit asks the controller for MaxArraySize; tarshuffle submits map, then reduce after it
    submitted = subprocess.run(["tarmap", *map(str, shards), "-o", f"{tmp_path}/out2/{{stem}}.tar", "-c", PIPELINE,
                                "--slurm-array", "ppm2", "--slurm-submit", "--parallelism", "3"],
                               env=slurm.env(), capture_output=True, cwd=tmp_path, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    (job,) = submitted.stdout.decode().split()
    slurm.wait(job)
    assert outputs(tmp_path / "out2") == expected
    local = run(["tarshuffle", *map(str, shards), "--shards", "7", "--rekey", "{shard}/{key}", "-o",
                 f"{tmp_path}/shuf-local/train-{{shard}}.tar", "-j", "2"])
    assert local.returncode == 0, local.stderr
    chain = subprocess.run(["tarshuffle", *map(str, shards), "--shards", "7", "--rekey", "{shard}/{key}", "-o",
                            f"{tmp_path}/shuf/train-{{shard}}.tar", "--slurm-array", "shuf", "--slurm-submit"],
                           env=slurm.env(), capture_output=True, cwd=tmp_path, timeout=60)
    assert chain.returncode == 0, chain.stderr
    mapped, reduced = chain.stdout.decode().split()
    slurm.wait(mapped, reduced)
    assert outputs(tmp_path / "shuf") == outputs(tmp_path / "shuf-local") != {}


def test_slurm_options_are_checked_without_a_cluster(shards, tmp_path):
    base = ["tarmap", str(shards[0]), "-o", f"{tmp_path}/{{stem}}.tar", "-c", "cat"]
    for extra, message in [(["--slurm-array", "x", "--cpu", "500m"], "--cpu '500m': a Slurm task takes a whole number"),
                           (["--slurm-array", "x", "--memory", "lots"], "memory 'lots': use a number with K, M, G or T"),
                           (["--slurm-array", "x", "--time-limit", "soon"], "time limit 'soon'"),
                           (["--slurm-array", "bad name"], "given with --slurm-array"),
                           (["--time-limit", "10"], "go with --slurm-array"),
                           (["--slurm-array", "x", "--k8s-job", "y", "--image", "i"], "cannot be combined")]:
        result = run(base + extra)
        assert result.returncode == 2 and message in result.stderr.decode(), (extra, result.stderr)
    printed = run(base + ["--slurm-array", "x", "--memory", "4Gi", "--cpu", "2"])
    assert printed.returncode == 0 and b"#SBATCH --mem=4G\n#SBATCH --cpus-per-task" not in printed.stdout
    assert b"#SBATCH --cpus-per-task=2\n#SBATCH --mem=4G\n" in printed.stdout, printed.stdout


def test_tasks_packed_on_array_indices_run_each_task_once_and_a_resubmission_completes_the_failed_one(
        slurm, shards, tmp_path):
    expected = local_tarmap(shards, tmp_path / "local")
    started = tmp_path / "started"
    started.mkdir()
    # task 5 fails permanently (exit 3: no retry) the first time; the pipeline's text stays the same
    flaky = (f"touch {started}/$TARMAP_INDEX.$PPID.$$; if [ $TARMAP_INDEX = 5 ] && mkdir {tmp_path}/failed 2>/dev/null;"
             f" then exit 3; fi; {PIPELINE}")
    printed = run(["tarmap", *map(str, shards), "-o", f"{tmp_path}/out/{{stem}}.tar", "-c", flaky,
                   "--slurm-array", "packed", "--tasks-per-index", "4", "--parallelism", "2", "-v"])
    assert printed.returncode == 0, printed.stderr
    script = printed.stdout.decode()
    # 12 tasks, 4 per index: 3 array indices; index K runs tasks K, K+3, K+6, K+9 in one tarmap
    assert "#SBATCH --array=0-2%2\n" in script and script.rstrip().endswith("--index env::3"), script
    job = slurm.submit(script, f"--output={tmp_path}/%A_%a.log")
    slurm.wait(job)
    first = logs(tmp_path)
    assert sorted(outputs(tmp_path / "out")) == sorted(name for name in expected if name != "in-05.tar"), first
    assert "task 5 (" in first and "failed: pipeline exited with status 3" in first
    assert f"{job}_2.log" in [p.name for p in tmp_path.glob("*.log") if "task 5 (" in p.read_text()]
    ran = {k: [p.name.split(".")[1] for p in started.glob(f"{k}.*")] for k in range(12)}
    assert all(len(parents) == 1 for parents in ran.values()), ran  # every task ran once
    # ... in the one tarmap process of its array index
    assert [{ran[k][0] for k in range(index, 12, 3)} for index in range(3)] == [{ran[index][0]} for index in range(3)]
    assert len({ran[index][0] for index in range(3)}) == 3, ran
    records = {name: (tmp_path / "out" / f"{name}.tarmap.json").read_text() for name in outputs(tmp_path / "out")}

    again = slurm.submit(script, f"--output={tmp_path}/again-%a.log")
    slurm.wait(again)
    assert outputs(tmp_path / "out") == expected, logs(tmp_path)
    # only task 5 ran again; the 11 complete tasks were skipped, their records untouched
    assert len(list(started.glob("5.*"))) == 2 and len(list(started.glob("*"))) == 13
    assert {name: (tmp_path / "out" / f"{name}.tarmap.json").read_text() for name in records} == records
    assert json.loads((tmp_path / "out" / "in-05.tar.tarmap.json").read_text())["status"] == "complete"


def test_tardedup_three_phases_as_chained_arrays_match_a_local_run(slurm, tmp_path):
    from test_tardedup import make_dataset

    (tmp_path / "in").mkdir()
    paths, expected = make_dataset(tmp_path / "in")
    local = run(["tardedup", *map(str, paths), "-o", f"{tmp_path}/local/{{stem}}.tar", "--partitions", "2", "-j", "2"])
    assert local.returncode == 0, local.stderr
    argv = ["tardedup", *map(str, paths), "-o", f"{tmp_path}/out/{{stem}}.tar", "--partitions", "2",
            "--slurm-array", "dd", "--tasks-per-index", "2"]
    printed = run(argv, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    script = printed.stdout.decode()
    # hash, then reduce after it, then write after that
    assert script.count('sbatch --parsable "${after[@]}"') == 3, script
    assert script.index("dd-hash") < script.index("dd-reduce") < script.index("dd-write"), script
    for phase, array in (("hash", "0-2"), ("reduce", "0-0"), ("write", "0-2")):
        assert f"#SBATCH --job-name=dd-{phase}\n#SBATCH --array={array}\n" in script, (phase, script)
    chain = subprocess.run(["bash"], input=script.encode(), env=slurm.env(), capture_output=True, cwd=tmp_path,
                           timeout=60)
    assert chain.returncode == 0, chain.stderr
    slurm.wait(*chain.stdout.decode().split())
    # once more here: every task skipped, the list written, the staging removed
    final = run(argv[:-4] + ["-j", "2", "-v"])
    assert final.returncode == 0, final.stderr
    for line in (b"hash: 0 tasks done, 6 skipped", b"reduce: 0 tasks done, 2 skipped", b"write: 0 tasks done, 6 skipped"):
        assert line in final.stderr, final.stderr
    assert outputs(tmp_path / "out") == outputs(tmp_path / "local") != {}
    assert (tmp_path / "out" / "removed.jsonl").read_bytes() == (tmp_path / "local" / "removed.jsonl").read_bytes()
    assert len((tmp_path / "out" / "removed.jsonl").read_text().splitlines()) == len(expected)
    assert not (tmp_path / "out" / "tardedup-staging").exists()
