"""Whatever JSON a user writes, loading gives settings or a ConfigError, never a crash."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfheal.config import LoadedConfig, load_config
from selfheal.config.leaves import LEAVES
from selfheal.errors import ConfigError

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "~/x", "./x", "../x", "/x", "embedded", "redis://h:1", "-p 22"])
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _shaped(keys: list[tuple[str, ...]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like our sections: real key paths, random values."""

    def build(chosen: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
        root: dict[str, Any] = {}
        for path, value in chosen:
            node = root
            for part in path[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    break
                node = child
            else:
                node[path[-1]] = value
        return root

    pair = st.tuples(st.sampled_from(keys), ANY_JSON)
    return st.lists(pair, max_size=8).map(build)


OUR_PATHS = [("selfheal", *leaf.aliases) for leaf in LEAVES if leaf.key.startswith("selfheal.")]
COMPAT_PATHS = [
    (section, leaf.aliases[-1])
    for leaf in LEAVES
    for section in ("backupFailureRouter", "backupTransport")
    if leaf.aliases[0] == ("router" if section == "backupFailureRouter" else "transport")
] + [("selfHealing", leaf.aliases[0], leaf.aliases[-1]) for leaf in LEAVES[:14]]
SECTION_NAMES = st.sampled_from(
    ["selfHealing", "backupFailureRouter", "backupTransport", "selfheal", "other"]
)
DOCUMENTS = (
    ANY_JSON
    | st.dictionaries(SECTION_NAMES, ANY_JSON, max_size=4)
    | _shaped(OUR_PATHS + COMPAT_PATHS)
)
ENVS = st.dictionaries(
    st.sampled_from([var for leaf in LEAVES for var in leaf.env_vars]),
    st.text(max_size=12) | st.sampled_from(["1", "0", "yes", "12", "2.5", "/abs", "./rel"]),
    max_size=3,
)


def _load(document: Any, env: dict[str, str], folder: str) -> LoadedConfig | ConfigError:
    path = Path(folder) / "c.json"
    path.write_text(json.dumps(document))
    try:
        return load_config(path, {"HOME": "/home/u", **env})
    except ConfigError as exc:
        return exc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=DOCUMENTS, env=ENVS)
def test_any_json_gives_settings_or_config_error(document: Any, env: dict[str, str]) -> None:
    # One folder for both loads: `./` paths resolve against the config file's folder.
    with tempfile.TemporaryDirectory() as folder:
        outcome = _load(document, env, folder)
        if isinstance(outcome, ConfigError):
            assert outcome.problems and all(isinstance(p, str) and p for p in outcome.problems)
        else:
            assert isinstance(outcome, LoadedConfig)
            # Anything that loaded must be stable: same input, same digest.
            again = _load(document, env, folder)
            assert isinstance(again, LoadedConfig) and again.digest == outcome.digest
