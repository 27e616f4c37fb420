"""tarmix: write a mixed dataset with exact per-source counts."""

from __future__ import annotations

import enum
import json
import os
import sys
from typing import Annotated, Optional

import typer

from tarproc.errors import OutputError, UsageError
from tarproc.ops.mix import Mixer, parse_source, write_mix
from tarproc.io.shards import ShardInfo, ShardPattern
from tarproc.io.sources import check_inputs_exist
from tarproc.io.storage import url_kind
from tarproc.ops.stages import Rekeyer
from tarproc.cli.common import Tool, command, compression_name, make_app, run_app, size_option
from tarproc.cli.tarcats import RekeyOpt, parse_seed
from tarproc.cli.tarsplit import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE

HELP = """\
Write a mixed dataset: COUNT samples drawn from several SOURCEs with exact
per-source counts, in a seeded random interleaving, into shards.

Each SOURCE is a list of shards (a brace pattern, as every input of the
family: file, URL, pipe:CMD) followed by ':WEIGHT'. The weight is what
follows the LAST ':' when it parses as a number (0.7, 3, 1e-3, 2/3);
otherwise the whole SOURCE is the pattern with weight 1, so
's3://b/x-{0..9}.tar:0.3' has weight 0.3 and 's3://b/x.tar' weight 1 (a
file whose name ends in ':NUMBER' is given as 'NAME:NUMBER:1').

Counts are exact: source i gets n*w_i/sum(w) samples rounded by the largest
remainder (every share rounded down, the samples left go one each to the
largest fractional parts, ties to the source given first); -v states them.
The order is a seeded random interleaving with exactly these counts (at each
step a source is drawn with probability remaining_i/remaining_total): the
same SOURCEs, -n and --seed give byte-identical shards. Each source is read
as a stream, its shards in the order given (--shuffle-shards: a seeded
order), each sample at most once (without replacement, from the front of
the source); nothing is loaded whole.

A source that ends before its count (--when-exhausted): stop ends the
output there, with a warning and exit status 1 (every sample drawn before
is written); repeat reads it again from its first shard (its keys come
back: use --rekey '{index:09d}'); renormalize shares the samples it still
owed among the other sources by weight (largest remainder), and ends the
output as stop does when every source is exhausted.

Keys must stay unique in the output: a key that comes back (two datasets
numbered alike) stops the run with exit status 3 naming both inputs;
--rekey '{shard}/{key}' (tarcats' formats) makes them unique. Origin:
--source-field NAME writes each sample's input shard as the field NAME (the
sample's __source__ meta entry, not written otherwise); --manifest FILE
writes the provenance as one JSON document: the plan (weights, planned and
taken counts, passes) and, per output shard, its name, samples, bytes,
sha256 and how many samples came from each source.

Output shards follow tarsplit's patterns (-o 'mix-%06d.tar',
'mix-{shard:06d}.tgz', a plain prefix, DIR/), each written as NAME.partial
and renamed when complete, of at most --maxcount samples and --maxsize
bytes [default: 100000 and 1e9, tarsplit's]."""

EXAMPLES = """\
  tarmix 'laion-{0000..0999}.tar:0.7' 'coco-{000..099}.tar:0.3' -n 1000000 -o 'mix-%06d.tar' --seed 1
  tarmix 'a-{00..09}.tar:2' 'b-{00..09}.tar:1' -n 3000 --rekey '{shard}/{key}' --maxcount 1000 -o mix/ -v
  tarmix 'small.tar:0.5' 'big-{0..9}.tar:0.5' -n 10000 --when-exhausted renormalize --manifest mix.json -o 'mix-%04d.tar'
  tarmix 's3://bucket/web-{000..099}.tar:0.9' 'books.tar:0.1' -n 50000 --source-field origin.txt -o 'mix-%04d.tgz'"""


class WhenExhausted(str, enum.Enum):
    stop = "stop"
    repeat = "repeat"
    renormalize = "renormalize"


HINTS = {
    "duplicate_key": "make keys unique with --rekey '{shard}/{key}' (or '{index:09d}' with --when-exhausted repeat)",
    "source_field": "choose another --source-field",
}

app = make_app(HELP, EXAMPLES)


@command(app, shared="strict lowercase_fields write")
def tarmix(
    tool: Tool,
    sources: Annotated[
        Optional[list[str]],
        typer.Argument(help="SHARDS:WEIGHT, e.g. 'laion-{0000..0999}.tar:0.7' (weight 1 when none).", show_default=False,
                       metavar="SOURCE"),
    ] = None,
    count: Annotated[Optional[int], typer.Option("-n", "--count", min=0, metavar="N", help="Samples to write in all.")] = None,
    output: Annotated[
        Optional[str],
        typer.Option("-o", "--output", metavar="PATTERN", help="Shard pattern: mix-%06d.tar, mix-{shard:06d}.tar, prefix, DIR/."),
    ] = None,
    seed: Annotated[str, typer.Option("--seed", metavar="S", help="Seed of the interleaving (any text).")] = "0",
    when_exhausted: Annotated[
        WhenExhausted, typer.Option("--when-exhausted", help="A source that ends before its count: stop, repeat or renormalize.")
    ] = WhenExhausted.stop,
    shuffle_shards: Annotated[bool, typer.Option("--shuffle-shards", help="Read each source's shards in a seeded order.")] = False,
    rekey: RekeyOpt = None,
    source_field: Annotated[
        Optional[str], typer.Option("--source-field", metavar="NAME", help="Write each sample's input shard as field NAME.")
    ] = None,
    manifest: Annotated[
        Optional[str], typer.Option("--manifest", metavar="FILE", help="Write the provenance (JSON) to FILE ('-': stdout).")
    ] = None,
    maxcount: Annotated[Optional[int], typer.Option("--maxcount", min=1, metavar="N", help="Samples per shard.")] = None,
    maxsize: size_option("-s", "--max-size", "--maxsize", help="Uncompressed tar bytes per shard") = None,
) -> None:
    a = tool.args
    with tool.run(HINTS):
        if not sources:
            raise UsageError("no SOURCE given (e.g. 'a-{00..09}.tar:0.7' 'b.tar:0.3')")
        if count is None:
            raise UsageError("missing -n N (samples to write in all)")
        if output is None:
            raise UsageError("missing -o PATTERN (e.g. -o 'mix-%06d.tar')")
        if source_field is not None and (not source_field or source_field.startswith((".", "_")) or "/" in source_field):
            raise UsageError(f"--source-field {source_field!r} is not a field name (e.g. origin.txt)")
        if maxcount is None and maxsize is None:
            maxcount, maxsize = DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE
        compression = compression_name(a.compress)
        pattern = ShardPattern(output, compression)
        if pattern.is_pipe:
            raise UsageError("-o pipe:CMD is not an output of tarmix: shards must be files or URLs")
        if rekey is not None:
            Rekeyer(rekey)  # a bad format is a usage error before anything is read
        mixer = Mixer([parse_source(s) for s in sources], count, parse_seed(seed), when_exhausted.value, shuffle_shards,
                      warn=lambda m: tool.warn(m, problem=False), strict=a.strict, storage_options=tool.storage_options,
                      lowercase=tool.lowercase, note=tool.note)
        for source in mixer.sources:
            check_inputs_exist(source.shards)
        for line in mixer.plan():
            tool.info(line)
        parent = os.path.dirname(pattern.name(0))
        if url_kind(output) == "file" and parent and not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)  # as tarshuffle and tarmap make their outputs' folders

        def finished(info: ShardInfo) -> None:
            tool.info(f"{info.name}: {info.samples} samples, {info.bytes} bytes", level=2)

        result = write_mix(
            mixer, pattern, progress=lambda samples: tool.progress(samples, total=count), rekey=rekey,
            source_field=source_field, maxcount=maxcount, maxsize=maxsize, compression=compression, mtime=a.mtime,
            checksum=manifest is not None, warn=lambda m: tool.warn(m, problem=False), on_shard=finished,
            storage_options=tool.storage_options,
        )
        if manifest is not None:
            _write_manifest(manifest, result.manifest(mixer))
        for s in mixer.sources:
            passes = f" in {s.passes} passes" if s.passes > 1 else ""
            tool.info(f"{s.spec}: {s.taken} samples{passes}" + (" (exhausted)" if s.exhausted else ""))
        tool.info(f"wrote {result.samples} samples in {len(result.shards)} shards in {tool.elapsed():.2f} s")
        if mixer.stopped is not None:
            tool.problems += 1  # fewer samples than -n asked for: said in the warning, exit status 1


def _write_manifest(path: str, document: dict) -> None:
    text = json.dumps(document, indent=1) + "\n"
    if path == "-":
        # line by line: one huge write(2) cut short by a closed pipe is not an error
        for line in text.splitlines(keepends=True):
            sys.stdout.write(line)
        return
    from tarproc.jobs.records import _finish_text, _open_text  # PATH.partial renamed; a device or FIFO written into

    handle = _open_text(path)
    try:
        handle.write(text)
    except OSError as exc:
        handle.close()
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
    _finish_text(path, handle)


def main() -> None:
    run_app(app, "tarmix")


if __name__ == "__main__":
    main()
