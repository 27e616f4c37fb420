"""Mix several datasets into one with exact per-source counts (tarmix).

A *source* is a list of shards (a brace pattern, as every input of the
family) with a weight. For ``count`` output samples, source ``i`` gets the
quota ``n * w_i / sum(w)`` rounded by the largest-remainder (Hamilton)
method: every quota is first rounded down, then the samples still missing go
one each to the sources with the largest fractional parts (ties: the source
given first). Weights are exact decimals (:class:`fractions.Fraction`), so
``0.7`` and ``0.3`` of 1,000,000 are exactly 700,000 and 300,000.

The order of the output is a seeded random interleaving of the sources with
exactly those counts: at each step source ``i`` is drawn with probability
``remaining_i / remaining_total`` (a uniformly random arrangement of the
multiset of labels, drawn one label at a time, so nothing but ``k`` counters
is held), and the next sample of that source's stream is taken. Every source
is read as a stream, its shards one after another in the order given (or a
seeded shuffled order), each sample at most once: sampling without
replacement from the front of each source. Nothing is loaded whole.

When a source ends before its quota (``when_exhausted``):

- ``stop``: the output ends there (every sample already drawn is written);
  :attr:`Mixer.stopped` names the source;
- ``repeat``: the source is read again from its first shard (another pass;
  its keys come back, so the output needs new keys, e.g. ``{index:09d}``);
- ``renormalize``: the samples it still owed are shared among the sources
  not yet exhausted by their weights (largest remainder again); when every
  source is exhausted the output ends as with ``stop``.

The same sources, count, seed and mode give the same samples in the same
order (and so, written by :class:`tarproc.io.shards.ShardWriter`, the same bytes).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from fractions import Fraction
from collections.abc import Callable, Iterator, Sequence

from tarproc.errors import DataError, SampleError, UsageError, Warn
from tarproc.samples import Sample
from tarproc.io.sources import expand_inputs, iter_source_samples

#: the modes of :class:`Mixer` for a source that ends before its quota
WHEN_EXHAUSTED = ("stop", "repeat", "renormalize")

#: the meta entry holding the index of the source a mixed sample came from
#: (not written as a member; ``"__source__"`` keeps the input shard)
MIX_SOURCE = "__mix__"


def parse_weight(text: str) -> Fraction | None:
    """``text`` as a weight: a finite non-negative decimal or fraction
    (``0.7``, ``3``, ``1e-3``, ``2/3``), exactly; None when it is not a number.

    :raises UsageError: a number that is negative, infinite or NaN
    """
    text = text.strip()
    if not text:
        return None
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        try:
            number = float(text)
        except ValueError:
            return None
        if not math.isfinite(number):
            raise UsageError(f"weight {text!r} is not a finite number") from None
        value = Fraction(number)
    if value < 0:
        raise UsageError(f"weight {text!r} is negative")
    return value


def parse_source(text: str) -> tuple[str, Fraction]:
    """Split ``SHARDS:WEIGHT`` into the shard pattern and its weight.

    The weight is what follows the LAST ``:`` when it parses as a number
    (:func:`parse_weight`); otherwise the whole text is the pattern with
    weight 1. So ``s3://b/x-{0..9}.tar:0.3`` is ``s3://b/x-{0..9}.tar`` with
    0.3, ``s3://b/x.tar`` has weight 1, and a file whose name ends in
    ``:NUMBER`` is given as ``NAME:NUMBER:1``.

    :raises UsageError: an empty pattern, or a bad weight
    """
    spec, sep, tail = text.rpartition(":")
    weight = parse_weight(tail) if sep else None
    if weight is None:
        spec, weight = text, Fraction(1)
    if not spec:
        raise UsageError(f"source {text!r} has no shards before its weight")
    return spec, weight


def largest_remainder(total: int, weights: Sequence[Fraction]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` by the
    largest-remainder (Hamilton) method: floors of ``total * w / sum(w)``,
    then one more for each of the largest fractional parts (ties: the first
    weight). The parts sum to ``total``; a zero weight gets 0.

    :raises UsageError: ``total`` negative, no weights, or every weight 0
    """
    if total < 0:
        raise UsageError("the number of samples must not be negative")
    whole = sum(weights, Fraction(0))
    if not weights or whole <= 0:
        raise UsageError("at least one source needs a weight above 0")
    exact = [Fraction(total) * w / whole for w in weights]
    parts = [math.floor(e) for e in exact]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


@dataclass
class MixSource:
    """One source of a mix.

    :ivar spec: the source as given (a brace pattern)
    :ivar weight: its weight
    :ivar shards: its shards, expanded, in the order they are read
    :ivar quota: samples it owes the output (changed by ``renormalize``)
    :ivar taken: samples taken from it so far
    :ivar passes: times it was opened (``repeat`` opens it again)
    :ivar exhausted: it ended before its quota (and was not repeated)
    """

    spec: str
    weight: Fraction
    shards: list[str]
    quota: int = 0
    taken: int = 0
    passes: int = 0
    exhausted: bool = False
    #: samples taken in the current pass
    in_pass: int = field(default=0, repr=False)

    def summary(self) -> dict:
        """JSON-ready counts of this source (for a manifest)."""
        return {"source": self.spec, "weight": float(self.weight), "shards": len(self.shards), "quota": self.quota,
                "taken": self.taken, "passes": self.passes, "exhausted": self.exhausted}


def seeded_rng(seed: int | str | None, *parts) -> random.Random:
    """A :class:`random.Random` for ``seed`` (an int as itself, text as
    text) and an optional path of ``parts`` (``"shards", 2``), the same on
    every machine and Python 3 release (string seeds hash with SHA-512)."""
    if not parts:
        return random.Random(seed)
    return random.Random("/".join(map(str, (seed, *parts))))


class Mixer:
    """The mixed stream of samples (iterate it once).

    :param sources: ``(pattern, weight)`` pairs (:func:`parse_source`)
    :param count: output samples wanted
    :param seed: seed of the interleaving (and of ``shuffle_shards``)
    :param when_exhausted: one of :data:`WHEN_EXHAUSTED`
    :param shuffle_shards: read each source's shards in a seeded random order
    :param open_shard: ``open_shard(spec) -> iterator of samples`` (default:
        :func:`tarproc.io.sources.iter_source_samples` with ``warn``, ``strict``
        and ``storage_options``)
    :param warn: called with a line about a source that ran out (and the
        reader's warnings)
    :param strict, lowercase, note, storage_options: those of
        :func:`tarproc.io.sources.iter_source_samples`
    :raises UsageError: bad counts, weights or mode, a source with no shards

    Each yielded sample is the source's sample with ``"__source__"`` (its
    input shard) and :data:`MIX_SOURCE` (the source's index) set.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, Fraction]],
        count: int,
        seed: int | str | None = 0,
        when_exhausted: str = "stop",
        shuffle_shards: bool = False,
        open_shard: Callable[[str], Iterator[Sample]] | None = None,
        warn: Warn | None = None,
        strict: bool = False,
        storage_options: dict | None = None,
        lowercase: bool = False,
        note=None,
    ):
        if when_exhausted not in WHEN_EXHAUSTED:
            raise UsageError(f"when a source is exhausted: {when_exhausted!r} is not one of {', '.join(WHEN_EXHAUSTED)}")
        if not sources:
            raise UsageError("no sources to mix")
        self.count = count
        self.seed = seed
        self.when_exhausted = when_exhausted
        self.warn = warn
        self.sources: list[MixSource] = []
        for i, (spec, weight) in enumerate(sources):
            shards = expand_inputs([spec])
            if not shards:
                raise UsageError(f"source {spec!r} names no shards")
            if shuffle_shards:
                seeded_rng(seed, "shards", i).shuffle(shards)
            self.sources.append(MixSource(spec, Fraction(weight), shards))
        for source, quota in zip(self.sources, largest_remainder(count, [s.weight for s in self.sources])):
            source.quota = quota
        #: the quotas before any renormalization (the plan)
        self.planned = [s.quota for s in self.sources]
        self._open = open_shard or (lambda spec: iter_source_samples(
            spec, warn, strict, lowercase=lowercase, note=note, storage_options=storage_options))
        #: index of the source whose end stopped the output early, or None
        self.stopped: int | None = None
        #: samples yielded
        self.samples = 0

    def _stream(self, i: int) -> Iterator[Sample]:
        source = self.sources[i]
        source.passes += 1
        source.in_pass = 0
        return itertools.chain.from_iterable(self._open(spec) for spec in source.shards)

    def __iter__(self) -> Iterator[Sample]:
        sources = self.sources
        rng = seeded_rng(self.seed)
        streams: list[Iterator[Sample] | None] = [None] * len(sources)
        while True:
            remaining = [s.quota - s.taken for s in sources]
            total = sum(remaining)
            if total <= 0:
                return
            pick = rng.randrange(total)
            i = 0
            while pick >= remaining[i]:
                pick -= remaining[i]
                i += 1
            source = sources[i]
            if streams[i] is None:
                streams[i] = self._stream(i)
            sample = next(streams[i], None)
            if sample is None:
                if not self._exhausted(i, streams):
                    return
                continue
            source.taken += 1
            source.in_pass += 1
            self.samples += 1
            sample[MIX_SOURCE] = i
            yield sample

    def _exhausted(self, i: int, streams: list) -> bool:
        """Source ``i`` ended before its quota: act on ``when_exhausted``.
        :returns: False when the output ends here"""
        source = self.sources[i]
        owed = source.quota - source.taken
        if self.when_exhausted == "repeat":
            if source.in_pass == 0:
                raise DataError(f"source {source.spec} has no samples: it cannot be repeated")
            streams[i] = self._stream(i)
            return True
        source.exhausted = True
        if self.when_exhausted == "renormalize":
            others = [j for j, s in enumerate(self.sources) if not s.exhausted and s.weight > 0]
            if others:
                shares = largest_remainder(owed, [self.sources[j].weight for j in others])
                source.quota = source.taken
                for j, share in zip(others, shares):
                    self.sources[j].quota += share
                if self.warn is not None:
                    given = ", ".join(f"{share} to {self.sources[j].spec}" for j, share in zip(others, shares))
                    self.warn(f"source {source.spec} ran out after {source.taken} of its {source.taken + owed}"
                              f" samples; the {owed} left go to the others by weight: {given}")
                return True
        self.stopped = i
        if self.warn is not None:
            self.warn(f"source {source.spec} ran out after {source.taken} of its {source.taken + owed} samples:"
                      f" the output ends at {self.samples} of {self.count} samples")
        return False

    def plan(self) -> list[str]:
        """One line per source stating its weight and quota, and how the
        quotas were rounded (for a tool's summary)."""
        whole = sum((s.weight for s in self.sources), Fraction(0))
        lines = []
        for s, planned in zip(self.sources, self.planned):
            exact = Fraction(self.count) * s.weight / whole
            lines.append(f"{s.spec}: weight {float(s.weight):g} ({float(s.weight / whole):.6g} of {self.count} ="
                         f" {float(exact):.6g}), {planned} samples from {len(s.shards)} shards")
        return lines


def source_field_stage(samples: Iterator[Sample], name: str) -> Iterator[Sample]:
    """Add the field ``name`` holding each sample's input shard
    (``"__source__"``, UTF-8) to each sample.

    :raises SampleError: a sample already has a field ``name``
    """
    for sample in samples:
        if name in sample:
            raise SampleError(f"sample {sample['__key__']!r} of {sample.get('__source__', '-')} already has a field"
                              f" {name!r}: the origin cannot be written there", topic="source_field")
        sample[name] = str(sample.get("__source__", "-")).encode("utf-8", "surrogateescape")
        yield sample


@dataclass
class MixResult:
    """What :func:`write_mix` wrote.

    :ivar shards: the finished shards (:class:`tarproc.io.shards.ShardInfo`)
    :ivar per_shard: per shard, the samples from each source (by source index)
    :ivar samples: samples written
    """

    shards: list
    per_shard: list[list[int]]
    samples: int

    def manifest(self, mixer: Mixer) -> dict:
        """The provenance manifest: the plan, each source's counts and,
        per output shard, its name, samples, bytes, sha256 and the samples
        from each source (``{source pattern: count}``)."""
        specs = [s.spec for s in mixer.sources]
        return {
            "count": mixer.count,
            "written": self.samples,
            "seed": mixer.seed,
            "when_exhausted": mixer.when_exhausted,
            "rounding": "largest remainder of count * weight / sum(weights)",
            "stopped_by": None if mixer.stopped is None else specs[mixer.stopped],
            "sources": [dict(s.summary(), planned=p) for s, p in zip(mixer.sources, mixer.planned)],
            "shards": [dict(info.manifest(), sources={specs[i]: n for i, n in enumerate(counts) if n})
                       for info, counts in zip(self.shards, self.per_shard)],
        }


def write_mix(mixer: Mixer, pattern: str, *, rekey: str | None = None, source_field: str | None = None,
              progress: Callable[[Iterator[Sample]], Iterator[Sample]] | None = None, **writer_options) -> MixResult:
    """Write ``mixer``'s samples into shards named by ``pattern`` with a
    :class:`tarproc.io.shards.ShardWriter` (``writer_options``: ``maxcount``,
    ``maxsize``, ``compression``, ``mtime``, ``checksum``, ``warn``,
    ``storage_options``...), with new keys from ``rekey`` (a
    :class:`tarproc.ops.stages.Rekeyer` format) and the origin of each sample
    in the field ``source_field`` (:func:`source_field_stage`).

    ``progress`` wraps the mixed stream (a progress bar).

    Keys must stay unique in the whole output (:class:`tarproc.samples.KeyLedger`).

    :raises DuplicateKeyError: a key comes back (two sources with the same
        keys, or a repeated source): the current shard stays ``NAME.partial``
    :raises TarprocError: see :class:`Mixer` and the writer
    """
    from tarproc.samples import KeyLedger
    from tarproc.io.shards import ShardWriter
    from tarproc.ops.stages import Rekeyer

    stream: Iterator[Sample] = iter(mixer) if progress is None else progress(iter(mixer))
    if rekey is not None:
        stream = Rekeyer(rekey)(stream)
    stream = KeyLedger()(stream)
    if source_field is not None:
        stream = source_field_stage(stream, source_field)
    pending: list[int] = []
    per_shard: list[list[int]] = []
    k = len(mixer.sources)

    def finished(info) -> None:
        counts = [0] * k
        for i in pending[: info.samples]:
            counts[i] += 1
        del pending[: info.samples]
        per_shard.append(counts)
        if user_on_shard is not None:
            user_on_shard(info)

    user_on_shard = writer_options.pop("on_shard", None)
    with ShardWriter(pattern, on_shard=finished, **writer_options) as writer:
        for sample in stream:
            pending.append(sample[MIX_SOURCE])  # before write: a shard finished inside write may hold it
            writer.write(sample)
    return MixResult(writer.shards, per_shard, writer.samples)
