"""The committed example .md and .json match what the schema renders, and cover every key."""

from __future__ import annotations

import json
from pathlib import Path

from selfheal.config import load_config, render_template
from selfheal.config.docs import EXAMPLE_JSON, EXAMPLE_MD, main, rendered_files, stale_files
from selfheal.config.leaves import LEAVES
from selfheal.config.schema import Settings

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
HOME = {"HOME": "/home/u"}


def test_committed_examples_are_up_to_date() -> None:
    assert stale_files(CONFIG_DIR) == [], "run: python -m selfheal.config.docs --write"
    assert main(["--check", "--dir", str(CONFIG_DIR)]) == 0


def test_check_fails_on_drift_and_write_repairs_it(tmp_path: Path) -> None:
    assert main(["--check", "--dir", str(tmp_path)]) == 1
    assert main(["--write", "--dir", str(tmp_path)]) == 0
    assert main(["--check", "--dir", str(tmp_path)]) == 0
    md = tmp_path / EXAMPLE_MD
    md.write_text(md.read_text().replace("selfheal.redis.url", "selfheal.redis.uri"))
    assert stale_files(tmp_path) == [EXAMPLE_MD]
    assert main(["--check", "--dir", str(tmp_path)]) == 1


def test_every_effective_key_is_documented_with_its_env_vars() -> None:
    markdown = (CONFIG_DIR / EXAMPLE_MD).read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in markdown.splitlines()
        if line.startswith("| `")
    }
    for leaf in LEAVES:
        assert leaf.key in rows, leaf.key
        for var in leaf.env_vars:
            assert f"`{var}`" in rows[leaf.key], (leaf.key, var)
        meaning = rows[leaf.key].replace("`", "")
        assert leaf.description and leaf.description.split(" (")[0] in meaning


def test_intro_explains_precedence_paths_and_secrets() -> None:
    markdown = (CONFIG_DIR / EXAMPLE_MD).read_text()
    for heading in ("## Precedence", "## Paths", "## Secrets", "## Validation"):
        assert heading in markdown


def test_example_json_loads_to_exactly_the_defaults(tmp_path: Path) -> None:
    example = CONFIG_DIR / EXAMPLE_JSON
    assert json.loads(example.read_text()) == render_template()
    copy = tmp_path / "system-bus.config.json"
    copy.write_text(example.read_text())
    loaded = load_config(copy, HOME)
    defaults = load_config(tmp_path / "absent.json", HOME)
    assert loaded.settings == defaults.settings
    assert loaded.digest == defaults.digest
    assert [i.value for i in loaded.effective_items()] == [
        i.value for i in defaults.effective_items()
    ]


def test_template_has_every_section_and_every_key() -> None:
    template = render_template()
    # Each key once: the weaker selfHealing section would only be shadowed.
    assert set(template) == {"backupFailureRouter", "backupTransport", "selfheal"}
    assert len(template["backupFailureRouter"]) == 6
    assert len(template["backupTransport"]) == 8
    for leaf in LEAVES:
        if leaf.key.startswith("selfheal."):
            node = template["selfheal"]
            for part in leaf.aliases:
                node = node[part]
            assert node == leaf.default


def test_defaults_match_settings_constructed_in_code() -> None:
    assert load_config(Path("/nonexistent/c.json"), HOME).settings == Settings.model_validate(
        {}, context={"home": "/home/u"}
    )


def test_rendered_files_are_deterministic() -> None:
    assert rendered_files() == rendered_files()
