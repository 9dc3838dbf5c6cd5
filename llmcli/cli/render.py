"""Output helpers: rich tables in a terminal, plain text when piped."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def is_terminal() -> bool:
    return sys.stdout.isatty()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table in a terminal; tab-separated lines (with a header) otherwise."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(*headers, header_style="bold")
        for row in rows:
            t.add_row(*row)
        Console().print(t)
        return
    sys.stdout.write("\t".join(headers) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row)
                         + "\n")
