"""tarpcat: tarcats with parallel worker processes (``-p N``, default: the CPU count)."""

from __future__ import annotations

import os

from .common import run_app
from .tarcats import PCAT_EXAMPLES, PCAT_HELP, build_app

app = build_app("tarpcat", PCAT_HELP, PCAT_EXAMPLES, max(2, os.cpu_count() or 2))


def main() -> None:
    run_app(app, "tarpcat")


if __name__ == "__main__":
    main()
