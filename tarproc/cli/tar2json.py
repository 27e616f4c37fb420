"""tar2json: samples as JSON lines or TSV rows."""

from __future__ import annotations

import base64
import enum
import json
import sys
from typing import Annotated, Optional

import typer

from tarproc.ops.create import parse_fields
from tarproc.ops.describe import is_text
from tarproc.errors import UsageError
from tarproc.io.iov import whole_writes
from tarproc.io.spool import LargeField
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.tool import Tool

app = make_app(
    help="Write one JSON line (or TSV row) per sample with its __key__ and the chosen fields.\n\n"
    "A field that is text (valid UTF-8 without NUL bytes) becomes a JSON string. With --parse-json,"
    " fields named json or *.json are embedded as JSON values. Other bytes become {\"base64\": \"...\"}"
    " (--binary base64, the default) or {\"omitted\": SIZE} (--binary omit), so the output says which."
    " With -k, a chosen field that a sample lacks is null.\n\n"
    "--format tsv writes a header row (__key__ and the fields: -k, else those of the first sample) and"
    " one row per sample, with backslash, tab, newline and carriage return escaped as \\\\, \\t, \\n,"
    " \\r; binary values are base64 (or empty with --binary omit); a missing field is empty.\n\n"
    "--available lists the fields seen instead (field, TAB, number of samples carrying it).",
    examples="""\
  tar2json -k 'cls json' --parse-json imagenet-0000.tar | jq -c '[.__key__, .json.label]'
  tar2json --available 'imagenet-{0000..0147}.tgz'
  tar2json -k 'cls txt' --format tsv captions.tar > captions.tsv
  tar2json --binary omit --count 10 shard.tar""",
)


class Format(str, enum.Enum):
    jsonl = "jsonl"
    tsv = "tsv"


class Binary(str, enum.Enum):
    base64 = "base64"
    omit = "omit"


FieldsOpt = Annotated[
    Optional[str], typer.Option("-k", "--fields", "--keys", help="Fields to write, e.g. 'cls json' [default: all].", metavar="FIELDS")
]
ParseJson = Annotated[bool, typer.Option("--parse-json", help="Embed fields named json or *.json as JSON values.")]
BinaryOpt = Annotated[Binary, typer.Option("--binary", help="How to write bytes that are not text.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="Output format.")]
Available = Annotated[bool, typer.Option("--available", help="List the fields seen and how many samples carry each.")]


def _is_json_field(name: str) -> bool:
    return name == "json" or name.endswith(".json")


def _tsv_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@command(app, shared="read count skip")
def tar2json(
    tool: Tool,
    fields: FieldsOpt = None,
    parse_json: ParseJson = False,
    binary: BinaryOpt = Binary.base64,
    fmt: FormatOpt = Format.jsonl,
    available: Available = False,
):
    with tool.run():
        chosen = parse_fields(fields) if fields is not None else None  # -k '' is an error, not "all"
        if chosen and "__key__" in chosen:
            chosen.remove("__key__")
            if not chosen:
                raise UsageError("-k names no field besides __key__")
        specs = tool.input_specs()
        samples = tool.samples(specs)
        out = whole_writes(sys.stdout.buffer)  # raw under PYTHONUNBUFFERED: resume short writes
        if available:
            seen: dict[str, int] = {}
            for sample in samples:
                for name in sample:
                    if not name.startswith("__"):
                        seen[name] = seen.get(name, 0) + 1
            for name in sorted(seen):
                out.write(f"{name}\t{seen[name]}\n".encode("utf-8", "surrogateescape"))
            out.flush()
            tool.read_summary(specs)
            return
        omit = binary is Binary.omit
        bad_json = 0

        def value_of(name: str, data: bytes, key: str):
            nonlocal bad_json
            if data.__class__ is LargeField:  # a line holds the whole value: load it
                data = data.read()
            if is_text(data):
                text = data.decode("utf-8")
                if parse_json and _is_json_field(name):
                    try:
                        return json.loads(text)
                    except ValueError as exc:
                        bad_json += 1
                        tool.warn(f"sample {key!r}: field {name!r} is not valid JSON ({exc}); written as a string")
                return text
            if omit:
                return {"omitted": len(data)}
            return {"base64": base64.b64encode(data).decode("ascii")}

        tsv_columns = chosen
        header_written = False
        extra_warned = False
        if fmt is Format.tsv and tsv_columns is not None:
            out.write("\t".join(["__key__"] + tsv_columns).encode("utf-8", "surrogateescape") + b"\n")
            header_written = True
        for sample in samples:
            key = sample["__key__"]
            names = chosen if chosen is not None else [k for k in sample if not k.startswith("__")]
            if fmt is Format.jsonl:
                record = {"__key__": key}
                for name in names:
                    data = sample.get(name)
                    record[name] = None if data is None else value_of(name, data, key)
                line = json.dumps(record, ensure_ascii=False)
                out.write(line.encode("utf-8", "backslashreplace") + b"\n")
                continue
            if not header_written:
                tsv_columns = names
                out.write("\t".join(["__key__"] + tsv_columns).encode("utf-8", "surrogateescape") + b"\n")
                header_written = True
            elif chosen is None and not extra_warned:
                extra = [name for name in names if name not in tsv_columns]
                if extra:
                    extra_warned = True
                    tool.warn(f"sample {key!r} has fields {', '.join(extra)} that are not TSV columns (the columns"
                              " are the first sample's fields): they are left out; name the columns with -k")
            cells = [_tsv_escape(key)]
            for name in tsv_columns:
                data = sample.get(name)
                if data.__class__ is LargeField:
                    data = data.read()
                if data is None:
                    cells.append("")
                elif is_text(data):
                    cells.append(_tsv_escape(data.decode("utf-8")))
                else:
                    cells.append("" if omit else base64.b64encode(data).decode("ascii"))
            out.write("\t".join(cells).encode("utf-8", "surrogateescape") + b"\n")
        out.flush()
        tool.read_summary(specs)


def main() -> None:
    run_app(app, "tar2json")


if __name__ == "__main__":
    main()
