"""tarsplit: split a stream of WebDataset samples into shards."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from tarproc.errors import UsageError
from tarproc.io.shards import ShardInfo, ShardPattern, ShardWriter, open_manifest
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.options import compression_name, size_option
from tarproc.cli.tool import Tool

HELP = """\
Split a stream of WebDataset samples into shards of N samples or B bytes.

With neither -n nor -s a shard holds at most 100000 samples and 1e9
bytes (the original tarproc's defaults). A sample never straddles two shards: a shard is finished when it holds
--maxcount samples, or before a sample that would take its (uncompressed) tar
size past --maxsize; a single sample larger than --maxsize gets a shard of its
own, with a warning. Each shard is written as NAME.partial and renamed when
complete. Output compression follows the shard name (.gz/.tgz, .bz2, .xz,
.zst), -z or --compress.

The pattern -o is printf style (out-%06d.tar), format style
(out-{shard:06d}.tar), a plain prefix (out -> out-000000.tar, out.tgz ->
out-000000.tgz), a directory (D/ or an existing D -> D/000000.tar; D/ is
made if missing) or pipe:CMD (also spelled |CMD), which streams each shard
into CMD (with the same placeholders). Compression that contradicts the name
(-z -o x-%06d.tar) is a usage error.

--post CMD runs after each finished shard, while the next one is written
(at most --post-parallel at once), with {shard} (the path), {basename},
{index}, {abspath}, {dirname}, {base} and {ext} (basename split at its last
dot) substituted shell-quoted (or %s for the path; also $SHARD, $BASENAME,
$INDEX in its environment); any other {name} is a usage error. The shard is
kept (the original tarproc's -C deleted it: add '&& rm {shard}'). A failing post command is reported with the
shard's name and makes the exit status 1; the other shards are unaffected.
--manifest writes one JSON line per shard: name, samples, bytes and sha256
of the file as written.

With several inputs a key that comes back from another input (shards made
independently) starts a new shard, so that every shard stays grouped; the
first is reported in one warning naming the key and both inputs (exact for
1,000,000 keys per shard, about 110 MB; beyond that adjacent repeats)."""

#: shard limits when neither -n nor -s is given (the original tarproc's defaults)
DEFAULT_MAXCOUNT = 100_000
DEFAULT_MAXSIZE = 1_000_000_000

EXAMPLES = """\
  tarsplit big.tar -n 1000 -o 'train-%06d.tar'
  tarproc -c 'convert sample.jpg -resize 256x256 sample.jpg' -o - in.tar | tarsplit -s 1GB -o 'small-{shard:04d}.tgz'
  tarsplit 'raw-{000..099}.tar' -s 500M -o out -C 'gsutil cp {shard} gs://bucket/ && rm {shard}'
  tarsplit in.tar -n 100 -o 'pipe:aws s3 cp - s3://bucket/part-%04d.tar'
  mkdir -p shards && tarsplit in.tar -n 5000 -z -o shards/train --manifest shards/manifest.jsonl -v"""

app = make_app(HELP, EXAMPLES)


@command(app, shared="read mtime compress")
def tarsplit(
    tool: Tool,
    output: Annotated[
        Optional[str],
        typer.Option("-o", "--output", help="Shard pattern: out-%06d.tar, out-{shard:06d}.tar, prefix, DIR/, pipe:CMD (or '|CMD').", metavar="PATTERN"),
    ] = None,
    maxcount: Annotated[Optional[int], typer.Option("-n", "--maxcount", "--num-samples", min=1, help="Samples per shard.", metavar="N")] = None,
    maxsize: size_option("-s", "--max-size", "--maxsize", help="Uncompressed tar bytes per shard") = None,
    gzip: Annotated[bool, typer.Option("-z", "--gzip", help="Compress every shard with gzip (a plain prefix gets .tar.gz).")] = False,
    start: Annotated[int, typer.Option("--start", min=0, help="Number of the first shard.", metavar="N")] = 0,
    maxshards: Annotated[
        Optional[int], typer.Option(
            "--maxshards",
            min=1,
            help="Write at most N shards, then stop reading; exit status 1 (with a warning) if input was left.",
            metavar="N",
        )
    ] = None,
    post: Annotated[
        Optional[str],
        typer.Option("-C", "--post", help="Shell command run after each finished shard ({shard}, {basename}, {index}, {abspath}, {dirname}, {base}, {ext}); the shard is kept.", metavar="CMD"),
    ] = None,
    post_parallel: Annotated[
        int, typer.Option("--post-parallel", min=1, help="Post commands running at once (writing waits beyond).", metavar="N")
    ] = 2,
    nodelete: Annotated[bool, typer.Option("--nodelete", hidden=True, help="Accepted for the original tarproc: shards are always kept.")] = False,
    manifest: Annotated[
        Optional[str], typer.Option("--manifest", help="Write one JSON line per shard to FILE ('-': stdout).", metavar="FILE")
    ] = None,
) -> None:
    with tool.run():
        if output is None:
            raise UsageError("missing -o PATTERN (e.g. -o 'out-%06d.tar')")
        if maxcount is None and maxsize is None:  # the original tarproc's defaults
            maxcount, maxsize = DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE
        compress = compression_name(tool.args.compress)
        if gzip and compress not in (None, "gzip"):
            raise UsageError("-z and --compress disagree")
        compression = "gzip" if gzip else compress
        pattern = ShardPattern(output, compression)
        if output.endswith("/") and not os.path.isdir(output):  # -o DIR/: DIR/000000.tar...
            os.makedirs(output, exist_ok=True)
        specs = tool.input_specs()
        manifest_file = open_manifest(manifest) if manifest else None

        def finished(info: ShardInfo) -> None:
            tool.info(f"{info.name}: {info.samples} samples, {info.bytes} bytes")

        def post_failed(info: ShardInfo, message: str) -> None:
            tool.error(f"{info.name}: {message}")
            tool.problems += 1

        try:
            with ShardWriter(
                pattern,
                maxcount=maxcount,
                maxsize=maxsize,
                start=start,
                maxshards=maxshards,
                compression=compression,
                mtime=tool.args.mtime,
                post=post,
                post_parallel=post_parallel,
                manifest=manifest_file,
                warn=lambda m: tool.warn(m, problem=False),
                on_shard=finished,
                on_post_error=post_failed,
                storage_options=tool.storage_options,
            ) as writer:
                writer.write_all(tool.progress(tool.read(specs)))
        finally:
            if manifest_file is not None and manifest != "-":
                manifest_file.close()
        if writer.full:
            # the input goes on: say so and exit 1 rather than drop samples silently
            tool.warn(
                f"--maxshards {maxshards} reached: sample {writer.refused!r} and the rest of the input"
                f" were not written ({writer.samples} samples in {len(writer.shards)} shards)"
            )
        total = sum(s.bytes for s in writer.shards)
        tool.info(f"wrote {writer.samples} samples ({total} bytes) in {len(writer.shards)} shards"
                  f" in {tool.elapsed():.2f} s")
        if not writer.shards:
            tool.info("no samples: no shard written")


def main() -> None:
    run_app(app, "tarsplit")


if __name__ == "__main__":
    main()
