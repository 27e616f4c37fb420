"""The options the tools of the family spell the same way, declared once.

:data:`SHARED` holds each shared option by parameter name (its typer
annotation and default), in the order help lists them; :data:`GROUPS` names
several at once (``read``, ``write``); :data:`ALWAYS` are the ones every tool
takes. A tool names those it takes in ``shared=`` of
:func:`tarproc.cli.app.command`, and reads their values as
``tool.args.<name>`` (:class:`tarproc.cli.tool.Tool`). Also here: the option
builders a few tools share, :func:`size_option` (an ``int`` of bytes,
coreutils units) and :func:`output_option`, and :func:`compression_name`
(the ``--compress`` value).

Only declarations: this module imports neither :mod:`tarproc.cli.tool` nor
:mod:`tarproc.cli.app` (the base's layers: options <- tool <- app).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, NamedTuple, Optional

import typer

from tarproc import __version__
from tarproc.io.compress import COMPRESSIONS
from tarproc.sizes import SIZE_HELP, parse_size


def _version_callback(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(f"{ctx.info_name} (tarproc) {__version__}")
        raise typer.Exit()


# ------------------------------------------------------------- shared options
Inputs = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Input shards: files, '-' for stdin, 'pipe:CMD', http(s):// URLs (one GET), s3:// or gs:// (with fsspec), brace patterns"
        " like 'shard-{0000..0147}.tgz'. Compression is detected. [default: -]",
        show_default=False,
        metavar="INPUT",
    ),
]
Verbose = Annotated[
    int, typer.Option("-v", "--verbose", count=True, show_default=False, help="Print a summary (and more with -vv) on stderr.")
]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print no warnings or command output on stderr.")]
Debug = Annotated[
    bool, typer.Option("--debug", envvar="TARPROC_DEBUG", help="Show a traceback on errors (env TARPROC_DEBUG=1).")
]
Version = Annotated[
    bool,
    typer.Option("--version", callback=_version_callback, is_eager=True, expose_value=False, help="Print the version and exit."),
]
Count = Annotated[Optional[int], typer.Option("--count", min=0, help="Stop after N samples.", metavar="N")]
Skip = Annotated[int, typer.Option("--skip", min=0, help="Skip the first N samples.", metavar="N")]
Strict = Annotated[bool, typer.Option("--strict", help="Members without a key are errors, not warnings.")]
LowercaseFields = Annotated[
    bool,
    typer.Option(
        "--lowercase-fields",
        help="Lowercase field names as webdataset (group_by_keys(lcase=True)) and the original tarproc do:"
        " img.JPG gives field jpg [default: case is kept].",
    ),
]
Parallel = Annotated[int, typer.Option("-p", "--parallel", min=1, help="Worker processes.", metavar="N")]
Progress = Annotated[
    Optional[bool],
    typer.Option("--progress/--no-progress", help="Progress bar on stderr, labelled with the tool's name [default: when"
                 " stderr is a terminal, unless another tool of the family writes our stdin: in 'tarproc ... -o - |"
                 " tarsplit ...' only tarproc draws one].", show_default=False),
]
Compression = enum.Enum("Compression", {name: name for name in COMPRESSIONS}, type=str)
Compress = Annotated[
    Optional[Compression],
    typer.Option(
        "--compress",
        help="Output compression [default: from the output name: .gz/.tgz, .bz2, .xz, .zst].",
        show_default=False,
    ),
]


def compression_name(value: Optional[Compression]) -> Optional[str]:
    """The ``--compress`` value as a plain string (None: follow the name)."""
    return None if value is None else value.value
Mtime = Annotated[int, typer.Option("--mtime", help="Modification time stored in every member (seconds).", metavar="SECONDS")]


def _size(value) -> int:
    if isinstance(value, int):
        return value
    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def size_option(*names: str, help: str, optional: bool = True):
    """A size option (``-s/--maxsize``...): its value is an ``int`` of bytes
    parsed by the one size parser, :func:`tarproc.sizes.parse_size`
    (coreutils units: ``K`` = 1024, ``KB`` = 1000, ``KiB``; ``1e9``).
    A bad size is a usage error naming the option."""
    return Annotated[Optional[int] if optional else int,
                     typer.Option(*names, help=f"{help} ({SIZE_HELP}).", metavar="SIZE", parser=_size)]


def _storage_item(value: str) -> str:
    from tarproc.io.storage import parse_storage_options

    try:
        parse_storage_options([value])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


StorageOptions = Annotated[
    Optional[list[str]],
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        parser=_storage_item,
        help="fsspec storage option for URL inputs and outputs (s3://, gs://...), repeatable: VALUE is JSON when it"
        " parses (true, 3, '{\"region_name\": \"x\"}'), else text; a dotted KEY nests (client_kwargs.region_name=x);"
        " merged over FSSPEC_<PROTOCOL>_<OPTION> (credentials: the store's environment, AWS_*, not a command line).",
    ),
]


def output_option(default: str | None, help: str):
    """``-o/--output`` with a per-tool default and help."""
    return Annotated[Optional[str] if default is None else str, typer.Option("-o", "--output", help=help, metavar="OUT")]


class Shared(NamedTuple):
    """A shared option: its typer annotation and its default."""

    annotation: Any
    default: Any


#: every shared option, by parameter name, in the order help lists them
SHARED: dict[str, Shared] = {
    "inputs": Shared(Inputs, None),
    "count": Shared(Count, None),
    "skip": Shared(Skip, 0),
    "strict": Shared(Strict, False),
    "lowercase_fields": Shared(LowercaseFields, False),
    "parallel": Shared(Parallel, 1),
    "compress": Shared(Compress, None),
    "mtime": Shared(Mtime, 0),
    "storage_options": Shared(StorageOptions, None),
    "progress": Shared(Progress, None),
    "verbose": Shared(Verbose, 0),
    "quiet": Shared(Quiet, False),
    "debug": Shared(Debug, False),
    "version": Shared(Version, False),
}
#: names a tool may give in ``shared=`` for several options at once
GROUPS: dict[str, tuple[str, ...]] = {
    "read": ("inputs", "strict", "lowercase_fields", "storage_options"),  # tools reading tar shards
    "write": ("compress", "mtime", "storage_options"),  # tools writing a tar stream
}
#: shared options every tool takes
ALWAYS = ("progress", "verbose", "quiet", "debug", "version")


def shared_names(shared: str) -> list[str]:
    """The option names ``shared`` stands for (groups expanded, plus
    :data:`ALWAYS`), in :data:`SHARED` order.

    :raises KeyError: an unknown name
    """
    wanted: set[str] = set(ALWAYS)
    for name in shared.split():
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SHARED:
            wanted.add(name)
        else:
            raise KeyError(f"no shared option or group {name!r}: see tarproc.cli.options.SHARED")
    return [name for name in SHARED if name in wanted]
