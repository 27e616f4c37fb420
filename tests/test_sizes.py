"""One size parser (tarproc.sizes.parse_size) behind every size option of
every tool, with the coreutils units: one table, checked against each option."""

from __future__ import annotations

import importlib
import tarfile

import pytest
import typer

from conftest import run
from tarproc.cli import TOOLS
from tarproc.sizes import format_size, parse_size

#: text -> bytes (K = 1024 like `sort -S`, KB = 1000 like `head -c 1KB`, KiB = 1024)
SIZES = [
    ("4096", 4096),
    ("1e9", 10**9),
    ("1.5e3", 1500),
    ("500M", 500 * 2**20),
    ("500MB", 500 * 10**6),
    ("500 MB", 500 * 10**6),
    ("500MiB", 500 * 2**20),
    ("2G", 2 * 2**30),
    ("2GB", 2 * 10**9),
    ("2GiB", 2 * 2**30),
    ("64k", 64 * 1024),
    ("1kB", 1000),
    ("10KiB", 10240),
    ("1.5K", 1536),
    ("3T", 3 * 2**40),
    ("7B", 7),
]
BAD = ["", "abc", "0", "0.1", "-5", "5X", "1e", "M", "2GiBB", "2Gi", "1 G B"]


def size_options():
    """(tool, click parameter) of every option taking a SIZE."""
    for tool in TOOLS:
        command = typer.main.get_command(importlib.import_module(f"tarproc.cli.{tool}").app)
        for param in command.params:
            if getattr(param, "metavar", None) == "SIZE":
                param.ctx = command.context_class(command, info_name=tool)
                yield tool, param


OPTIONS = list(size_options())


def test_the_known_size_options_are_found():
    assert {(tool, param.opts[-1]) for tool, param in OPTIONS} >= {("tarsplit", "--maxsize"),
                                                                    ("tarsort", "--buffer-size")}


@pytest.mark.parametrize("tool,param", OPTIONS, ids=[f"{t}{p.opts[-1]}" for t, p in OPTIONS])
def test_every_size_option_reads_the_table(tool, param):
    for text, expected in SIZES:
        assert parse_size(text) == expected, text
        assert param.process_value(param.ctx, text) == expected, f"{tool} {param.opts[-1]} {text}"
    for text in BAD:
        with pytest.raises(ValueError):
            parse_size(text)
        with pytest.raises(typer.BadParameter):
            param.process_value(param.ctx, text)


@pytest.mark.parametrize("tool,param", OPTIONS, ids=[f"{t}{p.opts[-1]}" for t, p in OPTIONS])
def test_a_bad_size_is_one_usage_line_naming_the_option(tool, param):
    out = run([tool, param.opts[-1], "12X"])
    assert out.returncode == 2
    assert out.stderr.decode() == (f"{tool}: error: invalid value for {_names(param)}: '12X' is not a size; sizes"
                                   f" look like 4096, 1e9, 500M, 500MB, 2GiB (see '{tool} --help')\n")


def _names(param) -> str:
    return " / ".join(f"'{name}'" for name in param.opts)


def test_tarsplit_maxsize_k_is_1024_bytes(imagenet_shard, tmp_path):
    """The new meaning: -s 100K is 102,400 bytes (it was 100,000)."""
    out = run(["tarsplit", "-s", "100K", "-o", str(tmp_path / "s-%04d.tar"), str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob("s-*.tar"))]
    assert len(sizes) > 1 and max(sizes) <= 100 * 1024
    assert max(sizes) > 100_000 or len(sizes) > 2  # the shards use the room above 10^5
    with tarfile.open(sorted(tmp_path.glob("s-*.tar"))[0]) as tar:
        assert tar.getnames()


def test_tarsort_takes_an_exponent(imagenet_shard):
    out = run(["tarsort", "--buffer-size", "1e9", "-o", "-", str(imagenet_shard)])
    assert out.returncode == 0, out.stderr
    assert out.stdout[:512].rstrip(b"\0")


def test_format_size_reads_back():
    for n in (0, 512, 1536, 5 * 2**20, 3 * 2**30):
        text = format_size(n)
        assert n == 0 or abs(parse_size(text) - n) / n < 0.05, text
