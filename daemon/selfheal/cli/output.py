"""Human tables and machine JSON for every CLI command."""

from __future__ import annotations

import io
import json
import sys
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


def fail(message: str, code: int) -> None:
    """Print an error to stderr and exit with `code`."""
    click.echo(f"selfheal: {message}", err=True)
    sys.exit(code)
