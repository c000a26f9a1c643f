"""`init_config` writes the template atomically, 0600, and keeps other programs' sections."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from selfheal.config import default_config_path, init_config, load_config, render_template
from selfheal.errors import ConfigError

HOME = {"HOME": "/home/u"}


def test_writes_the_template_with_private_modes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "system-bus.config.json"
    init_config(path, force=False)
    assert json.loads(path.read_text()) == render_template()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert load_config(path, HOME).exists


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"mine": 1}')
    with pytest.raises(FileExistsError, match="--force"):
        init_config(path, force=False)
    assert path.read_text() == '{"mine": 1}'


def test_force_rewrites_ours_and_keeps_foreign_sections(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    foreign = {"otherTool": {"nested": [1, 2.5, None, {"deep": "x"}], "flag": True}, "list": [3]}
    original = {
        **foreign,
        "backupFailureRouter": {"maxRetries": 9},
        "selfheal": {"redis": {"namespace": "custom"}},
    }
    path.write_text(json.dumps(original))
    path.chmod(0o644)
    init_config(path, force=True)
    written = json.loads(path.read_text())
    template = render_template()
    for key, value in foreign.items():
        assert written[key] == value
    for key, value in template.items():
        assert written[key] == value
    assert list(written)[:2] == ["otherTool", "list"]  # existing order kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path, HOME).settings.router.max_retries == 5


def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    init_config(path, force=False)
    init_config(path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_force_refuses_an_unparsable_file_rather_than_lose_it(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="line 1"):
        init_config(path, force=True)
    assert path.read_text() == "{broken"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_writes_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "c.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "c.json"
    link.symlink_to(real)
    init_config(link, force=True)
    assert link.is_symlink()
    assert json.loads(real.read_text()) == render_template()


def test_default_config_path(tmp_path: Path) -> None:
    assert default_config_path({"HOME": "/home/u"}) == Path(
        "/home/u/.joelclaw/system-bus.config.json"
    )
    assert default_config_path({"HOME": "/h", "SELFHEAL_CONFIG": "/etc/s.json"}) == Path(
        "/etc/s.json"
    )
    assert default_config_path({"HOME": "/h", "SELFHEAL_CONFIG": "~/s.json"}) == Path("/h/s.json")
    assert default_config_path({"HOME": "/h", "SELFHEAL_CONFIG": ""}) == Path(
        "/h/.joelclaw/system-bus.config.json"
    )
