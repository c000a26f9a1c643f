"""Save a benchmark's result to bench/results/NAME.json and print it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def save_and_print(name: str, result: dict[str, Any], *, as_json: bool, width: int = 28) -> None:
    """Write the result as JSON; print it as JSON or as aligned `key value` lines."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:{width}} {value}")
