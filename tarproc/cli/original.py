"""The original tarproc's spellings that mean something else here, or are
not options here: one table, used to make the usage error name our
spelling (the original: tmbdev/tarproc, each tool's argparse options).

Spellings that mean the same are plain aliases of our options (``tarproc
-S``, ``--interpreter``, ``tarsplit --num-samples``...): see the README,
"Coming from the original tarproc".
"""

from __future__ import annotations

import re

#: tool -> the original's option -> what to write here
HINTS: dict[str, dict[str, str]] = {
    "tarproc": {
        "--direct-output": "drop it: the commands' output goes to stderr, or to a file with -O FILE",
        "--silent": "use -q/--quiet",
        "-I": "drop it: the original has no -I either",
    },
    "tarcats": {
        "-c": "use --count N",
        "-s": "use --skip N",
        "-b": "drop it: brace patterns are always expanded",
        "--braceexpand": "drop it: brace patterns are always expanded",
        "--output-mode": "drop it: members are written with mode 0444",
        "--eof": "drop it: the end-of-archive marker is always written",
    },
    "tarpcat": {
        "-c": "use --count N",
        "-s": "use --shuffle N",
        "--workers": "use -p/--parallel N",
        "-b": "drop it: brace patterns are always expanded",
        "--braceexpand": "drop it: brace patterns are always expanded",
    },
    "tarsort": {
        "-t": "use --tmpdir DIR",
        "--tempfile": "use --tmpdir DIR",
        "--report": "use -v (a summary on stderr)",
        "-k": "drop it: samples are grouped by __key__",
        "--key": "drop it: samples are grouped by __key__",
        "--update": "drop it: runs are private temporary files",
        "--keep": "drop it: runs are private temporary files",
        "--commit": "use --buffer-size SIZE",
    },
    "tarshow": {
        "-c": "use --count N",
        "--count": "use --count N",
        "-N": "drop it: images are described, not displayed",
        "--normalize": "drop it: images are described, not displayed",
        "-C": "drop it: images are described, not displayed",
        "--cmap": "drop it: images are described, not displayed",
        "-d": "drop it: images are described, not displayed",
        "--delay": "drop it: images are described, not displayed",
        "--silent": "use -q/--quiet",
    },
    "tar2json": {
        "-f": "use --format jsonl|tsv",
        "-a": "use tarshow --stats (fields and how many samples carry each)",
        "--available": "use tarshow --stats (fields and how many samples carry each)",
        "--nokey": "drop it: __key__ is always written",
    },
    "tarsplit": {
        "-O": "use -o 'pipe:CMD' (or '|CMD')",
        "--open": "use -o 'pipe:CMD' (or '|CMD')",
        "--command": "use -C/--post CMD",
    },
    "lines2tar": {},
}

_NO_SUCH = re.compile(r"^no such option: (\S+)")


def hint(tool: str, message: str) -> str | None:
    """For a click message ``no such option: X``, what to write here when
    ``X`` is one of the original tarproc's options of ``tool``, else None."""
    match = _NO_SUCH.match(message)
    if not match:
        return None
    option = match.group(1)
    wanted = HINTS.get(tool, {}).get(option)
    if wanted is None:
        return None
    return f"the original tarproc's {option}: {wanted}"
