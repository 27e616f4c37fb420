"""tarpcat: tarcats with parallel worker processes (``-p N``, default: the CPU count)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from tarproc.cli.app import REPEATED_KEYS, command, make_app, run_app
from tarproc.cli.tool import Tool
from tarproc.cli.tarcats import CATS, CATS_SHARED, run_cats

HELP = """\
Read many tar shards in parallel worker processes and merge their samples.

Each of the -p N workers reads whole shards (decompressing them) and sends
their samples back through a bounded queue; the parent writes them in input
order, so every sample of every shard appears exactly once, and the output is
the same as tarcats'. --shuffle N (with --seed) mixes samples of neighbouring
shards; --shuffle-shards shuffles the input order. Takes every tarcats option
except --interleave.

""" + REPEATED_KEYS + """ --rekey '{shard}/{key}' makes keys unique."""

EXAMPLES = """\
  tarpcat -p 8 'train-{0000..0147}.tgz' -o train.tar
  tarpcat -p 4 'train-{0000..0147}.tgz' --shuffle-shards --shuffle 5000 --seed 7 -o - | tarsplit -n 1000 -o mixed
  tarpcat -p 4 -T shards.txt --count 10000 -o subset.tar"""

#: -p with a default (the CPU count) described rather than shown: help and man page must not depend on the machine
Parallel = Annotated[
    int,
    typer.Option("-p", "--parallel", min=1, help="Worker processes.", metavar="N",
                 show_default="the number of CPUs, at least 2"),
]

app = make_app(HELP, EXAMPLES)


@command(app, shared=CATS_SHARED, options=CATS)
def tarpcat(tool: Tool, parallel: Parallel = max(2, os.cpu_count() or 2)) -> None:
    run_cats(tool, False, parallel)


def main() -> None:
    run_app(app, "tarpcat")


if __name__ == "__main__":
    main()
