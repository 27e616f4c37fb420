"""tarsort through CliRunner and real pipes."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import time

import pytest
from conftest import run, tar_members, tool_env
from typer.testing import CliRunner

from tarproc import iter_samples
from tarproc.cli import tarsort as tarsort_cli
from tarproc.io.tario import TarWriter

runner = CliRunner()


def make_input(n: int, size: int = 1000, seed: int = 0, prefix: str = "s") -> bytes:
    """n samples with shuffled keys, a class and ``size`` random bytes."""
    rng = random.Random(seed)
    keys = [f"{prefix}{i:06d}" for i in range(n)]
    rng.shuffle(keys)
    out = io.BytesIO()
    writer = TarWriter(out)
    for key in keys:
        writer.add(f"{key}.bin", rng.randbytes(size))
        writer.add(f"{key}.cls", str(rng.randrange(10)).encode())
    writer.finish()
    return out.getvalue()


def samples_of(data: bytes) -> list[tuple[str, bytes, bytes]]:
    """(key, bin, cls) of every sample, read with the stdlib tarfile."""
    members = tar_members(data)
    return [(members[i][0][:-4], members[i][1], members[i + 1][1]) for i in range(0, len(members), 2)]


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """~4.6 MB of samples: 70 times the 64 KiB budget used below."""
    path = tmp_path_factory.mktemp("sort") / "in.tar"
    path.write_bytes(make_input(3000))
    return path


def test_sort_larger_than_budget_keeps_every_sample(big_input, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "sorted.tar"
    result = run(["tarsort", "--buffer-size", "64K", "--tmpdir", str(tmp), "-v", str(big_input), "-o", str(out)])
    assert result.returncode == 0, result.stderr
    runs = int(re.search(rb"(\d+) runs spilled", result.stderr).group(1))
    assert runs > 64  # more runs than one merge takes: a second pass was needed
    assert os.path.getsize(big_input) > 60 * (64 << 10)
    before = samples_of(big_input.read_bytes())
    after = samples_of(out.read_bytes())
    assert after == sorted(before)
    assert os.listdir(tmp) == []  # temporary runs removed


def test_sort_by_field_int_reverse_stable(big_input):
    result = runner.invoke(tarsort_cli.app, ["-s", "cls", "-S", "int", "-r", "--buffer-size", "200K", str(big_input)])
    assert result.exit_code == 0, result.stderr
    before = samples_of(big_input.read_bytes())
    after = samples_of(result.stdout_bytes)
    assert after == sorted(before, key=lambda s: -int(s[2]))  # stable: input order within a class


def test_shuffle_is_a_permutation_same_for_same_seed(big_input):
    def shuffled(seed, data=None, args=()):
        result = runner.invoke(tarsort_cli.app, ["--shuffle", "--seed", seed, *args],
                               input=data or big_input.read_bytes())
        assert result.exit_code == 0, result.stderr
        return samples_of(result.stdout_bytes)

    before = samples_of(big_input.read_bytes())
    a, b, c = shuffled("7"), shuffled("7", args=["--buffer-size", "100K"]), shuffled("8")
    assert sorted(a) == sorted(before) and sorted(c) == sorted(before)
    assert a == b
    assert a != c and a != before and a != sorted(before)
    # the order depends on the keys only, not on the input order
    assert shuffled("7", make_input(3000, seed=0)) == a


def test_pipeline_shuffle_then_sort_gives_the_sorted_bytes(tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b.tgz"
    a.write_bytes(make_input(50, 10, seed=1))
    assert run(["tarsort", "-o", str(b), str(a)]).returncode == 0
    result = run(f"cat {a} | tarsort --shuffle -o - | tarsort -o - | cmp - <(gzip -dc {b})", shell=True)
    assert result.returncode == 0, result.stderr
    assert [s["__key__"] for s in iter_samples([str(b)])] == sorted(s[0] for s in samples_of(a.read_bytes()))


def test_a_key_repeated_across_inputs_is_an_error_naming_key_and_inputs(tmp_path):
    # grouping by key cannot repair two samples that share a key and a field
    a = tmp_path / "a.tar"
    a.write_bytes(make_input(3, 10))
    result = runner.invoke(tarsort_cli.app, [str(a), str(a)])
    assert result.exit_code == 3
    assert f"key '000000' has field 'bin' in both {a} and {a}" in result.stderr or f"twice in {a}" in result.stderr
    assert "--rekey" in result.stderr


def test_usage_and_data_errors(tmp_path):
    result = runner.invoke(tarsort_cli.app, ["--shuffle", "-s", "cls"])
    assert result.exit_code == 2 and "cannot be combined" in result.stderr
    result = runner.invoke(tarsort_cli.app, ["--buffer-size", "lots"])
    assert result.exit_code == 2 and "'lots' is not a size" in result.stderr
    result = runner.invoke(tarsort_cli.app, ["-S", "date"])
    assert result.exit_code == 2
    result = runner.invoke(tarsort_cli.app, ["-s", "bin", "-S", "int"], input=make_input(2, 4))
    assert result.exit_code == 3 and "is not an int" in result.stderr
    result = runner.invoke(tarsort_cli.app, ["-s", "txt"], input=make_input(2, 4))
    assert result.exit_code == 3 and "has no field 'txt'" in result.stderr
    out = tmp_path / "o.tar"
    result = runner.invoke(tarsort_cli.app, ["-o", str(out)], input=make_input(2, 4)[:1000])
    assert result.exit_code == 3 and not out.exists()


def test_help_shows_examples():
    result = runner.invoke(tarsort_cli.app, ["--help"])
    assert result.exit_code == 0 and "Examples:" in result.stdout and "--shuffle --seed 7" in result.stdout


def test_sigterm_removes_temporary_runs(big_input, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(["tarsort", "--buffer-size", "64K", "--tmpdir", str(tmp), "-o", str(tmp_path / "o.tar")],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=tool_env())
    data = big_input.read_bytes()
    proc.stdin.write(data[: len(data) // 2])  # no end: tarsort waits for more input
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dirs = os.listdir(tmp)
        if dirs and len(os.listdir(tmp / dirs[0])) > 3:
            break
        time.sleep(0.05)
    else:
        pytest.fail("tarsort wrote no runs")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, err  # 143 in a shell
    assert b"terminated" in err
    assert os.listdir(tmp) == []
    assert not (tmp_path / "o.tar").exists()


def test_cross_shard_shuffle_pipeline(tmp_path):
    """tarcats | tarsort --shuffle | tarsplit: every sample once, in the hash order."""
    shards = []
    for i in range(3):
        path = tmp_path / f"in-{i:04d}.tar"
        path.write_bytes(make_input(20, 10, seed=i, prefix=f"shard{i}-"))
        shards.append(path)
    out = tmp_path / "out"
    out.mkdir()
    result = run(f"tarcats '{tmp_path}/in-{{0000..0002}}.tar' -o - | tarsort --shuffle --seed 3 -o -"
                 f" | tarsplit -n 25 -o '{out}/out-%06d.tar'", shell=True)
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(out))
    assert names == ["out-000000.tar", "out-000001.tar", "out-000002.tar"]
    got = [s for name in names for s in samples_of((out / name).read_bytes())]
    expected = sorted(s for path in shards for s in samples_of(path.read_bytes()))
    assert sorted(got) == expected and len(got) == 60
    direct = runner.invoke(tarsort_cli.app, ["--shuffle", "--seed", "3", *map(str, shards)])
    assert samples_of(direct.stdout_bytes) == got


def test_missing_tmpdir_is_a_usage_error_before_reading(tmp_path):
    """Regression: a wrong --tmpdir was noticed only when the first run
    spilled (after reading --buffer-size bytes, 256 MB by default)."""
    result = runner.invoke(tarsort_cli.app, ["--tmpdir", str(tmp_path / "nope"), "-o", str(tmp_path / "o.tar")],
                           input=make_input(2, 4))
    assert result.exit_code == 2 and "--tmpdir" in result.stderr and "is not a directory" in result.stderr
    assert list(tmp_path.iterdir()) == []
