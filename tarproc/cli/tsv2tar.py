"""tsv2tar: samples from a TSV plan."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tarproc.ops.create import DEFAULT_KEYFORMAT, KeyNumbers, tsv_samples
from tarproc.errors import UsageError
from tarproc.io.sources import check_inputs_exist, open_source
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.options import output_option
from tarproc.cli.tool import Tool

app = make_app(
    help="Make one sample per row of a TSV plan.\n\n"
    "The first row names the fields. A column named FIELD holds the text of that field; a column named"
    " @FIELD holds the path of a regular file whose content becomes the field (relative paths are"
    " relative to -C DIR; symbolic links are followed; a FIFO or device is an error);"
    " an optional __key__ column holds the keys, otherwise they are numbered with --keyformat. Columns"
    " are separated by single tabs, without quoting; a plan named *.csv, or --delim CHAR, is read as CSV"
    " (Python's csv module, with quoting). An empty cell leaves that field out of the sample;"
    " empty lines are skipped. Fields are written in sorted order, so the same plan and files give the"
    " same bytes.\n\n"
    "Paths are read as the plan gives them: an absolute path, or one with '..' that leads out of DIR, is"
    " read too (a plan can name any file you can read; -C is a base, not a boundary). Check plans from"
    " elsewhere before running them.",
    examples="""\
  printf '__key__\\t@jpg\\tcls\\nn0144_1\\timg/1.jpg\\t0\\n' > plan.tsv
  tsv2tar plan.tsv -o train.tar
  tsv2tar -C /data/images plan.tsv -o - | tarsplit -n 10000 -o 'train-%06d.tar'
  cat plan.tsv | tsv2tar - -o train.tgz
  tsv2tar plan.csv -o train.tar                 # comma-separated, quoted cells allowed""",
)

Plan = Annotated[str, typer.Argument(help="The TSV plan: a file, '-' for stdin, 'pipe:CMD' or a URL.",
                                     metavar="PLAN", show_default=False)]
Directory = Annotated[str, typer.Option("-C", "--directory", help="Base directory of relative @FIELD paths.",
                                        metavar="DIR")]
KeyFormat = Annotated[str, typer.Option("--keyformat", help="Key of the N-th row without __key__: a Python format of N.",
                                        metavar="FORMAT")]
Start = Annotated[int, typer.Option("--start", min=0, help="Number of the first key.", metavar="N")]
Delim = Annotated[
    Optional[str],
    typer.Option("-d", "--delim", help="Column separator, one character ('\\t' is a tab); other than a tab the plan"
                 " is read as CSV (Python's csv module: quoting) [default: ',' for a PLAN ending in .csv, else a tab].",
                 metavar="CHAR", show_default=False),
]


@command(app, shared="write")
def tsv2tar(
    tool: Tool,
    plan: Plan = "-",
    output: output_option("-", "Output: a file (compressed by its suffix), '-' for stdout, or 'pipe:CMD'.") = "-",
    directory: Directory = ".",
    keyformat: KeyFormat = DEFAULT_KEYFORMAT,
    start: Start = 0,
    delim: Delim = None,
):
    with tool.run():
        KeyNumbers(keyformat, start)  # a bad --keyformat is a usage error before anything is read
        if delim is None:
            delim = "," if plan.lower().endswith(".csv") else "\t"
        delim = delim.replace("\\t", "\t")
        if len(delim) != 1:
            raise UsageError(f"--delim {delim!r}: give one character")
        check_inputs_exist([plan])
        with open_source(plan, storage_options=tool.storage_options) as stream:
            samples = tsv_samples(stream, directory, keyformat, start, source=plan, delimiter=delim)
            with tool.open_output(output) as sink:
                for sample in tool.progress(samples):
                    sink.write(sample)
        tool.wrote(sink, output)


def main() -> None:
    run_app(app, "tsv2tar")


if __name__ == "__main__":
    main()
