"""`selfheal nas config show|init` and client errors, through the real CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from click.testing import CliRunner

from selfheal.cli import cli


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    env.update({"HOME": str(home)}, **extra)
    return env


def _config_file(home: Path) -> Path:
    return home / ".joelclaw" / "system-bus.config.json"


def test_show_lists_values_with_sources(short_home: Path) -> None:
    cfg = _config_file(short_home)
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        json.dumps(
            {
                "selfHealing": {"router": {"maxRetries": 3}},
                "backupFailureRouter": {"sleepMinMs": 1000},
                "selfheal": {"backups": {"typesense": {"apiKey": "ts-secret-value-123"}}},
            }
        )
    )
    env = _env(short_home, BACKUP_ROUTER_SLEEP_STEP_MS="777")
    result = CliRunner().invoke(cli, ["nas", "config", "show", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_key = {i["key"]: i for i in data["items"]}
    assert by_key["router.maxRetries"] == {
        **by_key["router.maxRetries"],
        "value": 3,
        "source": "file:selfHealing.router.maxRetries",
    }
    assert by_key["router.sleepMinMs"]["source"] == "file:backupFailureRouter.sleepMinMs"
    assert by_key["router.sleepStepMs"]["value"] == 777
    assert by_key["router.sleepStepMs"]["source"] == "env:BACKUP_ROUTER_SLEEP_STEP_MS"
    assert "router.sleepMaxMs" not in by_key, "defaults only with --effective"
    assert "ts-secret-value-123" not in result.output

    assert by_key["router.maxRetries"]["writtenAs"] == "selfHealing.router.maxRetries"
    assert by_key["router.sleepStepMs"]["writtenAs"] == "BACKUP_ROUTER_SLEEP_STEP_MS"

    effective = CliRunner().invoke(cli, ["nas", "config", "show", "--effective"], env=env)
    assert effective.exit_code == 0, effective.output
    listed = effective.output.split("\n\n")[0].splitlines()[2:]  # the table, not the notes
    rows = {line.split()[0]: line.split()[1:] for line in listed}
    # Keys as they are written; a default shows where to set it.
    assert rows["backupFailureRouter.sleepMaxMs"] == ["default", "14400000"]
    assert rows["selfHealing.router.maxRetries"] == ["file", "3"]
    assert rows["BACKUP_ROUTER_SLEEP_STEP_MS"] == ["env", "777"]
    assert "BACKUP_ROUTER_SLEEP_STEP_MS sets backupFailureRouter.sleepStepMs" in effective.output
    assert "ts-secret-value-123" not in effective.output

    # A value a stronger source shadows is listed, marked, and explained.
    cfg.write_text(
        json.dumps(
            {
                "selfHealing": {"router": {"maxRetries": 3}},
                "backupFailureRouter": {"maxRetries": 4},
            }
        )
    )
    shadowed = CliRunner().invoke(cli, ["nas", "config", "show"], env=_env(short_home))
    assert shadowed.exit_code == 0, shadowed.output
    lines = shadowed.output.splitlines()
    assert ["backupFailureRouter.maxRetries", "file", "4"] in [line.split() for line in lines]
    assert ["selfHealing.router.maxRetries", "IGNORED", "3"] in [line.split() for line in lines]
    assert (
        "selfHealing.router.maxRetries is ignored: backupFailureRouter.maxRetries overrides it"
        in lines
    )
    data = json.loads(
        CliRunner().invoke(cli, ["nas", "config", "show", "--json"], env=_env(short_home)).output
    )
    [item] = [i for i in data["items"] if i["key"] == "router.maxRetries"]
    assert item["overridden"] == [{"source": "file:selfHealing.router.maxRetries", "value": 3}]


def test_show_with_invalid_config_exits_2_naming_the_key(short_home: Path) -> None:
    cfg = _config_file(short_home)
    cfg.parent.mkdir(parents=True)
    cfg.write_text(json.dumps({"backupTransport": {"nasMaxAttempt": 3}}))
    result = CliRunner().invoke(cli, ["nas", "config", "show"], env=_env(short_home))
    assert result.exit_code == 2
    assert "backupTransport.nasMaxAttempt" in result.output
    assert "nasMaxAttempts" in result.output  # the did-you-mean hint


def test_init_writes_a_loadable_template_and_refuses_to_overwrite(short_home: Path) -> None:
    env = _env(short_home)
    runner = CliRunner()
    result = runner.invoke(cli, ["nas", "config", "init"], env=env)
    assert result.exit_code == 0, result.output
    cfg = _config_file(short_home)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    written = json.loads(cfg.read_text())
    assert set(written) == {"backupFailureRouter", "backupTransport", "selfheal"}
    # Each setting is written once, so an edit to any key in the file takes effect.
    for line in runner.invoke(cli, ["nas", "config", "show"], env=env).output.splitlines()[2:]:
        assert line.split()[1] == "file", line

    again = runner.invoke(cli, ["nas", "config", "init"], env=env)
    assert again.exit_code == 2
    assert "--force" in again.output

    written["otherProgram"] = {"keep": [1, 2, 3]}
    written["backupFailureRouter"]["maxRetries"] = 9
    written["selfHealing"] = {"router": {"maxRetries": 7}}  # an older layout's section
    cfg.write_text(json.dumps(written))
    forced = runner.invoke(cli, ["nas", "config", "init", "--force", "--json"], env=env)
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.output)["replacedOurSections"] is True
    after = json.loads(cfg.read_text())
    assert after["otherProgram"] == {"keep": [1, 2, 3]}, "foreign sections kept"
    assert after["backupFailureRouter"]["maxRetries"] == 5, "our sections rewritten"
    assert "selfHealing" not in after, "a section the template would shadow is dropped"


def test_config_option_and_env_choose_the_file(short_home: Path) -> None:
    other = short_home / "elsewhere.json"
    other.write_text(json.dumps({"backupFailureRouter": {"maxRetries": 2}}))
    runner = CliRunner()
    by_option = runner.invoke(
        cli, ["--config", str(other), "nas", "config", "show", "--json"], env=_env(short_home)
    )
    by_env = runner.invoke(
        cli, ["nas", "config", "show", "--json"], env=_env(short_home, SELFHEAL_CONFIG=str(other))
    )
    for result in (by_option, by_env):
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["path"] == str(other)
        assert {i["key"]: i["value"] for i in data["items"]}["router.maxRetries"] == 2


def test_status_without_daemon_exits_3(short_home: Path) -> None:
    result = CliRunner().invoke(cli, ["status"], env=_env(short_home))
    assert result.exit_code == 3
    assert "selfheal run" in result.output


def test_bad_cli_arguments_are_usage_errors(short_home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["nas", "config", "show", "--bogus"], env=_env(short_home))
    assert result.exit_code == 2
    assert "--bogus" in result.output
    result = runner.invoke(cli, ["no-such-command"], env=_env(short_home))
    assert result.exit_code == 2


def test_nas_mark_writes_the_marker_the_mount_transport_reads(short_home: Path) -> None:
    from selfheal.backup.transports.mount import read_marker

    folder = short_home / "nas"
    folder.mkdir()
    result = CliRunner().invoke(
        cli, ["nas", "mark", str(folder), "--id", "three-body", "--json"], env=_env(short_home)
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["nasId"] == "three-body" and data["mountPoint"] is False
    assert read_marker(folder) == "three-body"
    missing = CliRunner().invoke(
        cli, ["nas", "mark", str(short_home / "nope")], env=_env(short_home)
    )
    assert missing.exit_code == 2 and "not a folder" in missing.output
