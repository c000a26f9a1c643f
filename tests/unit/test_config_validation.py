"""Every validation rule rejects a bad value with a message naming the key and the rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfheal.config import load_config
from selfheal.errors import ConfigError

HOME = {"HOME": "/home/u"}


def problems(tmp_path: Path, data: Any, env: dict[str, str] | None = None) -> str:
    """Load `data` as the config file; it must fail; return the error text."""
    path = tmp_path / "system-bus.config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {**HOME, **(env or {})})
    return str(caught.value)


def ours(**section: Any) -> dict[str, Any]:
    return {"selfheal": section}


# (file section, key, lowest valid, highest valid)
BOUNDS = [
    ("backupFailureRouter", "maxRetries", 0, 100),
    ("backupFailureRouter", "sleepMinMs", 1, 604800000),
    ("backupFailureRouter", "sleepMaxMs", 1, 604800000),
    ("backupFailureRouter", "sleepStepMs", 0, 86400000),
    ("backupTransport", "nasMaxAttempts", 1, 1000),
    ("backupTransport", "nasRetryBaseMs", 1, 3600000),
    ("backupTransport", "nasRetryMaxMs", 1, 86400000),
]


@pytest.mark.parametrize(("section", "key", "low", "high"), BOUNDS)
def test_integer_bounds(tmp_path: Path, section: str, key: str, low: int, high: int) -> None:
    below = problems(tmp_path, {section: {key: low - 1}})
    assert f"{section}.{key} = {low - 1}: must be >= {low}" in below
    above = problems(tmp_path, {section: {key: high + 1}})
    assert f"{section}.{key} = {high + 1}: must be <= {high}" in above


@pytest.mark.parametrize(("section", "key", "low", "high"), BOUNDS)
def test_bounds_are_inclusive(tmp_path: Path, section: str, key: str, low: int, high: int) -> None:
    # Keep min <= max pairs consistent while probing the edges.
    partner = {"sleepMinMs": "sleepMaxMs", "nasRetryBaseMs": "nasRetryMaxMs"}
    for value in (low, high):
        data: dict[str, Any] = {key: value}
        if key in partner:
            data[partner[key]] = max(value, 1)
        elif key in partner.values():
            data[next(k for k, v in partner.items() if v == key)] = 1
        path = tmp_path / "edge.json"
        path.write_text(json.dumps({section: data}))
        load_config(path, HOME)


@pytest.mark.parametrize("value", [0, -1, 168.5, 1000])
def test_recovery_window_bounds(tmp_path: Path, value: float) -> None:
    text = problems(tmp_path, {"backupTransport": {"nasRecoveryWindowHours": value}})
    assert "backupTransport.nasRecoveryWindowHours" in text


@pytest.mark.parametrize("value", [0.25, 168, 4])
def test_recovery_window_accepts_int_and_float(tmp_path: Path, value: float) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"backupTransport": {"nasRecoveryWindowHours": value}}))
    assert load_config(path, HOME).settings.transport.recovery_window_hours == value


@pytest.mark.parametrize("value", ["5", 5.5, 5.0, True, None, [5], {"v": 5}])
def test_integers_are_strict(tmp_path: Path, value: Any) -> None:
    text = problems(tmp_path, {"backupFailureRouter": {"maxRetries": value}})
    assert "backupFailureRouter.maxRetries" in text
    assert "must be an integer" in text


@pytest.mark.parametrize("value", [True, "4", None])
def test_bool_and_string_are_not_numbers(tmp_path: Path, value: Any) -> None:
    text = problems(tmp_path, {"selfHealing": {"transport": {"recoveryWindowHours": value}}})
    assert "selfHealing.transport.recoveryWindowHours" in text
    assert "must be a number" in text


def test_bool_keys_are_strict(tmp_path: Path) -> None:
    text = problems(tmp_path, ours(nas={"preferRemote": 1}))
    assert "selfheal.nas.preferRemote = 1: must be true or false" in text


@pytest.mark.parametrize(
    ("data", "low", "high"),
    [
        (
            {
                "backupFailureRouter": {"sleepMinMs": 9000},
                "selfHealing": {"router": {"sleepMaxMs": 10}},
            },
            "router.sleepMinMs = 9000 (from file:backupFailureRouter.sleepMinMs)",
            "router.sleepMaxMs = 10 (from file:selfHealing.router.sleepMaxMs)",
        ),
        (
            {"backupTransport": {"nasRetryBaseMs": 200000}},
            "transport.nasRetryBaseMs = 200000 (from file:backupTransport.nasRetryBaseMs)",
            "transport.nasRetryMaxMs = 120000 (from default)",
        ),
    ],
)
def test_min_not_above_max_names_both_keys_and_sources(
    tmp_path: Path, data: dict[str, Any], low: str, high: str
) -> None:
    text = problems(tmp_path, data)
    assert f"{low} must be <= {high}" in text


def test_min_max_checked_on_effective_values_from_env(tmp_path: Path) -> None:
    env = {"SELF_HEALING_ROUTER_SLEEP_MAX_MS": "100"}
    text = problems(tmp_path, {"backupFailureRouter": {"sleepMinMs": 200}}, env)
    assert "(from env:SELF_HEALING_ROUTER_SLEEP_MAX_MS)" in text
    assert "backupFailureRouter.sleepMinMs" in text


def test_equal_min_and_max_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"backupFailureRouter": {"sleepMinMs": 5, "sleepMaxMs": 5}}))
    assert load_config(path, HOME).settings.router.sleep_max_ms == 5


@pytest.mark.parametrize("value", ["var/nas", "nas", "~nas/x", "", ".hidden/x"])
def test_paths_must_be_absolute_home_or_dot_relative(tmp_path: Path, value: str) -> None:
    text = problems(tmp_path, {"backupTransport": {"nasHddRoot": value}})
    assert "backupTransport.nasHddRoot" in text
    assert "absolute" in text and "'~/'" in text and "'./'" in text


def test_path_in_our_section_and_in_lists(tmp_path: Path) -> None:
    worker = {"name": "w", "logFiles": ["/ok.log", "relative.log"]}
    text = problems(tmp_path, ours(stateDir="state", watchdog={"workers": [worker]}))
    assert "selfheal.stateDir" in text
    assert "selfheal.watchdog.workers[0].logFiles[1]" in text


def test_socket_path_must_fit_a_unix_socket(tmp_path: Path) -> None:
    text = problems(tmp_path, ours(controlSocket="/" + "s" * 120 + ".sock"))
    assert "selfheal.controlSocket" in text and "<= 100" in text


def test_socket_default_too_long_for_a_long_home(tmp_path: Path) -> None:
    text = problems(tmp_path, {}, {"HOME": "/" + "h" * 100})
    assert "selfheal.controlSocket (default)" in text


@pytest.mark.parametrize(
    "host", ["joel@three body", "three-body;rm -rf /", "-oProxyCommand=x", "a@b@c", "$(id)", ""]
)
def test_ssh_host_shape(tmp_path: Path, host: str) -> None:
    text = problems(tmp_path, {"backupTransport": {"nasSshHost": host}})
    assert "backupTransport.nasSshHost" in text and "[user@]host" in text


@pytest.mark.parametrize("flags", ["-o StrictHostKeyChecking=no", "-v", "-o BatchMode=yes x"])
def test_ssh_flags_outside_the_allowlist(tmp_path: Path, flags: str) -> None:
    text = problems(tmp_path, {"backupTransport": {"nasSshFlags": flags}})
    assert "backupTransport.nasSshFlags" in text


def test_ssh_flags_from_env_name_the_variable(tmp_path: Path) -> None:
    env = {"NAS_SSH_FLAGS": "-o StrictHostKeyChecking=no"}
    text = problems(tmp_path, {}, env)
    assert "NAS_SSH_FLAGS (for transport.nasSshFlags)" in text
    assert "StrictHostKeyChecking" in text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"backupFailureRouter": {"maxRetrys": 1}},
            "backupFailureRouter.maxRetrys: unknown key; did you mean 'maxRetries'?",
        ),
        ({"selfHealing": {"routr": {}}}, "selfHealing.routr: unknown key; did you mean 'router'?"),
        (
            {"selfHealing": {"router": {"sleepMin": 1}}},
            "selfHealing.router.sleepMin: unknown key; did you mean 'sleepMinMs'?",
        ),
        ({"selfHealing": {"transport": {"sshHosts": "a"}}}, "did you mean 'sshHost'?"),
        ({"backupTransport": {"nasSshFlag": ""}}, "did you mean 'nasSshFlags'?"),
        (
            ours(stateDirectory="/x"),
            "selfheal.stateDirectory: unknown key; did you mean 'stateDir'?",
        ),
        (
            ours(redis={"namespce": "x"}),
            "selfheal.redis.namespce: unknown key; did you mean 'namespace'?",
        ),
        (ours(backups={"typesense": {"retention": {"keep_last": 1}}}), "did you mean 'keepLast'?"),
        (
            ours(watchdog={"workers": [{"name": "w", "sdkURL": "http://a"}]}),
            "selfheal.watchdog.workers[0].sdkURL: unknown key; did you mean 'sdkUrl'?",
        ),
        (ours(router={"maxRetries": 1}), "selfheal.router: unknown key"),
        (ours(zzz=1), "selfheal.zzz: unknown key"),
    ],
)
def test_unknown_keys_with_hints(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert expected in problems(tmp_path, data)


def test_far_unknown_key_has_no_hint(tmp_path: Path) -> None:
    text = problems(tmp_path, ours(qqqqqq=1))
    assert "selfheal.qqqqqq: unknown key" in text and "did you mean" not in text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"backupFailureRouter": 5}, "backupFailureRouter: must be an object, got a number"),
        ({"selfHealing": "x"}, "selfHealing: must be an object, got a string"),
        (
            {"selfHealing": {"transport": []}},
            "selfHealing.transport: must be an object, got an array",
        ),
        ({"selfheal": None}, "selfheal: must be an object, got null"),
        (ours(redis=[]), "selfheal.redis: must be an object, got an array"),
        (
            ours(backups={"redis": {"retention": 7}}),
            "selfheal.backups.redis.retention: must be an object",
        ),
    ],
)
def test_non_object_sections(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert expected in problems(tmp_path, data)


def test_foreign_top_level_section_of_any_type_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"someoneElse": 5, "another": [1]}))
    assert load_config(path, HOME).raw == {"someoneElse": 5, "another": [1]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{\n  "a": 1,\n  "b": }', "invalid JSON at line 3, column 8"),
        ("", "invalid JSON at line 1, column 1"),
        ("[1, 2]", "top level must be a JSON object"),
        ('"text"', "top level must be a JSON object"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"backupFailureRouter": {"maxRetries": NaN}}', "NaN is not valid JSON"),
    ],
)
def test_bad_json(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(tmp_path, text)


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the config path is a directory, not a regular file"):
        load_config(tmp_path, HOME)


def test_null_is_not_a_silent_default(tmp_path: Path) -> None:
    text = problems(tmp_path, {"backupFailureRouter": {"model": None}})
    assert "backupFailureRouter.model = null: must be a string" in text


def test_shadowed_values_are_validated_too(tmp_path: Path) -> None:
    data = {
        "backupFailureRouter": {"maxRetries": 3},
        "selfHealing": {"router": {"maxRetries": "x"}},
    }
    assert "selfHealing.router.maxRetries" in problems(tmp_path, data)
    env = {"BACKUP_ROUTER_MAX_RETRIES": "2", "SELF_HEALING_ROUTER_MAX_RETRIES": "two"}
    assert "SELF_HEALING_ROUTER_MAX_RETRIES" in problems(tmp_path, {}, env)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("BACKUP_ROUTER_MAX_RETRIES", "+5"),
        ("BACKUP_ROUTER_MAX_RETRIES", "5.0"),
        ("BACKUP_ROUTER_MAX_RETRIES", " 5"),
        ("NAS_BACKUP_MAX_ATTEMPTS", "1e3"),
        ("NAS_BACKUP_RECOVERY_WINDOW_HOURS", "four"),
        ("NAS_BACKUP_PREFER_REMOTE", "maybe"),
        ("TYPESENSE_SNAPSHOT_RETENTION_COUNT", "-1"),
    ],
)
def test_env_values_are_parsed_strictly(tmp_path: Path, var: str, value: str) -> None:
    text = problems(tmp_path, {}, {var: value})
    assert f"{var} (for " in text and json.dumps(value) in text


def test_env_value_out_of_bounds_names_the_variable(tmp_path: Path) -> None:
    text = problems(tmp_path, {}, {"NAS_BACKUP_MAX_ATTEMPTS": "0"})
    assert 'NAS_BACKUP_MAX_ATTEMPTS (for transport.nasMaxAttempts) = "0": must be >= 1' in text


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    data = {
        "backupFailureRouter": {"maxRetries": -1, "bogus": 1},
        "backupTransport": {"nasSshHost": "a b"},
        "selfheal": {"drainTimeoutSeconds": 0, "redis": {"namespace": "bad space"}},
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        load_config(path, HOME)
    keys = [
        "backupFailureRouter.maxRetries",
        "backupFailureRouter.bogus",
        "backupTransport.nasSshHost",
        "selfheal.drainTimeoutSeconds",
        "selfheal.redis.namespace",
    ]
    for key in keys:
        assert any(key in problem for problem in caught.value.problems), key
    assert caught.value.path == str(path)


def test_turning_off_both_transports_is_refused(tmp_path: Path) -> None:
    text = problems(tmp_path, ours(nas={"useMount": False}), {"SELFHEAL_NAS_USE_SSH": "0"})
    assert "selfheal.nas.useMount = false (from file:selfheal.nas.useMount)" in text
    assert (
        "selfheal.nas.useSsh = false (from env:SELFHEAL_NAS_USE_SSH): "
        "at least one transport must be on"
    ) in text
