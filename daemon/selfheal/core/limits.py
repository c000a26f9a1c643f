"""Limits both sides of the control socket agree on, in a module light enough for the CLI."""

from __future__ import annotations

from typing import Final

SLEEP_LIMIT_MS: Final = 604_800_000  # one week: longer holds belong to an operator
