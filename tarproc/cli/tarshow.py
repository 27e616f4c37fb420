"""tarshow: look inside shards before using them."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from tarproc.ops.describe import Stats, contact_sheet, format_summary, summarize
from tarproc.errors import UsageError
from tarproc.io.iov import whole_writes
from tarproc.io.spool import LargeField
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.tool import Tool

app = make_app(
    help="Show what tar shards hold: samples, field sizes and previews, statistics, contact sheets.\n\n"
    "By default each sample is shown as its key, then each field with its size in bytes and a preview"
    " (the first line of text, truncated; binary data described by its magic number, e.g. 'JPEG 500x375"
    " RGB', 'PPM 7x5 RGB', 'WAV', 'MP3', 'MP4/ISO media', 'gzip', 'npy float32 (3, 224, 224)').\n\n"
    "--stats summarises the whole stream instead: samples, members, bytes, how many samples carry each"
    " field, size percentiles per field (nearest rank), skipped members, first and last key."
    " --contact-sheet draws the first images in a grid captioned with their keys (needs Pillow:"
    " pip install 'tarproc[images]').",
    examples="""\
  tarshow --count 3 imagenet-0000.tar
  tarshow --json imagenet-0000.tar | jq .fields.jpg.size
  tarshow --stats 'imagenet-{0000..0147}.tgz'
  tarshow -f jpg --skip 10 --count 1 imagenet-0000.tar | display
  tarshow --contact-sheet sheet.png --count 48 imagenet-0000.tar""",
)

Field = Annotated[
    Optional[str],
    typer.Option("-f", "--field", help="Write the raw bytes of FIELD of each sample to stdout, nothing else.",
                 metavar="FIELD"),
]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per sample (or the --stats as JSON).")]
StatsOpt = Annotated[bool, typer.Option("--stats", help="Print statistics over all samples read.")]
Sheet = Annotated[
    Optional[str],
    typer.Option("--contact-sheet", help="Write a grid of the first images (--count, default 64) to FILE (.png, .jpg).",
                 metavar="FILE"),
]
ImageField = Annotated[
    Optional[str],
    typer.Option("--image-field", help="Field of the contact sheet's images [default: the first jpg/png/... field].",
                 metavar="FIELD"),
]
Columns = Annotated[int, typer.Option("--columns", min=1, help="Images per row of the contact sheet.", metavar="N")]
Thumb = Annotated[int, typer.Option("--thumb", min=16, help="Cell size of the contact sheet in pixels.", metavar="PX")]
Width = Annotated[int, typer.Option("--width", min=10, help="Width of text previews in characters.", metavar="N")]


@command(app, shared="read count skip")
def tarshow(
    tool: Tool,
    field: Field = None,
    json_out: Json = False,
    stats: StatsOpt = False,
    sheet: Sheet = None,
    image_field: ImageField = None,
    columns: Columns = 8,
    thumb: Thumb = 128,
    width: Width = 60,
):
    with tool.run():
        modes = [name for name, on in (("-f", field), ("--stats", stats), ("--contact-sheet", sheet)) if on]
        if len(modes) > 1:
            raise UsageError(f"{' and '.join(modes)} cannot be combined")
        if json_out and (field or sheet):
            raise UsageError("--json goes with the listing or --stats, not with -f or --contact-sheet")
        specs = tool.input_specs()
        summary = Stats()

        def warn(message: str) -> None:
            summary.skipped(message)
            tool.warn(message)

        samples = tool.samples(specs, warn)
        out = whole_writes(sys.stdout.buffer)  # raw under PYTHONUNBUFFERED: resume short writes
        if sheet:
            limit = tool.args.count if tool.args.count is not None else 64
            n = contact_sheet(samples, sheet, limit=limit, columns=columns, thumb=thumb, field=image_field, warn=tool.warn)
            tool.info(f"wrote {sheet}: {n} images")
        elif stats:
            for sample in samples:
                summary.add(sample)
            if json_out:
                out.write(json_line(summary.to_dict()))
            else:
                out.write(summary.format().encode("utf-8", "surrogateescape") + b"\n")
        elif field:
            missing = written = 0
            for sample in samples:
                value = sample.get(field)
                if value is None:
                    missing += 1
                    continue
                if value.__class__ is LargeField:
                    value.write_to(out.write)  # in pieces from its file
                else:
                    out.write(value)
                written += 1
            if missing and not written:  # most likely a misspelt field: say so with the exit status
                tool.warn(f"no sample has a field {field!r} ({missing} samples read)")
            elif missing:
                tool.warn(f"{missing} samples have no field {field!r}", problem=False)
        else:
            first = True
            for sample in samples:
                if json_out:
                    out.write(json_line(summarize(sample, width)))
                else:
                    text = ("" if first else "\n") + format_summary(sample, width)
                    out.write(text.encode("utf-8", "surrogateescape") + b"\n")
                first = False
        out.flush()
        tool.read_summary(specs)


def json_line(obj) -> bytes:
    """One line of JSON in UTF-8; a name that is not UTF-8 (surrogate
    escapes) comes out as a JSON ``\\udcXX`` escape, so the line stays valid."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n"


def main() -> None:
    run_app(app, "tarshow")


if __name__ == "__main__":
    main()
