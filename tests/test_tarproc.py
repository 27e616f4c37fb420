"""The tarproc tool through real pipes and processes (and CliRunner for usage)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
from conftest import run, tar_members, tool_env
from typer.testing import CliRunner

from tarproc import iter_samples
from tarproc.cli import tarproc as tarproc_cli

FIELDS_LS = b"__key__\n__source__\nsample.cls\nsample.jpg\nsample.json\n"


def sleeping(marker: str) -> bool:
    """Whether a `sleep MARKER` process exists (not tarproc, whose argv holds the marker too)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any(line.startswith(f"sleep {marker}") for line in ps.splitlines())


def keys_of(data: bytes) -> list[str]:
    keys = []
    for name, _ in tar_members(data):
        key = name.split(".", 1)[0]
        if not keys or keys[-1] != key:
            keys.append(key)
    return keys


def shard_keys(path) -> list[str]:
    return keys_of(open(path, "rb").read())


@pytest.fixture
def work(tmp_path):
    """A private work dir for sample directories; checked empty afterwards."""
    directory = tmp_path / "work"
    directory.mkdir()
    yield directory
    assert list(directory.iterdir()) == [], "temporary sample directories were left behind"


def test_ls_shows_the_sample_directory(imagenet_shard, work):
    out = run(["tarproc", "-c", "ls", "--count", "3", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert out.stdout == b""  # command output never reaches stdout
    assert out.stderr == FIELDS_LS * 3


def test_cat_key_prints_first_three_keys(imagenet_shard, work):
    out = run(["tarproc", "-c", "cat __key__; echo", "--count", "3", "-w", str(work)], input=imagenet_shard.read_bytes())
    assert out.returncode == 0, out.stderr
    assert out.stderr.decode().split() == shard_keys(imagenet_shard)[:3]


def test_convert_with_imagemagick(imagenet_shard_gz, work, tmp_path, convert_dir):
    env = tool_env(convert_dir)
    cmd = f"cat {imagenet_shard_gz} | tarproc -c 'convert sample.jpg sample.ppm; rm sample.jpg' --count 3 -o out.tar -w {work}"
    out = run(cmd, shell=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    members = tar_members((tmp_path / "out.tar").read_bytes())
    assert [n.rsplit(".", 1)[1] for n, _ in members] == ["cls", "json", "ppm"] * 3
    for name, data in members:
        if name.endswith(".ppm"):
            assert data.startswith(b"P6\n") or data.startswith(b"P6 ")


def test_convert_parallel_whole_shard_is_ordered(imagenet_shard, work, tmp_path, convert_dir):
    env = tool_env(convert_dir)
    cmd = "tarproc -c 'convert sample.jpg sample.ppm; rm sample.jpg' -w {w} -o {o} {i}"
    serial = run(cmd.format(w=work, o="p1.tar", i=imagenet_shard), shell=True, cwd=tmp_path, env=env)
    par = run(cmd.format(w=work, o="p2.tar", i=imagenet_shard) + " -p 2", shell=True, cwd=tmp_path, env=env)
    assert serial.returncode == 0 and par.returncode == 0, (serial.stderr, par.stderr)
    p1, p2 = (tmp_path / "p1.tar").read_bytes(), (tmp_path / "p2.tar").read_bytes()
    assert p1 == p2
    assert keys_of(p2) == shard_keys(imagenet_shard)


def test_stdout_to_dd(imagenet_shard, work, tmp_path):
    cmd = f"set -o pipefail; tarproc -c true -o - -w {work} {imagenet_shard} | dd of=/dev/null bs=64k"
    out = run(cmd, shell=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert b"bytes" in out.stderr  # dd's summary: the stream went through


def test_parallel_output_equals_input_and_webdataset_reads_it(imagenet_shard, work, tmp_path):
    out = run(["tarproc", "-p", "2", "-c", "true", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert tar_members(out.stdout) == tar_members(imagenet_shard.read_bytes())
    wds = pytest.importorskip("webdataset")
    (tmp_path / "o.tar").write_bytes(out.stdout)
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "o.tar"), shardshuffle=False)]
    assert keys == shard_keys(imagenet_shard)


def test_unordered_keeps_every_sample(imagenet_shard, work):
    out = run(["tarproc", "-p", "2", "--unordered", "-c", "true", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert sorted(tar_members(out.stdout)) == sorted(tar_members(imagenet_shard.read_bytes()))


def test_command_output_goes_to_stderr_and_quiet_silences_it(imagenet_shard, work):
    out = run(["tarproc", "-c", "echo hello; echo oops >&2", "--count", "2", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0
    assert len(tar_members(out.stdout)) == 6
    assert out.stderr == b"hello\noops\n" * 2
    quiet = run(["tarproc", "-q", "-c", "echo hello", "--count", "2", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_rename_through_key_file_and_add_log(imagenet_shard, work):
    cmd = 'echo "new_$(cat __key__)" > __key__; echo done; rm sample.jpg'
    out = run(["tarproc", "-c", cmd, "--add-log", "log", "--count", "2", "-o", "-", "-q", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    members = dict(tar_members(out.stdout))
    first = shard_keys(imagenet_shard)[0]
    assert members[f"new_{first}.log"] == b"done\n"
    assert sorted(n for n in members if n.startswith(f"new_{first}.")) == [
        f"new_{first}.{f}" for f in ("cls", "json", "log")
    ]


def test_subdirs_one_sample_to_many(imagenet_shard, work):
    cmd = 'for i in 1 2; do mkdir c$i; echo "$(cat __key__)_$i" > c$i/__key__; cp sample.cls c$i/sample.cls; done'
    out = run(["tarproc", "--subdirs", "-c", cmd, "--count", "2", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    k = shard_keys(imagenet_shard)[:2]
    assert [n for n, _ in tar_members(out.stdout)] == [f"{k[0]}_1.cls", f"{k[0]}_2.cls", f"{k[1]}_1.cls", f"{k[1]}_2.cls"]


def test_base_option_and_skip(imagenet_shard, work):
    out = run(["tarproc", "-b", "img", "-c", "ls img.*", "--skip", "1", "--count", "1", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0
    assert out.stderr == b"img.cls\nimg.jpg\nimg.json\n"


FAIL_SECOND = 'k=$(cat __key__); echo "line for $k"; [ "$k" != "{key}" ] || {{ echo "bad sample" >&2; exit 3; }}'


def _fail_cmd(shard):
    return FAIL_SECOND.format(key=shard_keys(shard)[1])


def test_failed_sample_is_left_out_and_reported(imagenet_shard, work, tmp_path):
    key = shard_keys(imagenet_shard)[1]
    out = run(["tarproc", "-c", _fail_cmd(imagenet_shard), "-q", "--count", "4", "-o", "out.tar", "--failed", "failed.tar",
               "-w", str(work), str(imagenet_shard)], cwd=tmp_path)
    assert out.returncode == 1
    err = out.stderr.decode()
    # -q: no line per sample; the summary and the exit status tell
    assert err == "tarproc: error: 1 of 4 samples failed\n"
    loud = run(["tarproc", "-c", _fail_cmd(imagenet_shard), "--count", "4", "-o", "out2.tar",
                "-w", str(work), str(imagenet_shard)], cwd=tmp_path)
    assert loud.returncode == 1 and f"sample '{key}' failed: exit status 3" in loud.stderr.decode()
    written = keys_of((tmp_path / "out.tar").read_bytes())
    assert written == [k for k in shard_keys(imagenet_shard)[:4] if k != key]
    failed = tar_members((tmp_path / "failed.tar").read_bytes())
    original = dict(tar_members(imagenet_shard.read_bytes()))
    assert [n for n, _ in failed] == [f"{key}.cls", f"{key}.jpg", f"{key}.json"]
    assert all(original[n] == d for n, d in failed)


def test_failed_file_is_made_only_when_a_sample_fails(imagenet_shard, work, tmp_path):
    args = ["--count", "3", "-o", "out.tar", "--failed", "failed.tar", "-w", str(work), str(imagenet_shard)]
    ok = run(["tarproc", "-c", "true", *args], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert not (tmp_path / "failed.tar").exists() and not (tmp_path / "failed.tar.partial").exists()
    (tmp_path / "failed.tar").write_bytes(b"an earlier run's failures")
    again = run(["tarproc", "-c", "true", *args], cwd=tmp_path)
    assert again.returncode == 0 and not (tmp_path / "failed.tar").exists()  # this run has none
    failing = run(["tarproc", "-c", _fail_cmd(imagenet_shard), "-q", *args], cwd=tmp_path)
    assert failing.returncode == 1
    assert keys_of((tmp_path / "failed.tar").read_bytes()) == shard_keys(imagenet_shard)[1:2]


def test_an_unknown_option_suggests_only_a_close_one(imagenet_shard):
    far = run(["tarproc", "--frobnicate", "-c", "true", str(imagenet_shard)])
    assert far.returncode == 2
    assert far.stderr.decode() == "tarproc: error: no such option: --frobnicate (see 'tarproc --help')\n"
    near = run(["tarproc", "--outptu", "x.tar", "-c", "true", str(imagenet_shard)])
    assert near.returncode == 2 and "--output" in near.stderr.decode(), near.stderr


def test_failure_report_shows_last_lines(imagenet_shard, work):
    out = run(["tarproc", "-c", _fail_cmd(imagenet_shard), "--count", "2", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 1
    assert b"  | bad sample" in out.stderr


def test_errors_abort_leaves_no_partial(imagenet_shard, work, tmp_path):
    out = run(["tarproc", "-e", "abort", "-q", "-c", _fail_cmd(imagenet_shard), "-o", "out.tar", "--failed", "failed.tar",
               "-w", str(work), str(imagenet_shard)], cwd=tmp_path)
    assert out.returncode == 1
    assert b"; --errors abort stops at the first failure" in out.stderr
    assert not (tmp_path / "out.tar").exists()
    # the failed sample that stopped the run is saved in a finished archive
    assert keys_of((tmp_path / "failed.tar").read_bytes()) == shard_keys(imagenet_shard)[1:2]
    assert not (tmp_path / "out.tar.partial").exists()


@pytest.mark.parametrize("how", [["--max-errors", "0"], ["-e", "abort"]])
def test_every_stop_removes_the_unfinished_output(imagenet_shard, work, tmp_path, how):
    out = run(["tarproc", *how, "-q", "-c", "exit 1", "-o", "out.tar", "-w", str(work), str(imagenet_shard)],
              cwd=tmp_path)
    assert out.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def keys_of_prefix(data: bytes) -> list[str]:
    """Keys of a tar stream without its end marker (read with tarfile, which tolerates that)."""
    return keys_of(data + bytes(1024))


def test_errors_ignore_keeps_sample(imagenet_shard, work):
    out = run(["tarproc", "-e", "ignore", "-q", "-c", _fail_cmd(imagenet_shard), "--count", "3", "-o", "-", "-w", str(work),
               str(imagenet_shard)])
    assert out.returncode == 0
    assert keys_of(out.stdout) == shard_keys(imagenet_shard)[:3]


def test_max_errors(imagenet_shard, work):
    out = run(["tarproc", "-q", "-c", "exit 1", "--max-errors", "2", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 1
    assert b"3 samples failed, more than the 2 allowed; --max-errors N allows more" in out.stderr


def test_timeout_kills_process_group(imagenet_shard, work):
    marker = f"31.{uuid.uuid4().int % 10**6}"
    out = run(["tarproc", "--timeout", "0.5", "-c", f"sleep {marker} & sleep {marker}", "--count", "1", "-o", "-",
               "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 1
    assert b"timed out after 0.5 s" in out.stderr
    assert not sleeping(marker)


def test_background_children_do_not_survive(imagenet_shard, work):
    marker = f"32.{uuid.uuid4().int % 10**6}"
    out = run(["tarproc", "-c", f"(sleep {marker} &) ; true", "--count", "2", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert not sleeping(marker)


def test_symlink_and_fifo_are_not_collected(imagenet_shard, work, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not copy")
    cmd = f"ln -s {secret} sample.txt; mkfifo sample.fifo; ln -s {tmp_path} sample.dir"
    out = run(["tarproc", "-c", cmd, "--count", "1", "-o", "-", "-w", str(work), str(imagenet_shard)], timeout=30)
    assert out.returncode == 1  # data the command made was not collected: reported
    err = out.stderr.decode()
    assert "not collecting symlink 'sample.txt'" in err
    assert "not collecting FIFO 'sample.fifo'" in err
    names = [n for n, _ in tar_members(out.stdout)]
    assert [n.split(".", 1)[1] for n in names] == ["cls", "jpg", "json"]
    assert b"do not copy" not in out.stdout


def test_bad_key_from_command_fails_sample(imagenet_shard, work):
    out = run(["tarproc", "-c", "echo a.b > __key__", "--count", "1", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 1
    assert b"would not survive the WebDataset key rule" in out.stderr


def test_output_compressed_by_suffix(imagenet_shard, work, tmp_path):
    out = run(["tarproc", "-c", "true", "--count", "2", "-o", "o.tgz", "-w", str(work), str(imagenet_shard)], cwd=tmp_path)
    assert out.returncode == 0
    data = (tmp_path / "o.tgz").read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert len(tar_members(data)) == 6


def test_verbose_summary(imagenet_shard, work):
    out = run(["tarproc", "-v", "-c", "true", "--count", "5", "-o", "/dev/null", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert b"tarproc: 5 samples in, 5 out, 0 failed" in out.stderr


def test_closed_pipe_is_quiet(imagenet_shard, work):
    cmd = f"tarproc -c true -o - -w {work} {imagenet_shard} | head -c 1000 > /dev/null; echo ${{PIPESTATUS[0]}} >&2"
    out = run(cmd, shell=True)
    assert out.stderr == b"141\n"


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_sigterm_kills_children_and_removes_temp_dirs(imagenet_shard, work, tmp_path, parallel):
    marker = f"33.{uuid.uuid4().int % 10**6}"
    proc = subprocess.Popen(
        ["tarproc", "-p", parallel, "-c", f"sleep {marker}", "-o", "out.tar", "-w", str(work), str(imagenet_shard)],
        cwd=tmp_path, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not sleeping(marker):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM, err  # 143 in a shell
    assert b"Traceback" not in err
    assert not sleeping(marker)
    assert not (tmp_path / "out.tar").exists()


def test_sigint_ends_it_by_the_signal(imagenet_shard, work, tmp_path):
    marker = f"34.{uuid.uuid4().int % 10**6}"
    proc = subprocess.Popen(
        ["tarproc", "-c", f"sleep {marker}", "-o", "out.tar", "-w", str(work), str(imagenet_shard)],
        cwd=tmp_path, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not sleeping(marker):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGINT, err  # 130 in a shell
    assert not sleeping(marker)


# ----------------------------------------------------------- usage (CliRunner)

runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of -c/--command, -s/--script or --map"),
        (["-c", "true", "-s", "x.sh"], "give exactly one of"),
        (["-c", "true", "-e", "explode"], "--errors must be abort, skip or ignore"),
        (["-c", "true", "-b", "a.b"], "--base 'a.b' must be a plain name"),
        (["-s", "/nonexistent/script.sh"], "no such file"),
        (["-c", "true", "--shell", "no-such-shell-xyz"], "not found on PATH"),
        (["-c", "true", "-w", "/nonexistent/dir"], "no such directory"),
        (["-c", "true", "--timeout", "0"], "--timeout must be more than 0 seconds"),
    ],
)
def test_usage_errors(args, message):
    result = runner.invoke(tarproc_cli.app, args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert result.stderr.startswith("tarproc: error: ")


def test_bad_option_is_usage_error():
    result = runner.invoke(tarproc_cli.app, ["--parallel", "zero"])
    assert result.exit_code == 2


def test_missing_input_file(tmp_path):
    out = run(["tarproc", "-c", "true", "-o", "-", str(tmp_path / "nope.tar")])
    assert out.returncode == 1
    assert out.stderr.decode().strip() == f"tarproc: error: {tmp_path / 'nope.tar'}: cannot open: No such file or directory"


def test_help_has_examples_and_exit_status():
    result = runner.invoke(tarproc_cli.app, ["--help"])
    assert result.exit_code == 0
    assert "tarproc -p 8 -c 'convert sample.jpg sample.ppm; rm sample.jpg' -o out.tar" in result.stdout
    assert "Exit status:" in result.stdout


def test_version():
    result = runner.invoke(tarproc_cli.app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("tarproc (tarproc) ")


# ------------------------------------------------- review regressions (issue 2)


def test_output_that_is_an_input_is_refused(imagenet_shard, tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(imagenet_shard.read_bytes())
    partial = tmp_path / "t.tar.partial"  # opening t.tar's temp file would truncate this input
    partial.write_bytes(imagenet_shard.read_bytes())
    cases = [
        (["-o", str(shard), str(shard)], f"-o/--output {str(shard)!r}"),
        (["-o", f"file://{shard}", str(shard)], f"-o/--output 'file://{shard}'"),
        (["-o", str(tmp_path / "t.tar"), str(partial)], f"-o/--output {str(tmp_path / 't.tar')!r}"),
        (["-o", "-", "--failed", str(shard), str(shard)], f"--failed {str(shard)!r}"),
    ]
    for args, what in cases:
        result = runner.invoke(tarproc_cli.app, ["-c", "rm sample.jpg", *args])
        assert result.exit_code == 2, result.stderr
        assert result.stderr == f"tarproc: error: {what} is also an input: write to another file\n"
    assert shard.read_bytes() == partial.read_bytes() == imagenet_shard.read_bytes()


def test_failed_file_same_as_output_is_refused(imagenet_shard, tmp_path):
    out = str(tmp_path / "o.tar")
    result = runner.invoke(tarproc_cli.app, ["-c", "true", "-o", out, "--failed", out, str(imagenet_shard)])
    assert result.exit_code == 2
    assert result.stderr == f"tarproc: error: --failed {out!r} is the same file as -o/--output {out!r}\n"
    assert not list(tmp_path.glob("o.tar*"))
    # /dev/null twice is fine: nothing is replaced
    ok = runner.invoke(tarproc_cli.app, ["-c", "true", "--count", "1", "-o", "/dev/null", "--failed", "/dev/null",
                                         str(imagenet_shard)])
    assert ok.exit_code == 0, ok.stderr


@pytest.mark.parametrize("how", ["constant key", "subdirs"])
def test_output_key_written_twice_fails_the_sample(imagenet_shard, work, how):
    # a key that comes back (or a repeated field) would make every reader reject the output
    if how == "constant key":
        args = ["-c", "echo same > __key__"]
    else:
        args = ["--subdirs", "-c", "mkdir a b; cp __key__ sample.cls a/; cp __key__ sample.cls b/"]
    out = run(["tarproc", *args, "--count", "3", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 1
    assert b"output key" in out.stderr and b"was already written (left out)" in out.stderr
    assert b"Traceback" not in out.stderr
    names = [n for n, _ in tar_members(out.stdout)]
    assert len(names) == len(set(names))
    keys = [s["__key__"] for s in iter_samples([_tmp_write(work.parent / "o.tar", out.stdout)])]
    # constant key: the first sample is written, the others fail; subdirs: each
    # sample's second subdirectory repeats its key, so every sample fails
    assert keys == (["same"] if how == "constant key" else [])


def _tmp_write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_member_named_like_a_meta_entry_is_read_as_one(tmp_path, work):
    # "k.__key__" once replaced the sample's key with bytes: a traceback; the original tarproc writes
    # KEY.__source__: such members are the sample's meta entries, reported in one line
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("k.__key__", "k.txt", "j.__source__", "j.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    out = run(["tarproc", "-c", "true", "-o", "-", "-w", str(work)], input=buf.getvalue())
    assert out.returncode == 0, out.stderr
    assert b"Traceback" not in out.stderr
    assert out.stderr.count(b"read 2 meta members ('k.__key__'") == 1, out.stderr
    assert [n for n, _ in tar_members(out.stdout)] == ["k.txt", "j.txt"]


def test_every_line_runs_in_bash_as_with_the_shell_by_its_path(imagenet_shard, tmp_path):
    # issue 16: `groupkill` (only line: kill -TERM 0) kills its whole process group; run by bash, that
    # group is bash's, so every sample fails "killed by signal 15", whether --shell names bash or its path
    import shutil
    import stat

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    groupkill = bin_dir / "groupkill"
    groupkill.write_text("#!/bin/sh\nkill -TERM 0\n")
    groupkill.chmod(groupkill.stat().st_mode | stat.S_IXUSR)
    env = tool_env(str(bin_dir))
    runs = []
    for shell in (None, shutil.which("bash")):
        out = tmp_path / f"out-{len(runs)}.tar"
        args = ["tarproc", "--count", "2", "-c", "groupkill; touch sample.after", "-o", str(out), str(imagenet_shard)]
        if shell:
            args[1:1] = ["--shell", shell]
        proc = run(args, env=env)
        runs.append((proc.returncode, proc.stderr, out.read_bytes() if out.exists() else None))
    assert runs[0] == runs[1]
    code, stderr, data = runs[0]
    assert code == 1 and stderr.decode().count("failed: killed by signal 15") == 2, stderr
    assert data is not None and tar_members(data) == []



def test_ctrl_c_stops_a_bash_loop_over_the_tool(imagenet_shard, work, tmp_path):
    # issue 19: Ctrl-C (SIGINT to the foreground process group) while the first tarproc of a loop runs;
    # bash goes on with the loop when its child exits 130, and stops when the child dies of SIGINT
    marker = f"35.{uuid.uuid4().int % 10**6}"
    loop = (f'for i in 1 2 3; do tarproc --count 1 -w {work} -c "test $i != 1 || sleep {marker}" -o out-$i.tar'
            f' {imagenet_shard}; echo "next $?"; done; echo finished')
    proc = subprocess.Popen(["bash", "-c", loop], cwd=tmp_path, env=tool_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not sleeping(marker):
            assert time.monotonic() < deadline and proc.poll() is None, "the command never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (proc.returncode, out) == (-signal.SIGINT, b""), err
    assert err.decode().endswith("tarproc: error: interrupted\n"), err
    assert not sleeping(marker)
    assert list(tmp_path.glob("out-*")) == []


def test_sigterm_ends_it_by_the_signal_and_a_shell_sees_143(imagenet_shard, work, tmp_path):
    marker = f"36.{uuid.uuid4().int % 10**6}"
    proc = subprocess.Popen(
        ["bash", "-c", f'tarproc -c "sleep {marker}" -o out.tar -w {work} {imagenet_shard}; echo "status $?"'],
        cwd=tmp_path, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not sleeping(marker):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    ps = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "tarproc"], capture_output=True, text=True).stdout.split()
    assert len(ps) == 1, ps
    os.kill(int(ps[0]), signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert out == b"status 143\n", err
    assert b"tarproc: error: terminated\n" in err and b"Traceback" not in err


def test_summary_counts_what_is_written_and_warns_about_files_left_behind(imagenet_shard, work, tmp_path):
    # issue 19: `rm sample.*` leaves nothing to write: not "5 out"
    out = run(["tarproc", "-v", "--count", "5", "-c", "rm sample.*", "-o", "out.tar", "-w", str(work),
               str(imagenet_shard)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert b"tarproc: 5 samples in, 0 out (5 left with no field: not written), 0 failed" in out.stderr
    assert tar_members((tmp_path / "out.tar").read_bytes()) == []
    # a file that is not sample.*: collected nowhere, so said once, with a count, never per sample
    out = run(["tarproc", "--count", "5", "-c", "cp sample.jpg image.ppm; rm sample.jpg; mkdir tmp", "-o", "-",
               "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert out.stderr == (b"tarproc: warning: 5 samples left files that are not collected"
                          b" (only sample.* files are): image.ppm tmp\n")
    assert len(keys_of(out.stdout)) == 5 and not any(name.endswith(".ppm") for name, _ in tar_members(out.stdout))
    # none left: no warning
    out = run(["tarproc", "--count", "2", "-c", "mv sample.jpg sample.img", "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0 and out.stderr == b"", out.stderr


@pytest.mark.parametrize("executable", [True, False])
def test_a_script_runs_by_its_shebang_line(imagenet_shard, work, tmp_path, executable):
    # issue 19: -s script.py with `#!/usr/bin/env python3` is Python, as ./script.py would be; a script
    # without #! still runs in bash
    script = tmp_path / "upper.py"
    script.write_text("#!/usr/bin/env python3\nimport sys\n"
                      "open('sample.up', 'w').write(open('__key__').read().upper() + ' ' + sys.executable)\n")
    if executable:
        script.chmod(0o755)
    out = run(["tarproc", "--count", "2", "-s", str(script), "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    ups = [data.decode() for name, data in tar_members(out.stdout) if name.endswith(".up")]
    assert len(ups) == 2 and all(" /" in up and up.split()[0].isupper() for up in ups), ups
    plain = tmp_path / "plain.sh"
    plain.write_text('echo "$BASH_VERSION" > sample.shell\n')
    out = run(["tarproc", "--count", "1", "-s", str(plain), "-o", "-", "-w", str(work), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert [data for name, data in tar_members(out.stdout) if name.endswith(".shell")][0].strip() != b""
    # persistent: the same program, exec'd by the shell's subshell
    out = run(["tarproc", "--persistent", "--count", "2", "-s", str(script), "-o", "-", "-w", str(work),
               str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert len([name for name, _ in tar_members(out.stdout) if name.endswith(".up")]) == 2
