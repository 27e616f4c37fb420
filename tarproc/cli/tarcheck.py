"""tarcheck: verify and index a dataset of shards, in parallel, local or remote."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from tarproc.jobs.check import (
    CheckOptions,
    ProcessPool,
    check_dataset,
    check_decodable,
    parse_require,
    shard_index_records,
    write_report,
)
from tarproc.errors import UsageError
from tarproc.io.sources import check_inputs_exist
from tarproc.cli import engine
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.tool import Tool

HELP = """\
Verify and index a dataset of tar shards: many at once, local or remote.

Each INPUT (a file, an http(s) or fsspec URL such as s3://, brace patterns,
-T FILE; '-' with -j 1) is read to its end with the strict reader: every
header checksum and size, the end-of-archive marker, the compressed
stream's CRC, members without a key, samples grouped by key (a key that
comes back after other keys), no field repeated in a sample; with
--require, the fields every sample must have; with --decode, fields that
must decode (images fully decoded with Pillow: a truncated JPEG inside a
valid tar is the commonest silent fault; text as UTF-8; JSON parsed). Then,
across the whole dataset, no key may appear in two shards (the keys go to
an SQLite table in a temporary directory: memory stays bounded). A local
uncompressed shard is read as tar tf reads it, seeking over the members'
data (every header, size and the end marker checked; a size beyond the end
of the file is a cut), unless --decode needs the bytes.

The report (--report FILE, default stdout) has one JSON line per shard, in
input order: shard, status (ok, bad: the data is bad, error: it could not be
read), samples, bytes (as stored), first_key, last_key, and problems, each
{kind, offset, key, message}: kind one of truncated, corrupt, malformed,
ungrouped, skipped_member, missing_field, decode, duplicate_key, io; offset
the byte offset in the (decompressed) tar stream. --index FILE writes a
wids shard index (wids-shard-index-v1: url, nsamples, filesize) of the
shards read to their end. Totals go to stderr.

--repair DIR writes a fixed copy of a shard (same name, in DIR) where the
fix loses nothing silently: a shard whose only fault is a cut is cut at its
last complete sample (one cut before its first sample is complete gets no
copy: its report says why); a shard whose only fault is ungrouped keys is
grouped by key (as tarsort does). Each repair is in the shard's report line
(repair: output, samples, bytes, action). Other faults are not repaired.

Shards are checked -j N at a time in worker processes (default: the
number of CPUs; -j 1: in this process), or on Dask (--dask tcp://HOST:8786
or local:N)."""

EXAMPLES = """\
  tarcheck 'train-{0000..0147}.tar' -j 8 --require 'jpg cls' --report report.jsonl --index train.json
  tarcheck -T shards.txt --decode jpg --report - | jq -c 'select(.status != "ok")'
  tarcheck 's3://bucket/train-{0000..0999}.tar' --dask tcp://scheduler:8786 --index train.json
  tarcheck broken-*.tar --repair fixed/ --report repairs.jsonl"""

EXIT_STATUS = """\
0    every shard is complete and valid.
1    a shard could not be read (I/O, network): the check is incomplete,
     a retry may help; or the report or index could not be written.
2    usage error: bad option or argument.
3    the data is bad: a shard is cut, corrupt, ungrouped, lacks a required
     field, has a field that does not decode, or repeats another's key.
130  interrupted by SIGINT; 143 by SIGTERM (no complete-looking report left)."""

app = make_app(HELP, EXAMPLES, EXIT_STATUS)

RequireOpt = Annotated[
    Optional[list[str]],
    typer.Option("--require", metavar="FIELDS",
                 help="Fields every sample must have: 'jpg cls' (A,B: either), repeatable."),
]
DecodeOpt = Annotated[
    Optional[list[str]],
    typer.Option("--decode", metavar="FIELD",
                 help="A field that must decode where present: images with Pillow, txt/cls as UTF-8, json; repeatable."),
]
ReportOpt = Annotated[str, typer.Option("--report", metavar="FILE", help="The JSON-lines report ('-': stdout).")]
IndexOpt = Annotated[Optional[str], typer.Option("--index", metavar="FILE", help="Write a wids shard index (wids-shard-index-v1).")]
RepairOpt = Annotated[Optional[str], typer.Option("--repair", metavar="DIR", help="Write fixed copies of repairable shards to DIR.")]

#: the engine options tarcheck takes (those of tarmap that fit a check)
OPTIONS = {name: engine.ENGINE[name] for name in ("inputs", "input_list", "jobs", "dask")}
HINTS = {"decode": "given with --decode", "dask": "given with --dask"}


@command(app, shared="lowercase_fields storage_options", options=OPTIONS, own_first=True)  # no --strict: a member without a key is always a problem
def tarcheck(tool: Tool, require: RequireOpt = None, decode: DecodeOpt = None, report: ReportOpt = "-",
             index: IndexOpt = None, repair: RepairOpt = None) -> None:
    a = tool.args
    with tool.run(HINTS):
        specs = engine.task_specs(tool)
        if a.jobs is not None and a.dask is not None:
            raise UsageError("-j and --dask cannot be combined")
        jobs = a.jobs or os.cpu_count() or 1
        if "-" in specs and (len(specs) > 1 or a.dask is not None or jobs > 1):
            raise UsageError("stdin ('-') is checked alone, in this process: use -j 1")
        if repair is not None and any(os.path.abspath(os.path.dirname(s) or ".") == os.path.abspath(repair)
                                      for s in specs if "://" not in s):
            raise UsageError(f"--repair {repair}: a directory of inputs; repaired copies would replace them")
        check_inputs_exist(specs)  # a local input that is not there: one error before any report
        options = CheckOptions(require=parse_require(require or []), decode=check_decodable(decode or []),
                               lowercase=tool.lowercase, storage_options=tool.storage_options, repair_dir=repair)
        if a.dask is not None:
            pool = engine.make_engine(tool)
        elif jobs == 1 or len(specs) == 1:
            from tarproc.jobs.engines.local import LocalEngine  # here: -j 2 and more start without its imports

            pool = LocalEngine(1)
        else:
            pool = ProcessPool(min(jobs, len(specs)))

        bar = None
        if tool._progress_enabled():  # shards checked of all, samples and bytes (tqdm, on stderr, labelled)
            bar = tool._bar = tool.new_bar(total=len(specs), unit="shard")
        seen = {"samples": 0, "bytes": 0}

        def progress(shard) -> None:
            if bar is not None:
                seen["samples"] += shard.samples
                seen["bytes"] += shard.bytes
                bar.set_postfix_str(f"{seen['samples']} samples, {engine.human(seen['bytes'])}", refresh=False)
                bar.update(1)
            if tool.verbose >= 2:
                tool.say(f"tarcheck: shard {shard.shard}: {shard.status}, {shard.samples} samples, {shard.bytes} bytes,"
                         f" {len(shard.problems) + shard.more_problems} problems")

        try:
            dataset = check_dataset(specs, options, pool, on_shard=progress)
        finally:
            if bar is not None:
                tool._bar = None
                bar.close()
        if not tool.quiet:
            for shard in dataset.shards:
                if shard.status != "ok":
                    first = shard.problems[0] if shard.problems else {"kind": "?", "message": ""}
                    more = len(shard.problems) + shard.more_problems - 1
                    tool.say(f"tarcheck: {shard.status} shard {shard.shard}: {first['kind']}: {first['message']}"
                             + (f" (and {more} more problems)" if more > 0 else ""))
        write_report(report, dataset)
        if index is not None:
            from tarproc.jobs import records

            records.write_shard_index(index, shard_index_records(dataset))
        repaired = sum(1 for s in dataset.shards if s.repair and s.repair.get("output") and "error" not in s.repair)
        if not tool.quiet:
            tool.say(f"tarcheck: {len(specs)} shards: {dataset.count('ok')} ok, {dataset.count('bad')} bad,"
                     f" {dataset.count('error')} error; {dataset.samples} samples, {dataset.bytes} bytes;"
                     f" {dataset.duplicates} keys repeated across shards"
                     + (f"; {repaired} repaired to {repair}" if repair is not None else "")
                     + f"; {tool.elapsed():.2f} s")
    status = dataset.exit_status
    if status:
        raise typer.Exit(status)


def main() -> None:
    run_app(app, "tarcheck")


if __name__ == "__main__":
    main()
