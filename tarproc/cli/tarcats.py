"""tarcats: concatenate, subset, shuffle, interleave and rekey shards."""

from __future__ import annotations

import enum
import itertools
from typing import Annotated, Optional

import typer

from tarproc.errors import UsageError
from tarproc.io.parallel import ParallelReader
from tarproc.samples import KeyLedger
from tarproc.io.sources import check_inputs_exist, input_urls, iter_source_samples
from tarproc.ops.stages import (
    BadShards,
    FieldSelector,
    Rekeyer,
    Where,
    interleave,
    parse_slice,
    shuffle_list,
    shuffle_samples,
    slice_samples,
)
from tarproc.cli.app import REPEATED_KEYS, command, make_app, run_app
from tarproc.cli.options import Parallel, Shared, output_option
from tarproc.cli.tool import Tool, refuse_terminal, refuse_terminal_input

HELP = """\
Concatenate tar shards of WebDataset samples into one tar stream.

Inputs are read one after another (or round-robin with --interleave), their
samples pass through the optional stages in this order: --where, --shuffle,
--fields, --slice, --skip/--count, --rekey; and are written to OUT with deterministic
headers (mtime 0, uid/gid 0). With no options every member's name and bytes
are reproduced in order; `cat a.tar b.tar | tarcats -o -` keeps both archives.
Output compression follows the name of OUT (.gz/.tgz, .bz2, .xz, .zst) or
--compress.

--where EXPR keeps the samples for which the Python expression EXPR is true
(like awk, it runs your own code: never give it text from others). Each
field is a variable named by the field (characters not allowed in a name
become _: seg.png is seg_png), decoded when the expression uses it: a json
field is the parsed JSON, a text field (txt, cls, text, id, ...) a str
(int(cls) works), any other field its bytes (len(jpg)); key is the sample's
key, source its input, sample the sample dict (bytes as stored; "png" in
sample); Python's builtins are there. A field the sample lacks is an error
on that sample: -e skip (default) leaves it out with a warning (exit 1),
-e ignore keeps it, -e abort stops (exit 3); failing on each of the first 10
samples stops the run. A syntax error is a usage error (exit 2) before any
input is read. One line on stderr says how many samples were kept.

""" + REPEATED_KEYS + """ --rekey '{shard}/{key}' makes keys unique."""

EXAMPLES = """\
  tarcats 'train-{0000..0009}.tgz' -o train-small.tar
  cat a.tar b.tar | tarcats -o - | tar tvf -
  tarcats -T shards.txt --shuffle-shards --shuffle 1000 --seed 1 -o mixed.tar
  tarcats in.tar -f 'img=jpg,jpeg,png cls' --missing skip -o slim.tar
  tarcats a.tar b.tar --interleave --rekey '{shard}/{key}' -o both.tar
  tarcats in.tar --slice 0:1000:10 -o every10th.tar
  tarcats 'train-{0000..0009}.tar' --where 'int(cls) < 100 and json["width"] >= 256' -o small.tar
  tarcats 'https://example.com/shard-{000..009}.tar' --max-bad-shards 2 -o -"""

class Missing(str, enum.Enum):
    error = "error"
    skip = "skip"


Filelist = Annotated[
    Optional[list[str]],
    typer.Option("-T", "--filelist", help="Read inputs from FILE, one per line ('-': stdin).", metavar="FILE"),
]
SliceOpt = Annotated[
    Optional[str], typer.Option("--slice", help="Keep samples START:STOP[:STEP] (0-based).", metavar="START:STOP[:STEP]")
]
ShuffleOpt = Annotated[int, typer.Option("--shuffle", min=0, help="Shuffle samples with a buffer of N.", metavar="N")]
SeedOpt = Annotated[
    Optional[str], typer.Option("--seed", help="Seed for --shuffle and --shuffle-shards (any text).", metavar="S")
]


def parse_seed(seed: str | None) -> int | str | None:
    """``--seed`` as given to :class:`random.Random`: an integer when it is
    one (so numeric seeds give the orders they always gave), else the text."""
    if seed is None:
        return None
    try:
        return int(seed)
    except ValueError:
        return seed


ShuffleShards = Annotated[bool, typer.Option("--shuffle-shards", help="Shuffle the order of the inputs.")]
FieldsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "-f",
        "--fields",
        help="Keep and rename fields: 'img=jpg,jpeg,png cls' keeps cls and the first present of jpg/jpeg/png as img.",
        metavar="SPEC",
    ),
]
MissingOpt = Annotated[
    Missing, typer.Option("--missing", help="A sample missing a wanted field: error, or skip (reported, counted).")
]
RekeyOpt = Annotated[
    Optional[str],
    typer.Option("--rekey", help="New keys: '{index:09d}', '{shard}/{key}', '{key}', '{source}'.", metavar="FORMAT"),
]
InterleaveOpt = Annotated[bool, typer.Option("--interleave", help="Round-robin over the inputs instead of one after another.")]
MaxBad = Annotated[
    int,
    typer.Option(
        "--max-bad-shards",
        min=0,
        help="Report and skip up to N corrupt inputs; exit status 1 if any. Only verified samples are kept: a"
        " compressed input is checked only at its end (gzip CRC-32), so a bad one contributes none (its samples are"
        " held until then, in a temporary file beyond 32 MiB); a bad uncompressed tar those before the fault.",
        metavar="N",
    ),
]


class WhereErrors(str, enum.Enum):
    abort = "abort"
    skip = "skip"
    ignore = "ignore"


WhereOpt = Annotated[
    Optional[str],
    typer.Option("--where", metavar="EXPR",
                 help="Keep samples for which the Python expression EXPR is true: 'int(cls) < 100 and json[\"width\"] >= 256'."),
]
WhereErrorsOpt = Annotated[
    WhereErrors,
    typer.Option("-e", "--errors", help="--where failing on a sample: leave it out, keep it, or stop (exit 3)."),
]

#: what tarcats adds to a library error about a rule its options change
HINTS = {
    "where": "given with --where",
    "where_abort": "-e skip leaves such samples out",
    "where_halt": "check the field names of --where (see tarshow)",
    "missing_field": "use --missing skip to drop such samples",
    "bad_shards": "--max-bad-shards N allows more",
    "duplicate_key": "make keys unique with --rekey '{shard}/{key}' (or '{index:09d}' for an input given twice)",
}

#: samples skipped for a missing field that are reported one by one (then only counted)
MAX_SKIP_MESSAGES = 20


def _capped(tool: Tool, limit: int, what: str = "samples skipped for a missing field"):
    """A warn function printing the first ``limit`` messages (not problems:
    skipping was asked for), then one line saying the rest (``what``) are only counted."""
    seen = [0]

    def warn(message: str) -> None:
        seen[0] += 1
        if seen[0] <= limit:
            tool.warn(message, problem=False)
        elif seen[0] == limit + 1:
            tool.warn(f"more {what}: counted, not listed", problem=False)

    return warn


def _where_summary(tool: Tool, where: Where) -> None:
    """The one line about --where on stderr (not with -q); samples left out
    because the expression failed make the exit status 1."""
    failed = ""
    if where.failed:
        failed = f", failed on {where.failed} ({'kept' if where.errors == 'ignore' else 'left out'})"
    if not tool.quiet:
        tool.say(f"{tool.name}: --where kept {where.kept} of {where.seen} samples ({where.dropped} false{failed})")
    if where.failed and where.errors == "skip":
        tool.problems += 1


def run_cats(tool: Tool, interleaved: bool, parallel: int) -> None:
    """The body shared by tarcats and tarpcat: the options of :data:`CATS`
    are in ``tool.args``."""
    a = tool.args
    seed = parse_seed(a.seed)
    filelist, fields, max_bad_shards = a.filelist, a.fields, a.max_bad_shards
    hints = dict(HINTS)
    if a.rekey is not None:
        hints["duplicate_key"] = f"--rekey {a.rekey!r} makes keys that repeat: include {{shard}} or {{index}}"
    with tool.run(hints):
        specs = input_urls(a.inputs or [], filelist or [])
        if not specs and not filelist:
            specs = ["-"]
        refuse_terminal_input(specs)
        if specs.count("-") > 1:
            raise UsageError("stdin ('-') can be read only once")
        if interleaved and parallel > 1:
            raise UsageError("--interleave needs every input open at once: use -p 1")
        if parallel > 1 and "-" in specs and len(specs) > 1:  # stdin alone is read in this process
            raise UsageError("stdin ('-') cannot be read by parallel workers together with other inputs: use -p 1")
        slicing = parse_slice(a.slice_) if a.slice_ else None
        selector = FieldSelector(fields, a.missing.value, _capped(tool, MAX_SKIP_MESSAGES)) if fields else None
        where = (Where(a.where, a.errors.value, _capped(tool, MAX_SKIP_MESSAGES, "samples the expression failed on"))
                 if a.where is not None else None)
        rekeyer = Rekeyer(a.rekey) if a.rekey is not None else None
        refuse_terminal(a.output)
        if a.shuffle_shards:
            specs = shuffle_list(specs, seed)
        if max_bad_shards == 0:
            check_inputs_exist(specs)
        bad = BadShards(max_bad_shards, tool.warn)
        warn = tool.warn

        reader = None
        if parallel > 1 and len(specs) > 1:
            reader = ParallelReader(specs, parallel, warn, a.strict, lowercase=tool.lowercase, note=tool.note,
                                    storage_options=tool.storage_options)
            per_shard = reader.shards()
        else:
            on_read = tool.count_input(specs)
            per_shard = (
                (spec, iter_source_samples(spec, warn, a.strict, on_read, lowercase=tool.lowercase, note=tool.note,
                                           storage_options=tool.storage_options))
                for spec in specs
            )
        guarded = (bad.guard(samples, spec) for spec, samples in per_shard)
        stream = interleave(list(guarded)) if interleaved else itertools.chain.from_iterable(guarded)
        if where is not None:
            stream = where(stream)
        if a.shuffle > 1:
            stream = shuffle_samples(stream, a.shuffle, seed)
        if selector is not None:
            stream = selector(stream)
        if slicing is not None:
            stream = slice_samples(stream, *slicing)
        stream = tool.skip_count(stream)
        if rekeyer is not None:
            stream = rekeyer(stream)
        if len(specs) > 1 or rekeyer is not None:
            # one output from several inputs: stop before a key comes back
            stream = KeyLedger()(stream)
        try:
            with tool.open_output(a.output, terminal=False) as sink:
                for sample in tool.progress(stream):
                    sink.write(sample)
        finally:
            if reader is not None:
                reader.close()
        if where is not None:
            _where_summary(tool, where)
        if selector is not None and selector.skipped:
            tool.warn(f"{selector.skipped} samples skipped for a missing field", problem=False)
        if bad.bad:
            tool.warn(f"{len(bad.bad)} bad shards: " + ", ".join(s for s, _ in bad.bad), problem=False)
        tool.wrote(sink, a.output, inputs=f"{len(specs)} inputs")


#: the options of tarcats that tarpcat takes too (see :func:`tarproc.cli.app.command`)
CATS = {
    "output": Shared(output_option("-", "Output file, '-' for stdout, or 'pipe:CMD'."), "-"),
    "filelist": Shared(Filelist, None),
    "slice_": Shared(SliceOpt, None),
    "shuffle": Shared(ShuffleOpt, 0),
    "seed": Shared(SeedOpt, None),
    "shuffle_shards": Shared(ShuffleShards, False),
    "fields": Shared(FieldsOpt, None),
    "missing": Shared(MissingOpt, Missing.error),
    "rekey": Shared(RekeyOpt, None),
    "max_bad_shards": Shared(MaxBad, 0),
    "where": Shared(WhereOpt, None),
    "errors": Shared(WhereErrorsOpt, WhereErrors.skip),
}
#: the shared options of tarcats and tarpcat
CATS_SHARED = "read write skip count"

app = make_app(HELP, EXAMPLES)


@command(app, shared=CATS_SHARED, options=CATS)
def tarcats(tool: Tool, interleaved: InterleaveOpt = False, parallel: Parallel = 1) -> None:
    run_cats(tool, interleaved, parallel)


def main() -> None:
    run_app(app, "tarcats")


if __name__ == "__main__":
    main()
