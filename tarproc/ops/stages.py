"""Generator stages from samples to samples (the WebDataset pipeline style).

Each stage takes an iterator of sample dicts (``"__key__"``, ``"__source__"``,
field -> ``bytes``; see :mod:`tarproc.samples`) and yields sample dicts,
reading its input only as far as it needs to, so stages compose into a
streaming pipeline: open sources -> stages -> sink.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import re
from dataclasses import dataclass
from collections.abc import Iterable, Iterator, Sequence

from tarproc.io.compress import split_tar_suffix
from tarproc.errors import MissingFieldError, SampleError, TarprocError, UsageError, Warn
from tarproc.samples import Sample, key_problem
from tarproc.io.sources import iter_source_samples



# ---------------------------------------------------------------- slicing
def parse_slice(text: str) -> tuple[int, int | None, int]:
    """Parse ``START:STOP[:STEP]`` (Python slice syntax, parts may be empty).

    :returns: ``(start, stop, step)``; ``stop`` is None when open
    :raises UsageError: not a slice, negative values (a stream has no end to
        count from) or a step of 0
    """
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise UsageError(f"bad slice {text!r}: expected START:STOP[:STEP]")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise UsageError(f"bad slice {text!r}: expected integers START:STOP[:STEP]") from None
    start = values[0] or 0
    stop = values[1]
    step = values[2] if len(values) == 3 and values[2] is not None else 1
    if start < 0 or (stop is not None and stop < 0) or step < 0:
        raise UsageError(f"bad slice {text!r}: negative values are not supported on a stream")
    if step == 0:
        raise UsageError(f"bad slice {text!r}: step must not be 0")
    return start, stop, step


def slice_samples(
    samples: Iterable[Sample], start: int = 0, stop: int | None = None, step: int = 1
) -> Iterator[Sample]:
    """Samples ``start``, ``start+step``, ... before ``stop`` (0-based); stops
    reading its input at ``stop``."""
    return itertools.islice(samples, start, stop, step)


def skip_count(samples: Iterable[Sample], skip: int = 0, count: int | None = None) -> Iterator[Sample]:
    """Drop the first ``skip`` samples, then yield at most ``count``."""
    return itertools.islice(samples, skip, None if count is None else skip + count)


# -------------------------------------------------------------- shuffling
def shuffle_samples(samples: Iterable[Sample], bufsize: int, seed: int | None = None) -> Iterator[Sample]:
    """Shuffle with a buffer of ``bufsize`` samples (memory: that many samples).

    Once the buffer is full, each new sample replaces a randomly chosen one,
    which is yielded; at the end the rest is shuffled. With a ``seed`` the
    order is reproducible (:class:`random.Random`).
    """
    if bufsize <= 1:
        yield from samples
        return
    rng = random.Random(seed)
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < bufsize:
            buffer.append(sample)
            continue
        i = rng.randrange(bufsize)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def shuffle_list(items: Sequence, seed: int | None = None) -> list:
    """A shuffled copy of ``items`` (e.g. the input shards); reproducible with a seed."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


# ------------------------------------------------------- field selection
@dataclass(frozen=True)
class FieldRule:
    """Keep the first present of ``alternatives``, stored as ``name``
    (None: under the name it was found with)."""

    name: str | None
    alternatives: tuple[str, ...]


def parse_fields(spec: str | Iterable[str]) -> list[FieldRule]:
    """Parse a field spec such as ``'img=jpg,jpeg,png cls'``.

    Rules are separated by spaces (several specs may be given as a list).
    ``NEW=A,B,C`` keeps the first present of ``A``, ``B``, ``C`` as ``NEW``;
    ``A,B`` keeps the first present under its own name; ``A`` keeps ``A``.
    ``;`` separates alternatives too (WebDataset's ``to_tuple("jpg;png")``).

    :raises UsageError: an empty spec, an empty name, or an output field given twice
    """
    text = spec if isinstance(spec, str) else " ".join(spec)
    rules: list[FieldRule] = []
    seen: set[str] = set()
    for token in text.split():
        name, eq, alts = token.partition("=")
        if not eq:
            name, alts = None, token
        alternatives = tuple(a for a in re.split(r"[,;]", alts))
        if (eq and not name) or not alternatives or any(not a or "=" in a for a in alternatives):
            raise UsageError(f"bad field rule {token!r} in {text!r}: expected NAME=A,B or A,B or A")
        for out in [name] if name else alternatives:
            if out in seen:
                raise UsageError(f"field {out!r} is selected twice in {text!r}")
            if out.startswith("__") or "/" in out:
                raise UsageError(f"bad field name {out!r} in {text!r}")
            seen.add(out)
        rules.append(FieldRule(name, alternatives))
    if not rules:
        raise UsageError("empty field spec")
    return rules


class FieldSelector:
    """Stage keeping (and renaming) the fields of :func:`parse_fields`.

    Meta entries (``__key__``, ``__source__``) are kept; the output fields
    are in the order of the rules.

    :param rules: a spec string or parsed rules
    :param missing: ``"error"``: a sample without any alternative of a rule
        raises :class:`SampleError`; ``"skip"``: it is dropped, counted in
        :attr:`skipped` and reported through ``warn``
    :param warn: called with a message for each skipped sample
    """

    def __init__(self, rules: str | Iterable[str] | list[FieldRule], missing: str = "error", warn: Warn | None = None):
        if isinstance(rules, list) and rules and isinstance(rules[0], FieldRule):
            self.rules = rules
        else:
            self.rules = parse_fields(rules)  # type: ignore[arg-type]
        if missing not in ("error", "skip"):
            raise UsageError(f"missing policy must be 'error' or 'skip', not {missing!r}")
        self.missing = missing
        self.warn = warn
        #: samples dropped for a missing field
        self.skipped = 0

    def select(self, sample: Sample) -> Sample | None:
        """The selected sample, or None when a wanted field is missing and the
        policy is skip. :raises SampleError: missing field, policy error"""
        out = {k: v for k, v in sample.items() if k.startswith("__")}
        for rule in self.rules:
            for alt in rule.alternatives:
                if alt in sample:
                    out[rule.name or alt] = sample[alt]
                    break
            else:
                wanted = " or ".join(repr(a) for a in rule.alternatives)
                have = ", ".join(k for k in sample if not k.startswith("__")) or "none"
                message = f"{sample.get('__source__', '-')}: sample {sample['__key__']!r} has no field {wanted} (it has {have})"
                if self.missing == "error":
                    raise MissingFieldError(message)
                self.skipped += 1
                if self.warn is not None:
                    self.warn(f"skipping {message}")
                return None
        return out

    def __call__(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        select = self.select
        for sample in samples:
            out = select(sample)
            if out is not None:
                yield out


# ---------------------------------------------------------------- filtering
#: ``-e`` spellings of what an expression that fails on a sample does to it
WHERE_ERRORS = ("abort", "skip", "ignore")
#: an expression that failed on each of the first this many samples stops the run, whatever the policy
WHERE_HALT_AFTER = 10


def _identifier(field: str) -> str:
    """The variable a field is bound to in a ``where`` expression: every
    character that cannot be in a Python name becomes ``_`` (``seg.png`` ->
    ``seg_png``), and a leading digit gets a ``_`` before it."""
    name = re.sub(r"\W", "_", field)
    return "_" + name if name[:1].isdigit() else name


def where_value(field: str, data: bytes):
    """A field's value as a ``where`` expression sees it: the parsed JSON
    (RFC 8259) for a JSON field (extension ``json``), ``str`` (UTF-8) for a
    text field (``txt``, ``cls``, ``text``, ``id``, ... :data:`tarproc.samples.TEXT_EXTENSIONS`),
    else the ``bytes`` as stored.

    :raises UnicodeDecodeError, ValueError: text that is not UTF-8, JSON that does not parse
    """
    from tarproc.samples import JSON_EXTENSIONS, TEXT_EXTENSIONS, field_extension

    ext = field_extension(field)
    if ext in JSON_EXTENSIONS:
        import json

        return json.loads(data)
    if ext in TEXT_EXTENSIONS:
        return data.decode("utf-8")
    return data


class _Names(dict):
    """The names of one sample in a ``where`` expression: ``key``,
    ``source``, ``sample`` and the builtins are set; a field is decoded the
    first time the expression names it (``__missing__``, which Python calls
    for the expression's names and those of its comprehensions)."""

    __slots__ = ("sample", "variables")

    def __missing__(self, name: str):
        sample = self.sample
        variables = self.variables
        for field in sample:
            if field[:2] == "__":
                continue
            variable = variables.get(field)
            if variable is None:
                variable = variables[field] = _identifier(field)
            if variable == name:
                value = self[name] = where_value(field, sample[field])
                return value
        raise KeyError(name)


class Where:
    """Stage keeping the samples for which a Python expression is true
    (``where`` of a query; ``awk 'EXPR'``). The expression is the user's own
    code, run with the user's rights, as awk runs its program: never pass it
    text from someone else.

    Names in the expression: every field of the sample as a variable (its
    name with characters that cannot be in a Python name replaced by ``_``:
    ``seg.png`` -> ``seg_png``; a leading digit gets a ``_``), decoded only
    when the expression uses it (:func:`where_value`): a JSON field is the
    parsed object (``json["width"]``), a text field ``str`` (``int(cls) <
    100``, ``"dog" in txt``), any other field its ``bytes`` (``len(jpg) >
    10000``); ``key`` (the sample's key, str), ``source`` (its input) and
    ``sample`` (the sample dict, bytes as stored: ``"png" in sample``,
    ``sample["key"]`` for a field named like one of these three); and
    Python's builtins. A field the sample lacks is a ``NameError``.

    An expression that raises on a sample (a missing field, text that is not
    a number, ...) is a failed sample: ``errors`` ``"abort"`` stops the run
    with :class:`tarproc.errors.ExpressionError` (bad data, exit status 3);
    ``"skip"`` drops it (counted in :attr:`failed`, reported through
    ``warn``); ``"ignore"`` keeps it (counted, reported). When it fails on
    each of the first :data:`WHERE_HALT_AFTER` samples the run stops
    whatever the policy (a mistyped field name).

    :param expr: a Python expression (``eval`` mode), compiled once
    :param errors: see above
    :param warn: called with a message per failed sample (skip, ignore)
    :raises UsageError: a syntax error in ``expr``, an unknown ``errors``
    """

    def __init__(self, expr: str, errors: str = "skip", warn: Warn | None = None,
                 halt_after: int = WHERE_HALT_AFTER):
        import builtins

        if errors not in WHERE_ERRORS:
            raise UsageError(f"the error policy must be one of {', '.join(WHERE_ERRORS)}, not {errors!r}")
        if not expr.strip():
            raise UsageError("empty expression")
        try:
            self.code = compile(expr, "<where>", "eval")
        except SyntaxError as exc:
            where = f" at column {exc.offset}" if exc.offset else ""
            raise UsageError(f"bad expression {expr!r}: {exc.msg}{where}", topic="where") from None
        except ValueError as exc:  # a NUL byte
            raise UsageError(f"bad expression {expr!r}: {exc}", topic="where") from None
        self.expr = expr
        self.errors = errors
        self.warn = warn
        self.halt_after = halt_after
        self._builtins = builtins.__dict__
        self._variables: dict[str, str] = {}
        #: samples read, kept (true), dropped (false), failed (the expression raised)
        self.seen = self.kept = self.dropped = self.failed = 0

    def test(self, sample: Sample) -> bool:
        """Whether ``sample`` is kept.

        :raises ExpressionError: the expression failed and the policy is abort,
            or it failed on each of the first ``halt_after`` samples
        """
        names = _Names(key=sample["__key__"], source=sample.get("__source__", "-"), sample=sample,
                       __builtins__=self._builtins)
        names.sample = sample
        names.variables = self._variables
        self.seen += 1
        try:
            keep = bool(eval(self.code, names))  # noqa: S307 - the user's own expression, as awk's program
        except Exception as exc:  # noqa: BLE001 - any error of the user's expression is a failed sample
            return self._failed(sample, exc)
        if keep:
            self.kept += 1
        else:
            self.dropped += 1
        return keep

    def _failed(self, sample: Sample, exc: Exception) -> bool:
        from tarproc.errors import ExpressionError

        self.failed += 1
        why = f"{type(exc).__name__}: {exc}"
        message = (f"{sample.get('__source__', '-')}: expression {self.expr!r} failed on sample"
                   f" {sample['__key__']!r}: {why}")
        if self.errors == "abort":
            raise ExpressionError(message, topic="where_abort")
        if self.halt_after and self.failed == self.seen == self.halt_after:
            raise ExpressionError(f"expression {self.expr!r} failed on each of the first {self.failed} samples,"
                                  f" the last: {message}", topic="where_halt")
        if self.warn is not None:
            self.warn(("keeping " if self.errors == "ignore" else "leaving out ") + message)
        if self.errors == "ignore":
            self.kept += 1
            return True
        return False

    def __call__(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        test = self.test
        for sample in samples:
            if test(sample):
                yield sample


def where(samples: Iterable[Sample], expr: str, errors: str = "abort", warn: Warn | None = None) -> Iterator[Sample]:
    """The samples of ``samples`` for which ``expr`` is true: the stage of
    :class:`Where` (see it for the names, decoding and ``errors``; here an
    expression that fails on a sample stops by default).

    >>> from tarproc import iter_samples
    >>> small = where(iter_samples(["shard.tar"]), 'int(cls) < 100 and json["width"] >= 256')  # doctest: +SKIP

    :raises UsageError: a syntax error in ``expr`` (at the call, before reading)
    :raises ExpressionError: (while iterating) see :meth:`Where.test`
    """
    return Where(expr, errors, warn)(samples)


# ---------------------------------------------------------------- rekeying


def shard_stem(source: str) -> str:
    """The shard's name for ``{shard}``: the basename of ``source`` without
    tar/compression suffixes (``data/train-0003.tar.gz`` -> ``train-0003``);
    ``stdin`` for ``-`` and ``pipe`` for ``pipe:CMD``."""
    if source == "-":
        return "stdin"
    if source.startswith("pipe:"):
        return "pipe"
    name = os.path.basename(source.rstrip("/").split("?", 1)[0]) or source
    while True:
        stem, suffix = split_tar_suffix(name)
        if not suffix:
            return name
        name = stem


class Rekeyer:
    """Stage giving samples new keys from a format string.

    Fields of the format: ``{index}`` (0-based position in the output),
    ``{key}`` (the old key), ``{shard}`` (:func:`shard_stem` of the
    sample's source) and ``{source}``: ``{index:09d}``, ``{shard}/{key}``.

    :raises UsageError: an empty format, a format with unknown fields or bad syntax
    :raises SampleError: (while iterating) a new key that is not a valid
        WebDataset key: a dot in its basename, empty, absolute or with ``..``;
        or a new key equal to the previous sample's, which would merge the two
        samples (keys repeated further apart are not checked, like ``cat``)
    """

    def __init__(self, fmt: str, start: int = 0):
        if not fmt:
            raise UsageError("empty key format: use e.g. '{index:09d}' or '{shard}/{key}'")
        self.fmt = fmt
        self.index = start
        try:
            fmt.format(index=0, key="k", shard="s", source="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(
                f"bad key format {fmt!r} ({exc}): use {{index}}, {{key}}, {{shard}}, {{source}}"
            ) from None

    def __call__(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        fmt = self.fmt
        previous = None
        for sample in samples:
            source = sample.get("__source__", "-")
            key = fmt.format(index=self.index, key=sample["__key__"], shard=shard_stem(source), source=source)
            problem = key_problem(key)  # the one key rule (samples.py)
            if problem:
                raise SampleError(
                    f"new key {key!r} (from {sample['__key__']!r} with {fmt!r}) is not a valid key: {problem}"
                )
            if key == previous:
                raise SampleError(
                    f"new key {key!r} (from {sample['__key__']!r} with {fmt!r}) is the previous sample's key too:"
                    " the two samples would merge; include {index} or {key} in the format"
                )
            previous = key
            self.index += 1
            out = dict(sample)
            out["__key__"] = key
            yield out


# ------------------------------------------------------------- combining
def interleave(iterables: Iterable[Iterable[Sample]]) -> Iterator[Sample]:
    """Round-robin: one sample from each input in turn; an input that ends
    drops out and the others go on. Every input is opened (its first sample
    read) before the second sample of the first input."""
    queue = collections.deque(iter(x) for x in iterables)
    while queue:
        it = queue.popleft()
        try:
            sample = next(it)
        except StopIteration:
            continue
        yield sample
        queue.append(it)


#: bytes of held samples kept in memory per shard before :class:`BadShards`
#: spools them to a temporary file
HOLD_MEMORY = 32 << 20


class _Held:
    """Samples held back, in order: in memory up to :data:`HOLD_MEMORY`
    bytes, then pickled to an anonymous temporary file (removed when
    closed, or by the system if the process dies: ``tempfile.TemporaryFile``)."""

    def __init__(self) -> None:
        self.count = 0
        self._memory: list[Sample] = []
        self._size = 0
        self._file = None

    def add(self, sample: Sample) -> None:
        import pickle
        import tempfile

        self.count += 1
        if self._file is None:
            self._memory.append(sample)
            self._size += sum(len(v) for v in sample.values())
            if self._size <= HOLD_MEMORY:
                return
            self._file = tempfile.TemporaryFile(prefix="tarproc-held-")
            for held in self._memory:
                pickle.dump(held, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._memory = []
            return
        pickle.dump(sample, self._file, protocol=pickle.HIGHEST_PROTOCOL)

    def __iter__(self) -> Iterator[Sample]:
        import pickle

        if self._file is None:
            yield from self._memory
            return
        self._file.seek(0)
        for _ in range(self.count):
            yield pickle.load(self._file)

    def close(self) -> None:
        self._memory = []
        if self._file is not None:
            self._file.close()


class BadShards:
    """Tolerate up to ``limit`` corrupt input shards.

    :meth:`guard` wraps one shard's sample iterator. With a ``limit`` it
    holds the shard's samples back (in memory up to :data:`HOLD_MEMORY`
    bytes, then in a temporary file) until the shard has been read to its
    end, so that only verified samples go on: a compressed stream's bytes
    are verified only by its check at the end (gzip's CRC-32 and length,
    bzip2's stream CRC, xz's and zstd's checks), and 16 altered bytes inside
    a ``.tgz`` decompress to altered samples long before the CRC fails.
    When the shard raises a :class:`TarprocError` (corrupt or truncated
    archive, bad compression, an input that cannot be opened, samples that
    are not grouped), it is reported through ``warn`` and recorded in
    :attr:`bad`, and the stream goes on with the next shard. What it
    contributes: a compressed shard nothing (none of its samples can be
    verified); an uncompressed tar the samples before the fault (a tar has
    no data checksum: its headers' checksums are all that can be verified;
    the partial sample is dropped by the core). The shard beyond ``limit``
    re-raises its error. :class:`UsageError` always propagates. Without a
    limit the samples pass straight on (the first error ends the run).

    :param limit: shards that may be bad (0: the first error ends the run)
    :param warn: called with a message per bad shard
    """

    def __init__(self, limit: int = 0, warn: Warn | None = None):
        self.limit = limit
        self.warn = warn
        #: (source, message) of every bad shard
        self.bad: list[tuple[str, str]] = []

    def guard(self, samples: Iterable[Sample], source: str) -> Iterator[Sample]:
        """Yield ``samples`` (held until the shard ends, with a limit);
        report and stop quietly on a shard error."""
        if self.limit <= 0:
            yield from samples
            return
        held = _Held()
        try:
            try:
                for sample in samples:
                    held.add(sample)
            except UsageError:
                raise
            except TarprocError as exc:
                self._bad(exc, source, held)
                if exc.compression in (None, "none"):  # uncompressed (or nothing read)
                    yield from held
                return
            yield from held
        finally:
            held.close()

    def _bad(self, exc: TarprocError, source: str, held: _Held) -> None:
        self.bad.append((source, str(exc)))
        if len(self.bad) > self.limit:
            error = type(exc)(f"{exc}; more than {self.limit} bad shards")
            error.topic = "bad_shards"
            raise error from None
        if self.warn is None:
            return
        message = str(exc)
        if message.startswith(source + ": "):  # name the shard once
            message = message[len(source) + 2 :]
        n = held.count
        if n == 0:
            kept = "no samples read"
        elif exc.compression in (None, "none"):
            kept = f"{n} samples before the fault kept: an uncompressed tar has no data checksum"
            if exc.compression is None:
                kept = f"{n} samples kept"
        else:
            kept = (f"{n} samples read, none kept: a {exc.compression} stream's bytes are verified only by"
                    " the check at its end")
        self.warn(f"bad shard {source} ({kept}): {message}")


def open_shards(
    specs: Sequence[str],
    warn: Warn | None = None,
    strict: bool = False,
    bad: BadShards | None = None,
    interleaved: bool = False,
    storage_options: dict | None = None,
) -> Iterator[Sample]:
    """The samples of several (expanded) inputs, one after another or
    round-robin (``interleaved``), each guarded by ``bad`` when given;
    ``storage_options``: see :func:`tarproc.io.sources.open_source`.

    Inputs are opened lazily: one at a time in sequence, all at once when
    interleaved (one open file or command per input).
    """

    def one(spec: str) -> Iterator[Sample]:
        samples = iter_source_samples(spec, warn, strict, storage_options=storage_options)
        return bad.guard(samples, spec) if bad is not None else samples

    if interleaved:
        return interleave([one(spec) for spec in specs])
    return itertools.chain.from_iterable(one(spec) for spec in specs)


__all__ = [
    "BadShards",
    "FieldRule",
    "Where",
    "FieldSelector",
    "Rekeyer",
    "interleave",
    "open_shards",
    "parse_fields",
    "parse_slice",
    "shard_stem",
    "shuffle_list",
    "shuffle_samples",
    "skip_count",
    "where",
    "slice_samples",
]
