"""Rules of selfheal's own section: schedules, URLs, Redis modes, notifiers, watchdog, advisor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfheal.config import LoadedConfig, load_config
from selfheal.errors import ConfigError

HOME = {"HOME": "/home/u"}


def load(
    tmp_path: Path, section: dict[str, Any], env: dict[str, str] | None = None
) -> LoadedConfig:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"selfheal": section}))
    return load_config(path, {**HOME, **(env or {})})


def problems(tmp_path: Path, section: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, section, env)
    return str(caught.value)


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ("TZ=Mars/Olympus 0 3 * * *", "unknown time zone 'Mars/Olympus'"),
        ("TZ=../etc 0 3 * * *", "unknown time zone"),
        ("0 3 * *", "needs 5 cron fields"),
        ("0 0 3 * * *", "needs 5 cron fields"),
        ("61 3 * * *", "invalid cron expression"),
        ("0 25 * * *", "invalid cron expression"),
        ("0 0 31 2 *", "invalid cron expression"),
        ("@daily", "needs 5 cron fields"),
        ("TZ=UTC", "needs 5 cron fields"),
    ],
)
def test_bad_schedules_name_key_and_reason(tmp_path: Path, schedule: str, reason: str) -> None:
    text = problems(tmp_path, {"backups": {"redis": {"schedule": schedule}}})
    assert "selfheal.backups.redis.schedule" in text and reason in text


@pytest.mark.parametrize(
    "schedule", ["*/5 * * * *", "TZ=Europe/Berlin 15 2 * * 1-5", "TZ=UTC 0 0 1 * *", "0 3 * * *"]
)
def test_good_schedules(tmp_path: Path, schedule: str) -> None:
    loaded = load(tmp_path, {"backups": {"typesense": {"schedule": schedule}}})
    assert loaded.settings.backups.typesense.schedule == schedule


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("localhost:6379", "redis://"),
        ("http://h:6379", "redis://"),
        ("redis://", "empty host"),
        ("redis://h:99999", "invalid port"),
        ("unix://relative.sock", "absolute socket path"),
        ("redis://h1:1,h2:2", "only allowed with selfheal.redis.sentinelMaster"),
        ("redis://h:1/db", "database after the host must be a number"),
    ],
)
def test_redis_url_rules(tmp_path: Path, url: str, reason: str) -> None:
    text = problems(tmp_path, {"redis": {"url": url}})
    assert "selfheal.redis.url" in text and reason in text


def test_redis_url_from_env_names_the_variable(tmp_path: Path) -> None:
    text = problems(tmp_path, {}, {"SELFHEAL_REDIS_URL": "mysql://x"})
    assert "SELFHEAL_REDIS_URL (for selfheal.redis.url)" in text


def test_sentinel_and_cluster_modes(tmp_path: Path) -> None:
    ok = load(
        tmp_path, {"redis": {"url": "redis://:pw@s1:26379,s2:26379/0", "sentinelMaster": "m"}}
    )
    assert ok.settings.redis.sentinel_master == "m"
    text = problems(tmp_path, {"redis": {"url": "redis://s1,s2:1", "sentinelMaster": "m"}})
    assert "sentinel node 's1' must be host:port" in text
    text = problems(
        tmp_path, {"redis": {"url": "redis://h:1", "sentinelMaster": "m", "cluster": True}}
    )
    assert "selfheal.redis.sentinelMaster and selfheal.redis.cluster" in text
    text = problems(tmp_path, {"redis": {"cluster": True}})
    assert "selfheal.redis.url" in text and "selfheal.redis.cluster needs a redis://" in text


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"redis": {"namespace": "has space"}}, "selfheal.redis.namespace"),
        ({"redis": {"namespace": "x" * 65}}, "selfheal.redis.namespace"),
        ({"redis": {"connectTimeoutSeconds": 0}}, "selfheal.redis.connectTimeoutSeconds"),
        ({"drainTimeoutSeconds": 601}, "selfheal.drainTimeoutSeconds"),
        ({"drainTimeoutSeconds": 0.05}, "selfheal.drainTimeoutSeconds"),
        ({"telemetry": {"spanFileMaxBytes": 4095}}, "selfheal.telemetry.spanFileMaxBytes"),
        ({"telemetry": {"spanFileBackups": 101}}, "selfheal.telemetry.spanFileBackups"),
        ({"telemetry": {"spanFile": "spans.jsonl"}}, "selfheal.telemetry.spanFile"),
        ({"nas": {"remoteRoot": "volume1/backups"}}, "selfheal.nas.remoteRoot"),
        ({"nas": {"remoteRoot": "/volume1/../etc"}}, "selfheal.nas.remoteRoot"),
        (
            {"backups": {"typesense": {"compression": "brotli"}}},
            "selfheal.backups.typesense.compression",
        ),
        ({"backups": {"typesense": {"url": "localhost:8108"}}}, "selfheal.backups.typesense.url"),
        (
            {"backups": {"typesense": {"url": "http://local host"}}},
            "selfheal.backups.typesense.url",
        ),
        (
            {"backups": {"typesense": {"snapshotRetentionCount": 0}}},
            "selfheal.backups.typesense.snapshotRetentionCount",
        ),
        (
            {"backups": {"redis": {"retention": {"keepLast": 0}}}},
            "selfheal.backups.redis.retention.keepLast",
        ),
        (
            {"backups": {"redis": {"retention": {"monthly": 1001}}}},
            "selfheal.backups.redis.retention.monthly",
        ),
        ({"backups": {"redis": {"source": "mysql://h"}}}, "selfheal.backups.redis.source"),
        (
            {"backups": {"redis": {"bgsaveTimeoutSeconds": 0}}},
            "selfheal.backups.redis.bgsaveTimeoutSeconds",
        ),
        ({"backups": {"redis": {"enabled": "yes"}}}, "selfheal.backups.redis.enabled"),
        ({"notifiers": {"quietWindowMinutes": -1}}, "selfheal.notifiers.quietWindowMinutes"),
        (
            {"notifiers": {"telegram": {"apiBase": "ftp://x"}}},
            "selfheal.notifiers.telegram.apiBase",
        ),
        ({"advisor": {"timeoutMs": 99}}, "selfheal.advisor.timeoutMs"),
        ({"advisor": {"allowlist": []}}, "selfheal.advisor.allowlist"),
        ({"advisor": {"endpoint": "not a url"}}, "selfheal.advisor.endpoint"),
        (
            {"watchdog": {"workers": [{"name": "w", "failureThreshold": 0}]}},
            "selfheal.watchdog.workers[0].failureThreshold",
        ),
        (
            {"watchdog": {"workers": [{"sdkUrl": "http://h"}]}},
            "selfheal.watchdog.workers[0].name: is required",
        ),
    ],
)
def test_value_rules_name_the_key(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    assert key in problems(tmp_path, section)


def test_redis_backup_source_accepts_bus_and_urls(tmp_path: Path) -> None:
    for source in ("bus", "redis://:pw@h:6379/2", "unix:///tmp/r.sock"):
        assert load(tmp_path, {"backups": {"redis": {"source": source}}}).settings.backups.redis
    text = problems(tmp_path, {"backups": {"redis": {"source": "redis://a:1,b:2"}}})
    assert "single host" in text


@pytest.mark.parametrize(
    ("notifiers", "expected"),
    [
        (
            {"ntfy": {"url": "https://ntfy.sh"}},
            "selfheal.notifiers.ntfy.topic: required when selfheal.notifiers.ntfy.url is set",
        ),
        (
            {"ntfy": {"topic": "alerts"}},
            "selfheal.notifiers.ntfy.url: required when selfheal.notifiers.ntfy.topic is set",
        ),
        ({"ntfy": {"token": "tk"}}, "selfheal.notifiers.ntfy.token: set"),
        ({"telegram": {"botToken": "1:abc"}}, "selfheal.notifiers.telegram.chatId: required"),
        ({"telegram": {"chatId": "-100"}}, "selfheal.notifiers.telegram.botToken: required"),
        ({"webhook": {"headers": {"X-Key": "v"}}}, "selfheal.notifiers.webhook.headers: set"),
    ],
)
def test_partial_notifier_setup(tmp_path: Path, notifiers: dict[str, Any], expected: str) -> None:
    assert expected in problems(tmp_path, {"notifiers": notifiers})


def test_complete_notifiers_load(tmp_path: Path) -> None:
    notifiers = {
        "ntfy": {"url": "https://ntfy.sh", "topic": "nas-alerts", "token": "tk"},
        "telegram": {"botToken": "1:abc", "chatId": "@alerts_channel"},
        "webhook": {"url": "https://hooks.example/x", "headers": {"X-Key": "v"}},
    }
    settings = load(tmp_path, {"notifiers": notifiers}).settings
    assert settings.notifiers.ntfy.topic == "nas-alerts"
    assert settings.notifiers.webhook.headers == {"X-Key": "v"}


def test_watchdog_worker_rules(tmp_path: Path) -> None:
    command = {"name": "w", "serviceManager": "command"}
    text = problems(tmp_path, {"watchdog": {"workers": [command]}})
    assert "selfheal.watchdog.workers[0]" in text and "restartCommand" in text
    launchd = {"name": "w", "restartCommand": ["x"]}
    text = problems(tmp_path, {"watchdog": {"workers": [launchd]}})
    assert "selfheal.watchdog.workers[0]" in text and "only used when" in text
    twins = [{"name": "w"}, {"name": "w"}]
    text = problems(tmp_path, {"watchdog": {"workers": twins}})
    assert "selfheal.watchdog.workers: worker name 'w' is used more than once" in text
    text = problems(tmp_path, {"watchdog": {"enabled": True, "workers": []}})
    assert "selfheal.watchdog.workers: must list at least one worker" in text


def test_watchdog_defaults_and_a_command_worker(tmp_path: Path) -> None:
    assert [w.name for w in load(tmp_path, {}).settings.watchdog.workers] == ["system-bus-worker"]
    worker = {"name": "w", "serviceManager": "command", "restartCommand": ["/bin/true", "-x"]}
    loaded = load(tmp_path, {"watchdog": {"workers": [worker]}})
    assert loaded.settings.watchdog.workers[0].restart_command == ["/bin/true", "-x"]
    assert loaded.settings.watchdog.workers[0].probe_interval_seconds == 30


def test_watchdog_enabled_loads_with_its_worker_keys(tmp_path: Path) -> None:
    worker = {
        "name": "w",
        "healthUrl": "http://127.0.0.1:9/health",
        "expectedProgram": "/opt/worker/bin/node",
        "logPatterns": ["ECONNREFUSED 127.0.0.1:3111"],
        "verifyTimeoutSeconds": 20,
    }
    settings = load(tmp_path, {"watchdog": {"enabled": True, "workers": [worker]}}).settings
    [loaded] = settings.watchdog.workers
    assert settings.watchdog.enabled and loaded.health_url == "http://127.0.0.1:9/health"
    assert str(loaded.expected_program) == "/opt/worker/bin/node"
    text = problems(tmp_path, {"watchdog": {"inngestUrl": "127.0.0.1:8288"}})
    assert "selfheal.watchdog.inngestUrl" in text
    text = problems(tmp_path, {"watchdog": {"workers": [{"name": "w", "logPatterns": ["x"]}]}})
    assert "selfheal.watchdog.workers[0].logPatterns[0]" in text


def test_each_target_copies_into_its_volumes_mount(tmp_path: Path) -> None:
    section = {"backups": {"typesense": {"volume": "nvme"}}}
    transport = {"NAS_HDD_ROOT": "/mnt/hdd", "NAS_NVME_ROOT": "/mnt/nvme"}
    settings = load(tmp_path, section, transport).settings
    assert settings.mount_root("typesense") == Path("/mnt/nvme")
    assert settings.mount_root("redis") == Path("/mnt/hdd")
    section["backups"]["redis"] = {"volume": "nvme", "mountRoot": "/mnt/other"}
    settings = load(tmp_path, section, transport).settings
    assert settings.mount_root("redis") == Path("/mnt/other"), "mountRoot wins over volume"


def test_advisor_enabled_needs_an_endpoint(tmp_path: Path) -> None:
    text = problems(tmp_path, {"advisor": {"enabled": True}})
    assert "selfheal.advisor.endpoint: required when selfheal.advisor.enabled = true" in text
    loaded = load(tmp_path, {"advisor": {"enabled": True, "endpoint": "https://llm.example/v1"}})
    assert loaded.settings.advisor.enabled


def test_advisor_model_must_be_allowlisted_even_when_disabled(tmp_path: Path) -> None:
    text = problems(tmp_path, {"advisor": {"model": "gpt-9"}})
    assert 'selfheal.advisor.model = "gpt-9" (from file:selfheal.advisor.model)' in text
    assert "'gpt-9' is not in selfheal.advisor.allowlist ['gpt-5.4'] (from default)" in text


def test_router_model_is_checked_when_the_advisor_has_none(tmp_path: Path) -> None:
    env = {"BACKUP_FAILURE_ROUTER_FALLBACK_MODEL": "o-mini"}
    text = problems(tmp_path, {}, env)
    assert "router.fallbackModel" in text and "env:BACKUP_FAILURE_ROUTER_FALLBACK_MODEL" in text
    assert "'o-mini'" in text


def test_allowlist_accepts_listed_models(tmp_path: Path) -> None:
    section = {"advisor": {"allowlist": ["gpt-5.4", "o-mini"], "fallbackModel": "o-mini"}}
    assert load(tmp_path, section).settings.advisor_models == ("gpt-5.4", "o-mini")
