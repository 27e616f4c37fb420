"""--storage-option KEY=VALUE (fsspec storage_options), the same in every
tool: parsed by fsspec's convention, merged over FSSPEC_<PROTOCOL>_<OPTION>,
a usage error when malformed; against a real S3 API server (moto, on
127.0.0.1, tests/s3server.py) with the endpoint given ONLY as a storage
option (no AWS_ENDPOINT_URL): tarcats, tarshow and tarpcat reading,
tarsplit writing, tarmap (local pool, Dask, and a Kubernetes pod's command
run here), tarshuffle (inputs, staging and outputs on S3)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run, tool_env
from makeshards import write_shard
from s3server import CREDENTIALS, s3_server  # noqa: F401  (the fixture)
from tarproc.cli import TOOLS
from tarproc.cli.app import tool_shared
from tarproc.io.storage import parse_storage_options, url_storage_options


@pytest.mark.parametrize("items, want", [
    (["anon=true"], {"anon": True}),
    (["default_block_size=5242880"], {"default_block_size": 5242880}),
    (["endpoint_url=http://h:9000"], {"endpoint_url": "http://h:9000"}),
    (["version_aware=null"], {"version_aware": None}),
    (['client_kwargs={"region_name": "eu-west-1"}'], {"client_kwargs": {"region_name": "eu-west-1"}}),
    (["client_kwargs.region_name=eu-west-1", "client_kwargs.endpoint_url=x"],
     {"client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "x"}}),
    (["a=1", "a=two"], {"a": "two"}),  # the later one wins
    (["token=="], {"token": "="}),  # only the first '=' separates
])
def test_values_are_json_when_they_parse_else_text(items, want):
    assert parse_storage_options(items) == want


@pytest.mark.parametrize("items", [["novalue"], ["=x"], ["a..b=1"], ["a=1", "a.b=2"]])
def test_malformed_items_are_refused(items):
    with pytest.raises(ValueError):
        parse_storage_options(items)


def test_options_merge_over_the_fsspec_environment_key_by_key(monkeypatch):
    import fsspec.config

    # what fsspec read from FSSPEC_MEMORY_CLIENT_KWARGS='{"a": 1, "b": 2}' and FSSPEC_MEMORY_X=1
    monkeypatch.setitem(fsspec.config.conf, "memory", {"client_kwargs": {"a": 1, "b": 2}, "x": 1})
    assert url_storage_options("memory://bucket/k", {"client_kwargs": {"b": 3}, "y": 4}) == {
        "client_kwargs": {"a": 1, "b": 3}, "x": 1, "y": 4}
    assert url_storage_options("memory://bucket/k", None) == {"client_kwargs": {"a": 1, "b": 2}, "x": 1}


def test_every_tool_takes_it():
    assert [t for t in TOOLS if "storage_options" not in tool_shared(importlib.import_module(f"tarproc.cli.{t}").app)] == []


@pytest.mark.parametrize("tool", TOOLS)
def test_a_bad_item_is_a_one_line_usage_error_in_every_tool(tool, monkeypatch, capsys):
    """Each tool's console-script entry point (main), in this process."""
    monkeypatch.setattr(sys, "argv", [tool, "--storage-option", "novalue"])
    with pytest.raises(SystemExit) as status:
        importlib.import_module(f"tarproc.cli.{tool}").main()
    lines = capsys.readouterr().err.splitlines()
    assert status.value.code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: ") and "'novalue': expected KEY=VALUE" in lines[0]


def test_a_bad_item_from_the_shell(tmp_path):
    result = run(["tarsplit", "--storage-option", "a=1", "--storage-option", "a.b=2", "-n", "1", "-o", str(tmp_path)],
                 input=b"")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == ["tarsplit: error: --storage-option 'a.b=2': a is a value, not a"
                                                   " group of options"]


# ------------------------------------------------------------------ S3 (moto)
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("so-in")
    return [Path(write_shard(str(root / f"in-{i:02d}.tar"), 3, seed=i)) for i in range(2)]


@pytest.fixture
def s3(s3_server, shards):  # noqa: F811 - the fixture imported above
    s3_server.reset()
    fs = s3_server.fs()
    fs.mkdir("inputs")
    fs.mkdir("outputs")
    for path in shards:
        fs.put(str(path), f"inputs/{path.name}")
    env = tool_env()
    for name in list(env):
        if name.startswith(("AWS_", "FSSPEC_")):
            del env[name]
    env.update(CREDENTIALS)  # credentials from the environment, the endpoint only as a storage option
    return s3_server, fs, env, ["--storage-option", f"endpoint_url={s3_server.endpoint}"]


def test_reading_with_the_endpoint_as_a_storage_option(s3, shards, tmp_path):
    server, fs, env, opt = s3
    out = tmp_path / "out.tar"
    result = run(["tarcats", "s3://inputs/in-00.tar", *opt, "-o", str(out)], env=env)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == shards[0].read_bytes()
    # the same as nested JSON (client_kwargs), and by tarpcat's workers
    nested = ["--storage-option", json.dumps({"endpoint_url": server.endpoint}).join(["client_kwargs=", ""])]
    both = tmp_path / "both.tar"
    result = run(["tarpcat", "-p", "2", "s3://inputs/in-{00..01}.tar", *nested, "-o", str(both), "--rekey",
                  "{shard}/{key}"], env=env)
    assert result.returncode == 0, result.stderr
    assert len(both.read_bytes()) > len(shards[0].read_bytes())
    shown = run(["tarshow", "s3://inputs/in-01.tar", *opt], env=env)
    assert shown.returncode == 0, shown.stderr
    first_key = subprocess.run(["tar", "tf", str(shards[1])], capture_output=True, text=True).stdout.split(".")[0]
    assert first_key in shown.stdout.decode()


def test_a_wrong_value_fails_with_one_line(s3, tmp_path):
    server, fs, env, opt = s3
    result = run(["tarcats", "s3://inputs/in-00.tar", "--storage-option", "endpoint_url=notaurl", "-o",
                  str(tmp_path / "x.tar")], env=env)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == ["tarcats: error: s3://inputs/in-00.tar: cannot open: Invalid endpoint: notaurl"]
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "x.tar.partial").exists()
    missing = run(["tarshow", "s3://inputs/nothing.tar", *opt], env=env)
    assert missing.returncode == 1
    assert missing.stderr.decode().splitlines() == ["tarshow: error: s3://inputs/nothing.tar: cannot open: no such object"]


def test_tarsplit_writes_shards_to_s3(s3, shards):
    server, fs, env, opt = s3
    result = run(["tarsplit", str(shards[0]), "-n", "2", "-o", "s3://outputs/split-%02d.tar", *opt], env=env)
    assert result.returncode == 0, result.stderr
    fs.invalidate_cache()
    assert sorted(fs.ls("outputs", detail=False)) == ["outputs/split-00.tar", "outputs/split-01.tar"]
    joined = run(["tarcats", "s3://outputs/split-{00..01}.tar", *opt, "-o", "-"], env=env)
    assert joined.returncode == 0 and joined.stdout == shards[0].read_bytes()


@pytest.mark.parametrize("engine", [["-j", "2"], ["--dask", "local:1"]])
def test_tarmap_tasks_carry_the_options(s3, shards, engine):
    """A local pool's tasks and a Dask worker's (which gets them only in the task)."""
    pytest.importorskip("distributed", reason="dask.distributed is not installed") if "--dask" in engine else None
    server, fs, env, opt = s3
    result = run(["tarmap", "s3://inputs/in-{00..01}.tar", "-o", "s3://outputs/m/{stem}.tar", "-c", "cat", *engine, *opt,
                  "-v"], env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert b"2 tasks done, 0 skipped" in result.stderr
    fs.invalidate_cache()
    for path in shards:
        assert fs.cat_file(f"outputs/m/{path.name}") == path.read_bytes()
        assert json.loads(fs.cat_file(f"outputs/m/{path.name}.tarmap.json"))["bytes"] == path.stat().st_size


def _container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def test_k8s_pods_get_the_options_on_their_command_line(s3, shards, tmp_path):
    server, fs, env, opt = s3
    secrets = ["--storage-option", "key=testing", "--storage-option", "secret=testing"]
    args = ["s3://inputs/in-{00..01}.tar", *opt, *secrets, "--k8s-job", "j", "--image", "img:1",
            "--env-from-secret", "s3-credentials"]
    result = run(["tarmap", *args[:1], "-o", "s3://outputs/k/{stem}.tar", "-c", "cat", *args[1:]], env=env)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.decode().splitlines()
    assert [w.split(" is written")[0] for w in warnings] == ["tarmap: warning: --storage-option key=...",
                                                             "tarmap: warning: --storage-option secret=..."]
    assert all("--env-from-secret" in w and "testing" not in w for w in warnings)
    command = _container(yaml.safe_load(result.stdout))["args"]
    assert command[command.index("--storage-option") + 1] == f"endpoint_url={server.endpoint}"
    # the pod's command, run here as index 1: it reaches the server through its options alone
    pod = run(command, env={**env, "JOB_COMPLETION_INDEX": "1"}, timeout=120)
    assert pod.returncode == 0, pod.stderr
    fs.invalidate_cache()
    assert fs.cat_file("outputs/k/in-01.tar") == shards[1].read_bytes() and not fs.exists("outputs/k/in-00.tar")
    # tarshuffle: both Jobs' pods get them
    jobs = run(["tarshuffle", *args[:1], "--shards", "2", "-o", "s3://outputs/s/t-%02d.tar", *args[1:3], "--k8s-job", "s",
                "--image", "img:1"], env=env)
    assert jobs.returncode == 0, jobs.stderr
    for manifest in yaml.safe_load_all(jobs.stdout):
        command = _container(manifest)["args"]
        assert command[command.index("--storage-option") + 1] == f"endpoint_url={server.endpoint}"


def test_tarshuffle_inputs_staging_and_outputs_on_s3(s3, shards):
    server, fs, env, opt = s3
    result = run(["tarshuffle", "s3://inputs/in-{00..01}.tar", "--shards", "2", "-o", "s3://outputs/sh/t-%02d.tar", "-j",
                  "2", "--rekey", "{shard}/{key}", *opt, "-v"], env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    fs.invalidate_cache()
    assert sorted(p for p in fs.find("outputs/sh") if not p.endswith(".json")) == ["outputs/sh/t-00.tar",
                                                                                   "outputs/sh/t-01.tar"]
    samples = run(["tar2json", "s3://outputs/sh/t-{00..01}.tar", *opt], env=env)
    assert samples.returncode == 0, samples.stderr
    assert len(samples.stdout.splitlines()) == 6  # every sample of both inputs, once
