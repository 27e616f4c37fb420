"""A Python function as the per-sample work: no directory, no process.

``fn(sample: dict) -> dict | list[dict] | None`` runs in the worker
processes (in this process at ``-p 1``): a dict is the output sample, a list
makes many, None drops the sample. With ``batch`` N the function gets a list
of up to N samples and returns a list with one such entry per sample (for
models that want batches). An exception fails the sample (every sample of
the batch, each then run alone) under the same failure policy as a command.

An output sample may leave out ``__key__`` and ``__source__`` (the input's
are used); field values must be bytes (str is encoded as UTF-8).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import traceback
from collections.abc import Callable

from tarproc.errors import UsageError
from tarproc.samples import Sample, key_problem
from tarproc.io.spool import LargeField
from tarproc.executor.results import Result, settle


def load_function(ref: str) -> Callable:
    """Import ``PATH.py:NAME`` or ``package.module:NAME``.

    :raises UsageError: a malformed reference, a module that cannot be
        imported, or no callable of that name
    """
    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(f"function {ref!r}: give PATH.py:NAME or MODULE:NAME", topic="map_function")
    try:
        if where.endswith(".py") or os.sep in where:
            if not os.path.isfile(where):
                raise UsageError(f"function {ref!r}: no such file {where!r}", topic="map_function")
            spec = importlib.util.spec_from_file_location(f"tarproc_map_{abs(hash(where)):x}", where)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module: any error is theirs to see
        raise UsageError(f"function {ref!r}: cannot import {where!r}: {type(exc).__name__}: {exc}", topic="map_function") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UsageError(f"function {ref!r}: {where!r} has no function {name!r}", topic="map_function")
    return fn


def _bytes_sample(sample: Sample) -> Sample:
    """A copy of ``sample`` the function may change (the input stays as read,
    for --failed), with bytes where values crossed a pipe as memoryviews."""
    copy = dict(sample)
    for k, v in copy.items():
        if type(v) is memoryview:
            copy[k] = bytes(v)
        elif type(v) is LargeField:  # the function gets bytes, as webdataset's would
            copy[k] = v.read()
    return copy


class MapJob:
    """Run ``fn`` on samples: a job for :mod:`.schedule` (see the module docs).

    :param fn: the function
    :param batch: 0 for one sample per call, N for lists of up to N samples
    :param handler: the failure handler (:mod:`.policy`)
    :param name: how messages name the function
    """

    def __init__(self, fn: Callable, batch: int = 0, handler=None, name: str | None = None):
        self.fn = fn
        self.batch = batch
        self.chunk = max(1, batch)
        self.handler = handler
        self.name = name or getattr(fn, "__qualname__", repr(fn))

    def describe(self) -> str:
        return f"function {self.name!r}"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, items: list[tuple[int, Sample]]) -> list[Result]:
        if self.batch:
            results = self._call_batch(items)
            if results is not None:
                return [self._settle(index, sample) if r.failed else r for (index, sample), r in zip(items, results)]
        return [self._settle(index, sample) for index, sample in items]

    def _settle(self, index: int, sample: Sample) -> Result:
        return settle(lambda attempt: self.run_one(index, sample), self.handler)

    def run_one(self, index: int, sample: Sample) -> Result:
        result = Result(index, sample["__key__"])
        try:
            value = self.fn([_bytes_sample(sample)])[0] if self.batch else self.fn(_bytes_sample(sample))
        except Exception as exc:  # noqa: BLE001 - the user's function failed: a failed sample
            return self._raised(result, exc)
        self._outputs(result, sample, value)
        return result

    def _call_batch(self, items) -> list[Result] | None:
        """One call for the whole batch; None when it raised or returned
        something else than one entry per sample (each is then run alone)."""
        try:
            values = self.fn([_bytes_sample(sample) for _, sample in items])
        except Exception:  # noqa: BLE001 - each sample runs alone next, and fails alone
            return None
        if not isinstance(values, (list, tuple)) or len(values) != len(items):
            return None
        results = []
        for (index, sample), value in zip(items, values):
            result = Result(index, sample["__key__"])
            self._outputs(result, sample, value)
            results.append(result)
        return results

    def _raised(self, result: Result, exc: Exception) -> Result:
        result.fail(f"{self.name} raised {type(exc).__name__}: {exc}")
        result.log = traceback.format_exc().encode("utf-8", "replace")
        return result

    def _outputs(self, result: Result, sample: Sample, value) -> None:
        if value is None:
            return
        outputs = value if isinstance(value, (list, tuple)) else [value]
        for out in outputs:
            if not isinstance(out, dict):
                result.fail(f"{self.name} returned a {type(out).__name__}, not a dict, a list of dicts or None")
                result.outputs = []
                return
            clean = {"__key__": out.get("__key__", sample["__key__"]), "__source__": out.get("__source__", sample.get("__source__", "-"))}
            problem = key_problem(clean["__key__"]) if isinstance(clean["__key__"], str) else "the key is not a str"
            if problem:
                result.fail(f"{self.name} returned key {clean['__key__']!r}: {problem}")
                result.outputs = []
                return
            for name, data in out.items():
                if name[:2] == "__":
                    continue
                if isinstance(data, str):
                    data = data.encode("utf-8")
                elif isinstance(data, (bytearray, memoryview)):
                    data = bytes(data)
                elif not isinstance(data, bytes):
                    result.fail(f"{self.name} returned field {name!r} as {type(data).__name__}, not bytes")
                    result.outputs = []
                    return
                clean[name] = data
            result.outputs.append(clean)
