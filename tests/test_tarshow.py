"""tarshow through CliRunner and real pipes."""

from __future__ import annotations

import json

import pytest
from conftest import run
from malformed import tar_bytes
from typer.testing import CliRunner

from tarproc.cli import tarshow as tarshow_cli

runner = CliRunner()


def invoke(args, input: bytes | None = None):
    return runner.invoke(tarshow_cli.app, args, input=input)


def test_listing_keys_sizes_previews(imagenet_shard):
    result = invoke(["--count", "2", str(imagenet_shard)])
    assert result.exit_code == 0, result.stderr
    blocks = result.stdout.split("\n\n")
    assert len(blocks) == 2
    lines = blocks[0].splitlines()
    assert lines[0] == "n01440764_10000"
    assert lines[1].split() == ["cls", "1", "'0'"]
    name, size, *desc = lines[2].split()
    assert name == "jpg" and int(size) > 1000 and desc[0] == "JPEG" and desc[2] == "RGB"
    assert lines[3].split()[:2] == ["json", "47"] and "synset" in lines[3]


def test_skip_count_and_stdin(imagenet_shard):
    data = imagenet_shard.read_bytes()
    result = invoke(["--skip", "38", "--count", "5"], input=data)
    assert result.exit_code == 0, result.stderr
    keys = [line for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert keys == ["n03445777_10038", "n03888605_10039"]


def test_json_lines(imagenet_shard):
    result = invoke(["--json", "--count", "3", str(imagenet_shard)])
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["__key__"] for r in records] == ["n01440764_10000", "n02102040_10001", "n02979186_10002"]
    assert records[1]["fields"]["cls"] == {"size": 1, "preview": "'1'"}
    assert records[0]["fields"]["jpg"]["preview"].startswith("JPEG ")


def test_field_writes_raw_bytes(imagenet_shard):
    from tarproc import iter_samples

    samples = list(iter_samples([str(imagenet_shard)]))
    result = invoke(["-f", "jpg", "--skip", "3", "--count", "2", str(imagenet_shard)])
    assert result.exit_code == 0
    assert result.stdout_bytes == samples[3]["jpg"] + samples[4]["jpg"]
    data = tar_bytes([("a.txt", b"A"), ("b.cls", b"1"), ("c.txt", b"C")])
    result = invoke(["-f", "txt"], input=data)
    assert result.exit_code == 0  # a missing field is reported, not an error
    assert result.stdout_bytes == b"AC"
    assert "1 samples have no field 'txt'" in result.stderr


def test_stats(imagenet_shard):
    result = invoke(["--stats", "--json", str(imagenet_shard)])
    assert result.exit_code == 0
    stats = json.loads(result.stdout)
    assert (stats["samples"], stats["members"], stats["skipped_members"]) == (40, 120, 0)
    assert (stats["first_key"], stats["last_key"]) == ("n01440764_10000", "n03888605_10039")
    assert set(stats["fields"]) == {"cls", "jpg", "json"}
    jpg = stats["fields"]["jpg"]
    assert jpg["samples"] == 40 and jpg["min"] <= jpg["p50"] <= jpg["p90"] <= jpg["p99"] <= jpg["max"]
    text = invoke(["--stats", str(imagenet_shard)]).stdout
    assert "samples          40" in text and "jpg " in text and "p99" in text


def test_stats_count_skipped_members_and_exit_1():
    data = tar_bytes([("a.txt", b"A"), ("README", b"r"), ("b.txt", b"BB"), ("b.cls", b"1")])
    result = invoke(["--stats", "--json"], input=data)
    assert result.exit_code == 1
    assert "skipping -: member has no key" in result.stderr and "'README'" in result.stderr
    stats = json.loads(result.stdout)
    assert stats["skipped_members"] == 1 and stats["samples"] == 2
    assert stats["fields"]["cls"]["missing"] == 1


def test_contact_sheet(imagenet_shard, tmp_path):
    image = pytest.importorskip("PIL.Image")
    sheet = tmp_path / "sheet.png"
    result = invoke(["--contact-sheet", str(sheet), "--count", "6", "--columns", "3", "--thumb", "64", "-v",
                     str(imagenet_shard)])
    assert result.exit_code == 0, result.stderr
    assert f"wrote {sheet}: 6 images" in result.stderr
    assert result.stdout == ""
    with image.open(sheet) as im:
        assert im.format == "PNG" and im.size == (3 * 72, 2 * 86)


def test_usage_errors():
    result = invoke(["--stats", "-f", "jpg"])
    assert result.exit_code == 2 and "cannot be combined" in result.stderr
    result = invoke(["--json", "-f", "jpg"])
    assert result.exit_code == 2
    result = invoke(["--count", "-1"])
    assert result.exit_code == 2


def test_help_shows_examples():
    result = invoke(["--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and "tarshow --stats" in result.stdout


def test_missing_input_and_corrupt_input(tmp_path, imagenet_shard):
    result = invoke([str(tmp_path / "nope.tar")])
    assert result.exit_code == 1 and "No such file" in result.stderr
    cut = imagenet_shard.read_bytes()[:30000]
    result = invoke(["--stats"], input=cut)
    assert result.exit_code == 3 and "tarshow: error:" in result.stderr


def test_pipes_gzip_and_head(imagenet_shard_gz):
    out = run(f"cat {imagenet_shard_gz} | tarshow --json | head -n 2", shell=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2
    out = run(f"tarshow -f jpg {imagenet_shard_gz} | head -c 100", shell=True)
    assert out.returncode == 0 and out.stdout[:3] == b"\xff\xd8\xff" and out.stderr == b""


def test_shared_testdata_stats_match_webdataset(testdata):
    wds = pytest.importorskip("webdataset")
    for path in sorted(testdata.iterdir()):
        result = invoke(["--stats", "--json", str(path)])
        assert result.exit_code == 0, (path, result.stderr)
        stats = json.loads(result.stdout)
        samples = list(wds.WebDataset(str(path), shardshuffle=False))
        assert stats["samples"] == len(samples), path
        assert stats["first_key"] == samples[0]["__key__"] and stats["last_key"] == samples[-1]["__key__"]
        fields = {k for s in samples for k in s if not k.startswith("__")}
        assert set(stats["fields"]) == fields, path


def test_shared_testdata_previews(testdata):
    result = invoke(["--count", "1", str(testdata / "tarproc-sample.tar"), str(testdata / "webdataset-tendata.tar")])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[2].split() == ["png", "306", "PNG", "28x28", "L"]
    result = invoke(["--json", "--count", "1", str(testdata / "webdataset-tendata.tar")])
    assert json.loads(result.stdout)["fields"]["ten"]["preview"] == "tenbin"


def test_field_missing_from_every_sample_is_exit_1(imagenet_shard):
    """Regression: -f with a misspelt field wrote nothing and exited 0."""
    result = invoke(["-f", "jpeg", str(imagenet_shard)])
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert "no sample has a field 'jpeg' (40 samples read)" in result.stderr
    some = tar_bytes([("a.jpg", b"J"), ("b.txt", b"T")])
    result = invoke(["-f", "jpg", "-"], input=some)
    assert result.exit_code == 0 and result.stdout_bytes == b"J"
    assert "1 samples have no field 'jpg'" in result.stderr


def test_names_that_are_not_printable_are_quoted():
    """Regression: a key with a newline or an escape sequence was printed
    raw (a fake extra sample line, or terminal control)."""
    data = tar_bytes([("a\nb.txt", b"x"), ("c\x1b[31m.txt", b"y"), ("plain key.t\tx", b"z")])
    result = invoke(["-"], input=data)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "'a\\nb'" and lines[3] == "'c\\x1b[31m'" and lines[6] == "plain key"
    assert lines[7].split()[0] == "'t\\tx'"
    stats = invoke(["--stats", "-"], input=data)
    assert "first key        'a\\nb'" in stats.stdout and "last key         plain key" in stats.stdout


def test_corrupt_input_lists_the_samples_before_the_fault(imagenet_shard):
    """A cut shard: the complete samples before the cut are listed, then one
    error line naming the offset and the last complete sample; exit 1."""
    data = imagenet_shard.read_bytes()
    full = invoke(["-"], input=data).stdout.split("\n\n")
    cut = data[: len(data) // 2 + 100]
    result = run(["tarshow", "-"], input=cut)
    assert result.returncode == 3
    shown = result.stdout.decode().rstrip("\n").split("\n\n")
    assert 0 < len(shown) < len(full) and shown == [b.rstrip("\n") for b in full[: len(shown)]]
    errors = result.stderr.decode().splitlines()
    assert len(errors) == 1 and errors[0].startswith("tarshow: error: -: stream is cut")
    last_key = shown[-1].splitlines()[0]
    assert f"last complete sample: '{last_key}'" in errors[0] and "Traceback" not in result.stderr.decode()


def _media_fields() -> dict[str, tuple[bytes, str]]:
    """field -> (bytes, what tarshow must say), one per format it recognises."""
    import io
    import struct

    Image = pytest.importorskip("PIL.Image")
    np = pytest.importorskip("numpy")

    def image(fmt, mode="RGB"):
        buf = io.BytesIO()
        Image.new(mode, (7, 5)).save(buf, fmt)
        return buf.getvalue()

    npy = io.BytesIO()
    np.save(npy, np.zeros((3, 4), np.float32))
    return {
        "ppm": (image("PPM"), "PPM 7x5 RGB"),
        "pgm": (image("PPM", "L"), "PGM 7x5 L"),
        "pbm": (image("PPM", "1"), "PBM 7x5 1"),
        "tiff": (image("TIFF"), "TIFF 7x5 RGB"),
        "webp": (image("WEBP"), "WEBP 7x5 RGB"),
        "gif": (image("GIF"), "GIF 7x5 P"),
        "wav": (b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + bytes(24), "WAV"),
        "flac": (b"fLaC\0\0\0\x22" + bytes(34), "FLAC"),
        "mp3": (b"\xff\xfb\x90\x64" + bytes(40), "MP3"),
        "id3.mp3": (b"ID3\x04\0\0\0\0\0\0" + bytes(10), "MP3"),
        "mp4": (b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom" + bytes(8), "MP4/ISO media"),
        "npy": (npy.getvalue(), "npy float32 (3, 4)"),
    }


def test_recognises_images_audio_video_and_npy():
    fields = _media_fields()
    data = tar_bytes([(f"k.{name}", value) for name, (value, _) in fields.items()])
    result = invoke(["--json"], input=data)
    assert result.exit_code == 0, result.stderr
    described = json.loads(result.stdout)["fields"]
    for name, (_, expected) in fields.items():
        assert described[name]["preview"] == expected, name
