"""Byte counts written by people: ``500M``, ``2GiB``, ``1e9``, ``4096``.

The one size parser of every tool, with the GNU coreutils convention (as in
``head -c``, ``dd``, ``sort -S``): ``K``, ``M``, ``G``, ``T``, ``P`` alone or
with ``iB`` are powers of 1024 (``500M`` = 500 MiB = 524,288,000 bytes); with
``B`` they are powers of 1000 (``500MB`` = 500,000,000 bytes). A plain number
is bytes; decimals and exponents are allowed (``1e9``, ``1.5G``), rounded down
to whole bytes.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?) ?(?:([kKmMgGtTpP])(iB|B)?|B)?")
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}

#: what the help of a size option can say about its spelling
SIZE_HELP = "K, M, G = 1024^n bytes; KB, MB, GB = 1000^n; KiB, MiB, GiB; 1e9"


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names.

    :returns: a positive number of bytes
    :raises ValueError: ``text`` is not a size, or it is less than one byte
    """
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size; sizes look like 4096, 1e9, 500M, 500MB, 2GiB")
    number, unit, suffix = match.groups()
    scale = 1
    if unit:
        scale = (1000 if suffix == "B" else 1024) ** _POWERS[unit.lower()]
    if "." in number or "e" in number.lower():
        value = int(float(number) * scale)
    else:
        value = int(number) * scale
    if value < 1:
        raise ValueError(f"size {text!r} is less than one byte")
    return value


def format_size(n: float) -> str:
    """``n`` bytes for people, in the units :func:`parse_size` reads back
    (``1.5M`` for 1.5 MiB; ``512`` below 1 KiB)."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}P"  # not reached
