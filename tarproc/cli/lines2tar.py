"""lines2tar: one sample per line of text."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tarproc.ops.create import DEFAULT_KEYFORMAT, KeyNumbers, UniqueKeys, line_samples, parse_fields
from tarproc.errors import UsageError
from tarproc.io.sources import open_source
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.options import output_option
from tarproc.cli.tool import Tool

app = make_app(
    help="Turn each line of text into a sample with the fields named by -k (default: one field, txt).\n\n"
    "A line is split at SEP (default: runs of whitespace) into as many values as there are fields; the"
    " last field takes the rest of the line. Values are stored as the bytes given (no trailing newline)."
    " Empty lines are skipped; a line with fewer values is an error. A field named __key__ gives the"
    " sample's key; otherwise keys are numbered with --keyformat from --start, continuing across inputs."
    " Fields are written in sorted order, so the same input gives the same bytes.",
    examples="""\
  lines2tar captions.txt -o captions.tar          # field txt: 000000000.txt, 000000001.txt, ...
  lines2tar -k 'url txt' urls.txt -o urls.tar
  printf 'cat_0001\\tA cat.\\n' | lines2tar -k '__key__ txt' -s '\\t' -o captions.tar
  cut -f1 list.tsv | lines2tar -k url --keyformat 'img{:06d}' -o - | tarsplit -n 1000 -o 'urls-%04d.tar'""",
)

TextInputs = Annotated[
    Optional[list[str]],
    typer.Argument(help="Text files: files, '-' for stdin, 'pipe:CMD', URLs, brace patterns like"
                   " 'urls-{00..09}.txt'. [default: -]", show_default=False, metavar="INPUT"),
]
FieldsOpt = Annotated[str, typer.Option("-k", "--fields", "--keys", help="Field names of the values of a line, e.g. 'url txt'.",
                                        metavar="FIELDS")]
Sep = Annotated[
    Optional[str],
    typer.Option("-s", "--separator", help="Value separator; '\\t' means a tab [default: runs of whitespace].",
                 metavar="SEP"),
]
KeyFormat = Annotated[str, typer.Option("--keyformat", help="Key of the N-th sample: a Python format of N.",
                                        metavar="FORMAT")]
Start = Annotated[int, typer.Option("--start", min=0, help="Number of the first key.", metavar="N")]


def parse_separator(sep: str | None) -> bytes | None:
    """The separator as bytes; ``\\t`` is a tab. :raises UsageError: empty"""
    if sep is None:
        return None
    if sep == "":
        raise UsageError("the separator must not be empty")
    return sep.replace("\\t", "\t").encode("utf-8", "surrogateescape")


@command(app, shared="write")
def lines2tar(
    tool: Tool,
    inputs: TextInputs = None,
    fields: FieldsOpt = "txt",
    output: output_option("-", "Output: a file (compressed by its suffix), '-' for stdout, or 'pipe:CMD'.") = "-",
    separator: Sep = None,
    keyformat: KeyFormat = DEFAULT_KEYFORMAT,
    start: Start = 0,
):
    with tool.run():
        names = parse_fields(fields)
        sep = parse_separator(separator)
        keys = KeyNumbers(keyformat, start)
        unique = UniqueKeys()  # across all inputs: a repeated key would split a sample
        specs = tool.input_specs(inputs, terminal=False)
        on_read = tool.count_input(specs)
        with tool.open_output(output) as sink:
            for spec in specs:
                with open_source(spec, on_read, tool.storage_options) as stream:
                    samples = line_samples(stream, names, sep, source=spec, keys=keys, unique=unique)
                    for sample in tool.progress(samples):
                        sink.write(sample)
        tool.wrote(sink, output)


def main() -> None:
    run_app(app, "lines2tar")


if __name__ == "__main__":
    main()
