"""tarproc's execution modes through real pipes: --persistent, --batch, --map,
--retries, --halt-after (fail fast), and the README's examples."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import pytest
from conftest import run, tar_members, tool_env
from test_tarproc import keys_of, shard_keys, sleeping


@pytest.fixture
def work(tmp_path):
    directory = tmp_path / "work"
    directory.mkdir()
    yield directory
    assert list(directory.iterdir()) == [], "temporary sample directories were left behind"


def tarproc(*args, work, input=None, cwd=None):
    return run(["tarproc", *map(str, args), "-w", str(work)], input=input, cwd=cwd)


MODES = {
    "spawn": [],
    "persistent": ["--persistent"],
}


# ------------------------------------------------------- every mode, same rules


@pytest.mark.parametrize("parallel", ["1", "2"])
@pytest.mark.parametrize("mode", ["spawn", "persistent", "batch", "persistent-batch"])
def test_every_mode_gives_the_same_ordered_output(imagenet_shard, work, mode, parallel):
    per_sample = "md5sum < sample.jpg > sample.md5; rm sample.jpg"
    if "batch" in mode:
        args = ["--batch", "7", "-c", f"for d in 0*/; do (cd $d && {per_sample}); done"]
    else:
        args = ["-c", per_sample]
    if "persistent" in mode:
        args.append("--persistent")
    out = tarproc("-p", parallel, *args, "-o", "-", imagenet_shard, work=work)
    assert out.returncode == 0, out.stderr
    reference = tarproc("-c", per_sample, "-o", "-", imagenet_shard, work=work)
    assert out.stdout == reference.stdout
    assert keys_of(out.stdout) == shard_keys(imagenet_shard)
    assert [n.split(".", 1)[1] for n, _ in tar_members(out.stdout)][:3] == ["cls", "json", "md5"]


@pytest.mark.parametrize("mode", ["persistent", "batch"])
def test_symlink_and_fifo_refused_in_every_mode(imagenet_shard, work, tmp_path, mode):
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not copy")
    cmd = f"ln -s {secret} sample.txt; mkfifo sample.fifo"
    args = ["--persistent", "-c", cmd] if mode == "persistent" else ["--batch", "2", "-c", f"for d in 0*/; do (cd $d; {cmd}); done"]
    out = tarproc(*args, "--count", "2", "-o", "-", imagenet_shard, work=work)
    assert out.returncode == 1
    assert out.stderr.count(b"not collecting symlink 'sample.txt'") == 2
    assert out.stderr.count(b"not collecting FIFO 'sample.fifo'") == 2
    assert b"do not copy" not in out.stdout


def test_subdirs_and_failed_in_batch_mode(imagenet_shard, work, tmp_path):
    keys = shard_keys(imagenet_shard)
    # the batch fails because of one sample: each sample then runs alone and only that one fails
    cmd = (f'for d in 0*/; do [ "$(cat $d/__key__)" != {keys[2]} ] || exit 4; '
           'mkdir $d/a; cp $d/__key__ $d/sample.cls $d/a/; done')
    out = tarproc("--batch", "4", "--subdirs", "-c", cmd, "--count", "6", "-o", "out.tar", "--failed", "failed.tar",
                  imagenet_shard, work=work, cwd=tmp_path)
    assert out.returncode == 1
    assert f"sample '{keys[2]}' failed: exit status 4".encode() in out.stderr
    assert keys_of((tmp_path / "out.tar").read_bytes()) == [k for k in keys[:6] if k != keys[2]]
    assert keys_of((tmp_path / "failed.tar").read_bytes()) == [keys[2]]


# ------------------------------------------------------------ --persistent


def test_persistent_samples_do_not_see_each_others_state(imagenet_shard, work):
    # first sample: leave the directory, set (and export) variables, define a
    # function, exit 3; every later sample must find a clean shell in its own directory
    first = shard_keys(imagenet_shard)[0]
    cmd = (
        f'if [ "$(cat __key__)" = {first} ]; then cd /; X=1; export Y=2; f() {{ :; }}; set -e; exit 3; fi; '
        '[ -f __key__ ] && [ -z "$X$Y" ] && ! type f >/dev/null 2>&1 && case $- in *e*) exit 8;; esac; '
        'echo "ok $(cat __key__)"'
    )
    out = tarproc("--persistent", "-c", cmd, "--count", "5", "-o", "-", imagenet_shard, work=work)
    assert out.returncode == 1
    err = out.stderr.decode()
    assert f"sample '{first}' failed: exit status 3" in err
    assert [line.split()[1] for line in err.splitlines() if line.startswith("ok ")] == shard_keys(imagenet_shard)[1:5]
    assert keys_of(out.stdout) == shard_keys(imagenet_shard)[1:5]


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_persistent_timeout_kills_exec_and_the_run_goes_on(imagenet_shard, work, parallel):
    marker = f"41.{uuid.uuid4().int % 10**6}"
    first = shard_keys(imagenet_shard)[0]
    cmd = f'[ "$(cat __key__)" != {first} ] || {{ sleep {marker} & exec sleep {marker}; }}; echo "ran $(cat __key__)"'
    out = tarproc("-p", parallel, "--persistent", "--timeout", "0.5", "-c", cmd, "--count", "4", "-o", "-",
                  imagenet_shard, work=work)
    assert out.returncode == 1
    assert f"sample '{first}' failed: timed out after 0.5 s".encode() in out.stderr
    assert keys_of(out.stdout) == shard_keys(imagenet_shard)[1:4]
    assert out.stderr.count(b"ran ") == 3
    assert not sleeping(marker)


def test_persistent_background_children_do_not_survive(imagenet_shard, work):
    marker = f"42.{uuid.uuid4().int % 10**6}"
    out = tarproc("--persistent", "-c", f"(sleep {marker} &); sleep {marker} & true", "--count", "2", imagenet_shard, work=work)
    assert out.returncode == 0, out.stderr
    assert not sleeping(marker)


def test_persistent_environment_and_output_contract(imagenet_shard, work):
    out = run(["tarproc", "--persistent", "-c", 'echo "$TARPROC_TEST_VAR"; echo err >&2; cat >/dev/null; ls',
               "--count", "2", "-o", "/dev/null", "-w", str(work), str(imagenet_shard)],
              env={**tool_env(), "TARPROC_TEST_VAR": "from-env"}, input=b"")
    assert out.returncode == 0, out.stderr
    assert out.stderr == (b"from-env\nerr\n" + b"__key__\n__source__\nsample.cls\nsample.jpg\nsample.json\n") * 2


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_persistent_sigterm_leaves_no_child_and_no_directory(imagenet_shard, work, tmp_path, parallel):
    marker = f"43.{uuid.uuid4().int % 10**6}"
    proc = subprocess.Popen(
        ["tarproc", "--persistent", "-p", parallel, "-c", f"sleep {marker}", "-o", "out.tar", "-w", str(work), str(imagenet_shard)],
        cwd=tmp_path, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not sleeping(marker):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM, err  # 143 in a shell
    assert not sleeping(marker)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "__tarproc_cmd" not in ps  # no persistent shell left
    assert not (tmp_path / "out.tar").exists()


# ---------------------------------------------------- --retries, --halt-after


def test_retries_rerun_a_command_that_fails_once_per_sample(imagenet_shard, work, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    cmd = f'm={state}/$(cat __key__); if [ -e $m ]; then rm sample.jpg; else touch $m; echo first try; exit 1; fi'
    once = tarproc("-p", "2", "-c", cmd, "--count", "5", "-o", "-", imagenet_shard, work=work)
    assert once.returncode == 1  # without --retries every sample fails once
    assert once.stderr.count(b"failed: exit status 1") == 5
    for marker in state.iterdir():
        marker.unlink()
    out = tarproc("-v", "-p", "2", "--retries", "1", "-c", cmd, "--count", "5", "-o", "-", imagenet_shard, work=work)
    assert out.returncode == 0, out.stderr
    assert keys_of(out.stdout) == shard_keys(imagenet_shard)[:5]
    assert all(not n.endswith(".jpg") for n, _ in tar_members(out.stdout))
    assert b"tarproc: 5 samples in, 5 out, 0 failed, 5 retries" in out.stderr


def test_retries_exhausted_reports_attempts(imagenet_shard, work):
    out = tarproc("--retries", "2", "--halt-after", "0", "-c", "exit 5", "--count", "2", "-o", "-", imagenet_shard, work=work)
    assert out.returncode == 1
    assert out.stderr.count(b"failed: exit status 5 (left out, after 3 attempts)") == 2


@pytest.mark.parametrize("mode", ["spawn", "persistent"])
def test_fail_fast_on_a_command_that_does_not_exist(imagenet_shard, work, mode):
    out = tarproc(*MODES[mode], "-p", "2", "-c", "no-such-command-xyz", "-o", "-", imagenet_shard, work=work)
    assert out.returncode == 1
    err = out.stderr.decode()
    assert err.count("\n") == 1, err  # one message, not one per sample
    assert err.startswith("tarproc: error: the first 10 samples all failed: command 'no-such-command-xyz'")
    assert err.endswith("; --halt-after K sets how many (0: never)\n"), err
    assert "no-such-command-xyz: command not found" in err
    assert out.stdout == b""


def test_halt_after_zero_runs_everything(imagenet_shard, work):
    out = tarproc("--halt-after", "0", "-c", "exit 2", "-o", "/dev/null", imagenet_shard, work=work)
    assert out.returncode == 1
    assert out.stderr.count(b"failed: exit status 2 (left out)") == len(shard_keys(imagenet_shard))


def test_no_halt_once_a_sample_succeeded(imagenet_shard, work):
    keys = shard_keys(imagenet_shard)
    out = tarproc("--halt-after", "3", "-c", f'[ "$(cat __key__)" = {keys[0]} ]', "-o", "/dev/null", imagenet_shard, work=work)
    assert out.returncode == 1
    assert out.stderr.count(b"failed: exit status 1") == len(keys) - 1


def test_max_errors_beats_halt_after_when_it_comes_first(imagenet_shard, work):
    out = tarproc("--max-errors", "2", "-c", "exit 1", "-o", "-", imagenet_shard, work=work)
    assert out.returncode == 1
    assert b"3 samples failed, more than the 2 allowed; --max-errors N allows more" in out.stderr


# ------------------------------------------------------------------ --map

MAPPER = '''
def identity(sample):
    return sample

def upper(sample):
    if sample["__key__"].endswith("1"):
        raise ValueError("no keys ending in 1")
    if sample["__key__"].endswith("2"):
        return None
    if sample["__key__"].endswith("3"):
        return [dict(sample, __key__=sample["__key__"] + "_a"), {"__key__": sample["__key__"] + "_b", "txt": "two"}]
    return {"__key__": sample["__key__"], "cls": sample["cls"] + b"!"}

def batch_identity(samples):
    assert isinstance(samples, list) and len(samples) <= 4
    return samples
'''


@pytest.fixture
def mapper(tmp_path):
    path = tmp_path / "mapper.py"
    path.write_text(MAPPER)
    return path


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_map_raises_drops_and_multiplies(imagenet_shard, work, mapper, parallel, tmp_path):
    keys = shard_keys(imagenet_shard)[:12]
    out = tarproc("-p", parallel, "--map", f"{mapper}:upper", "--count", "12", "-o", "-", "--failed", "failed.tar",
                  imagenet_shard, work=work, cwd=tmp_path)
    assert out.returncode == 1
    err = out.stderr.decode()
    raising = [k for k in keys if k.endswith("1")]
    assert raising and all(f"sample '{k}' failed: {mapper}:upper raised ValueError: no keys ending in 1" in err for k in raising)
    assert "  | ValueError: no keys ending in 1" in err  # the end of the traceback: its failure log
    members = dict(tar_members(out.stdout))
    expected = []
    for k in keys:
        if k.endswith(("1", "2")):
            continue
        if k.endswith("3"):
            expected += [f"{k}_a", f"{k}_b"]
        else:
            expected.append(k)
    assert keys_of(out.stdout) == expected
    plain = next(k for k in keys if k[-1] not in "123")
    assert members[f"{plain}.cls"].endswith(b"!") and f"{plain}.jpg" not in members
    three = next(k for k in keys if k.endswith("3"))
    assert members[f"{three}_b.txt"] == b"two" and f"{three}_a.jpg" in members
    assert keys_of((tmp_path / "failed.tar").read_bytes()) == raising


@pytest.mark.parametrize("args", [["--map", "{m}:identity"], ["--map", "{m}:batch_identity", "--map-batch", "4"]])
def test_map_identity_is_byte_identical(imagenet_shard, work, mapper, args):
    args = [a.format(m=mapper) for a in args]
    out = tarproc("-p", "2", *args, "-o", "-", imagenet_shard, work=work)
    assert out.returncode == 0, out.stderr
    assert tar_members(out.stdout) == tar_members(imagenet_shard.read_bytes())


def test_map_module_reference(imagenet_shard, work, mapper, tmp_path):
    out = run(["tarproc", "--map", "mapper:identity", "--count", "2", "-o", "-", str(imagenet_shard)],
              env={**tool_env(), "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert keys_of(out.stdout) == shard_keys(imagenet_shard)[:2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--map", "nocolon"], "function 'nocolon': give PATH.py:NAME or MODULE:NAME; given with --map"),
        (["--map", "/nonexistent/m.py:f"], "no such file"),
        (["--map", "{m}:missing"], "has no function 'missing'"),
        (["--map", "{m}:identity", "--persistent"], "--persistent applies to commands, not to --map"),
        (["--map", "{m}:identity", "--timeout", "3"], "--timeout applies to commands"),
        (["-c", "true", "--map-batch", "2"], "--map-batch goes with --map"),
        (["-c", "true", "--map", "{m}:identity"], "give exactly one of -c/--command, -s/--script or --map"),
    ],
)
def test_map_usage_errors(mapper, args, message, imagenet_shard):
    out = run(["tarproc", *[a.format(m=mapper) for a in args], str(imagenet_shard)])
    assert out.returncode == 2
    assert out.stderr.decode().startswith("tarproc: error: ") and message in out.stderr.decode()
    assert out.stderr.count(b"\n") == 1


# ----------------------------------------------------------- README examples

RESIZE = "#!/bin/bash\nset -e\nmv sample.jpg sample.png\n"


def test_readme_script_example_runs(imagenet_shard, tmp_path, work):
    (tmp_path / "resize.sh").write_text(RESIZE)
    (tmp_path / "resize.sh").chmod(0o755)
    shard = tmp_path / "train-0000.tar"
    shard.write_bytes(imagenet_shard.read_bytes())
    out = run(["tarproc", "-p", "4", "-s", "resize.sh", "--timeout", "60", "--failed", "failed.tar", "-o", "out.tgz",
               "train-{0000..0000}.tar", "-w", str(work)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names = [n for n, _ in tar_members((tmp_path / "out.tgz").read_bytes())]
    assert len(names) == 3 * len(shard_keys(imagenet_shard)) and all(not n.endswith(".jpg") for n in names)
    assert not (tmp_path / "failed.tar").exists()  # made only when a sample fails


def test_relative_command_fails_fast_with_a_hint(imagenet_shard, tmp_path, work):
    (tmp_path / "resize.sh").write_text(RESIZE)
    (tmp_path / "resize.sh").chmod(0o755)
    out = run(["tarproc", "-p", "2", "-c", "./resize.sh", "-o", "out.tar", str(imagenet_shard), "-w", str(work)], cwd=tmp_path)
    assert out.returncode == 1
    err = out.stderr.decode()
    assert err.count("\n") == 1
    assert "the command runs in the sample's directory, where there is no './resize.sh'" in err
    assert not (tmp_path / "out.tar").exists()
