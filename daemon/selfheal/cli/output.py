"""Human tables and machine JSON for every CLI command."""

from __future__ import annotations

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
    """A plain aligned text table."""
    cells = [[format_value(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)


def fail(message: str, code: int) -> None:
    """Print an error to stderr and exit with `code`."""
    click.echo(f"selfheal: {message}", err=True)
    sys.exit(code)
