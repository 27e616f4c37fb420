"""The container image (Containerfile), built on a local Debian base without
any registry and run with podman (tests/container.py): the seed's pipelines
through it give the host's bytes, SIGTERM ends a run with 143 and leaves
nothing behind, and a Kubernetes pod's exact command runs in it.

The first test is in the default suite (``make test``: it builds the image
unless cached, see the README's "Run it on a cluster" for the timings); the
others are marked ``engines`` and run by ``make test-engines``."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import run, tar_members, tool_env
from makeshards import write_shard

SEED = "gm convert sample.jpg sample.ppm; rm sample.jpg"


def split_on_host(stream: bytes, out: Path) -> dict[str, bytes]:
    """``| tarsplit -n 15 -o out/part-%04d.tar`` on the host: {name: bytes}."""
    out.mkdir()
    result = run(["tarsplit", "-n", "15", "-o", str(out / "part-%04d.tar")], input=stream)
    assert result.returncode == 0, result.stderr
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def host_reference(shard: Path, command: str, env: dict) -> bytes:
    with open(shard, "rb") as handle:
        result = subprocess.run(["tarproc", "-c", command, "-o", "-"], stdin=handle, env=env, capture_output=True,
                                timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_seed_pipeline_through_the_image_gives_the_hosts_bytes(tarproc_image, imagenet_shard_gz, gm_env, tmp_path):
    """``cat shard.tgz | podman run -i --network none IMG tarproc -c 'gm convert ...' -o - | tarsplit``:
    the same shards as the same pipeline on the host (both Debian's GraphicsMagick)."""
    argv = tarproc_image.run_argv(["tarproc", "-c", SEED, "-o", "-"])
    pipeline = f"cat {imagenet_shard_gz} | {subprocess.list2cmdline(argv)} | tarsplit -n 15 -o {tmp_path}/img/part-%04d.tar"
    (tmp_path / "img").mkdir()
    result = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], env=dict(tarproc_image.podman.env, **{
        "PATH": tool_env()["PATH"]}), capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    in_image = {p.name: p.read_bytes() for p in sorted((tmp_path / "img").iterdir())}
    on_host = split_on_host(host_reference(imagenet_shard_gz, SEED, gm_env), tmp_path / "host")
    assert list(in_image) == ["part-0000.tar", "part-0001.tar", "part-0002.tar"]
    assert in_image == on_host
    names = [name for name, _ in tar_members(in_image["part-0000.tar"])]
    assert names[:3] == ["n01440764_10000.cls", "n01440764_10000.json", "n01440764_10000.ppm"], names[:3]


@pytest.mark.engines
def test_image_user_tmpdir_and_both_converts(tarproc_image):
    result = tarproc_image.run(["sh", "-c", 'id -u; id -g; echo "$TMPDIR"; pwd; touch "$TMPDIR/x" && echo writable;'
                                " convert -version | head -1; gm version | head -1; tarproc --version"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[:5] == ["10001", "10001", "/scratch", "/scratch", "writable"], lines
    assert lines[5].startswith("Version: ImageMagick") and lines[6].startswith("GraphicsMagick"), lines
    from tarproc import __version__
    assert lines[7].endswith(__version__), lines


@pytest.mark.engines
def test_imagemagick_pipeline_through_the_image_gives_the_hosts_bytes(tarproc_image, imagenet_shard, convert_dir):
    command = "convert sample.jpg sample.ppm; rm sample.jpg"
    with open(imagenet_shard, "rb") as handle:
        result = tarproc_image.run(["tarproc", "-p", "2", "-c", command, "-o", "-"], stdin=handle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == host_reference(imagenet_shard, command, tool_env(convert_dir))


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def descendants(pid: int) -> set[int]:
    """The pids below ``pid`` (from /proc/*/stat's parent field)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.engines
@pytest.mark.parametrize("init", ["tini", "tool-as-pid-1"])
def test_sigterm_mid_run_exits_143_leaving_no_temp_dirs_or_children(tarproc_image, imagenet_shard, tmp_path, init):
    """``podman kill --signal TERM`` while samples run: exit 143, the
    scratch volume (TMPDIR) empty, no process of the container left. With
    tini (the image's entrypoint) and with the tool as PID 1, as a
    Kubernetes pod runs it (its ``command`` replaces the entrypoint)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    name = f"tarproc-test-term-{os.getpid()}-{init}"
    options = ["--name", name, "-v", f"{scratch}:/scratch"]
    argv = ["tarproc", "-p", "2", "-c", "sleep 60", "-o", "-"]
    if init != "tini":
        options += ["--entrypoint", json.dumps(argv[:1])]
        argv = argv[1:]
    podman = tarproc_image.podman
    with open(imagenet_shard, "rb") as handle:
        proc = subprocess.Popen(tarproc_image.run_argv(argv, *options), env=podman.env, stdin=handle,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # both workers run their sample's sleep
            assert proc.poll() is None and time.monotonic() < deadline, "the container ended or never ran two samples"
            state = podman("inspect", "--format", "{{.State.Pid}}", name, text=True, check=False).stdout.strip()
            init_pid = int(state) if state.isdigit() else 0
            inside = descendants(init_pid) | {init_pid} if init_pid else set()
            if sum(cmdline(pid) == b"sleep\x0060\x00" for pid in inside) == 2:
                break
            time.sleep(0.1)
        assert list(scratch.iterdir())  # the sample directories are in the volume (TMPDIR)
        podman("kill", "--signal", "TERM", name)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            podman("kill", name, check=False, timeout=60)
            proc.wait(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert list(scratch.iterdir()) == []
    alive = [pid for pid in inside if os.path.exists(f"/proc/{pid}")]
    assert alive == []
    assert b"Traceback" not in err


@pytest.mark.engines
def test_k8s_pod_command_runs_in_the_image(tarproc_image, gm_env, tmp_path):
    """The exact command of ``tarmap --k8s-job ... --image IMG``'s pods (from
    the printed manifest) in the image, as Kubernetes runs it: the command
    replaces the entrypoint, JOB_COMPLETION_INDEX set, a volume at the
    paths the manifest names; every index once, and one again (a retried
    pod): the outputs are the host's bytes, the retry skips."""
    data = tmp_path / "data"
    (data / "out").mkdir(parents=True)
    for path in (data, data / "out"):
        path.chmod(0o777)
    shards = [Path(write_shard(str(data / f"in-{i:02d}.tar"), 3, seed=i)) for i in range(3)]
    result = run(["tarmap", "/data/in-{00..02}.tar", "-o", "/data/out/{stem}.tar", "-c", f"tarproc -c '{SEED}' -o -",
                  "--k8s-job", "seed", "--image", tarproc_image.name])
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load(result.stdout)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["image"] == tarproc_image.name
    command = container["args"]
    assert "command" not in container  # the image's entrypoint (tini) stays PID 1

    def pod(index: int) -> subprocess.CompletedProcess:
        return tarproc_image.run(command, "-e", f"JOB_COMPLETION_INDEX={index}", "-v", f"{data}:/data")

    for i in range(manifest["spec"]["completions"]):
        done = pod(i)
        assert done.returncode == 0, done.stderr
    records = {p.name: p.read_bytes() for p in (data / "out").glob("*.tarmap.json")}
    again = pod(1)  # a retried pod: its task is complete, so skipped (the record is not rewritten)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in (data / "out").glob("*.tarmap.json")} == records
    expected = {p.stem: host_reference(p, SEED, gm_env) for p in shards}
    assert {p.stem: p.read_bytes() for p in (data / "out").glob("*.tar")} == expected
    assert sorted(p.name for p in (data / "out").iterdir()) == sorted(
        [f"{s}.tar" for s in expected] + [f"{s}.tar.tarmap.json" for s in expected])


@pytest.mark.engines
def test_tini_reaps_what_sample_commands_leave_behind(tarproc_image, tmp_path):
    """Why the image's entrypoint is tini: a sample command whose background
    process outlives it leaves an orphan, re-parented to PID 1; tini reaps
    it. (The tool itself as PID 1 does not: measured, 20 zombies after 20
    such samples.) Each sample counts the container's zombies."""
    shard = tmp_path / "small.tar"
    assert run(["bash", "-c", f"for i in $(seq -w 1 20); do echo $i > $i.txt; done; tar -cf {shard} *.txt"],
               cwd=tmp_path).returncode == 0
    command = "(sleep 0.2 &); sleep 0.4; grep -l '^State:.Z' /proc/[0-9]*/status | wc -l > sample.zombies"
    with open(shard, "rb") as handle:
        result = tarproc_image.run(["tarproc", "-p", "1", "-c", command, "-o", "-"], stdin=handle)
    assert result.returncode == 0, result.stderr
    counts = [data.strip() for name, data in tar_members(result.stdout) if name.endswith(".zombies")]
    assert counts == [b"0"] * 20
