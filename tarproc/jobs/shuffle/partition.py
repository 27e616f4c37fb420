"""The partitions of a shuffle: how many there are (N output shards, from
a count of the inputs' samples for ``-n K``), which one a key goes to, and
the order of the samples inside one."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from tarproc.errors import UsageError, Warn
from tarproc.io.sources import open_source
from tarproc.io.tario import TarReader
from tarproc.ops.sort import sort_key_function
from tarproc.samples import Sample, member_parts


# ---------------------------------------------------------------- hashes
def _secret(seed: str, purpose: bytes) -> bytes:
    return hashlib.blake2b(str(seed).encode("utf-8", "surrogateescape"), digest_size=32, person=purpose).digest()


def partition_function(seed: str, partitions: int) -> Callable[[str], int]:
    """The function mapping a key to its partition, ``0 <= p < partitions``.

    The partition is BLAKE2b-64 of the key (UTF-8, surrogateescape), keyed
    with a secret derived from ``seed`` (RFC 7693), read big-endian, modulo
    ``partitions``. It is independent of tarsort's shuffle hash (another
    derived secret), so the order inside a partition is not correlated
    with the partition number.

    :raises UsageError: ``partitions`` is not positive
    """
    if partitions < 1:
        raise UsageError(f"the number of output shards must be positive, not {partitions}")
    secret = _secret(seed, b"tarshuf-part")
    blake2b = hashlib.blake2b

    def partition(key: str) -> int:
        digest = blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8, key=secret).digest()
        return int.from_bytes(digest, "big") % partitions

    return partition


def order_key_function(seed: str) -> Callable[[Sample], bytes]:
    """The shuffle order inside an output shard: tarsort's (BLAKE2b-128 of
    the key keyed with the seed, :func:`tarproc.ops.sort.sort_key_function`), so
    output shard j holds its samples in ``tarsort --shuffle --seed SEED``
    order."""
    return sort_key_function(shuffle=True, seed=seed)


# ---------------------------------------------------------------- counting
def count_samples(input: str, warn: Warn | None = None, storage_options: dict | None = None) -> int:
    """Samples in one input shard, from its members' headers (member data is
    read but not kept); ``storage_options``: see
    :func:`tarproc.io.sources.open_source`. :raises TarprocError: as reading the input"""
    count = 0
    last = None
    with open_source(input, storage_options=storage_options) as stream:
        for member in TarReader(stream, input, warn or (lambda message: None)):
            parts = member_parts(member.name)  # the reader's rule: what it skips is not counted
            if parts.__class__ is str:
                continue
            key = parts[0]
            if key != last:
                count += 1
                last = key
    return count


def shard_count(total: int, maxcount: int) -> int:
    """N = ceil(total / maxcount), at least 1 (hash partitions then hold
    about ``maxcount`` samples each, not exactly)."""
    if maxcount < 1:
        raise UsageError("samples per shard must be positive")
    return max(1, -(-total // maxcount))



__all__ = ["count_samples", "order_key_function", "partition_function", "shard_count"]
