"""Group tar members into WebDataset samples.

The key rule is WebDataset's (webdataset ``tariterators.base_plus_ext``,
https://github.com/webdataset/webdataset): for member ``dir/name.ext1.ext2``
the key is ``dir/name`` (the path up to the first dot of the basename) and the
field is ``ext1.ext2``. A sample is a maximal run of adjacent members with the
same key; in Python it is a ``dict``: ``"__key__"``, ``"__source__"`` and
field name -> ``bytes``. Field case is kept unless ``lowercase``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from tarproc.errors import DuplicateKeyError, SampleError, TarprocError, Warn

if TYPE_CHECKING:  # annotations only: the ground layer does not import tarproc.io
    from tarproc.io.tario import Member

Sample = dict

#: how many keys per source are remembered to detect a key that comes back
#: after another key (a shard that is not grouped); beyond this only the
#: adjacent check is made, so memory stays bounded on huge streams
MAX_SEEN_KEYS = 1_000_000


#: why a member gives no sample member (see :func:`member_parts`)
ABSOLUTE = "absolute member name"
DOTDOT = "member name contains '..'"
NO_KEY = "member has no key (WebDataset key.field)"


def member_parts(name: str) -> tuple[str, str] | str:
    """``(key, field)`` of a member name, or why the member gives no part of
    a sample: the one home of the member name rule (:func:`group_samples`
    calls it once per member; :func:`split_name` and :func:`unsafe_name`
    are views of it).

    In order: an absolute name (:data:`ABSOLUTE`) or one with a ``..``
    component (:data:`DOTDOT`) is unsafe, GNU tar refuses to extract those;
    then the WebDataset rule: a basename with no dot, starting with one or
    ending with one has no key or no field (:data:`NO_KEY`).
    """
    if name[:1] == "/":
        return ABSOLUTE
    if ".." in name and ".." in name.split("/"):  # the substring test first: most names have no '..'
        return DOTDOT
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1 or dot == len(name) - 1:
        return NO_KEY
    return name[:dot], name[dot + 1 :]


def split_name(name: str) -> tuple[str, str] | None:
    """Split a member name into ``(key, field)`` by the WebDataset rule
    (:func:`member_parts`).

    :returns: ``None`` when the basename has no dot, starts with a dot or
        ends with one (no key or no field), or the name is unsafe
        (:func:`unsafe_name`)
    """
    parts = member_parts(name)
    return parts if parts.__class__ is tuple else None


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be used (absolute, or with a ``..``
    component, which GNU tar refuses to extract), else ``None``
    (:func:`member_parts`)."""
    parts = member_parts(name)
    return parts if parts is ABSOLUTE or parts is DOTDOT else None


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a sample key, else None. Members ``key.FIELD``
    must read back with this key (the WebDataset rule above: the basename is
    non-empty and has no dot) and be safe to extract (relative, no ``..``
    component, as GNU tar requires); NUL and newline are refused too."""
    if not key:
        return "empty key"
    if "\0" in key or "\n" in key:
        return f"key {key!r} contains a NUL or newline"
    if key.startswith("/") or ".." in key.split("/"):
        return f"unsafe key {key!r}"
    base = key.rsplit("/", 1)[-1]
    if not base or "." in base:
        return f"a dot or an empty basename: key {key!r} would not survive the WebDataset key rule"
    return None


def is_meta(field: str) -> bool:
    """True for meta entries of a sample dict (``__key__``, ``__source__``...),
    which are not written as members."""
    return field.startswith("__")


def fields(sample: Sample) -> list[str]:
    """The data fields of a sample, in order, without meta entries."""
    return [k for k in sample if not k.startswith("__")]


Note = Callable[[str, int, str], None]

#: meta members (``KEY.__source__``, ``KEY.__key__``) are reported to ``note`` with this kind
META_NOTE = "meta"


def group_samples(
    members: Iterable[Member],
    source: str = "-",
    warn: Warn | None = None,
    strict: bool = False,
    *,
    lowercase: bool = False,
    regroup: bool = False,
    note: Note | None = None,
    offsets: bool = False,
) -> Iterator[Sample]:
    """Group adjacent members with the same key into sample dicts.

    Members whose field starts with ``__`` (``KEY.__source__``,
    ``KEY.__key__``, as the original tarproc and webdataset's writers with
    meta entries write them) are read as the sample's meta entries, as text:
    ``KEY.__source__`` replaces ``"__source__"`` (the original tarproc's
    reader keeps it too), ``KEY.__key__`` is dropped (the member name gives
    the key). Their number is passed to ``note(META_NOTE, count, example
    name)`` once at the end of the input.

    :param members: tar members in stream order
    :param source: stored as ``"__source__"`` in every sample, and used in messages
    :param warn: called with a message for each member skipped because it
        has no key or an unsafe name
    :param strict: raise :class:`SampleError` instead of skipping such members
    :param lowercase: lowercase field names, as webdataset's
        ``group_by_keys(lcase=True)`` and the original tarproc do (``img.JPG``
        gives field ``jpg``); two fields of a sample that differ only in case
        are then an error naming both
    :param regroup: yield a key that comes back after other keys as another
        sample (a fragment) instead of raising: for ``tarsort``, which merges
        the fragments of a key (:func:`tarproc.ops.sort.merge_fragments`)
    :param note: see above
    :param offsets: give every sample an ``"__offset__"`` meta entry: the
        byte offset (``Member.offset``) of its first member, for reports
    :raises SampleError: a field repeated within one sample, or a key that
        comes back after another key (the input is not grouped; ``tarsort``
        groups it), unless ``regroup``
    :raises TarprocError: errors from the member stream, re-raised with the
        last complete sample's key added; the partial sample is never yielded
        (but a sample followed by a complete or half end-of-archive marker is
        complete: it is yielded before the error)
    """
    current: Sample | None = None
    last_key: str | None = None
    seen: set[str] = set()
    meta = 0
    meta_example = ""
    originals: dict[str, str] = {}  # lowercased field -> name as read (lowercase only)
    it = iter(members)
    while True:
        try:
            member = next(it)
        except StopIteration:
            break
        except TarprocError as exc:
            if getattr(exc, "after_end_marker", False) and current is not None:
                # the archive was complete: so is its last sample
                last_key = current["__key__"]
                yield current
                current = None
            if meta and note is not None:
                note(META_NOTE, meta, meta_example)
            where = f"last complete sample: {last_key!r}" if last_key is not None else "no complete sample"
            raise type(exc)(f"{exc} ({where})") from None
        name = member.name
        parts = member_parts(name)
        if parts.__class__ is str:
            message = f"{source}: {parts}: {name!r} at offset {member.offset}"
            if strict:
                raise SampleError(message)
            if warn is not None:
                warn(f"skipping {message}")
            continue
        key, field = parts
        if field[:2] == "__":
            # a meta member: KEY.__source__, KEY.__key__
            meta += 1
            if not meta_example:
                meta_example = name
            if field == "__key__":
                continue
            if current is None or key != current["__key__"]:
                if current is not None:
                    last_key = current["__key__"]
                    yield current
                current = _start(key, source, seen, regroup, member.offset)
                if offsets:
                    current["__offset__"] = member.offset
                originals = {}
            current[field] = member.data.decode("utf-8", "surrogateescape")
            continue
        if lowercase:
            original = field
            field = field.lower()
        if current is not None and key == current["__key__"]:
            if field in current:
                if lowercase and originals.get(field, field) != original:
                    raise SampleError(
                        f"{source}: fields {originals[field]!r} and {original!r} of sample {key!r} differ only in"
                        f" case (offset {member.offset}): lowercased, they would be one field"
                    )
                raise SampleError(f"{source}: field {field!r} repeated in sample {key!r} (offset {member.offset})")
            current[field] = member.data
            if lowercase:
                originals[field] = original
            continue
        if current is not None:
            last_key = current["__key__"]
            yield current
        current = _start(key, source, seen, regroup, member.offset)
        if offsets:
            current["__offset__"] = member.offset
        current[field] = member.data
        if lowercase:
            originals = {field: original}
    if current is not None:
        yield current
    if meta and note is not None:
        note(META_NOTE, meta, meta_example)


def _start(key: str, source: str, seen: set, regroup: bool, offset: int) -> Sample:
    """A new sample for ``key``, checking that the key did not come before."""
    if key in seen:
        if not regroup:
            raise SampleError(
                f"{source}: key {key!r} comes back after other keys at offset {offset}:"
                f" the input is not grouped by key (group it with tarsort: tarsort {_quote(source)} -o OUT)"
            )
    elif len(seen) < MAX_SEEN_KEYS:
        seen.add(key)
    return {"__key__": key, "__source__": source}


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


class KeyLedger:
    """Remember the keys written to one output and the input each came from,
    to stop a run before a key comes back (shards made independently, e.g.
    two ``lines2tar`` outputs both numbered from ``000000000``).

    Exact for the first ``limit`` keys (:data:`MAX_SEEN_KEYS`, about 110 MB
    of memory with 30-character keys); beyond that only a key equal to the previous
    sample's is caught.

    :param limit: keys remembered
    """

    def __init__(self, limit: int = MAX_SEEN_KEYS):
        self.limit = limit
        self.keys: dict[str, str] = {}
        self.previous: str | None = None
        self.previous_source = ""

    def first_source(self, key: str) -> str | None:
        """The input ``key`` was written from, or None when it is new."""
        if key == self.previous:
            return self.previous_source
        return self.keys.get(key)

    def add(self, key: str, source: str) -> None:
        if len(self.keys) < self.limit:
            self.keys[key] = source
        self.previous = key
        self.previous_source = source

    def check(self, sample: Sample) -> None:
        """Record ``sample``'s key.

        :raises DuplicateKeyError: the key was already written; the message
            names both inputs
        """
        key = sample["__key__"]
        source = str(sample.get("__source__", "-"))
        first = self.first_source(key)
        if first is not None:
            raise DuplicateKeyError(duplicate_message(key, first, source), key, first, source)
        self.add(key, source)

    def __call__(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """The stage: pass ``samples`` on, checking each key first."""
        check = self.check
        for sample in samples:
            check(sample)
            yield sample


def duplicate_message(key: str, first: str, again: str) -> str:
    """The data side of a key repeated across inputs (a CLI adds its remedy)."""
    if first == again:
        return f"key {key!r} comes back in {again}: it was already written from there (an input given twice?)"
    return f"key {key!r} of {again} was already written from {first}: the inputs repeat keys"


def sample_members(sample: Sample) -> Iterator[tuple[str, bytes]]:
    """The ``(member name, bytes)`` pairs that write a sample, in field order."""
    key = sample["__key__"]
    for field, value in sample.items():
        if field.startswith("__"):
            continue
        if isinstance(value, str):
            value = value.encode("utf-8")
        yield f"{key}.{field}", value


#: field extensions whose bytes are UTF-8 text (tarcheck --decode, tarcats --where)
TEXT_EXTENSIONS = frozenset({"txt", "text", "cls", "cls2", "index", "inx", "id", "label", "caption", "csv", "tsv"})
#: field extensions whose bytes are JSON (UTF-8)
JSON_EXTENSIONS = frozenset({"json", "jsn"})


def field_extension(field: str) -> str:
    """The last dot-separated part of a field name, lowercased (``seg.png`` -> ``png``)."""
    return field.rsplit(".", 1)[-1].lower()


