"""Describe samples: a preview of each field, statistics over a stream, and
contact sheets of images.

A field's bytes are described by their content, not their name: text (valid
UTF-8 without NUL bytes) shows its first line, truncated; binary data is
named by its magic number (``JPEG 500x375 RGB``, ``PNG 64x64 RGBA``, ``gzip``,
``npy float32 (3, 224, 224)``, ...). Image sizes come from Pillow when it is
installed (extra ``tarproc[images]``), else from a small header parser for
JPEG, PNG and GIF.
"""

from __future__ import annotations

import ast
import io
import re
import math
import struct
from array import array
from collections.abc import Iterable

from tarproc.errors import TarprocError, Warn
from tarproc.samples import Sample
from tarproc.io.spool import LargeField

_NOT_LOADED = object()
#: ``PIL.Image`` (optional: image sizes and contact sheets), None without
#: Pillow; imported by :func:`_pillow` on first use, not at start (15-40 ms
#: that ``tarshow --help`` and every tar2json would pay)
_PILImage = _NOT_LOADED


def _pillow():
    """``PIL.Image``, or None when Pillow is not installed."""
    global _PILImage
    if _PILImage is _NOT_LOADED:
        try:
            from PIL import Image as _PILImage
        except ImportError:  # pragma: no cover - Pillow is installed in the test env
            _PILImage = None
    return _PILImage

#: (magic prefix, offset, name) for binary formats without a size to report
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x1f\x8b", 0, "gzip"),
    (b"BZh", 0, "bzip2"),
    (b"\xfd7zXZ\x00", 0, "xz"),
    (b"\x28\xb5\x2f\xfd", 0, "zstd"),
    (b"PK\x03\x04", 0, "zip"),
    (b"%PDF-", 0, "PDF"),
    (b"fLaC", 0, "FLAC"),
    (b"OggS", 0, "Ogg"),
    (b"ID3", 0, "MP3"),
    (b"\x1aE\xdf\xa3", 0, "Matroska/WebM"),
    (b"ftyp", 4, "MP4/ISO media"),
    (b"ustar", 257, "tar"),
    (b"\x89HDF\r\n\x1a\n", 0, "HDF5"),
    (b"ARROW1", 0, "Arrow"),
    (b"PAR1", 0, "Parquet"),
    (b"SQLite format 3\x00", 0, "SQLite"),
    (b"\x7fELF", 0, "ELF"),
    (b"~TenBin~", 0, "tenbin"),
)

#: image formats recognised by magic (Pillow or the fallback parsers give the size)
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

#: field names (last extension) treated as images by the contact sheet
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "pbm")


def image_format(data: bytes) -> str | None:
    """The image format named by ``data``'s magic number (``"JPEG"``,
    ``"PNG"``, ``"GIF"``, ``"WEBP"``, ``"BMP"``, ``"TIFF"``, ``"PPM"``,
    ``"PGM"``, ``"PBM"``), else None."""
    for magic, name in _IMAGE_MAGIC:
        if data.startswith(magic):
            if name == "BMP" and len(data) < 26:
                return None
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if _NETPBM.match(data):
        return _NETPBM_NAMES[data[1:2]]
    return None


#: Netpbm (PBM/PGM/PPM, plain and raw): "P1".."P6", whitespace, width, height
_NETPBM = re.compile(rb"P([1-6])(?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)\s")
_NETPBM_NAMES = {b"1": "PBM", b"4": "PBM", b"2": "PGM", b"5": "PGM", b"3": "PPM", b"6": "PPM"}


def _netpbm_size(data: bytes) -> tuple[int, int] | None:
    match = _NETPBM.match(data)
    return (int(match.group(2)), int(match.group(3))) if match else None


def _mp3_frame(data: bytes) -> bool:
    """An MPEG audio frame header without an ID3 tag (frame sync, layer III)."""
    return len(data) >= 4 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and (data[1] >> 1) & 3 == 1 \
        and (data[2] >> 4) not in (0, 15)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first SOF marker (ITU T.81, B.2.2)."""
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if pos + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def image_size(data: bytes) -> tuple[int, int, str] | None:
    """``(width, height, mode)`` of an image, read from its header only.

    Uses Pillow when installed (``mode`` like ``"RGB"``), else parses JPEG,
    PNG and GIF headers (``mode`` is ``""``). Returns None when the size
    cannot be read.
    """
    pil = _pillow()
    if pil is not None:
        try:
            with pil.open(io.BytesIO(data)) as image:
                return image.width, image.height, image.mode
        except Exception:  # noqa: BLE001 - Pillow raises many types on bad data
            return None
    fmt = image_format(data)
    parsers = {"JPEG": _jpeg_size, "PNG": _png_size, "GIF": _gif_size, "PPM": _netpbm_size, "PGM": _netpbm_size,
               "PBM": _netpbm_size}
    size = parsers.get(fmt or "", lambda d: None)(data)
    return (size[0], size[1], "") if size else None


def _npy_header(data: bytes) -> str:
    """``npy float32 (3, 224, 224)`` from a NumPy ``.npy`` header (NEP 1)."""
    try:
        major = data[6]
        if major == 1:
            length = struct.unpack("<H", data[8:10])[0]
            start = 10
        else:
            length = struct.unpack("<I", data[8:12])[0]
            start = 12
        header = ast.literal_eval(data[start : start + length].decode("latin-1"))
        descr = header["descr"]
        names = {"<f4": "float32", "<f8": "float64", "<f2": "float16", "|u1": "uint8", "|i1": "int8",
                 "<i2": "int16", "<i4": "int32", "<i8": "int64", "<u2": "uint16", "<u4": "uint32",
                 "<u8": "uint64", "|b1": "bool"}
        dtype = names.get(descr, str(descr)) if isinstance(descr, str) else "record"
        return f"npy {dtype} {tuple(header['shape'])}"
    except (IndexError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        return "npy"


def is_text(data: bytes) -> bool:
    """True when ``data`` is valid UTF-8 without NUL bytes (how tarproc tells
    text from binary)."""
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def truncate(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``...`` when cut."""
    if len(text) <= width:
        return text
    return text[: max(width - 3, 0)] + "..."


def describe_bytes(data: bytes, width: int = 60) -> str:
    """A one-line description of a field's bytes, at most about ``width``
    characters.

    - empty: ``empty``
    - text: its first line quoted like a Python string (``'...'``), followed by
      ``...`` when truncated, plus ``(N lines)`` when there are more
    - an image: ``JPEG 500x375 RGB`` (``PNG``, ``GIF``, ``WEBP``, ``BMP``, ``TIFF``,
      ``PPM``/``PGM``/``PBM``)
    - audio and video: ``WAV``, ``FLAC``, ``MP3`` (ID3 tag or frame header), ``Ogg``,
      ``MP4/ISO media``, ``Matroska/WebM``
    - NumPy: ``npy float32 (3, 224, 224)``; pickle: ``pickle protocol 4``
    - other known magic numbers: ``gzip``, ``zstd``, ``zip``, ``PDF``, ``tar``...
    - anything else: ``binary`` and its first bytes in hex

    A :class:`tarproc.io.spool.LargeField` is described from its first
    :data:`LARGE_PREVIEW` bytes (text: its first line, and ``...``).
    """
    if data.__class__ is LargeField:
        return _describe_large(data, width)
    if not data:
        return "empty"
    fmt = image_format(data)
    if fmt:
        size = image_size(data)
        if size is None:
            return f"{fmt} (unreadable header)"
        mode = f" {size[2]}" if size[2] else ""
        return f"{fmt} {size[0]}x{size[1]}{mode}"
    if data.startswith(b"\x93NUMPY"):
        return _npy_header(data)
    if data[:1] == b"\x80" and len(data) > 2 and 2 <= data[1] <= 5 and data.endswith(b"."):
        return f"pickle protocol {data[1]}"
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if _mp3_frame(data):
        return "MP3"
    if is_text(data):
        text = data.decode("utf-8")
        lines = text.splitlines() or [""]
        first = lines[0]
        suffix = f" ({len(lines)} lines)" if len(lines) > 1 else ""
        room = max(width - len(suffix) - 5, 10)
        if len(first) > room:
            return _quote(first[:room]) + "..." + suffix
        return _quote(first) + suffix
    return "binary " + data[:8].hex(" ") + (" ..." if len(data) > 8 else "")


#: bytes of a file-backed field's head that :func:`describe_bytes` looks at
LARGE_PREVIEW = 1 << 20


def _describe_large(data: LargeField, width: int) -> str:
    head = data.head(LARGE_PREVIEW)
    if head[:1] == b"\x80" and 2 <= head[1] <= 5 and data.endswith(b"."):
        return f"pickle protocol {head[1]}"
    text = None
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:  # text whose head is cut inside a character is text
            if exc.start >= len(head) - 3 and exc.end == len(head):
                text = head[: exc.start].decode("utf-8", "replace")
    if text is None:
        return describe_bytes(head, width)
    first = (text.splitlines() or [""])[0]
    return _quote(first[: max(width - 5, 10)]) + "..."


def _quote(text: str) -> str:
    """Python-style quoting: readable for JSON text, control characters escaped."""
    return repr(text)


def summarize(sample: Sample, width: int = 60) -> dict:
    """A JSON-ready summary of a sample: ``{"__key__": key, "fields":
    {field: {"size": bytes, "preview": str}}}``, fields in sample order."""
    return {
        "__key__": sample["__key__"],
        "fields": {
            name: {"size": len(value), "preview": describe_bytes(value, width)}
            for name, value in sample.items()
            if not name.startswith("__")
        },
    }


def printable(text: str) -> str:
    """``text`` as is when every character is printable, else quoted like a
    Python string, so that a name with a newline, a tab, a terminal escape
    sequence or undecodable bytes (surrogate escapes) shows as one visible
    line and cannot drive the terminal."""
    return text if text.isprintable() else repr(text)


def format_summary(sample: Sample, width: int = 60) -> str:
    """The text block ``tarshow`` prints for a sample: the key, then one
    indented line per field with its size in bytes and its preview (names
    that are not printable are quoted, see :func:`printable`)."""
    fields = [(printable(k), v) for k, v in sample.items() if not k.startswith("__")]
    name_width = max((len(k) for k, _ in fields), default=0)
    size_width = max((len(str(len(v))) for _, v in fields), default=0)
    lines = [printable(sample["__key__"])]
    for name, value in fields:
        lines.append(f"  {name:<{name_width}}  {len(value):>{size_width}}  {describe_bytes(value, width)}")
    return "\n".join(lines)


# ------------------------------------------------------------------ stats


def percentile(sorted_values, q: float) -> int:
    """The ``q``-th percentile (0..100) of sorted integers, nearest-rank
    method (the smallest value with at least ``q`` % of values at or below)."""
    if not len(sorted_values):
        raise ValueError("no values")
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


class Stats:
    """Statistics over a sample stream, the check run before a long job.

    Feed samples with :meth:`add` and skipped members with
    :meth:`skipped`; memory is 8 bytes per field value (sizes are kept to
    compute exact percentiles).

    :ivar samples: number of samples
    :ivar members: number of members (fields) in them
    :ivar bytes: total field bytes (tar headers and padding not counted)
    """

    PERCENTILES = (50, 90, 99)

    def __init__(self) -> None:
        self.samples = 0
        self.members = 0
        self.bytes = 0
        self.skipped_members = 0
        self.first_key: str | None = None
        self.last_key: str | None = None
        self._sizes: dict[str, array] = {}

    def add(self, sample: Sample) -> None:
        """Count one sample."""
        key = sample["__key__"]
        if self.first_key is None:
            self.first_key = key
        self.last_key = key
        self.samples += 1
        sizes = self._sizes
        for name, value in sample.items():
            if name.startswith("__"):
                continue
            n = len(value)
            self.members += 1
            self.bytes += n
            column = sizes.get(name)
            if column is None:
                column = sizes[name] = array("q")
            column.append(n)

    def skipped(self, message: str = "") -> None:
        """Count one member skipped by the reader (link, no key, ...)."""
        self.skipped_members += 1

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``samples``, ``members``, ``bytes``,
        ``skipped_members``, ``first_key``, ``last_key`` and ``fields``:
        ``{field: {"samples", "missing", "bytes", "min", "p50", "p90",
        "p99", "max", "mean"}}`` (sizes in bytes), fields sorted by name."""
        fields = {}
        for name in sorted(self._sizes):
            values = sorted(self._sizes[name])
            entry = {"samples": len(values), "missing": self.samples - len(values), "bytes": sum(values),
                     "min": values[0]}
            for q in self.PERCENTILES:
                entry[f"p{q}"] = percentile(values, q)
            entry["max"] = values[-1]
            entry["mean"] = round(entry["bytes"] / len(values), 1)
            fields[name] = entry
        return {
            "samples": self.samples,
            "members": self.members,
            "bytes": self.bytes,
            "skipped_members": self.skipped_members,
            "first_key": self.first_key,
            "last_key": self.last_key,
            "fields": fields,
        }

    def format(self) -> str:
        """The text report ``tarshow --stats`` prints."""
        d = self.to_dict()
        lines = [
            f"samples          {d['samples']}",
            f"members          {d['members']}",
            f"bytes            {d['bytes']} ({human_bytes(d['bytes'])})",
            f"skipped members  {d['skipped_members']}",
            f"first key        {printable(d['first_key']) if d['first_key'] is not None else '-'}",
            f"last key         {printable(d['last_key']) if d['last_key'] is not None else '-'}",
        ]
        if d["fields"]:
            heads = ["field", "samples", "missing", "bytes", "min", "p50", "p90", "p99", "max", "mean"]
            rows = [[printable(name)] + [str(e[h]) for h in heads[1:]] for name, e in d["fields"].items()]
            widths = [max(len(r[i]) for r in rows + [heads]) for i in range(len(heads))]
            lines.append("")
            lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths))))
            for row in rows:
                lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        return "\n".join(lines)


def human_bytes(n: int) -> str:
    """``n`` bytes as ``1.5 KiB``, ``12.0 MiB``... (binary multiples)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


# ------------------------------------------------------------ contact sheet


def require_pillow(what: str = "contact sheets"):
    """The ``PIL.Image`` module, or :class:`TarprocError` naming the extra.

    :raises TarprocError: Pillow is not installed
    """
    pil = _pillow()
    if pil is None:
        raise TarprocError(f"{what} need Pillow: pip install 'tarproc[images]'")
    return pil


def pick_image_field(sample: Sample, field: str | None = None) -> str | None:
    """The field holding the sample's image: ``field`` when given (None if
    absent), else the first field whose last extension is an image type
    (``jpg``, ``png``, ...), else the first field whose bytes are an image."""
    if field is not None:
        return field if field in sample else None
    names = [k for k in sample if not k.startswith("__")]
    for name in names:
        if name.rsplit(".", 1)[-1].lower() in IMAGE_FIELDS:
            return name
    for name in names:
        value = sample[name]
        if isinstance(value, bytes) and image_format(value):
            return name
    return None


def contact_sheet(
    samples: Iterable[Sample],
    path: str,
    limit: int = 64,
    columns: int = 8,
    thumb: int = 128,
    field: str | None = None,
    warn: Warn | None = None,
) -> int:
    """Draw the first ``limit`` images of ``samples`` in a grid, each
    captioned with its key, and save it to ``path`` (format from the suffix,
    e.g. PNG).

    :param samples: sample dicts; samples without an image are passed over
    :param limit: most images to draw
    :param columns: images per row
    :param thumb: cell size in pixels (images are scaled up or down to fit,
        keeping their aspect ratio)
    :param field: the image field (default: see :func:`pick_image_field`)
    :param warn: called for images Pillow cannot decode (they are left out)
    :returns: number of images drawn
    :raises TarprocError: Pillow is missing, no image was found, or the
        file cannot be written
    """
    Image = require_pillow()
    from PIL import ImageDraw, ImageFont

    thumbs: list[tuple[str, object]] = []
    for sample in samples:
        if len(thumbs) >= limit:
            break
        name = pick_image_field(sample, field)
        if name is None:
            continue
        try:
            value = sample[name]
            with Image.open(value.path if value.__class__ is LargeField else io.BytesIO(value)) as image:
                image.draft("RGB", (thumb, thumb))  # fast JPEG downscale
                image = image.convert("RGB")
                # scale to fit the cell, small images (MNIST...) up as well
                scale = min(thumb / image.width, thumb / image.height)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BICUBIC
                image = image.resize(size, resample)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad data
            if warn is not None:
                warn(f"{sample['__key__']}.{name}: cannot decode image: {exc}")
            continue
        thumbs.append((sample["__key__"], image))
    if not thumbs:
        raise TarprocError("no images found for the contact sheet" + (f" in field {field!r}" if field else ""))
    font = ImageFont.load_default()
    caption = 14
    pad = 4
    columns = max(1, min(columns, len(thumbs)))
    rows = (len(thumbs) + columns - 1) // columns
    cell_w, cell_h = thumb + 2 * pad, thumb + caption + 2 * pad
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (key, image) in enumerate(thumbs):
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h
        sheet.paste(image, (x0 + pad + (thumb - image.width) // 2, y0 + pad + (thumb - image.height) // 2))
        text = key
        while text and draw.textlength(text, font=font) > thumb:
            text = text[1:]
        if text != key:
            text = "..." + text[3:] if len(text) > 3 else text
        draw.text((x0 + pad, y0 + pad + thumb + 1), text, fill="black", font=font)
    try:
        sheet.save(path)
    except (OSError, ValueError) as exc:
        raise TarprocError(f"{path}: cannot write contact sheet: {exc}") from None
    return len(thumbs)
