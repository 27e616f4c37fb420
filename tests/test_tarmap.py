"""tarmap on a local pool: real pipelines (tarproc, bash), real signals,
real files; exact bytes, exit statuses and stderr.

Shards are made from real JPEG shards (tests/makeshards.py)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run, tool_env
from makeshards import write_shard

from tarproc.jobs import records, tasks

PIPELINE = "tarproc -c 'rm sample.json' -o -"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    """20 small shards of real JPEG samples (5 samples each), 2 gzip-compressed."""
    root = tmp_path_factory.mktemp("in")
    paths = []
    for i in range(20):
        suffix = ".tgz" if i in (4, 11) else ".tar"
        paths.append(Path(write_shard(str(root / f"part-{i:04d}{suffix}"), 5, seed=i)))
    return paths


@pytest.fixture(scope="module")
def expected(shards) -> dict[str, bytes]:
    """Each pipeline run by hand (as many at once as there are CPUs): {stem: output bytes}."""
    def by_hand(path: Path) -> bytes:
        with open(path, "rb") as handle:
            return subprocess.run(["bash", "-c", PIPELINE], stdin=handle, capture_output=True, env=tool_env(),
                                  check=True).stdout

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return {tasks.stem(path.name): data for path, data in zip(shards, pool.map(by_hand, shards))}


def tarmap(*args, **kw):
    return run(["tarmap", *map(str, args)], **kw)


def outputs(directory: Path) -> dict[str, bytes]:
    return {p.name[: -len(".tar")]: p.read_bytes() for p in sorted(directory.glob("*.tar"))}


def still_running(marker: str, seconds: float = 5.0) -> str:
    """The command lines of processes whose command line contains ``marker``
    (a test's own tmp_path, so other suites on the machine never match),
    polled until there are none or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout.strip()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".partial" in p.name)


def test_twenty_shards_byte_identical_then_all_skipped(shards, expected, tmp_path):
    out = tmp_path / "out"
    result = tarmap(*shards, "-o", f"{out}/{{stem}}.tar", "-c", PIPELINE, "-j", 2, "-v")
    assert result.returncode == 0, result.stderr
    assert outputs(out) == expected
    assert b"20 tasks done, 0 skipped" in result.stderr
    assert leftovers(tmp_path) == []
    record = json.loads((out / "part-0003.tar.tarmap.json").read_text())
    data = expected["part-0003"]
    assert record["status"] == "complete" and record["index"] == 3 and record["pipeline"] == PIPELINE
    assert record["samples"] == 5 and record["members"] == 10 and record["bytes"] == len(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["input"]["url"] == str(shards[3]) and record["input"]["size"] == shards[3].stat().st_size
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}

    again = tarmap(*shards, "-o", f"{out}/{{stem}}.tar", "-c", PIPELINE, "-j", 2, "-v")
    assert again.returncode == 0, again.stderr
    assert b"0 tasks done, 20 skipped" in again.stderr
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == stats

    # a changed pipeline, or a changed input, is not complete
    dry = tarmap(*shards, "-o", f"{out}/{{stem}}.tar", "-c", PIPELINE + " ", "--dry-run")
    assert dry.returncode == 0
    assert [line.split("\t")[3] for line in dry.stdout.decode().splitlines()] == ["run"] * 20
    dry = tarmap(*shards, "-o", f"{out}/{{stem}}.tar", "-c", PIPELINE, "--dry-run")
    assert dry.stdout.decode().splitlines()[0] == f"0\t{shards[0]}\t{out}/part-0000.tar\tskip"


def test_output_compressed_by_name_and_pipeline_sees_its_task(shards, tmp_path):
    out = tmp_path / "o"
    pipe = 'echo "$TARMAP_INDEX $TARMAP_INPUT $TARMAP_OUTPUT" >&2; cat'
    result = tarmap(shards[0], shards[4], "-o", f"{out}/{{index:03d}}-{{basename}}.gz", "-c", pipe)
    assert result.returncode == 0, result.stderr
    text = result.stderr.decode()
    assert f"tarmap: task 1: 1 {shards[4]} {out}/001-part-0004.tgz.gz" in text
    # the output is gzip by its name; the pipeline's gzip input was decompressed, verified and re-compressed
    import gzip

    plain = gzip.decompress((out / "000-part-0000.tar.gz").read_bytes())
    assert plain == shards[0].read_bytes()
    assert gzip.decompress((out / "001-part-0004.tgz.gz").read_bytes()) == gzip.decompress(shards[4].read_bytes())


def test_kill_9_of_a_pipeline_is_retried_and_the_run_completes(shards, expected, tmp_path):
    """The killed pipeline's child still writes a complete stream: it must not be published."""
    out = tmp_path / "out"
    pidfile = tmp_path / "pid"
    pipe = (f'if [ "$TARMAP_INDEX" = 2 ] && [ ! -e {pidfile}.done ]; then touch {pidfile}.done;'
            f' echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; {PIPELINE} | (sleep 1.5; cat); else {PIPELINE}; fi')
    proc = subprocess.Popen(["tarmap", *map(str, shards[:6]), "-o", f"{out}/{{stem}}.tar", "-c", pipe, "-j", "3",
                             "--backoff", "0.1"], env=tool_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not pidfile.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert b"task 2" in stderr and b"killed by signal 9" in stderr and b"retrying" in stderr
    assert outputs(out) == {k: v for k, v in expected.items() if k in {tasks.stem(p.name) for p in shards[:6]}}
    assert json.loads((out / "part-0002.tar.tarmap.json").read_text())["attempts"] == 2
    assert leftovers(tmp_path) == []


def test_sigterm_then_rerun_every_output_once_and_identical(shards, expected, tmp_path):
    out = tmp_path / "out"
    slowly = tmp_path / "slowly"  # the first run's samples take 0.1 s each; the re-run's do not
    slowly.touch()
    slow = f"tarproc -c 'if [ -e {slowly} ]; then sleep 0.1; fi; rm sample.json; : {tmp_path}' -o -"
    args = ["tarmap", *map(str, shards), "-o", f"{out}/{{stem}}.tar", "-c", slow, "-j", "2"]
    proc = subprocess.Popen(args, env=tool_env(), stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (out.exists() and list(out.glob("*.tarmap.json"))):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)  # two pipelines are running now
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, stderr  # killed by it after the cleanup: 143 in a shell
    assert b"tarmap: error: terminated" in stderr
    time.sleep(0.2)
    assert leftovers(tmp_path) == []
    # no pipeline of ours is left running (they ran in their own process groups;
    # a sample command already started may take its 0.1 s to finish)
    assert still_running(f"rm sample.json; : {tmp_path}") == ""
    first = outputs(out)
    assert 1 <= len(first) < 20
    assert all(first[k] == expected[k] for k in first)
    assert len(list(out.glob("*.tarmap.json"))) == len(first)

    slowly.unlink()
    again = run(["tarmap", *map(str, shards), "-o", f"{out}/{{stem}}.tar", "-c", slow, "-j", "4", "-v"])
    assert again.returncode == 0, again.stderr
    assert f"{20 - len(first)} tasks done, {len(first)} skipped".encode() in again.stderr
    assert outputs(out) == expected
    assert leftovers(tmp_path) == []


def test_corrupt_input_fails_permanently_others_complete_shard_index(shards, expected, tmp_path):
    bad = tmp_path / "bad.tar"
    data = shards[1].read_bytes()
    at = 1024 + 5  # the second member's header (after cls: 1 byte of data): a wrong checksum
    bad.write_bytes(data[:at] + b"X" + data[at + 1:])
    inputs = [shards[0], bad, shards[2], shards[3]]
    out = tmp_path / "out"
    index_file = tmp_path / "idx" / "train.json"
    failed = tmp_path / "failed.txt"
    result = tarmap(*inputs, "-o", f"{out}/{{index}}.tar", "-c", PIPELINE, "--backoff", "0",
                    "--shard-index", index_file, "--failed-list", failed, "--manifest", tmp_path / "m.jsonl")
    assert result.returncode == 1
    text = result.stderr.decode()
    assert f"tarmap: error: task 1 ({bad}) failed permanently: pipeline exited with status 3" in text
    assert "retrying" not in text
    assert "1 of 4 tasks failed: 1" in text
    assert sorted(p.name for p in out.glob("*.tar")) == ["0.tar", "2.tar", "3.tar"]
    assert failed.read_text() == f"{bad}\n"
    index = json.loads(index_file.read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    want = []
    for i in (0, 2, 3):
        blob = (out / f"{i}.tar").read_bytes()
        assert blob == expected[tasks.stem(inputs[i].name)]
        want.append({"url": f"../out/{i}.tar", "nsamples": 5, "filesize": len(blob), "md5sum": hashlib.md5(blob).hexdigest()})
    assert index["shardlist"] == want
    manifest = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [m["index"] for m in manifest] == [0, 2, 3] and manifest[1]["sha256"] == hashlib.sha256(
        (out / "2.tar").read_bytes()).hexdigest()

    # --index mode: the task's own status (3 permanent, 0 complete)
    one = tarmap(*inputs, "-o", f"{out}/{{index}}.tar", "-c", PIPELINE, "--index", "1")
    assert one.returncode == 3, one.stderr
    env = tool_env()
    env["JOB_COMPLETION_INDEX"] = "2"
    two = run(["tarmap", *map(str, inputs), "-o", f"{out}/{{index}}.tar", "-c", PIPELINE, "--index", "env", "-v"], env=env)
    assert two.returncode == 0 and b"task 2: skipped" in two.stderr


def test_wids_opens_the_shard_index(shards, tmp_path):
    pytest.importorskip("torch", reason="wids imports torch, too heavy for the suite; not installed here")
    wids = pytest.importorskip("wids")
    out = tmp_path / "out"
    index_file = tmp_path / "train.json"
    assert tarmap(*shards[:3], "-o", f"{out}/{{index}}.tar", "-c", PIPELINE, "--shard-index", index_file).returncode == 0
    dataset = wids.ShardListDataset(str(index_file))
    assert len(dataset) == 15


def test_output_not_a_complete_tar_is_retried_and_never_published(shards, tmp_path):
    out = tmp_path / "out"
    result = tarmap(shards[0], "-o", f"{out}/x.tar", "-c", "head -c 3000", "--retries", "1", "--backoff", "0")
    assert result.returncode == 1
    text = result.stderr.decode()
    assert "not a complete tar stream" in text and text.count("retrying") == 1
    assert list(out.iterdir()) == [] if out.exists() else True


def test_timeout_kills_the_pipeline_group(shards, tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    pipeline = f"bash -c 'sleep 30; : {tmp_path}' | cat"
    result = tarmap(shards[0], "-o", f"{out}/x.tar", "-c", pipeline, "--timeout", "0.5", "--retries", "0")
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    assert b"timed out after 0.5 s" in result.stderr
    assert still_running(f"sleep 30; : {tmp_path}", seconds=2.0) == ""


def test_halt_after_and_max_errors(shards, tmp_path):
    out = tmp_path / "out"
    result = tarmap(*shards, "-o", f"{out}/{{index}}.tar", "-c", "exit 1", "-j", "1", "--retries", "0")
    assert result.returncode == 1
    text = result.stderr.decode()
    assert text.count("failed: pipeline exited with status 1") == 3
    assert "stopped, 17 tasks not run: the first 3 tasks to finish all failed; --halt-after K sets how many" in text
    # --max-errors 1: the second failure stops the run; successes before it do not halt it
    pipe = f'if [ "$TARMAP_INDEX" -ge 2 ]; then exit 1; fi; {PIPELINE}'
    result = tarmap(*shards, "-o", f"{out}/{{index}}.tar", "-c", pipe, "-j", "1", "--retries", "0", "--max-errors", "1")
    assert result.returncode == 1
    assert "stopped, 16 tasks not run: more than 1 tasks failed; --max-errors N allows more" in result.stderr.decode()
    assert sorted(p.name for p in out.glob("*.tar")) == ["0.tar", "1.tar"]
    # --halt-after 0 never stops
    result = tarmap(*shards[:5], "-o", f"{out}/h{{index}}.tar", "-c", "exit 1", "-j", "2", "--retries", "0",
                    "--halt-after", "0")
    assert b"5 of 5 tasks failed" in result.stderr
    # when the failures that meet a limit are the last tasks, nothing is left to stop
    result = tarmap(*shards[:3], "-o", f"{out}/e{{index}}.tar", "-c", "exit 1", "-j", "1", "--retries", "0")
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    # a failed pipeline that wrote nothing is explained by its status alone
    assert lines == [f"tarmap: error: task {i} ({shards[i]}) failed: pipeline exited with status 1" for i in range(3)] + [
        "tarmap: error: 3 of 3 tasks failed: 0, 1, 2"]


def test_usage_errors(shards, tmp_path):
    for args, message in [
        ([shards[0], shards[1], "-o", f"{tmp_path}/same.tar", "-c", "cat"], "maps tasks 0 and 1 to the same output"),
        ([shards[0], "-", "-o", f"{tmp_path}/{{stem}}.tar", "-c", "cat"],
         "'-' (stdin) is not an input of a task: each task reads its input itself; use -T - to read the list"),
        ([shards[0], "-o", f"{tmp_path}/{{name}}.tar", "-c", "cat"], "unknown field {name} (use {index}, {index:04d}, {basename}, {stem}); given with -o"),
        ([shards[0], "-o", f"{tmp_path}/x.tar"], "missing -c PIPELINE"),
        ([shards[0], "-o", f"{tmp_path}/x.tar", "-c", "cat", "--index", "5"], "--index 5: there are 1 tasks"),
        ([shards[0], "-o", f"{tmp_path}/x.tar", "-c", "cat", "--index", "env"], "neither JOB_COMPLETION_INDEX"),
        ([shards[0], "-o", f"{tmp_path}/x.tar", "-c", "cat", "--dask", "local:1", "--index", "0"], "cannot be combined"),
        ([shards[0], "-o", f"{tmp_path}/x.tar", "-c", "cat", "--image", "x"], "go with --k8s-job"),
    ]:
        env = tool_env()
        env.pop("JOB_COMPLETION_INDEX", None)
        env.pop("SLURM_ARRAY_TASK_ID", None)
        result = run(["tarmap", *map(str, args)], env=env)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tarmap: error: ") and message in lines[0], lines
    assert not (tmp_path / "same.tar").exists()


def test_a_collision_suggests_the_fields_that_tell_the_inputs_apart(shards, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.tar").write_bytes(shards[0].read_bytes())
    (tmp_path / "a" / "x.tgz").write_bytes(shards[4].read_bytes())
    a, b, c = tmp_path / "a" / "x.tar", tmp_path / "b" / "x.tar", tmp_path / "a" / "x.tgz"
    same = tarmap(a, b, "-o", f"{tmp_path}/out/{{stem}}.tar", "-c", "cat")
    assert same.returncode == 2
    assert same.stderr.decode().splitlines() == [
        f"tarmap: error: output pattern '{tmp_path}/out/{{stem}}.tar' maps tasks 0 and 1 to the same output"
        f" '{tmp_path}/out/x.tar' ({{stem}} is the same for '{a}' and '{b}'; use {{index}}); given with -o"]
    stems = tarmap(a, c, "-o", f"{tmp_path}/out/{{stem}}.tar", "-c", "cat")
    assert stems.returncode == 2 and "({stem} is the same for" in stems.stderr.decode()
    assert "; use {index} or {basename})" in stems.stderr.decode()


def test_files_from_and_summary(shards, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in shards[:3]) + "# comment\n\n")
    out = tmp_path / "out"
    assert tarmap("-T", listing, "-o", f"{out}/{{stem}}.tar", "-c", "cat", "--records", tmp_path / "rec").returncode == 0
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == [f"task-{i:06d}.json" for i in range(3)]
    assert not list(out.glob("*.json"))
    # INPUTs come first, then the lists of -T: the records of -T's three are under other indexes now
    summary = tarmap(shards[5], "-T", listing, "-o", f"{out}/{{stem}}.tar", "-c", "cat", "--summary")
    assert summary.returncode == 1
    assert summary.stdout.decode().splitlines() == [f"0\tmissing\t-\t-\t{out}/part-0005.tar"] + [
        f"{i + 1}\tmissing\t-\t-\t{out}/part-{i:04d}.tar" for i in range(3)]
    extra = tmp_path / "extra.txt"
    extra.write_text(f"{shards[5]}\n")
    summary = tarmap("-T", listing, "-T", extra, "-o", f"{out}/{{stem}}.tar", "-c", "cat", "--records", tmp_path / "rec",
                     "--summary")
    assert summary.returncode == 1
    lines = summary.stdout.decode().splitlines()
    assert lines[0] == f"0\tcomplete\t5\t{shards[0].stat().st_size}\t{out}/part-0000.tar"
    assert lines[3] == f"3\tmissing\t-\t-\t{out}/part-0005.tar"
    assert b"3 of 4 tasks complete (1 missing), 15 samples" in summary.stderr


def test_summary_says_stale_and_truncated_not_missing(shards, tmp_path):
    inputs = []
    for i in range(4):
        inputs.append(tmp_path / f"in-{i}.tar")
        inputs[-1].write_bytes(shards[i].read_bytes())
    out = tmp_path / "out"
    args = [*inputs, "-o", f"{out}/{{stem}}.tar", "-c", "cat"]
    assert tarmap(*args).returncode == 0
    inputs[1].write_bytes(shards[7].read_bytes())  # a changed input
    with open(out / "in-2.tar", "r+b") as handle:  # a cut output
        handle.truncate(1024)
    (out / "in-3.tar").unlink()
    summary = tarmap(*args, "--summary")
    assert summary.returncode == 1
    assert [line.split("\t")[:2] for line in summary.stdout.decode().splitlines()] == [
        ["0", "complete"], ["1", "stale"], ["2", "truncated"], ["3", "missing"]]
    assert b"1 of 4 tasks complete (1 missing, 1 stale, 1 truncated)," in summary.stderr


def test_library_run_task_and_stale_attempts(shards, tmp_path):
    """The library API the other tools build on: a task, a retry policy, a result."""
    output = tmp_path / "o" / "a.tar"
    output.parent.mkdir()
    # an attempt file left by a process of this host that is gone (kill -9)
    dead = subprocess.run(["bash", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    import socket

    stale = output.parent / f"a.tar.partial.{socket.gethostname().replace('.', '_')}.{dead}.0000"
    stale.write_bytes(b"half")
    task = tasks.make_tasks([str(shards[0])], str(output), "cat")[0]
    options = tasks.TaskOptions(policy=tasks.RetryPolicy(retries=0), quiet=True)
    result = tasks.run_task(task, options)
    assert result.status == "complete" and result.exit_status == 0 and result.attempts == 1
    assert output.read_bytes() == shards[0].read_bytes()
    assert not stale.exists()
    assert records.check_record(task, {"size": 1, "mtime": 0}) is None  # another input content
    assert tasks.run_task(task, options).status == "skipped"
    output.write_bytes(b"x")  # the output changed behind our back: not complete
    assert tasks.is_complete(task, options) is None
    bad = tasks.run_task(tasks.Task(0, str(shards[0]), str(tmp_path / "b.tar"), "exit 3", str(tmp_path / "b.json")),
                         options)
    assert bad.status == "failed" and bad.permanent and bad.exit_status == 3


def test_progress_bar_on_a_terminal_counts_tasks_and_keeps_messages_on_their_own_lines(shards, tmp_path):
    from test_family import _on_a_terminal

    out = tmp_path / "out"
    # each task says something on stderr, then takes 0.3 s (the bar is drawn between tasks); task 2 fails for good
    pipe = 'echo "note from $TARMAP_INDEX" >&2; sleep 0.3; if [ "$TARMAP_INDEX" = 2 ]; then exit 3; fi; cat'
    assert tarmap(shards[0], "-o", f"{out}/{{index}}.tar", "-c", pipe, "-q").returncode == 0  # task 0: complete before
    argv = ["tarmap", *map(str, [shards[0], shards[1], shards[2], shards[3]]), "-o", f"{out}/{{index}}.tar",
            "-c", pipe, "-j", "1"]
    text = _on_a_terminal(argv, tmp_path, status=1)
    segments = [s for s in re.split(r"[\r\n]+", text) if s.strip()]
    bars = [s for s in segments if re.search(r"\d+/4 \[", s)]
    assert bars, text
    # tasks done/skipped/failed of the total, samples and bytes, elapsed<ETA
    last = bars[-1]
    assert re.search(r"100%\|.*\| 4/4 \[\d\d:\d\d<\d\d:\d\d", last), last
    assert "done 2 skipped 1 failed 1 | 15 samples" in last and "kB" in last, last
    assert any(re.search(r"\d+%\|.*\| [1-3]/4 \[\d\d:\d\d<\d\d:\d\d", s) for s in bars), bars  # an ETA on the way
    # the pipelines' lines and the error are lines of their own, never glued to the bar
    messages = [s for s in segments if s not in bars]
    assert sorted(s for s in messages if s.startswith("tarmap: task ")) == [
        f"tarmap: task {i}: note from {i}" for i in (1, 2, 3)]
    failed = [s for s in messages if "failed permanently" in s]
    assert failed and failed[0].startswith("tarmap: error: task 2 ") and "|" not in failed[0].split("stderr:")[0]
    assert all(s.startswith("tarmap: ") for s in messages), messages


def test_index_env_from_slurm_and_kubernetes(shards, tmp_path):
    out = tmp_path / "out"
    argv = ["tarmap", *map(str, shards[:3]), "-o", f"{out}/{{index}}.tar", "-c", "cat", "--index", "env"]
    env = tool_env()
    env.pop("JOB_COMPLETION_INDEX", None)
    env["SLURM_ARRAY_TASK_ID"] = "1"  # a task of `sbatch --array=0-2`
    result = run(argv, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == ["1.tar"]
    assert (out / "1.tar").read_bytes() == shards[1].read_bytes()
    env["JOB_COMPLETION_INDEX"] = "2"  # both set: the Kubernetes index is taken (README: Many shards)
    result = run(argv, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == ["1.tar", "2.tar"]
    env.pop("JOB_COMPLETION_INDEX")
    env["SLURM_ARRAY_TASK_ID"] = "3"
    result = run(argv, env=env)
    assert result.returncode == 2 and b"--index 3: there are 3 tasks" in result.stderr
    env["SLURM_ARRAY_TASK_ID"] = "x"  # a bad value is named with the variable it came from
    result = run(argv, env=env)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("tarmap: error: --index env: SLURM_ARRAY_TASK_ID 'x': expected a number")
    assert result.stderr.count(b"\n") == 1


def test_index_start_and_step_runs_those_tasks_one_after_another(shards, tmp_path):
    out = tmp_path / "out"
    argv = ["tarmap", *map(str, shards[:5]), "-o", f"{out}/{{index}}.tar", "-c", "cat", "-v"]
    env = {**tool_env(), "SLURM_ARRAY_TASK_ID": "1"}
    env.pop("JOB_COMPLETION_INDEX", None)
    result = run(argv + ["--index", "env::2"], env=env)  # array index 1 of 2: tasks 1 and 3
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == ["1.tar", "3.tar"]
    assert all((out / f"{i}.tar").read_bytes() == shards[i].read_bytes() for i in (1, 3))
    assert b"task 1: complete\ntarmap: task 3: complete\n" in result.stderr
    # a packed index whose first task fails permanently still runs the next, and exits 3
    failing = run(argv[:-3] + ["-c", 'test "$TARMAP_INDEX" != 0 || exit 3; cat', "--index", "0::2", "--force"])
    assert failing.returncode == 3
    assert b"task 0 (" in failing.stderr and b"failed" in failing.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == ["1.tar", "2.tar", "3.tar", "4.tar"]
    for bad in ("1::0", "1::", "::2", "-1", "x::2"):
        result = run(argv + ["--index", bad])
        assert result.returncode == 2 and b"expected I, env or I::STEP" in result.stderr, bad
    result = run(argv + ["--index", "5::2"])
    assert result.returncode == 2 and b"--index 5: there are 5 tasks" in result.stderr


def test_force_redoes_complete_tasks(shards, tmp_path):
    out = tmp_path / "out"
    flag = tmp_path / "flag"
    flag.touch()
    pipe = f"if [ ! -e {flag} ]; then touch {flag}; exit 1; fi; cat"  # fails once whenever the flag is missing
    args = [shards[0], shards[1], "-o", f"{out}/{{stem}}.tar", "-c", pipe, "-j", "1", "--backoff", "0", "-v"]
    assert b"2 tasks done, 0 skipped" in tarmap(*args).stderr
    output = out / "part-0000.tar"
    before = json.loads((out / "part-0000.tar.tarmap.json").read_text())
    stat = (output.stat().st_ino, output.stat().st_mtime_ns)
    assert before["attempts"] == 1
    again = tarmap(*args)  # without --force: skipped, not rewritten
    assert again.returncode == 0 and b"0 tasks done, 2 skipped" in again.stderr
    assert (output.stat().st_ino, output.stat().st_mtime_ns) == stat
    dry = tarmap(*args, "--force", "--dry-run")
    assert [line.split("\t")[3] for line in dry.stdout.decode().splitlines()] == ["run", "run"]
    flag.unlink()
    forced = tarmap(*args, "--force")  # task 0's first attempt fails (and puts the flag back), its second succeeds
    assert forced.returncode == 0, forced.stderr
    assert b"2 tasks done, 0 skipped" in forced.stderr and forced.stderr.count(b"retrying") == 1
    after = json.loads((out / "part-0000.tar.tarmap.json").read_text())
    assert after["attempts"] == 2 and after["started"] >= before["finished"]
    assert output.stat().st_ino != stat[0]  # a new file renamed into place
    assert output.read_bytes() == shards[0].read_bytes()
    assert leftovers(tmp_path) == []


def test_fsspec_store_output_appears_only_when_complete(shards, tmp_path):
    """Outputs on an fsspec store other than S3 (gs://, sftp, ...; here fsspec's local:// file system,
    which takes the same path) are written under an attempt key and moved into place on success."""
    pytest.importorskip("fsspec", reason="fsspec (the [cloud] extra, in the test extra) is not installed")
    out = tmp_path / "out"
    url = f"local://{out}/{{stem}}.tar"
    pidfile = tmp_path / "pid"
    hang = f"echo $$ > {pidfile}; head -c 3000; sleep 30; : {tmp_path}"  # some bytes, then it hangs
    # a timed-out attempt: nothing at the output, its attempt key removed
    result = tarmap(shards[0], "-o", url, "-c", hang, "--timeout", "1", "--retries", "0")
    assert result.returncode == 1 and b"timed out after 1 s" in result.stderr, result.stderr
    assert list(out.iterdir()) == []
    # tarmap killed mid-task (SIGKILL: it cannot clean up): an attempt key, nothing at the output
    proc = subprocess.Popen(["tarmap", str(shards[1]), "-o", url, "-c", hang], env=tool_env(),
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and leftovers(out)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 1 and names[0].startswith("part-0001.tar.partial."), names
    # the re-run completes the task, moves its output into place and removes the dead attempt's key
    result = tarmap(shards[1], "-o", url, "-c", "cat", "-v")
    assert result.returncode == 0 and b"1 tasks done" in result.stderr, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["part-0001.tar", "part-0001.tar.tarmap.json"]
    assert (out / "part-0001.tar").read_bytes() == shards[1].read_bytes()
    record = json.loads((out / "part-0001.tar.tarmap.json").read_text())
    assert record["output"] == f"local://{out}/part-0001.tar" and record["bytes"] == shards[1].stat().st_size
    again = tarmap(shards[1], "-o", url, "-c", "cat", "-v")
    assert b"0 tasks done, 1 skipped" in again.stderr
