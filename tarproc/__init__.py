"""tarproc: Unix filter utilities for datasets stored as sharded tar archives.

The library does the work; the command-line tools in :mod:`tarproc.cli` are
thin. A sample is a ``dict`` in the WebDataset layout: ``"__key__"`` (str),
``"__source__"`` (str) and field name -> ``bytes``.

>>> import tarproc
>>> with tarproc.open_sink("out.tar") as sink:               # doctest: +SKIP
...     for sample in tarproc.iter_samples(["in-{000..003}.tar.gz"]):
...         sink.write(sample)
"""

import importlib

from tarproc.errors import (
    ArchiveError,
    CommandError,
    CompressionError,
    ExitStatus,
    OutputError,
    SampleError,
    SourceError,
    TarprocError,
    TruncatedError,
    UsageError,
)

#: the rest of the public API -> its module, imported on first use (PEP 562
#: ``__getattr__``): ``import tarproc.errors`` or a tool that needs no sink
#: does not pay for the whole library at start
_LAZY = {
    "group_samples": "samples",
    "split_name": "samples",
    "TarSink": "io.sinks",
    "open_sink": "io.sinks",
    "expand_inputs": "io.sources",
    "iter_samples": "io.sources",
    "iter_source_samples": "io.sources",
    "open_source": "io.sources",
    "Member": "io.tario",
    "TarReader": "io.tario",
    "TarWriter": "io.tario",
    "iter_members": "io.tario",
}

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "CommandError",
    "CompressionError",
    "ExitStatus",
    "Member",
    "OutputError",
    "SampleError",
    "SourceError",
    "TarReader",
    "TarSink",
    "TarWriter",
    "TarprocError",
    "TruncatedError",
    "UsageError",
    "expand_inputs",
    "group_samples",
    "iter_members",
    "iter_samples",
    "iter_source_samples",
    "open_sink",
    "open_source",
    "split_name",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
