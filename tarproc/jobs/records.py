"""Completion records of shard tasks, and what is written from them.

A record is a small JSON object written atomically (unique attempt file and
``rename(2)`` locally, one PUT on an object store) *after* the task's output
appeared: ``index``, ``input`` (``url`` plus its ``size`` and ``mtime`` or
``etag``), ``pipeline``, ``output``, ``samples``, ``members``, ``bytes``
(the output's size as stored), ``tar_bytes`` (uncompressed), ``sha256``,
``md5`` (of the stored bytes), ``seconds``, ``attempts``, ``host``,
``started``/``finished`` (Unix seconds), ``status`` (``"complete"``) and
``version`` (:data:`RECORD_VERSION`).

It lives beside the output (``OUTPUT.tarmap.json``) or, with a records
directory, at ``DIR/task-{index:06d}.json``. A task is complete when its
record exists, names the same input (same size and mtime/etag), pipeline
and output, and the output exists with the recorded size. Two attempts of
the same task may both write it; the last rename wins and both describe
the same output. No locks are needed on a shared file system or an object
store.

From the records: :func:`write_manifest` (JSON lines like tarsplit's
manifest) and :func:`write_shard_index` (webdataset's wids shard index,
``"__kind__": "wids-shard-index-v1"``, as ``widsindex create`` writes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping

from tarproc import __version__
from tarproc.errors import SourceError
from tarproc.io.storage import is_url, read_bytes, size

RECORD_SUFFIX = ".tarmap.json"
RECORD_VERSION = 1
SHARD_INDEX_KIND = "wids-shard-index-v1"


def record_path(output: str, index: int, records_dir: str | None = None) -> str:
    """Where the record of the task ``index`` writing ``output`` lives."""
    if records_dir is None:
        return output + RECORD_SUFFIX
    return records_dir.rstrip("/") + f"/task-{index:06d}.json"


def make_record(task, *, input_identity: Mapping, samples: int, members: int, size: int, tar_bytes: int,
                sha256: str, md5: str, seconds: float, attempts: int, host: str, started: float) -> dict:
    """The record of a task that just completed (see the module docstring)."""
    return {
        "version": RECORD_VERSION,
        "status": "complete",
        "index": task.index,
        "input": {"url": task.input, **dict(input_identity)},
        "pipeline": task.pipeline,
        "output": task.output,
        "samples": samples,
        "members": members,
        "bytes": size,
        "tar_bytes": tar_bytes,
        "sha256": sha256,
        "md5": md5,
        "seconds": seconds,
        "attempts": attempts,
        "host": host,
        "started": round(started, 3),
        "finished": round(time.time(), 3),
        "tarproc": __version__,
    }


def write_record(path: str, record: Mapping, storage_options: Mapping | None = None) -> None:
    """Write a record atomically. :raises OutputError:"""
    from tarproc.io.sinks import write_bytes_atomic  # here: tools that only read records start faster

    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    write_bytes_atomic(path, data, dict(storage_options or {}), makedirs=True)


def read_record(path: str, storage_options: Mapping | None = None) -> dict | None:
    """The record at ``path``; None when there is none or it is not a
    record (unreadable JSON counts as none: the task runs again).

    :raises SourceError: the store could not be read
    """
    data = read_bytes(path, storage_options)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def check_record(task, input_identity: Mapping | None, storage_options: Mapping | None = None) -> dict | None:
    """The task's record when the task is complete, else None: the record
    exists with status complete, names the same input (url and identity),
    pipeline and output, and the output exists with the recorded size.

    :param input_identity: :func:`tarproc.io.storage.identity` of the input now
        (None: the input is gone, so nothing can be checked: not complete)
    :raises SourceError: a store could not be asked
    """
    state, record = task_state(task, input_identity, storage_options)
    return record if state == "complete" else None


#: what :func:`task_state` calls a task, and why
TASK_STATES = {
    "complete": "the record and the output match the task",
    "missing": "no completion record, or no output",
    "stale": "the input, pipeline or output named in the record is not the task's now (e.g. the input changed)",
    "truncated": "the output is shorter than the record says",
    "changed": "the output is longer than the record says",
    "no-input": "the input is gone",
}


def task_state(task, input_identity: Mapping | None, storage_options: Mapping | None = None) -> tuple[str, dict | None]:
    """``(state, record)`` of a task: a key of :data:`TASK_STATES` and the
    task's record (None when there is none); complete only as
    :func:`check_record` says.

    :param input_identity: :func:`tarproc.io.storage.identity` of the input now
        (None: the input is gone)
    :raises SourceError: a store could not be asked
    """
    record = read_record(task.record, storage_options)
    if record is None or record.get("status") != "complete":
        return ("missing" if input_identity is not None else "no-input"), None
    if input_identity is None:
        return "no-input", record
    if record.get("input") != {"url": task.input, **dict(input_identity)}:
        return "stale", record
    if record.get("pipeline") != task.pipeline or record.get("output") != task.output:
        return "stale", record
    actual = size(task.output, storage_options)
    if actual is None:
        return "missing", record
    if actual != record.get("bytes"):
        return ("truncated" if actual < (record.get("bytes") or 0) else "changed"), record
    return "complete", record


def manifest_line(record: Mapping) -> dict:
    """One manifest line: tarsplit's fields (name, samples, bytes, sha256,
    index) plus the input."""
    return {
        "name": record["output"],
        "samples": record["samples"],
        "bytes": record["bytes"],
        "sha256": record["sha256"],
        "index": record["index"],
        "input": record["input"]["url"],
    }


def write_manifest(path: str, recs: Iterable[Mapping]) -> None:
    """JSON lines, one per complete task, in task order (``-``: stdout).
    :raises OutputError:"""
    from tarproc.io.sinks import text_output

    with text_output(path) as handle:
        for record in sorted(recs, key=lambda r: r["index"]):
            handle.write(json.dumps(manifest_line(record)) + "\n")


def shard_index(recs: Iterable[Mapping], name: str | None = None, base: str | None = None) -> dict:
    """The wids shard index of the outputs (webdataset ``wids``:
    ``__kind__`` ``wids-shard-index-v1``, ``wids_version`` 1, ``shardlist``
    of ``url``, ``nsamples``, ``filesize``, ``md5sum`` (when the record has
    ``md5``)), in task order.

    :param base: a directory: local output paths are written relative to it
        (wids resolves relative urls against the index file's location)
    """
    shards = []
    for record in sorted(recs, key=lambda r: r["index"]):
        url = record["output"]
        if base is not None and not is_url(url):
            url = os.path.relpath(os.path.abspath(url), base)
        shard = {"url": url, "nsamples": record["samples"], "filesize": record["bytes"]}
        if "md5" in record:  # tarcheck's records have none (the index needs url and nsamples)
            shard["md5sum"] = record["md5"]
        shards.append(shard)
    index = {"__kind__": SHARD_INDEX_KIND, "wids_version": 1, "shardlist": shards}
    if name:
        index["name"] = name
    return index


def write_shard_index(path: str, recs: Iterable[Mapping]) -> None:
    """Write :func:`shard_index` as JSON to ``path`` (``-``: stdout); local
    outputs are named relative to the index file's directory.
    :raises OutputError:"""
    base = None if path == "-" else os.path.dirname(os.path.abspath(path))
    from tarproc.io.sinks import text_output

    with text_output(path) as handle:
        json.dump(shard_index(recs, base=base), handle, indent=1)
        handle.write("\n")


__all__ = ["record_path", "make_record", "write_record", "read_record", "check_record", "write_manifest",
           "shard_index", "write_shard_index", "SourceError"]
