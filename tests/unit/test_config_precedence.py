"""One precedence: env (first listed wins) > backup section > selfHealing section > default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfheal.config import LoadedConfig, load_config
from selfheal.errors import ConfigError

MODELS = ["gpt-5.4", "m-heal", "m-backup", "m-env2", "m-env1"]

# Written from ORIGINAL.md's table, not from our schema, so a schema slip shows up here.
# (file alias, env vars in the original's order, default, [selfHealing, backup, env2, env1])
ROUTER: list[tuple[str, tuple[str, str], Any, list[Any]]] = [
    ("model", ("SELF_HEALING_ROUTER_MODEL", "BACKUP_FAILURE_ROUTER_MODEL"), "gpt-5.4", MODELS[1:]),
    (
        "fallbackModel",
        ("SELF_HEALING_ROUTER_FALLBACK_MODEL", "BACKUP_FAILURE_ROUTER_FALLBACK_MODEL"),
        "gpt-5.4",
        MODELS[1:],
    ),
    (
        "maxRetries",
        ("BACKUP_ROUTER_MAX_RETRIES", "SELF_HEALING_ROUTER_MAX_RETRIES"),
        5,
        [1, 2, 3, 4],
    ),
    (
        "sleepMinMs",
        ("BACKUP_ROUTER_SLEEP_MIN_MS", "SELF_HEALING_ROUTER_SLEEP_MIN_MS"),
        300000,
        [1001, 1002, 1003, 1004],
    ),
    (
        "sleepMaxMs",
        ("BACKUP_ROUTER_SLEEP_MAX_MS", "SELF_HEALING_ROUTER_SLEEP_MAX_MS"),
        14400000,
        [400001, 400002, 400003, 400004],
    ),
    (
        "sleepStepMs",
        ("BACKUP_ROUTER_SLEEP_STEP_MS", "SELF_HEALING_ROUTER_SLEEP_STEP_MS"),
        30000,
        [0, 7, 8, 9],
    ),
]
TRANSPORT: list[tuple[str, tuple[str, str], Any, list[Any]]] = [
    (
        "nasRecoveryWindowHours",
        ("NAS_BACKUP_RECOVERY_WINDOW_HOURS", "SELF_HEALING_RECOVERY_WINDOW_HOURS"),
        4,
        [1, 2.5, 3, 0.5],
    ),
    ("nasMaxAttempts", ("NAS_BACKUP_MAX_ATTEMPTS", "SELF_HEALING_MAX_ATTEMPTS"), 12, [1, 2, 3, 4]),
    (
        "nasRetryBaseMs",
        ("NAS_BACKUP_RETRY_BASE_MS", "SELF_HEALING_RETRY_BASE_MS"),
        10000,
        [5, 6, 7, 8],
    ),
    (
        "nasRetryMaxMs",
        ("NAS_BACKUP_RETRY_MAX_MS", "SELF_HEALING_RETRY_MAX_MS"),
        120000,
        [20001, 20002, 20003, 20004],
    ),
    (
        "nasSshHost",
        ("SELF_HEALING_NAS_HOST", "NAS_SSH_HOST"),
        "joel@three-body",
        ["a@h1", "h2", "b@h3.lan", "10.0.0.4"],
    ),
    (
        "nasSshFlags",
        ("SELF_HEALING_NAS_FLAGS", "NAS_SSH_FLAGS"),
        "-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=2",
        ["-p 1", "-p 2", "-o Port=3", "-i /k"],
    ),
    (
        "nasHddRoot",
        ("SELF_HEALING_NAS_HDD_ROOT", "NAS_HDD_ROOT"),
        "/Volumes/three-body",
        ["/h/1", "/h/2", "/h/3", "/h/4"],
    ),
    (
        "nasNvmeRoot",
        ("SELF_HEALING_NAS_NVME_ROOT", "NAS_NVME_ROOT"),
        "/Volumes/nas-nvme",
        ["/n/1", "/n/2", "/n/3", "/n/4"],
    ),
]
CASES = [("router", *row) for row in ROUTER] + [("transport", *row) for row in TRANSPORT]
BACKUP_SECTION = {"router": "backupFailureRouter", "transport": "backupTransport"}
BASE = {"selfheal": {"advisor": {"allowlist": MODELS}}}


def _load(tmp_path: Path, sections: dict[str, Any], env: dict[str, str]) -> LoadedConfig:
    path = tmp_path / "system-bus.config.json"
    path.write_text(json.dumps({**BASE, **sections}))
    return load_config(path, {"HOME": "/home/u", **env})


def _effective(loaded: LoadedConfig, key: str) -> tuple[Any, str]:
    item = next(i for i in loaded.effective_items() if i.key == key)
    return item.value, item.source


def _unprefixed(alias: str) -> str:
    rest = alias.removeprefix("nas")
    return rest[0].lower() + rest[1:]


@pytest.mark.parametrize(("group", "alias", "env", "default", "values"), CASES)
class TestPrecedence:
    def test_default_only(
        self, tmp_path: Path, group: str, alias: str, env: Any, default: Any, values: list[Any]
    ) -> None:
        assert _effective(_load(tmp_path, {}, {}), f"{group}.{alias}") == (default, "default")

    def test_selfhealing_only(
        self, tmp_path: Path, group: str, alias: str, env: Any, default: Any, values: list[Any]
    ) -> None:
        loaded = _load(tmp_path, {"selfHealing": {group: {alias: values[0]}}}, {})
        source = f"file:selfHealing.{group}.{alias}"
        assert _effective(loaded, f"{group}.{alias}") == (values[0], source)

    def test_backup_section_over_selfhealing(
        self, tmp_path: Path, group: str, alias: str, env: Any, default: Any, values: list[Any]
    ) -> None:
        sections = {
            "selfHealing": {group: {alias: values[0]}},
            BACKUP_SECTION[group]: {alias: values[1]},
        }
        source = f"file:{BACKUP_SECTION[group]}.{alias}"
        assert _effective(_load(tmp_path, sections, {}), f"{group}.{alias}") == (values[1], source)

    def test_env_over_both_sections(
        self, tmp_path: Path, group: str, alias: str, env: Any, default: Any, values: list[Any]
    ) -> None:
        sections = {
            "selfHealing": {group: {alias: values[0]}},
            BACKUP_SECTION[group]: {alias: values[1]},
        }
        loaded = _load(tmp_path, sections, {env[1]: str(values[2])})
        assert _effective(loaded, f"{group}.{alias}") == (values[2], f"env:{env[1]}")

    def test_first_listed_env_var_wins(
        self, tmp_path: Path, group: str, alias: str, env: Any, default: Any, values: list[Any]
    ) -> None:
        loaded = _load(tmp_path, {}, {env[0]: str(values[3]), env[1]: str(values[2])})
        assert _effective(loaded, f"{group}.{alias}") == (values[3], f"env:{env[0]}")

    def test_empty_env_counts_as_unset(
        self, tmp_path: Path, group: str, alias: str, env: Any, default: Any, values: list[Any]
    ) -> None:
        loaded = _load(tmp_path, {BACKUP_SECTION[group]: {alias: values[1]}}, {env[0]: ""})
        source = f"file:{BACKUP_SECTION[group]}.{alias}"
        assert _effective(loaded, f"{group}.{alias}") == (values[1], source)


@pytest.mark.parametrize(("alias", "env", "default", "values"), TRANSPORT)
def test_selfhealing_transport_accepts_unprefixed_form(
    tmp_path: Path, alias: str, env: Any, default: Any, values: list[Any]
) -> None:
    short = _unprefixed(alias)
    loaded = _load(tmp_path, {"selfHealing": {"transport": {short: values[0]}}}, {})
    source = f"file:selfHealing.transport.{short}"
    assert _effective(loaded, f"transport.{alias}") == (values[0], source)


@pytest.mark.parametrize(("alias", "env", "default", "values"), TRANSPORT)
def test_both_spellings_in_selfhealing_transport_is_an_error(
    tmp_path: Path, alias: str, env: Any, default: Any, values: list[Any]
) -> None:
    short = _unprefixed(alias)
    sections = {"selfHealing": {"transport": {short: values[0], alias: values[1]}}}
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, sections, {})
    assert f"selfHealing.transport.{short}" in str(caught.value)
    assert f"selfHealing.transport.{alias}" in str(caught.value)


@pytest.mark.parametrize(("alias", "env", "default", "values"), TRANSPORT)
def test_backup_transport_requires_the_nas_prefix(
    tmp_path: Path, alias: str, env: Any, default: Any, values: list[Any]
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, {"backupTransport": {_unprefixed(alias): values[0]}}, {})
    assert f"did you mean '{alias}'?" in str(caught.value)


# Our own keys: env > file > default.
OWN: list[tuple[str, str, Any, str, Any]] = [
    # (effective key, env var, file value, env text, env effective value)
    ("selfheal.stateDir", "SELFHEAL_STATE_DIR", "/s/file", "/s/env", "/s/env"),
    ("selfheal.controlSocket", "SELFHEAL_SOCKET", "/s/f.sock", "/s/e.sock", "/s/e.sock"),
    (
        "selfheal.redis.url",
        "SELFHEAL_REDIS_URL",
        "redis://f:6379",
        "unix:///r.sock",
        "unix:///r.sock",
    ),
    ("selfheal.backups.typesense.url", "TYPESENSE_URL", "http://f:1", "https://e:2", "https://e:2"),
    ("selfheal.backups.typesense.snapshotRoot", "TYPESENSE_SNAPSHOT_ROOT", "/t/f", "/t/e", "/t/e"),
    (
        "selfheal.backups.typesense.snapshotRetentionCount",
        "TYPESENSE_SNAPSHOT_RETENTION_COUNT",
        3,
        "9",
        9,
    ),
    ("selfheal.nas.preferRemote", "NAS_BACKUP_PREFER_REMOTE", False, "1", True),
    ("selfheal.nas.spoolDir", "NAS_BACKUP_QUEUE_ROOT", "/q/f", "/q/e", "/q/e"),
]


def _nested(key: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return dict(node)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize(("key", "var", "file_value", "env_text", "env_value"), OWN)
def test_own_keys_env_over_file_over_default(
    tmp_path: Path, key: str, var: str, file_value: Any, env_text: str, env_value: Any
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_merge(BASE, _nested(key, file_value))))
    from_file = load_config(path, {"HOME": "/home/u"})
    assert _effective(from_file, key) == (file_value, f"file:{key}")
    from_env = load_config(path, {"HOME": "/home/u", var: env_text})
    assert _effective(from_env, key) == (env_value, f"env:{var}")
    default = load_config(tmp_path / "absent.json", {"HOME": "/home/u"})
    assert _effective(default, key)[1] == "default"


def test_typesense_api_key_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"selfheal": {"backups": {"typesense": {"apiKey": "file-key"}}}}))
    loaded = load_config(path, {"HOME": "/h", "TYPESENSE_API_KEY": "env-key"})
    assert loaded.settings.backups.typesense.api_key == "env-key"
    assert loaded.sources["selfheal.backups.typesense.apiKey"] == "env:TYPESENSE_API_KEY"
    loaded = load_config(path, {"HOME": "/h"})
    assert loaded.settings.backups.typesense.api_key == "file-key"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False), ("off", False)],
)
def test_env_booleans(tmp_path: Path, text: str, expected: bool) -> None:
    loaded = load_config(tmp_path / "absent.json", {"HOME": "/h", "NAS_BACKUP_PREFER_REMOTE": text})
    assert loaded.settings.nas.prefer_remote is expected


def test_home_from_env_expands_tilde_and_relative_paths_follow_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    path = folder / "c.json"
    path.write_text(
        json.dumps({"selfheal": {"stateDir": "./var/state", "nas": {"spoolDir": "../q"}}})
    )
    loaded = load_config(path, {"HOME": "/home/other"})
    assert loaded.settings.state_dir == folder / "var" / "state"
    assert loaded.settings.nas.spool_dir == tmp_path / "q"
    assert loaded.settings.control_socket == Path("/home/other/.joelclaw/selfheal.sock")
