"""Create samples from lines of text, a TSV plan, or a directory tree.

Every creator is deterministic: the same input gives the same samples in the
same order, with fields in sorted order (the tarproc convention for samples
made by a command), so written with :class:`tarproc.io.sinks.TarSink` the same
input gives the same bytes.

Keys and fields follow the WebDataset rule (see :mod:`tarproc.samples`): a
key must not be empty, absolute, contain a ``..`` component, or have a dot
in its last path component, since the member ``key.field`` would then be
read back with another key.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from tarproc.errors import SampleError, SourceError, UsageError, Warn
from tarproc.samples import MAX_SEEN_KEYS, Sample, key_problem


DEFAULT_KEYFORMAT = "{:09d}"


def _ignore(message: str) -> None:
    pass


def parse_fields(spec: str) -> list[str]:
    """Split a field list like ``'url txt'`` or ``'url,txt'``.

    :raises UsageError: empty list, a repeated name, or an invalid field name
    """
    names = [name for name in re.split(r"[\s,]+", spec.strip()) if name]
    if not names:
        raise UsageError("no field names given")
    seen = set()
    for name in names:
        if name in seen:
            raise UsageError(f"field {name!r} given twice")
        seen.add(name)
        if name != "__key__":
            check_field(name, UsageError)
    return names


def check_field(field: str, error: type = SampleError) -> None:
    """Raise ``error`` unless ``field`` can be a member's extension: not
    empty, no ``/``, not starting with a dot or ``__`` (meta entries), not
    ending with a dot."""
    if not field or "/" in field or field.startswith((".", "__")) or field.endswith(".") or "\0" in field:
        raise error(f"invalid field name {field!r}")


def check_key(key: str, where: str = "") -> None:
    """Raise :class:`SampleError` unless members ``key.FIELD`` read back with
    this key (WebDataset rule) and are safe to extract (not absolute, no
    ``..``): :func:`tarproc.samples.key_problem`."""
    problem = key_problem(key)
    if problem:
        raise SampleError(f"{where}: {problem}" if where else problem)


class KeyNumbers:
    """Keys ``keyformat.format(n)`` for n = start, start+1, ...

    :raises UsageError: the format is not a ``str.format`` pattern taking one
        number
    """

    def __init__(self, keyformat: str = DEFAULT_KEYFORMAT, start: int = 0):
        try:
            same = keyformat.format(start) == keyformat.format(start + 1)
        except (IndexError, KeyError):
            raise UsageError(f"bad key format {keyformat!r}: the only field is the number, {{}} or {{:09d}}") from None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"bad key format {keyformat!r}: {exc}") from None
        if same:
            raise UsageError(f"key format {keyformat!r} gives every sample the same key (use a {{}} for the number)")
        self.keyformat = keyformat
        self.next = start

    def __call__(self) -> str:
        key = self.keyformat.format(self.next)
        self.next += 1
        return key


class UniqueKeys:
    """Remember keys to reject one given twice (memory bounded like
    :data:`tarproc.samples.MAX_SEEN_KEYS`)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def check(self, key: str, where: str) -> None:
        if key in self.seen:
            raise SampleError(f"{where}: key {key!r} given twice")
        if len(self.seen) < MAX_SEEN_KEYS:
            self.seen.add(key)


def _sample(key: str, values: dict[str, bytes]) -> Sample:
    sample: Sample = {"__key__": key}
    for name in sorted(values):
        sample[name] = values[name]
    return sample


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, line without ``\\n`` or ``\\r\\n``) of a binary stream."""
    for lineno, line in enumerate(stream, 1):
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield lineno, line


# -------------------------------------------------------------- lines2tar


def line_samples(
    stream: BinaryIO,
    fields: Sequence[str],
    sep: bytes | None = None,
    keyformat: str = DEFAULT_KEYFORMAT,
    start: int = 0,
    source: str = "-",
    keys: KeyNumbers | None = None,
    unique: UniqueKeys | None = None,
) -> Iterator[Sample]:
    """One sample per non-empty line of ``stream``.

    The line (without its ``\\n`` or ``\\r\\n``) is split into
    ``len(fields)`` values at ``sep`` (default: runs of whitespace); the
    last field takes the rest of the line. Empty lines are skipped. A field
    named ``__key__`` gives the key; otherwise keys are numbered with
    ``keyformat`` (``{:09d}``: ``000000000``, ``000000001``...) from ``start``.

    :param stream: binary lines (UTF-8 expected for keys; values are kept as bytes)
    :param fields: field names, possibly including ``__key__``
    :param sep: separator bytes, or None for whitespace
    :param keys: a shared key counter (so several inputs number on)
    :param unique: a shared record of keys seen (so a key repeated in
        another input is caught too)
    :raises SampleError: a line with fewer values than fields, an invalid or
        repeated key
    """
    fields = list(fields)
    n = len(fields)
    keys = keys or KeyNumbers(keyformat, start)
    unique = unique if unique is not None else UniqueKeys()
    has_key = "__key__" in fields
    for lineno, line in _lines(stream):
        if not line:
            continue
        values = line.split(sep, n - 1) if n > 1 else [line]
        where = f"{source}:{lineno}"
        if len(values) < n:
            raise SampleError(f"{where}: expected {n} values ({' '.join(fields)}), got {len(values)}")
        record = dict(zip(fields, values))
        if has_key:
            key = _decode(record.pop("__key__"))
        else:
            key = keys()
        check_key(key, where)
        unique.check(key, where)
        yield _sample(key, record)


# ------------------------------------------------- text inputs of tarproc --mode

TEXT_MODES = ("lines", "pages", "keys")


def text_samples(
    stream: BinaryIO, mode: str, source: str = "-", keys: KeyNumbers | None = None
) -> Iterator[Sample]:
    """Samples from a text stream, as the original tarproc's ``--mode`` read
    its input:

    - ``lines``: each line (without its newline) is a sample with a ``txt``
      field; empty lines are skipped; keys are numbered (``keys``)
    - ``pages``: each form-feed separated page (``\\f``; a newline right after
      it is dropped) is a sample with a ``txt`` field; empty pages are skipped
    - ``keys``: each non-empty line, stripped, is the key of a sample with no
      fields (a command fetches its data by key)

    ``"__source__"`` is ``source``.

    :raises UsageError: an unknown mode
    :raises SampleError: a line of ``keys`` mode that is not a valid key
    """
    if mode not in TEXT_MODES:
        raise UsageError(f"unknown mode {mode!r} (use tar, lines, pages or keys)")
    keys = keys or KeyNumbers()
    if mode == "keys":
        unique = UniqueKeys()
        for lineno, line in _lines(stream):
            line = line.strip()
            if not line:
                continue
            key = _decode(line)
            where = f"{source}:{lineno}"
            check_key(key, where)
            unique.check(key, where)
            yield {"__key__": key, "__source__": source}
        return
    if mode == "lines":
        for _, line in _lines(stream):
            if line:
                yield {"__key__": keys(), "__source__": source, "txt": line}
        return
    page: list[bytes] = []
    for raw in stream:
        while b"\f" in raw:
            before, raw = raw.split(b"\f", 1)
            page.append(before)
            text = b"".join(page)
            if text:
                yield {"__key__": keys(), "__source__": source, "txt": text}
            page = []
            raw = raw.removeprefix(b"\n")
        page.append(raw)
    text = b"".join(page)
    if text:
        yield {"__key__": keys(), "__source__": source, "txt": text}


def iter_text_samples(specs: Iterable[str], mode: str, storage_options: dict | None = None) -> Iterator[Sample]:
    """:func:`text_samples` of several inputs (opened with
    :func:`tarproc.io.sources.open_source`: files, ``-``, ``pipe:CMD``, URLs,
    compressed or not, with fsspec ``storage_options``), keys numbered
    across them.

    :raises TarprocError: see :func:`text_samples` and ``open_source``
    """
    from tarproc.io.sources import open_source

    keys = KeyNumbers()
    for spec in specs:
        with open_source(spec, storage_options=storage_options) as stream:
            yield from text_samples(stream, mode, spec, keys)


# ---------------------------------------------------------------- tsv2tar


def tsv_samples(
    stream: BinaryIO,
    base_dir: str = ".",
    keyformat: str = DEFAULT_KEYFORMAT,
    start: int = 0,
    source: str = "-",
    delimiter: str = "\t",
) -> Iterator[Sample]:
    """Samples from a TSV plan: a header row of field names, then one row
    per sample (columns separated by one tab, no quoting; with another
    ``delimiter``, e.g. ``","`` for a CSV plan, rows are read by Python's
    :mod:`csv` module, RFC 4180 quoting included).

    - a column ``NAME`` holds the text of field ``NAME`` (UTF-8 bytes as given)
    - a column ``@NAME`` holds a file path whose content is field ``NAME``;
      relative paths are relative to ``base_dir``
    - an optional column ``__key__`` holds the key; otherwise keys are
      numbered with ``keyformat`` from ``start``
    - an empty cell leaves the field out of that sample; empty lines are skipped
    - a UTF-8 byte order mark before the header (spreadsheet exports) is ignored

    :raises SourceError: a missing or malformed header, a row with the
        wrong number of columns, a file that cannot be read
    :raises SampleError: an invalid or repeated key, a row with no fields
    """
    lines = _rows(stream, delimiter, source)
    header = None
    for _, cells in lines:
        if cells:
            cells[0] = cells[0].removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (spreadsheet export)
            header = [_decode(cell) for cell in cells]
            break
    if header is None:
        raise SourceError(f"{source}: empty plan (expected a header row of field names)")
    columns: list[tuple[str, bool]] = []  # (field, is_file)
    seen = set()
    for name in header:
        is_file = name.startswith("@")
        field = name[1:] if is_file else name
        if field == "__key__":
            if is_file:
                raise SourceError(f"{source}: the key column cannot be a file column: {name!r}")
        else:
            try:
                check_field(field, SourceError)
            except SourceError as exc:
                raise SourceError(f"{source}: header: {exc}") from None
        if field in seen:
            raise SourceError(f"{source}: header: field {field!r} given twice")
        seen.add(field)
        columns.append((field, is_file))
    if all(field == "__key__" for field, _ in columns):
        raise SourceError(f"{source}: header has no field columns")
    keys = KeyNumbers(keyformat, start)
    unique = UniqueKeys()
    for lineno, cells in lines:
        if not cells:
            continue
        where = f"{source}:{lineno}"
        if len(cells) != len(columns):
            raise SourceError(f"{where}: expected {len(columns)} columns, got {len(cells)}")
        key = None
        values: dict[str, bytes] = {}
        for (field, is_file), cell in zip(columns, cells):
            if field == "__key__":
                key = _decode(cell)
                continue
            if not cell:
                continue
            if is_file:
                path = os.path.join(base_dir, os.fsdecode(cell))
                try:
                    values[field] = _read_regular(path)
                except OSError as exc:
                    raise SourceError(f"{where}: {path}: cannot read: {exc.strerror or exc}") from None
            else:
                values[field] = cell
        if key is None:
            key = keys()
        check_key(key, where)
        unique.check(key, where)
        if not values:
            raise SampleError(f"{where}: sample {key!r} has no fields (every cell is empty)")
        yield _sample(key, values)


def _rows(stream: BinaryIO, delimiter: str, source: str) -> Iterator[tuple[int, list[bytes]]]:
    """(line number, cells) of a plan; an empty line has no cells."""
    if delimiter == "\t":
        for lineno, line in _lines(stream):
            yield lineno, line.split(b"\t") if line else []
        return
    reader = csv.reader((line.decode("utf-8", "surrogateescape") for line in stream), delimiter=delimiter)
    try:
        for row in reader:
            yield reader.line_num, [cell.encode("utf-8", "surrogateescape") for cell in row]
    except csv.Error as exc:
        raise SourceError(f"{source}:{reader.line_num}: {exc}") from None


# ---------------------------------------------------------------- dir2tar


def _matches(rel: str, name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if "/" in pattern.rstrip("/"):
            if fnmatch.fnmatchcase(rel, pattern.strip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern.rstrip("/")):
            return True
    return False


_O_RDONLY = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)


def _read_regular(path: str) -> bytes:
    """The bytes of the regular file at ``path`` (symbolic links followed).

    :raises OSError: it cannot be opened or read, or it is not a regular
        file (a FIFO would block, ``/dev/zero`` never end); opened with
        ``O_NONBLOCK`` so that checking a FIFO does not wait for a writer
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = os.read(fd, 1 << 16)
        if data:
            more = os.read(fd, 1 << 22)
            if more:
                data = _read_rest(fd, data, more)
        return data
    finally:
        os.close(fd)


def _read_rest(fd: int, first: bytes, second: bytes) -> bytes:
    """The rest of a file after its first two reads, all joined."""
    chunks = [first, second]
    while True:
        chunk = os.read(fd, 1 << 22)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def dir_samples(
    root: str,
    label_field: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    warn: Warn | None = None,
    skip_paths: Iterable[str] = (),
) -> Iterator[Sample]:
    """The regular files under ``root`` as samples grouped by the WebDataset
    key rule: ``train/cat/001.jpg`` and ``train/cat/001.json`` (paths
    relative to ``root``) form the sample ``train/cat/001`` with fields
    ``jpg`` and ``json``, so writing the samples recreates exactly those
    member names.

    The walk is deterministic and keeps each key's files adjacent: in each
    directory the entries are ordered by (key or directory name, files
    before a directory of the same name, field), by code point. Symbolic
    links are never followed; they, other non-regular files, files whose
    basename has no key (no dot, or a leading or trailing dot) and
    unreadable files or directories are reported to ``warn`` and skipped.

    :param root: the directory to walk
    :param label_field: add this field holding the name of the file's parent
        directory (for files directly in ``root``: the name of ``root``)
    :param include: globs a file must match (any of them) to be taken
    :param exclude: globs excluding files and pruning directories
    :param skip_paths: absolute paths to leave out silently (e.g. the output)
    :param warn: called with a message for each skipped entry
    :raises SourceError: ``root`` is not a directory
    :raises SampleError: a file's field is ``label_field``

    A glob with a ``/`` matches the path relative to ``root``, one without
    matches the basename (``fnmatch``, case-sensitive; ``*`` also matches ``/``).
    """
    warn = warn or _ignore
    if not os.path.isdir(root):
        raise SourceError(f"{root}: not a directory" if os.path.exists(root) else f"{root}: no such directory")
    if label_field is not None:
        check_field(label_field, UsageError)
    skip: dict[str, set[str]] = {}  # basename -> absolute paths, so most files cost one lookup
    for p in skip_paths:
        skip.setdefault(os.path.basename(p), set()).add(os.path.abspath(p))
    root_label = os.path.basename(os.path.abspath(root)).encode("utf-8", "surrogateescape")
    yield from _walk(root, "", root_label, label_field, list(include), list(exclude), warn, skip)


def _walk(path: str, rel: str, label: bytes, label_field, include, exclude, warn, skip) -> Iterator[Sample]:
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError as exc:
        warn(f"skipping directory {rel or '.'!r}: {exc.strerror}")
        return
    # (stem or directory name, 0 = file / 1 = directory, field, path): unique
    # per entry, so sorting never compares the paths
    items = []
    append = items.append
    for entry in entries:
        name = entry.name
        if exclude and _matches(rel + name, name, exclude):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                append((name, 1, "", entry.path))
                continue
            regular = entry.is_file(follow_symlinks=False)
            link = not regular and entry.is_symlink()
        except OSError as exc:
            warn(f"skipping {rel + name!r}: {exc.strerror}")
            continue
        if include and not _matches(rel + name, name, include):
            continue
        if not regular:
            if link:
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    target = "?"
                warn(f"skipping symbolic link {rel + name!r} -> {target!r} (links are not followed)")
            else:
                warn(f"skipping {rel + name!r}: not a regular file")
            continue
        if name in skip and os.path.abspath(entry.path) in skip[name]:
            continue
        dot = name.find(".")
        if dot <= 0 or dot == len(name) - 1:
            warn(f"skipping {rel + name!r}: file has no key (WebDataset key.field)")
            continue
        append((name[:dot], 0, name[dot + 1 :], entry.path))
    del entries
    items.sort()
    os_open, os_read, os_close, flags = os.open, os.read, os.close, _O_RDONLY
    sample: Sample | None = None
    stem = None
    for item_stem, kind, field, item_path in items:
        if kind:
            if sample is not None:
                yield _finish(sample, label, label_field)
                sample = stem = None
            yield from _walk(item_path, rel + item_stem + "/", item_stem.encode("utf-8", "surrogateescape"),
                             label_field, include, exclude, warn, skip)
            continue
        try:  # plain system calls: faster than open().read() for small files; O_NOFOLLOW
            fd = os_open(item_path, flags)
            try:
                data = os_read(fd, 1 << 16)
                if data:
                    more = os_read(fd, 1 << 22)
                    if more:
                        data = _read_rest(fd, data, more)
            finally:
                os_close(fd)
        except OSError as exc:
            warn(f"skipping {rel + item_stem + '.' + field!r}: cannot read: {exc.strerror}")
            continue
        if item_stem != stem:
            if sample is not None:
                yield _finish(sample, label, label_field)
            stem = item_stem
            sample = {"__key__": rel + stem}
        sample[field] = data  # fields arrive in sorted order
    if sample is not None:
        yield _finish(sample, label, label_field)


def _finish(sample: Sample, label: bytes, label_field: str | None) -> Sample:
    if label_field is None:
        return sample
    if label_field in sample:
        raise SampleError(
            f"sample {sample['__key__']!r} has a file for field {label_field!r},"
            " the field that holds the directory's name"
        )
    sample[label_field] = label
    return _sample(sample.pop("__key__"), sample)
