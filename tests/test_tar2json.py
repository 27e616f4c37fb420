"""tar2json through CliRunner and real pipes."""

from __future__ import annotations

import base64
import json

from conftest import run
from malformed import tar_bytes
from typer.testing import CliRunner

from tarproc import iter_samples
from tarproc.cli import tar2json as tar2json_cli

runner = CliRunner()


def invoke(args, input: bytes | None = None):
    return runner.invoke(tar2json_cli.app, args, input=input)


MIXED = tar_bytes([
    ("a.txt", "caf\u00e9\tbar\nline 2".encode()),
    ("a.json", b'{"x": [1, 2]}'),
    ("a.bin", b"\x00\xff\x10"),
    ("b.txt", b"B"),
    ("b.meta.json", b"not json"),
])


def lines(result) -> list:
    return [json.loads(line) for line in result.stdout_bytes.splitlines()]


def test_all_fields_text_and_base64():
    result = invoke([], input=MIXED)
    assert result.exit_code == 0, result.stderr
    assert lines(result) == [
        {"__key__": "a", "txt": "caf\u00e9\tbar\nline 2", "json": '{"x": [1, 2]}',
         "bin": {"base64": base64.b64encode(b"\x00\xff\x10").decode()}},
        {"__key__": "b", "txt": "B", "meta.json": "not json"},
    ]


def test_chosen_fields_parse_json_and_omit():
    result = invoke(["-k", "json bin txt", "--parse-json", "--binary", "omit"], input=MIXED)
    assert result.exit_code == 0
    assert lines(result) == [
        {"__key__": "a", "json": {"x": [1, 2]}, "bin": {"omitted": 3}, "txt": "caf\u00e9\tbar\nline 2"},
        {"__key__": "b", "json": None, "bin": None, "txt": "B"},
    ]


def test_invalid_json_is_reported_and_kept_as_text():
    result = invoke(["--parse-json", "-k", "meta.json"], input=MIXED)
    assert result.exit_code == 1
    assert "field 'meta.json' is not valid JSON" in result.stderr
    assert lines(result)[1] == {"__key__": "b", "meta.json": "not json"}


def test_available_fields():
    result = invoke(["--available"], input=MIXED)
    assert result.exit_code == 0
    assert result.stdout == "bin\t1\njson\t1\nmeta.json\t1\ntxt\t2\n"


def test_tsv_with_and_without_fields():
    result = invoke(["--format", "tsv", "-k", "txt,bin"], input=MIXED)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "__key__\ttxt\tbin",
        "a\tcaf\u00e9\\tbar\\nline 2\t" + base64.b64encode(b"\x00\xff\x10").decode(),
        "b\tB\t",
    ]
    result = invoke(["--format", "tsv", "--binary", "omit"], input=MIXED)
    assert result.exit_code == 1  # b's meta.json is not a column: said, and status 1
    assert "meta.json that are not TSV columns" in result.stderr
    assert result.stdout.splitlines()[0] == "__key__\ttxt\tjson\tbin"
    assert result.stdout.splitlines()[2] == "b\tB\t\t"


def test_imagenet_metadata(imagenet_shard):
    result = invoke(["-k", "cls json", "--parse-json", "--count", "3", "--skip", "1", str(imagenet_shard)])
    assert result.exit_code == 0
    records = lines(result)
    assert [r["__key__"] for r in records] == ["n02102040_10001", "n02979186_10002", "n03000684_10003"]
    assert records[0] == {"__key__": "n02102040_10001", "cls": "1",
                          "json": {"index": 1, "label": 1, "synset": "n02102040"}}


def test_base64_round_trip_through_a_pipe(imagenet_shard_gz):
    out = run(f"cat {imagenet_shard_gz} | tar2json -k jpg | head -n 2", shell=True)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    samples = list(iter_samples([str(imagenet_shard_gz)]))[:2]
    assert [base64.b64decode(r["jpg"]["base64"]) for r in records] == [s["jpg"] for s in samples]


def test_usage():
    assert invoke(["--format", "xml"]).exit_code == 2
    assert invoke(["-k", "a/b"]).exit_code == 2
    result = invoke(["--help"])
    assert result.exit_code == 0 and "Examples:" in result.stdout and "--available" in result.stdout
