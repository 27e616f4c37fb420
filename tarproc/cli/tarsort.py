"""tarsort: sort or shuffle the samples of tar shards, with bounded memory."""

from __future__ import annotations

import enum
import os
from typing import Annotated, Optional

import typer

from tarproc.errors import UsageError
from tarproc.ops.sort import (
    DEFAULT_BUFFER,
    ExternalSorter,
    merge_fragments,
    regroup_and_sort,
    sort_key_function,
)
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.options import output_option, size_option
from tarproc.cli.tool import Tool

app = make_app(
    help="Sort or shuffle the samples of tar shards with bounded memory.\n\n"
    "Samples are sorted by key (the default) or by a field's content, or shuffled in a deterministic"
    " hash order, and written as one tar stream.\n\n"
    "Keys and -S str fields compare by their bytes (like LC_ALL=C sort); -S int and -S float parse"
    " the text as a number (NaN sorts last, first with --reverse). --shuffle orders by BLAKE2b of the key keyed with --seed:"
    " the same seed and keys give the same order whatever the input order, so sorting the concatenation"
    " of all shards is a true cross-shard shuffle. The sort is stable: samples with equal sort keys are"
    " all kept, in input order (also with --reverse).\n\n"
    "tarsort also repairs ungrouped shards: the members of each key are gathered into one sample across"
    " the whole input (all inputs), so a shard made with `tar cf` of a directory in directory order, where"
    " the members of a sample are not adjacent, comes out grouped. A key whose members collide on a field"
    " (two samples with the same key, e.g. shards made independently and concatenated) is an error naming"
    " the key and the inputs: rekey them instead (tarcats --rekey '{shard}/{key}'). Sorting by a field"
    " (-s) or a typed key (-S int/float) groups first, in one more pass over the spilled runs.\n\n"
    "Memory stays bounded: samples are buffered up to --buffer-size, sorted and spilled as runs to a"
    " private directory in --tmpdir, then merged. Temporary files are removed on success, errors and"
    " interrupts. Output starts only when all input has been read.",
    examples="""\
  tarsort shard.tar -o sorted.tar
  tarsort -s cls -S int --reverse shard.tar -o by-class.tar
  tarcats 'in-{0000..0147}.tar' -o - | tarsort --shuffle --seed 7 -o - | tarsplit -n 10000 -o 'out-%06d.tar'
  tarsort --buffer-size 2G --tmpdir /scratch 'train-{0000..0999}.tgz' -o sorted.tar""",
)


class SortType(str, enum.Enum):
    str_ = "str"
    int_ = "int"
    float_ = "float"


SortField = Annotated[
    Optional[str], typer.Option("-s", "--field", "--sortkey", help="Sort by the content of FIELD instead of the key.", metavar="FIELD")
]
TypeOpt = Annotated[SortType, typer.Option("-S", "--type", "--sorttype", help="How sort values compare.")]
Reverse = Annotated[bool, typer.Option("-r", "--reverse", help="Descending order (equal keys keep input order).")]
Shuffle = Annotated[bool, typer.Option("--shuffle", help="Deterministic pseudo-random order: a keyed hash of the key.")]
Seed = Annotated[str, typer.Option("--seed", help="Seed of --shuffle (any text).", metavar="S")]
TmpDir = Annotated[
    Optional[str], typer.Option("--tmpdir", help="Directory for sorted runs [default: $TMPDIR or /tmp].", metavar="DIR")
]
BufferSize = size_option("--buffer-size", help="Memory budget for buffered samples", optional=False)


@command(app, shared="read write")
def tarsort(
    tool: Tool,
    output: output_option("-", "Output: a file (compressed by its suffix), '-' for stdout, or 'pipe:CMD'.") = "-",
    field: SortField = None,
    sort_type: TypeOpt = SortType.str_,
    reverse: Reverse = False,
    shuffle: Shuffle = False,
    seed: Seed = "0",
    tmpdir: TmpDir = None,
    buffer_size: BufferSize = f"{DEFAULT_BUFFER >> 20}M",
):
    with tool.run():
        if tmpdir is not None and not os.path.isdir(tmpdir):  # say so now, not when the first run spills
            raise UsageError(f"--tmpdir {tmpdir!r} is not a directory")
        keyfunc = sort_key_function(field, sort_type.value, shuffle, seed)
        specs = tool.input_specs()
        sorter = ExternalSorter(keyfunc, reverse, buffer_size, tmpdir)
        samples = tool.progress(tool.read(specs, regroup=True))
        if shuffle or (field is None and sort_type == SortType.str_):
            # the fragments of a key are next to each other once sorted (stable, equal sort keys)
            ordered = merge_fragments(sorter.sort(samples))
        else:
            ordered = regroup_and_sort(samples, sorter, buffer_size, tmpdir)
        try:
            with tool.open_output(output) as sink:
                for sample in ordered:
                    sink.write(sample)
        finally:  # also when the output fails mid-merge (the generator may outlive this frame)
            ordered.close()
            sorter.cleanup()
        tool.wrote(sink, output, more=f"{sorter.runs} runs spilled ({sorter.spilled_bytes} bytes)")


def main() -> None:
    run_app(app, "tarsort")


if __name__ == "__main__":
    main()
