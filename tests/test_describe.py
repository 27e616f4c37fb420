"""tarproc.ops.describe: field previews, stats, contact sheets."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import random

import pytest

from makeshards import make_jpeg
from tarproc.ops import describe
from tarproc.ops.describe import (
    Stats,
    contact_sheet,
    describe_bytes,
    format_summary,
    image_size,
    is_text,
    percentile,
    pick_image_field,
    summarize,
)
from tarproc.errors import TarprocError

PIL = pytest.importorskip("PIL.Image")


def png_bytes(width: int, height: int, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    PIL.new(mode, (width, height), "red" if mode != "L" else 128).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return make_jpeg(random.Random(1), 123, 45)


def test_text_first_line_and_line_count():
    assert describe_bytes(b"3") == "'3'"
    assert describe_bytes(b"a cat\non a mat\n") == "'a cat' (2 lines)"
    assert describe_bytes(b'{"label": 3}') == "'{\"label\": 3}'"
    assert describe_bytes("caf\u00e9".encode()) == "'caf\u00e9'"
    assert describe_bytes(b"") == "empty"


def test_long_text_is_truncated():
    text = describe_bytes(b"x" * 500, width=40)
    assert text.endswith("'...") and len(text) <= 40 and text.startswith("'xxx")


def test_images_by_magic_with_size(jpeg):
    assert describe_bytes(jpeg) == "JPEG 123x45 RGB"
    assert describe_bytes(png_bytes(7, 9)) == "PNG 7x9 RGBA"
    assert describe_bytes(b"\xff\xd8\xff\xe0garbage") == "JPEG (unreadable header)"


def test_image_sizes_without_pillow_use_the_header_parsers(jpeg, monkeypatch):
    png = png_bytes(31, 17, "L")
    gif = io.BytesIO()
    PIL.new("P", (5, 6)).save(gif, "GIF")
    monkeypatch.setattr(describe, "_PILImage", None)
    assert image_size(jpeg) == (123, 45, "")
    assert describe_bytes(jpeg) == "JPEG 123x45"
    assert describe_bytes(png) == "PNG 31x17"
    assert describe_bytes(gif.getvalue()) == "GIF 5x6"
    with pytest.raises(TarprocError, match=r"tarproc\[images\]"):
        describe.require_pillow()


def test_binary_formats_by_magic():
    numpy = pytest.importorskip("numpy")
    out = io.BytesIO()
    numpy.save(out, numpy.zeros((3, 4), dtype="float32"))
    assert describe_bytes(out.getvalue()) == "npy float32 (3, 4)"
    assert describe_bytes(gzip.compress(b"hello", mtime=0)) == "gzip"
    assert describe_bytes(b"\x28\xb5\x2f\xfd" + bytes(10)) == "zstd"
    assert describe_bytes(pickle.dumps({"a": 1}, protocol=4)) == "pickle protocol 4"
    assert describe_bytes(b"\x00\x01\x02\xff" * 4) == "binary 00 01 02 ff 00 01 02 ff ..."
    assert describe_bytes(b"a\x00b") == "binary 61 00 62"


def test_is_text():
    assert is_text(b"plain\n") and is_text("\u00e9t\u00e9".encode())
    assert not is_text(b"\xff\xfe") and not is_text(b"nul\x00inside")


def test_summaries(jpeg):
    sample = {"__key__": "k1", "__source__": "x.tar", "cls": b"7", "jpg": jpeg}
    assert summarize(sample) == {
        "__key__": "k1",
        "fields": {"cls": {"size": 1, "preview": "'7'"}, "jpg": {"size": len(jpeg), "preview": "JPEG 123x45 RGB"}},
    }
    lines = format_summary(sample).splitlines()
    assert lines[0] == "k1"
    assert lines[1].split() == ["cls", "1", "'7'"]
    assert lines[2].split() == ["jpg", str(len(jpeg)), "JPEG", "123x45", "RGB"]


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (0, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert percentile([5], 99) == 5
    with pytest.raises(ValueError):
        percentile([], 50)


def test_stats_counts_fields_sizes_and_keys():
    stats = Stats()
    for i in range(10):
        sample = {"__key__": f"k{i}", "__source__": "-", "txt": b"x" * (i + 1)}
        if i % 2 == 0:
            sample["cls"] = b"1"
        stats.add(sample)
    stats.skipped("skipping x: no key")
    d = stats.to_dict()
    assert (d["samples"], d["members"], d["bytes"], d["skipped_members"]) == (10, 15, 55 + 5, 1)
    assert (d["first_key"], d["last_key"]) == ("k0", "k9")
    assert list(d["fields"]) == ["cls", "txt"]
    assert d["fields"]["cls"] == {"samples": 5, "missing": 5, "bytes": 5, "min": 1, "p50": 1, "p90": 1,
                                  "p99": 1, "max": 1, "mean": 1.0}
    txt = d["fields"]["txt"]
    assert (txt["min"], txt["p50"], txt["p90"], txt["max"], txt["mean"]) == (1, 5, 9, 10, 5.5)
    text = stats.format()
    assert "samples          10" in text and "skipped members  1" in text
    assert json.loads(json.dumps(d)) == d


def test_empty_stats():
    d = Stats().to_dict()
    assert d["samples"] == 0 and d["first_key"] is None and d["fields"] == {}
    assert "first key        -" in Stats().format()


def test_pick_image_field(jpeg):
    assert pick_image_field({"__key__": "k", "cls": b"1", "seg.png": b"", "jpg": b""}) == "seg.png"
    assert pick_image_field({"__key__": "k", "cls": b"1", "data": jpeg}) == "data"
    assert pick_image_field({"__key__": "k", "cls": b"1"}) is None
    assert pick_image_field({"__key__": "k", "a": b""}, "b") is None


def test_contact_sheet_grid_and_captions(tmp_path, jpeg):
    samples = [{"__key__": f"key{i}", "cls": b"1", "jpg": jpeg} for i in range(7)]
    samples.insert(2, {"__key__": "noimage", "cls": b"2"})
    samples.insert(3, {"__key__": "broken", "jpg": b"\xff\xd8\xff\xe0garbage"})
    warnings = []
    path = tmp_path / "sheet.png"
    n = contact_sheet(samples, str(path), limit=5, columns=3, thumb=64, warn=warnings.append)
    assert n == 5
    assert len(warnings) == 1 and "broken.jpg" in warnings[0]
    with PIL.open(path) as sheet:
        assert sheet.format == "PNG"
        cell_w, cell_h = 64 + 8, 64 + 14 + 8
        assert sheet.size == (3 * cell_w, 2 * cell_h)
        # the sixth cell is empty (white); the first holds an image (not white)
        sheet = sheet.convert("RGB")
        assert sheet.getpixel((2 * cell_w + cell_w // 2, cell_h + 30)) == (255, 255, 255)
        assert sheet.getpixel((cell_w // 2, 4 + 32)) != (255, 255, 255)


def test_contact_sheet_without_images_is_an_error(tmp_path):
    with pytest.raises(TarprocError, match="no images"):
        contact_sheet([{"__key__": "k", "cls": b"1"}], str(tmp_path / "s.png"))


def test_contact_sheet_without_pillow(tmp_path, monkeypatch):
    monkeypatch.setattr(describe, "_PILImage", None)
    with pytest.raises(TarprocError, match=r"need Pillow: pip install 'tarproc\[images\]'"):
        contact_sheet([], str(tmp_path / "s.png"))
