"""dir2tar: a directory tree as a stream of samples."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from tarproc.ops.create import dir_samples
from tarproc.io.sinks import PARTIAL
from tarproc.cli.app import command, make_app, run_app
from tarproc.cli.options import output_option
from tarproc.cli.tool import Tool, refuse_terminal

app = make_app(
    help="Turn a directory tree into a tar stream of WebDataset samples.\n\n"
    "The regular files under DIR are grouped by the WebDataset key rule:"
    " train/cat/001.jpg and train/cat/001.json (paths relative to DIR) become the sample"
    " train/cat/001 with fields jpg and json, written as members of exactly those names, so"
    " `tar xf` gives the files back.\n\n"
    "The walk is deterministic (entries ordered by code point, each key's files kept together), so"
    " the same tree gives the same bytes. Symbolic links are not followed; they, other non-regular"
    " files, files whose names have no key (no dot, or a leading or trailing dot, e.g. README,"
    " .DS_Store) and unreadable entries are reported and skipped (exit status 1); --exclude them to"
    " leave them out silently. A glob containing '/' matches the path relative to DIR, one without"
    " matches the basename; --exclude also prunes directories.",
    examples="""\
  dir2tar imagenet/ -o imagenet.tar
  dir2tar imagenet/ | tarsplit -n 10000 -o 'imagenet-%06d.tar'
  dir2tar --label-from-dir cls --include '*.JPEG' train/ -o train.tgz
  dir2tar --exclude .git --exclude '*.tmp' data/ -o data.tar""",
)

Directory = Annotated[str, typer.Argument(help="The directory to walk.", metavar="DIR", show_default=False)]
Label = Annotated[
    Optional[str],
    typer.Option("--label-from-dir", help="Add FIELD holding the name of each file's parent directory.",
                 metavar="FIELD"),
]
Include = Annotated[
    Optional[list[str]],
    typer.Option("--include", help="Only files matching GLOB (repeatable; any of them).", metavar="GLOB"),
]
Exclude = Annotated[
    Optional[list[str]],
    typer.Option("--exclude", help="Leave out files and directories matching GLOB (repeatable).", metavar="GLOB"),
]


@command(app, shared="write")
def dir2tar(
    tool: Tool,
    directory: Directory = ...,
    output: output_option("-", "Output: a file (compressed by its suffix), '-' for stdout, or 'pipe:CMD'.") = "-",
    label_from_dir: Label = None,
    include: Include = None,
    exclude: Exclude = None,
):
    with tool.run():
        refuse_terminal(output)
        skip = []
        if output != "-" and not output.startswith("pipe:"):
            skip = [output, output + PARTIAL]  # never read our own output
        samples = dir_samples(directory, label_from_dir, include or (), exclude or (), tool.warn,
                              skip_paths=[os.path.abspath(p) for p in skip])
        with tool.open_output(output) as sink:
            for sample in tool.progress(samples):
                sink.write(sample)
        if not sink.samples:  # e.g. an --include that matches nothing: say so, the archive is empty
            tool.warn(f"no file under {directory!r} was written: the archive holds no sample", problem=False)
        tool.wrote(sink, output)


def main() -> None:
    run_app(app, "dir2tar")


if __name__ == "__main__":
    main()
