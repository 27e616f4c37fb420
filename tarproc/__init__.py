"""tarproc: Unix filter utilities for datasets stored as sharded tar archives.

The library does the work; the command-line tools in :mod:`tarproc.cli` are
thin. A sample is a ``dict`` in the WebDataset layout: ``"__key__"`` (str),
``"__source__"`` (str) and field name -> ``bytes``.

>>> import tarproc
>>> with tarproc.open_sink("out.tar") as sink:               # doctest: +SKIP
...     for sample in tarproc.iter_samples(["in-{000..003}.tar.gz"]):
...         sink.write(sample)
"""

from .errors import (
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
from .samples import group_samples, split_name
from .sinks import TarSink, open_sink
from .sources import expand_inputs, iter_samples, iter_source_samples, open_source
from .tario import Member, TarReader, TarWriter, iter_members

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
