"""Group tar members into WebDataset samples.

The key rule is WebDataset's (webdataset ``tariterators.base_plus_ext``,
https://github.com/webdataset/webdataset): for member ``dir/name.ext1.ext2``
the key is ``dir/name`` (the path up to the first dot of the basename) and the
field is ``ext1.ext2``. A sample is a maximal run of adjacent members with the
same key; in Python it is a ``dict``: ``"__key__"``, ``"__source__"`` and
field name -> ``bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .errors import SampleError, TarprocError, Warn
from .tario import Member

Sample = dict

#: how many keys per source are remembered to detect a key that comes back
#: after another key (a shard that is not grouped); beyond this only the
#: adjacent check is made, so memory stays bounded on huge streams
MAX_SEEN_KEYS = 1_000_000


def split_name(name: str) -> tuple[str, str] | None:
    """Split a member name into ``(key, field)`` by the WebDataset rule.

    :returns: ``None`` when the basename has no dot, starts with a dot or
        ends with one (no key or no field)
    """
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1 or dot == len(name) - 1:
        return None
    return name[:dot], name[dot + 1 :]


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be used (absolute, or with a ``..``
    component, which GNU tar refuses to extract), else ``None``."""
    if name.startswith("/"):
        return "absolute member name"
    if ".." in name.split("/"):
        return "member name contains '..'"
    return None


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


def group_samples(
    members: Iterable[Member],
    source: str = "-",
    warn: Warn | None = None,
    strict: bool = False,
) -> Iterator[Sample]:
    """Group adjacent members with the same key into sample dicts.

    :param members: tar members in stream order
    :param source: stored as ``"__source__"`` in every sample, and used in messages
    :param warn: called with a message for each member skipped because it
        has no key, an unsafe name, or a field starting with ``__`` (the
        meta entries' prefix: ``k.__key__`` would replace the key)
    :param strict: raise :class:`SampleError` instead of skipping such members
    :raises SampleError: a field repeated within one sample, or a key that
        comes back after another key (the input is not grouped: use
        ``tarsort``)
    :raises TarprocError: errors from the member stream, re-raised with the
        last complete sample's key added; the partial sample is never yielded
    """
    current: Sample | None = None
    last_key: str | None = None
    seen: set[str] = set()
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
            where = f"last complete sample: {last_key!r}" if last_key is not None else "no complete sample"
            raise type(exc)(f"{exc} ({where})") from None
        name = member.name
        # inline split_name and unsafe_name: this loop runs once per member
        slash = name.rfind("/")
        dot = name.find(".", slash + 1)
        problem = unsafe_name(name) if (".." in name or name[:1] == "/") else None
        if not problem and dot > slash + 1 and name.startswith("__", dot + 1):
            # a field "__key__" would replace the key (meta entries start with "__")
            problem = "field name starts with '__' (reserved for __key__, __source__...)"
        if problem or dot <= slash + 1 or dot == len(name) - 1:
            message = f"{source}: {problem or 'member has no key (WebDataset key.field)'}: {name!r}"
            if strict:
                raise SampleError(message)
            if warn is not None:
                warn(f"skipping {message}")
            continue
        key = name[:dot]
        field = name[dot + 1 :]
        if current is not None and key == current["__key__"]:
            if field in current:
                raise SampleError(f"{source}: field {field!r} repeated in sample {key!r} (offset {member.offset})")
            current[field] = member.data
            continue
        if current is not None:
            last_key = current["__key__"]
            yield current
        if key in seen:
            raise SampleError(
                f"{source}: key {key!r} comes back after other keys at offset {member.offset}:"
                " the input is not grouped by key (sort it with tarsort)"
            )
        if len(seen) < MAX_SEEN_KEYS:
            seen.add(key)
        current = {"__key__": key, "__source__": source, field: member.data}
    if current is not None:
        yield current


def sample_members(sample: Sample) -> Iterator[tuple[str, bytes]]:
    """The ``(member name, bytes)`` pairs that write a sample, in field order."""
    key = sample["__key__"]
    for field, value in sample.items():
        if field.startswith("__"):
            continue
        if isinstance(value, str):
            value = value.encode("utf-8")
        yield f"{key}.{field}", value
