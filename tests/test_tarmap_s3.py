"""tarmap with s3:// inputs, outputs and records against a real S3 API
server (moto's server mode on 127.0.0.1, tests/s3server.py); a task killed
mid-upload leaves no object at its key; atomic S3 outputs of TarSink."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, run, tool_env
from makeshards import write_shard

PIPELINE = "tarproc -c 'rm sample.json' -o -"
#: s3fs's smallest block (the S3 minimum part size): an upload of more is multipart
BLOCK = 5 * 2**20


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("s3-in")
    return [Path(write_shard(str(root / f"in-{i:02d}.tar"), 3, seed=i)) for i in range(4)]


@pytest.fixture
def s3(s3_server):
    s3_server.reset()
    fs = s3_server.fs()
    fs.mkdir("inputs")
    fs.mkdir("outputs")
    return s3_server, fs


def uploads(fs, bucket: str) -> list[dict]:
    return fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


def test_s3_inputs_outputs_records_and_rerun(s3, shards, tmp_path):
    server, fs = s3
    for path in shards:
        fs.put(str(path), f"inputs/{path.name}")
    env = server.env(tool_env())
    index_file = tmp_path / "train.json"
    args = ["tarmap", "s3://inputs/in-{00..03}.tar", "-o", "s3://outputs/ppm/{stem}.tar", "-c", PIPELINE, "-j", "2", "-v"]
    result = run(args + ["--shard-index", str(index_file)], env=env)
    assert result.returncode == 0, result.stderr
    assert b"4 tasks done, 0 skipped" in result.stderr
    fs.invalidate_cache()
    for path in shards:
        with open(path, "rb") as handle:
            want = subprocess.run(["bash", "-c", PIPELINE], stdin=handle, capture_output=True, env=tool_env(),
                                  check=True).stdout
        assert fs.cat_file(f"outputs/ppm/{path.stem}.tar") == want
        record = json.loads(fs.cat_file(f"outputs/ppm/{path.stem}.tar.tarmap.json"))
        assert record["input"]["url"] == f"s3://inputs/{path.name}" and record["input"]["size"] == path.stat().st_size
        assert record["input"]["etag"] == hashlib.md5(path.read_bytes()).hexdigest()  # a single-part ETag
        assert record["bytes"] == len(want) and record["sha256"] == hashlib.sha256(want).hexdigest()
    index = json.loads(index_file.read_text())
    assert [s["url"] for s in index["shardlist"]] == [f"s3://outputs/ppm/in-{i:02d}.tar" for i in range(4)]
    assert sorted(fs.ls("outputs/ppm", detail=False)) == sorted(
        [f"outputs/ppm/in-{i:02d}.tar" for i in range(4)] + [f"outputs/ppm/in-{i:02d}.tar.tarmap.json" for i in range(4)])
    again = run(args, env=env)
    assert again.returncode == 0 and b"0 tasks done, 4 skipped" in again.stderr
    # a new object at an input's key (another ETag) makes its task run again
    fs.pipe_file("inputs/in-02.tar", shards[1].read_bytes())
    third = run(args, env=env)
    assert third.returncode == 0 and b"1 tasks done, 3 skipped" in third.stderr


@pytest.fixture(scope="module")
def big_shard(tmp_path_factory) -> Path:
    """A 12 MiB shard: an upload of it has several parts."""
    from tarproc.io.sinks import open_sink

    path = tmp_path_factory.mktemp("big") / "big.tar"
    with open_sink(str(path)) as sink:
        for i in range(3):
            sink.write({"__key__": f"s{i}", "bin": os.urandom(4 * 2**20)})
    return path


def test_task_killed_mid_upload_leaves_no_object(s3, big_shard, tmp_path):
    server, fs = s3
    env = server.env(tool_env())
    pidfile = tmp_path / "pid"
    # the first 11 MB flow (two parts are uploaded), then the pipeline hangs
    hang = f"echo $$ > {pidfile}; head -c 11000000; sleep 60"
    args = [str(BIN / "tarmap"), str(big_shard), "-o", "s3://outputs/big.tar", "--storage-option",
            f"default_block_size={BLOCK}"]
    proc = subprocess.Popen(args + ["-c", hang], env=env, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        found = uploads(fs, "outputs")
        if found and fs.call_s3("list_parts", Bucket="outputs", Key="big.tar", UploadId=found[0]["UploadId"]).get("Parts"):
            break
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # tarmap dies mid-upload: it cannot abort anything
    proc.wait()
    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    fs.invalidate_cache()
    assert not fs.exists("outputs/big.tar")
    assert len(uploads(fs, "outputs")) == 1  # the dead attempt's upload, never completed

    # a timeout mid-upload: the attempt aborts its own upload
    result = run(args + ["-c", hang, "--timeout", "4", "--retries", "0"], env=env, timeout=120)
    assert result.returncode == 1 and b"timed out" in result.stderr
    fs.invalidate_cache()
    assert not fs.exists("outputs/big.tar")
    assert len(uploads(fs, "outputs")) == 1

    # the re-run completes it and aborts the upload the killed attempt left
    result = run(args + ["-c", "cat"], env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    fs.invalidate_cache()
    assert fs.cat_file("outputs/big.tar") == big_shard.read_bytes()
    assert uploads(fs, "outputs") == []
    assert sorted(fs.ls("outputs", detail=False)) == ["outputs/big.tar", "outputs/big.tar.tarmap.json"]


def test_tarsink_to_s3_appears_only_when_complete(s3, tmp_path, monkeypatch):
    server, fs = s3
    for key, value in server.env({}).items():
        monkeypatch.setenv(key, value)
    from tarproc.io.sinks import open_sink

    with open_sink("s3://outputs/ok.tar.gz") as sink:
        sink.write({"__key__": "a", "txt": b"hello"})
    import gzip

    fs.invalidate_cache()
    assert gzip.decompress(fs.cat_file("outputs/ok.tar.gz"))[:5] == b"a.txt"
    with pytest.raises(RuntimeError):
        with open_sink("s3://outputs/bad.tar") as sink:
            sink.write({"__key__": "a", "txt": b"hello"})
            raise RuntimeError("the sample stream failed")
    fs.invalidate_cache()
    assert not fs.exists("outputs/bad.tar")
    # a tool writing to s3:// the same way
    result = run(["tarsort", str(tmp_path / "none.tar"), "-o", "s3://outputs/none.tar"], env=server.env(tool_env()))
    assert result.returncode == 1
    fs.invalidate_cache()
    assert not fs.exists("outputs/none.tar")
