"""Text that cannot be written: JSON may spell half a surrogate pair (`"\\ud800"`), which
Python reads into a str that no UTF-8 writer (Redis, a log, a reply, a terminal) takes."""

from __future__ import annotations

from typing import Any


def _writable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unwritable_text(value: Any) -> str | None:
    """Where in a parsed JSON value a string or key holds a lone surrogate, as a path
    such as `params.data[2]` (`where` for the value itself); None when all of it is text.
    Iterative, so no depth makes it raise."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if not _writable(node):
                return where or "the value"
        elif isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str) and not _writable(key):
                    return f"a key of {where or 'the object'}"
                stack.append((item, f"{where}.{key}" if where else str(key)))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(node))
    return None
