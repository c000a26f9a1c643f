"""Human tables and machine JSON for every CLI command."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import click


def emit_json(value: Any) -> None:
    """Print one JSON document (the `--json` form of every command)."""
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def format_value(value: Any) -> str:
    """One cell: JSON for containers and null, plain text otherwise."""
    if value is None or isinstance(value, dict | list | bool):
        return json.dumps(value, default=str)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table (rich), as wide as its content: never wrapped or cut, so
    piped output stays one row per line."""
    from rich.console import Console
    from rich.table import Table

    grid = Table(box=None, pad_edge=False, header_style="bold")
    for header in headers:
        grid.add_column(header.upper(), no_wrap=True, overflow="ignore")
    for row in rows:
        grid.add_row(*(escape_markup(format_value(cell)) for cell in row))
    buffer = io.StringIO()
    console = Console(file=buffer, width=100_000, color_system=None, highlight=False)
    console.print(grid)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines() if line.strip())


def escape_markup(text: str) -> str:
    """Cell text shown as written (rich would read `[bold]` in a value as markup)."""
    from rich.markup import escape

    return escape(text)


def span(seconds: float) -> str:
    """12s, 3m, 2h05m, 3d04h."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def ago(ts: float | None) -> str:
    """Like "3m ago" ("-" when unknown)."""
    return "-" if not ts else f"{span(time.time() - ts)} ago"


def human_size(count: int | None) -> str:
    """1.2 MiB, 512 B ("?" when unknown)."""
    if count is None:
        return "?"
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def due_in(ts: float | None) -> str:
    """Like "in 3m" ("-" when unknown)."""
    return "-" if not ts else f"in {span(ts - time.time())}"


def fail(message: str, code: int) -> None:
    """Print an error to stderr and exit with `code`."""
    click.echo(f"selfheal: {message}", err=True)
    sys.exit(code)
