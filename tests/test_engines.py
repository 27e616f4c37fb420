"""The engine interface (tarproc.jobs.engines): every engine follows the
declared protocol, the tools choose and describe engines through it only
(a new engine is one module and one option: tested with one made here), and
an engine whose workers do not share this machine's files gets the same
local-path warnings as --k8s-job, before any task."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run, tool_env
from makeshards import write_shard

from tarproc.jobs import engines
from tarproc.jobs.engines.dask import is_loopback
from tarproc.jobs.engines.run import run_all
from tarproc.errors import UsageError


def test_every_engine_follows_the_protocol():
    assert engines.names()[0] == "local" and "dask" in engines.names()
    for name in engines.names():
        engine = engines.create(name, "local:1" if name == "dask" else "1")  # built, not started
        assert isinstance(engine, engines.Engine), name
        assert engine.name == name
        assert isinstance(engine.shares_filesystem, bool) and isinstance(engine.in_process, bool)
        engine.close()  # closing an engine never started is harmless


def test_unknown_engine_and_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="no engine 'ray'"):
        engines.create("ray", "x")
    with pytest.raises(UsageError, match="local:N with N a number"):
        engines.create("dask", "local:two")
    with pytest.raises(UsageError, match="at least 1 task"):
        engines.create("local", "0")


@pytest.mark.parametrize("address, shares", [
    ("local:2", True), ("tcp://127.0.0.1:8786", True), ("tcp://localhost:8786", True), ("tcp://[::1]:8786", True),
    ("127.0.0.5:8786", True), ("tcp://10.0.0.2:8786", False), ("tcp://scheduler:8786", False),
    ("tls://192.0.2.1:8786", False),
])
def test_dask_shares_the_file_system_only_on_this_machine(address, shares):
    assert engines.create("dask", address).shares_filesystem is shares
    assert is_loopback(address) is (shares and not address.startswith("local:"))


def test_run_all_on_the_local_engine_stops_by_its_rules():
    class Result:
        def __init__(self, ok):
            self.ok, self.status = ok, "complete" if ok else "failed"

    summary = run_all(range(10), lambda i: Result(False), engine=engines.create("local", "1"), halt_after=3)
    assert len(summary.results) == 3 and summary.not_run == list(range(3, 10)) and summary.stopped_topic == "halt_after"
    summary = run_all(range(5), lambda i: Result(True))
    assert summary.count("complete") == 5 and not summary.stopped


SERIAL = '''
"""A test engine: items run one by one, when submitted, in this thread."""
import concurrent.futures


class SerialEngine:
    name = "serial"
    label = "serial"
    shares_filesystem = True
    in_process = True

    def __init__(self, value):
        self.value = value
        self.window = 1

    def start(self):
        print(f"serial engine {self.value} started", file=__import__("sys").stderr)

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        future.set_result(fn(*args))
        return future

    def wait_any(self, futures):
        return set(futures)

    def outcome(self, future):
        return future.result()

    def close(self, cancel=False):
        pass


ENGINE = SerialEngine
'''

DRIVER = '''
import sys
from typing import Optional
import tarproc.jobs.engines
tarproc.jobs.engines.__path__.append(sys.argv[1])  # the new module, as if in tarproc/jobs/engines/
from tarproc.cli import engine
engine.ENGINE["serial"] = engine._opt(Optional[str], None, "--serial", metavar="X", help="the serial engine")  # the option
from tarproc.cli import {tool}
sys.argv = ["{tool}", *sys.argv[2:]]
{tool}.main()
'''


@pytest.fixture
def serial_engine(tmp_path) -> Path:
    where = tmp_path / "new-engine"
    where.mkdir()
    (where / "serial.py").write_text(SERIAL)
    return where


def _tool_with_serial(tool: str, where: Path, *args: str) -> subprocess.CompletedProcess:
    driver = textwrap.dedent(DRIVER).replace("{tool}", tool)
    return subprocess.run([sys.executable, "-c", driver, str(where), *args], capture_output=True, env=tool_env(),
                          timeout=120)


def test_a_new_engine_is_one_module_and_one_option(serial_engine, tmp_path):
    shards = [write_shard(str(tmp_path / f"in-{i}.tar"), 2, seed=i) for i in range(3)]
    local = run(["tarmap", *shards, "-o", f"{tmp_path}/local/{{stem}}.tar", "-c", "tarproc -c 'rm sample.json' -o -",
                 "-j", "2"])
    assert local.returncode == 0, local.stderr
    result = _tool_with_serial("tarmap", serial_engine, *shards, "-o", f"{tmp_path}/serial/{{stem}}.tar",
                               "-c", "tarproc -c 'rm sample.json' -o -", "--serial", "x1", "-v")
    assert result.returncode == 0, result.stderr
    assert b"serial engine x1 started" in result.stderr and b"3 tasks done" in result.stderr
    for i in range(3):
        assert (tmp_path / "serial" / f"in-{i}.tar").read_bytes() == (tmp_path / "local" / f"in-{i}.tar").read_bytes()
    # refused beside another engine, as --dask is, by its own option's name
    both = _tool_with_serial("tarmap", serial_engine, *shards, "-o", f"{tmp_path}/x/{{stem}}.tar", "-c", "cat",
                             "--serial", "x", "--index", "0")
    assert both.returncode == 2 and b"--serial and --index cannot be combined" in both.stderr, both.stderr
    shuffled = _tool_with_serial("tarshuffle", serial_engine, *shards, "--shards", "2",
                                 "-o", f"{tmp_path}/sh/train-{{shard}}.tar", "--rekey", "{shard}/{key}", "--serial", "x2",
                                 "-v")
    assert shuffled.returncode == 0, shuffled.stderr
    assert shuffled.stderr.count(b"serial engine x2 started") == 2  # one engine per phase
    assert sorted(p.name for p in (tmp_path / "sh").glob("*.tar")) == ["train-0.tar", "train-1.tar"]


def test_workers_not_sharing_files_get_the_local_path_warnings_before_any_task(tmp_path):
    pytest.importorskip("distributed")
    shard = write_shard(str(tmp_path / "in.tar"), 2)
    env = {**tool_env(), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    # 192.0.2.1 (TEST-NET-1) is no machine: the warnings come before the connection fails
    result = run(["tarmap", shard, "-o", f"{tmp_path}/out/{{stem}}.tar", "-c", "cat", "--dask",
                  "tcp://192.0.2.1:8786", "--records", str(tmp_path / "rec")], env=env, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    advice = "the workers of --dask tcp://192.0.2.1:8786 do not share this machine's files: every worker must mount it"
    assert lines[0] == f"tarmap: warning: input {shard!r} is a local path: {advice} (a shared volume), or use an object-store URL"
    assert lines[1].startswith(f"tarmap: warning: output '{tmp_path}/out/{{stem}}.tar' is a local path: {advice}")
    assert lines[2].startswith(f"tarmap: warning: records '{tmp_path}/rec' is a local path: {advice}")
    assert "cannot connect" in lines[-1]
    shuffled = run(["tarshuffle", shard, "--shards", "1", "-o", f"{tmp_path}/sh/{{shard}}.tar", "--dask",
                    "tcp://192.0.2.1:8786"], env=env, timeout=120)
    text = shuffled.stderr.decode()
    assert shuffled.returncode == 1 and f"staging '{tmp_path}/sh/tarshuffle-staging' is a local path: {advice}" in text, text


def test_workers_sharing_files_get_no_warning(tmp_path):
    shard = write_shard(str(tmp_path / "in.tar"), 2)
    result = run(["tarmap", shard, "-o", f"{tmp_path}/out/{{stem}}.tar", "-c", "cat", "-j", "1"])
    assert result.returncode == 0 and b"warning" not in result.stderr, result.stderr
