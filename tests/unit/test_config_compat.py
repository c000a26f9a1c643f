"""A file in the original's shape loads to the original's effective values, from the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfheal.config import load_config

SHARED = Path(__file__).resolve().parents[3] / "shared" / "compat"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "system-bus.config.original.json"
NAME = "system-bus.config.original.json"

# The original's table (ORIGINAL.md), keyed by our effective keys.
ORIGINAL_VALUES = {
    "router.model": "gpt-5.4",
    "router.fallbackModel": "gpt-5.4",
    "router.maxRetries": 5,
    "router.sleepMinMs": 300000,
    "router.sleepMaxMs": 14400000,
    "router.sleepStepMs": 30000,
    "transport.nasRecoveryWindowHours": 4,
    "transport.nasMaxAttempts": 12,
    "transport.nasRetryBaseMs": 10000,
    "transport.nasRetryMaxMs": 120000,
    "transport.nasSshHost": "joel@three-body",
    "transport.nasSshFlags": (
        "-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=2"
    ),
    "transport.nasHddRoot": "/Volumes/three-body",
    "transport.nasNvmeRoot": "/Volumes/nas-nvme",
}


def _compat_files() -> list[Path]:
    files = [FIXTURE]
    if (SHARED / NAME).is_file():
        files.append(SHARED / NAME)
    return files


def test_fixture_copy_matches_shared_original_when_present() -> None:
    if not (SHARED / NAME).is_file():
        pytest.skip("../shared is absent; the fixture copy stands in for it")
    shared = json.loads((SHARED / NAME).read_text())
    assert json.loads(FIXTURE.read_text()) == shared


@pytest.mark.parametrize("path", _compat_files(), ids=lambda p: str(p.parent.name))
def test_original_file_gives_original_values_from_backup_sections(path: Path) -> None:
    loaded = load_config(path, {"HOME": "/home/joel"})
    items = {item.key: item for item in loaded.effective_items()}
    for key, expected in ORIGINAL_VALUES.items():
        assert items[key].value == expected, key
        section = "backupFailureRouter" if key.startswith("router.") else "backupTransport"
        assert loaded.sources[key] == f"file:{section}.{key.split('.', 1)[1]}"
    assert loaded.exists is True
    assert loaded.raw == json.loads(path.read_text())


@pytest.mark.parametrize("path", _compat_files(), ids=lambda p: str(p.parent.name))
def test_selfhealing_section_alone_gives_the_same_values(path: Path, tmp_path: Path) -> None:
    data = json.loads(path.read_text())
    only_healing = tmp_path / "healing.json"
    only_healing.write_text(json.dumps({"selfHealing": data["selfHealing"]}))
    loaded = load_config(only_healing, {"HOME": "/home/joel"})
    items = {item.key: item for item in loaded.effective_items()}
    for key, expected in ORIGINAL_VALUES.items():
        assert items[key].value == expected, key
        assert loaded.sources[key].startswith("file:selfHealing."), key
    # The compat file mixes spellings: unprefixed retry keys, prefixed ssh keys.
    assert loaded.sources["transport.nasMaxAttempts"] == "file:selfHealing.transport.maxAttempts"
    assert loaded.sources["transport.nasSshHost"] == "file:selfHealing.transport.nasSshHost"


def test_settings_attributes_the_daemon_reads() -> None:
    settings = load_config(FIXTURE, {"HOME": "/home/joel"}).settings
    assert settings.router.max_retries == 5
    assert settings.router.sleep_min_ms == 300000
    assert settings.transport.recovery_window_hours == 4.0
    assert settings.transport.ssh_host == "joel@three-body"
    assert settings.transport.hdd_root == Path("/Volumes/three-body")
    assert settings.transport.ssh_options.connect_timeout == 10.0
    assert settings.state_dir == Path("/home/joel/.joelclaw/selfheal")
    assert settings.span_file_path == Path("/home/joel/.joelclaw/selfheal/telemetry/spans.jsonl")
    assert settings.spool_path == Path("/home/joel/.joelclaw/selfheal/spool")
    assert settings.mount_root("redis") == Path("/Volumes/three-body")
    assert settings.advisor_models == ("gpt-5.4", "gpt-5.4")


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    loaded = load_config(tmp_path / "absent.json", {"HOME": "/home/joel"})
    assert loaded.exists is False
    assert loaded.raw == {}
    assert set(loaded.sources.values()) == {"default"}
    items = {item.key: item.value for item in loaded.effective_items()}
    assert {key: items[key] for key in ORIGINAL_VALUES} == ORIGINAL_VALUES


def test_foreign_top_level_sections_are_kept_in_raw_and_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    data = {"otherTool": {"anything": [1, {"x": None}]}, "backupFailureRouter": {"maxRetries": 2}}
    path.write_text(json.dumps(data))
    loaded = load_config(path, {"HOME": "/home/joel"})
    assert loaded.raw == data
    assert loaded.settings.router.max_retries == 2
