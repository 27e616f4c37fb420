"""tarshuffle: the CLI over real processes: 20 real-JPEG shards -> 7, determinism, SIGTERM and
re-run in either phase, a real Dask cluster with a worker killed, duplicate keys, --phase/--index,
--k8s-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import BIN, run, tool_env
from test_shuffle import SHARDS, contents, keys, write_inputs

from tarproc.jobs.shuffle.partition import partition_function
from tarproc.ops.sort import sort_key_function

N = 7


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """20 shards of real JPEG samples (Pillow), distinct keys."""
    return write_inputs(tmp_path_factory.mktemp("tarshuffle-in"))


def shuffle(inputs, out: Path, *args, check=True, timeout=180):
    result = run([str(BIN / "tarshuffle"), *inputs, "-o", f"{out}/train-%04d.tar", *args], timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def outputs(out: Path, n: int = N) -> list[str]:
    return [str(out / f"train-{j:04d}.tar") for j in range(n)]


def shard_bytes(out: Path, n: int = N) -> list[bytes]:
    return [Path(p).read_bytes() for p in outputs(out, n)]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> list[bytes]:
    """The local run with -j 2 and --seed 7: the bytes every other run must give."""
    out = tmp_path_factory.mktemp("reference")
    shuffle(inputs, out, "--shards", str(N), "--seed", "7", "-j", "2")
    return shard_bytes(out)


def test_twenty_shards_to_seven(inputs, reference, tmp_path):
    out = tmp_path / "a"
    result = shuffle(inputs, out, "--shards", str(N), "--seed", "7", "-j", "3", "-v")
    assert shard_bytes(out) == reference  # same seed, other -j: same bytes
    assert contents(outputs(out)) == contents(inputs)  # every sample once, every field's bytes intact
    flat = [k for p in outputs(out) for k in keys(p)]
    original = [k for p in inputs for k in keys(p)]
    assert flat != original
    part, order = partition_function("7", N), sort_key_function(shuffle=True, seed="7")
    for j, path in enumerate(outputs(out)):
        ks = keys(path)
        assert ks and {part(k) for k in ks} == {j}
        assert ks == sorted(ks, key=lambda k: order({"__key__": k}))  # tarsort --shuffle --seed 7's order
    # staging removed, one record per output shard, nothing else
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"train-{j:04d}.tar" for j in range(N)] + [f"train-{j:04d}.tar.tarmap.json" for j in range(N)])
    record = json.loads((out / "train-0003.tar.tarmap.json").read_text())
    assert record["status"] == "complete" and record["samples"] == len(keys(outputs(out)[3]))
    text = result.stderr.decode()
    assert f"map: {SHARDS} tasks done" in text and f"reduce: {N} tasks done" in text
    # a re-run finds everything complete and runs nothing
    again = shuffle(inputs, out, "--shards", str(N), "--seed", "7", "-v")
    assert "map phase not needed" in again.stderr.decode()
    assert shard_bytes(out) == reference
    # another seed: another order (and other partitions)
    other = tmp_path / "b"
    shuffle(inputs, other, "--shards", str(N), "--seed", "8")
    assert contents(outputs(other)) == contents(inputs)
    assert [k for p in outputs(other) for k in keys(p)] != flat


def test_no_shuffle_keeps_input_order_and_maxcount(inputs, tmp_path):
    total = SHARDS * 12
    result = shuffle(inputs, tmp_path, "-n", "35", "--no-shuffle", "-v")
    assert f"{total} samples in {SHARDS} inputs: 7 output shards of about 35" in result.stderr.decode()
    original = [k for p in inputs for k in keys(p)]
    assert contents(outputs(tmp_path)) == contents(inputs)
    for path in outputs(tmp_path):
        ks = keys(path)
        assert ks == sorted(ks, key=original.index)


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("phase", ["map", "reduce"])
def test_sigterm_in_either_phase_then_rerun(inputs, reference, tmp_path, phase):
    out = tmp_path / "out"
    staging = out / "tarshuffle-staging"
    argv = [str(BIN / "tarshuffle"), *inputs, "-o", f"{out}/train-%04d.tar", "--shards", str(N), "--seed", "7"]
    proc = subprocess.Popen(argv + ["-j", "1"], env=tool_env(), stderr=subprocess.PIPE)
    if phase == "map":
        wait_for(lambda: staging.exists() and len(list(staging.glob("*.tarmap.json"))) >= 2, what="map records")
    else:
        wait_for(lambda: len(list(out.glob("train-*.tar.tarmap.json"))) >= 1, what="a reduce record")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, stderr.decode()  # 143 in a shell
    done = sorted(out.glob("train-*.tar"))
    assert len(done) < N  # it was stopped mid-way...
    assert staging.exists() and not list(out.rglob("*.partial*"))  # ...with no attempt file left
    result = run(argv + ["-j", "2", "-v"])  # the re-run may use another -j
    assert result.returncode == 0, result.stderr.decode()
    text = result.stderr.decode()
    assert "skipped" in text and ("map: " in text)
    assert shard_bytes(out) == reference
    assert not staging.exists()


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory) -> list[str]:
    """Three inputs; the third was made independently of the first: same keys."""
    root = tmp_path_factory.mktemp("dups")
    first = write_inputs(root / "a", shards=1, per_shard=6, distinct_keys=False)
    other = write_inputs(root / "b", shards=2, per_shard=6)[1:]
    again = write_inputs(root / "c", shards=1, per_shard=6, distinct_keys=False)[0]
    renamed = os.path.join(os.path.dirname(again), "other-00.tar")
    os.rename(again, renamed)
    return first + other + [renamed]


def test_duplicate_keys_across_inputs(duplicated, tmp_path):
    result = shuffle(duplicated, tmp_path, "--shards", "3", "--retries", "2", "--halt-after", "0", check=False)
    text = result.stderr.decode()
    assert result.returncode == 3, text
    assert "failed permanently" in text and "retrying" not in text
    assert "occurs in both" in text and duplicated[0] in text and duplicated[2] in text
    assert "tarcats --rekey '{shard}/{key}'" in text and "tarshuffle --rekey" in text
    # partitions holding a duplicated key wrote nothing; the others hold exactly their samples
    dup_keys = set(keys(duplicated[0]))
    part = partition_function("0", 3)
    bad = {part(k) for k in dup_keys}
    for j, path in enumerate(outputs(tmp_path, 3)):
        if j in bad:
            assert not os.path.exists(path)
        elif os.path.exists(path):
            assert Counter(keys(path)) == Counter(k for p in duplicated[1:2] for k in keys(p) if part(k) == j)
    assert not list(tmp_path.rglob("*.partial*"))
    fixed = tmp_path / "fixed"
    shuffle(duplicated, fixed, "--shards", "3", "--rekey", "{shard}/{key}")
    got = Counter(k for p in outputs(fixed, 3) for k in keys(p))
    assert len(got) == 18 and set(got.values()) == {1}


def test_phase_and_index_run_one_task(inputs, tmp_path):
    few = inputs[:3]
    whole = tmp_path / "whole"
    shuffle(few, whole, "--shards", "2", "--seed", "7")
    out = tmp_path / "out"
    common = [*few, "-o", f"{out}/train-%04d.tar", "--shards", "2", "--seed", "7"]
    early = run([str(BIN / "tarshuffle"), *common, "--phase", "reduce", "--index", "0", "--retries", "0"])
    assert early.returncode == 1 and "staged file is missing" in early.stderr.decode()
    assert not list(out.glob("train-*"))
    for i in range(3):
        env = {**tool_env(), "JOB_COMPLETION_INDEX": str(i)}  # as in a Kubernetes Indexed Job's pod
        result = run([str(BIN / "tarshuffle"), *common, "--phase", "map", "--index", "env"], env=env)
        assert result.returncode == 0, result.stderr.decode()
    assert len(list((out / "tarshuffle-staging").glob("staged-*.tar"))) == 3
    for j in range(2):
        result = run([str(BIN / "tarshuffle"), *common, "--phase", "reduce", "--index", str(j)])
        assert result.returncode == 0, result.stderr.decode()
    assert shard_bytes(out, 2) == shard_bytes(whole, 2)
    assert (out / "tarshuffle-staging").exists()  # one reduce task cannot know the others are done
    final = run([str(BIN / "tarshuffle"), *common, "-v"])  # every task skipped, staging removed
    assert final.returncode == 0 and "map phase not needed" in final.stderr.decode()
    assert not (out / "tarshuffle-staging").exists()
    bad = run([str(BIN / "tarshuffle"), *common, "--phase", "map", "--index", "3"])
    assert bad.returncode == 2 and "task 3: the map phase has 3 tasks (0..2); given with --index" in bad.stderr.decode()

    # a packed index (a Slurm array task of --tasks-per-index): map tasks 0 and 2 in one process, then 1
    packed = tmp_path / "packed"
    common = [*few, "-o", f"{packed}/train-%04d.tar", "--shards", "2", "--seed", "7"]
    for index in ("0::2", "1::2"):
        result = run([str(BIN / "tarshuffle"), *common, "--phase", "map", "--index", index, "-v"])
        assert result.returncode == 0, result.stderr.decode()
        assert result.stderr.decode().count("map task ") == len(range(int(index[0]), 3, 2)), result.stderr
    result = run([str(BIN / "tarshuffle"), *common, "--phase", "reduce", "--index", "0::1", "-v"])
    assert result.returncode == 0 and "reduce task 1: complete" in result.stderr.decode(), result.stderr
    assert shard_bytes(packed, 2) == shard_bytes(whole, 2)


def test_k8s_jobs(inputs, tmp_path):
    result = run([str(BIN / "tarshuffle"), *inputs, "-o", "s3://b/train-{shard:04d}.tar", "-n", "40",
                  "--k8s-job", "shuf", "--image", "repo/tarproc:1", "--parallelism", "4"])
    assert result.returncode == 0, result.stderr.decode()
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["shuf-map", "shuf-reduce"]
    assert [d["spec"]["completions"] for d in docs] == [SHARDS, 6]  # 240 samples / 40
    for doc, phase in zip(docs, ["map", "reduce"]):
        command = doc["spec"]["template"]["spec"]["containers"][0]["args"]
        assert command[:2] == ["tarshuffle", inputs[0]]
        assert command[-4:] == ["--phase", phase, "--index", "env"]
        assert "--shards" in command and command[command.index("--shards") + 1] == "6"  # counted once, here
        assert "s3://b/tarshuffle-staging" in command
        assert doc["spec"]["completionMode"] == "Indexed"
        # named after its program; exit status 3 fails the index in that container
        assert doc["spec"]["template"]["spec"]["containers"][0]["name"] == "tarshuffle"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "tarshuffle"
        rule = doc["spec"]["podFailurePolicy"]["rules"][0]
        assert rule["action"] == "FailIndex" and rule["onExitCodes"]["containerName"] == "tarshuffle"
    try:
        from kubernetes.client import ApiClient, V1Job
    except ImportError:
        return
    for doc in docs:
        job = ApiClient()._ApiClient__deserialize(doc, V1Job)
        assert job.spec.completion_mode == "Indexed"


def test_usage_errors(inputs, tmp_path):
    both = run([str(BIN / "tarshuffle"), inputs[0], "-o", f"{tmp_path}/o-%d.tar", "--shards", "2", "-n", "3"])
    assert both.returncode == 2 and "either --shards N or -n K" in both.stderr.decode()
    pipe = run([str(BIN / "tarshuffle"), inputs[0], "-o", "pipe:cat > /dev/null", "--shards", "2"])
    assert pipe.returncode == 2 and "outputs must be files or URLs" in pipe.stderr.decode()
    lonely = run([str(BIN / "tarshuffle"), inputs[0], "-o", f"{tmp_path}/o-%d.tar", "--shards", "2", "--index", "0"])
    assert lonely.returncode == 2 and "--phase and --index go together" in lonely.stderr.decode()
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ Dask
def test_dask_worker_killed_mid_phase_same_bytes(dask_cluster, inputs, reference, tmp_path):
    address, workers = dask_cluster  # the session's cluster (tests/daskcluster.py); a killed worker is replaced
    out = tmp_path / "out"
    staging = out / "tarshuffle-staging"
    proc = subprocess.Popen([str(BIN / "tarshuffle"), *inputs, "-o", f"{out}/train-%04d.tar", "--shards", str(N),
                             "--seed", "7", "--dask", address, "-v"], env=tool_env(), stderr=subprocess.PIPE)
    wait_for(lambda: staging.exists() and list(staging.glob("*.tarmap.json")), timeout=120, what="a map record")
    victim = workers[0]
    os.kill(victim.pid, signal.SIGKILL)  # mid map phase: the other worker carries on
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert shard_bytes(out) == reference
    assert contents(outputs(out)) == contents(inputs)
    assert not staging.exists()


# ------------------------------------------------------------------ S3
def test_s3_outputs_and_staging_read_by_range_requests(s3_server, inputs, tmp_path):
    s3_server.reset()
    fs = s3_server.fs()
    fs.mkdir("shuf")
    few = inputs[:3]
    local = tmp_path / "local"
    shuffle(few, local, "--shards", "2", "--seed", "7")
    result = run([str(BIN / "tarshuffle"), *few, "-o", "s3://shuf/out/train-%04d.tar", "--shards", "2", "--seed", "7",
                  "-v"], env=s3_server.env(tool_env()))
    assert result.returncode == 0, result.stderr.decode()
    got = [fs.cat(f"shuf/out/train-{j:04d}.tar") for j in range(2)]
    assert got == shard_bytes(local, 2)  # the same bytes as on a local disk
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("shuf/out")) == [
        "train-0000.tar", "train-0000.tar.tarmap.json", "train-0001.tar", "train-0001.tar.tarmap.json"]
    assert not fs.exists("shuf/out/tarshuffle-staging/staged-000000.tar")  # staging removed
