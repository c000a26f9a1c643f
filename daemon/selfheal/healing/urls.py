"""URLs of the HTTP services the healing plane calls (notifiers, the model endpoint)."""

from __future__ import annotations

import httpx


def under(base: str, path: str) -> httpx.URL:
    """`base` with `path` appended to its path, its query and fragment kept after it.

    Gluing strings would put the path after the query of a base such as
    https://llm.example/v1?api_key=K (".../v1?api_key=K/chat/completions").
    """
    url = httpx.URL(base)
    return url.copy_with(path=url.path.rstrip("/") + path)
