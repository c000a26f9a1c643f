"""Secret values never reach config show, public_dict or error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfheal.config import load_config
from selfheal.config.leaves import secret_values
from selfheal.errors import ConfigError
from selfheal.redact import redact_text, registered_secrets

SECRETS = {
    "typesense": "ts-file-Zq81",
    "typesense_env": "ts-env-Kp22",
    "advisor": "sk-adv-Mx93",
    "ntfy": "ntfy-tok-Lr47",
    "telegram": "123456:tg-Bt55",
    "header": "hdr-Vw66",
    "webhook": "https://hooks.example/T000/B000/wh-path-Yy77",
    "bus_password": "bus-pw-Qq11",
    "source_password": "src-pw-Jj88",
    "endpoint_key": "ep-key-Hh31",
    "ntfy_auth": "ntfy-auth-Uu52",
    "ntfy_user_password": "ntfy-pw-Cc64",
    "sdk_query": "sdk-sig-Ff09",
}


def _config(tmp_path: Path) -> Path:
    data = {
        "selfheal": {
            "redis": {"url": f"redis://user:{SECRETS['bus_password']}@redis.lan:6379/0"},
            "backups": {
                "typesense": {"apiKey": SECRETS["typesense"]},
                "redis": {"source": f"redis://:{SECRETS['source_password']}@other:6379"},
            },
            "advisor": {
                "apiKey": SECRETS["advisor"],
                "endpoint": f"https://llm.example/v1?api_key={SECRETS['endpoint_key']}&v=2",
            },
            "watchdog": {
                "workers": [
                    {
                        "name": "w",
                        "sdkUrl": f"http://127.0.0.1:3111/api/inngest?sig={SECRETS['sdk_query']}",
                    }
                ]
            },
            "notifiers": {
                "ntfy": {
                    "url": f"https://me:{SECRETS['ntfy_user_password']}@ntfy.example/"
                    f"?auth={SECRETS['ntfy_auth']}",
                    "topic": "t",
                    "token": SECRETS["ntfy"],
                },
                "telegram": {"botToken": SECRETS["telegram"], "chatId": "42"},
                "webhook": {"url": SECRETS["webhook"], "headers": {"X-Key": SECRETS["header"]}},
            },
        }
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    return path


def _assert_hidden(text: str) -> None:
    for name, secret in SECRETS.items():
        assert secret not in text, name


def test_public_dict_and_items_redact_file_and_env_secrets(tmp_path: Path) -> None:
    env = {"HOME": "/h", "TYPESENSE_API_KEY": SECRETS["typesense_env"]}
    loaded = load_config(_config(tmp_path), env)
    # The settings themselves carry the real values for the daemon to use.
    assert loaded.settings.backups.typesense.api_key == SECRETS["typesense_env"]
    assert loaded.settings.advisor.api_key == SECRETS["advisor"]
    items = [vars(item) for item in loaded.effective_items()]
    _assert_hidden(json.dumps(items, default=str))
    _assert_hidden(json.dumps(loaded.public_dict()))
    public = loaded.public_dict()["selfheal"]
    assert public["redis"]["url"] == "redis://user:***@redis.lan:6379/0"
    assert public["notifiers"]["webhook"]["headers"] == {"X-Key": "***"}
    assert public["advisor"]["apiKey"] == "***"
    # URL settings that are not secret as a whole: where they point stays visible.
    assert public["advisor"]["endpoint"] == "https://llm.example/v1?api_key=***&v=***"
    assert public["notifiers"]["ntfy"]["url"] == "https://me:***@ntfy.example/?auth=***"
    [worker] = public["watchdog"]["workers"]
    assert worker["sdkUrl"] == "http://127.0.0.1:3111/api/inngest?sig=***"
    assert worker["name"] == "w"
    secret_keys = {item.key for item in loaded.effective_items() if item.secret}
    assert "selfheal.backups.typesense.apiKey" in secret_keys
    assert "selfheal.notifiers.telegram.botToken" in secret_keys


def test_loading_registers_every_secret_for_the_redactor(tmp_path: Path) -> None:
    env = {"HOME": "/h", "TYPESENSE_API_KEY": SECRETS["typesense_env"]}
    loaded = load_config(_config(tmp_path), env)
    expected = set(SECRETS.values()) - {SECRETS["typesense"]}  # the env var wins over the file
    assert expected <= secret_values(loaded.settings)
    assert expected <= registered_secrets()
    for name, secret in SECRETS.items():
        if secret in expected:
            assert redact_text(f"<{secret}>") == "<***>", name
    # Ordinary values are not secrets: the redactor must not hide them.
    assert not {"2", "w", "t", "42", "https://ntfy.sh", "redis.lan"} & registered_secrets()


def test_defaults_register_nothing(tmp_path: Path) -> None:
    load_config(tmp_path / "absent.json", {"HOME": "/h"})
    assert registered_secrets() == frozenset()


def test_unset_secrets_show_as_null(tmp_path: Path) -> None:
    loaded = load_config(tmp_path / "absent.json", {"HOME": "/h"})
    assert loaded.public_dict()["selfheal"]["advisor"]["apiKey"] is None


@pytest.mark.parametrize(
    ("section", "env", "secret"),
    [
        ({"advisor": {"apiKey": 5}}, {}, None),
        ({"advisor": {"apiKey": "x" * 5000 + SECRETS["advisor"]}}, {}, SECRETS["advisor"]),
        (
            {},
            {"TYPESENSE_API_KEY": "k" * 5000 + SECRETS["typesense_env"]},
            SECRETS["typesense_env"],
        ),
        ({"redis": {"url": f"redis://:{SECRETS['bus_password']}@"}}, {}, SECRETS["bus_password"]),
        ({"redis": {"url": f"mysql://:{SECRETS['bus_password']}@h"}}, {}, SECRETS["bus_password"]),
        (
            {"redis": {"url": f"redis://:{SECRETS['bus_password']}@a:1,b:2"}},
            {},
            SECRETS["bus_password"],
        ),
        ({"notifiers": {"webhook": {"url": "ftp://" + SECRETS["header"]}}}, {}, SECRETS["header"]),
        ({"notifiers": {"webhook": {"headers": {"X": ""}}}}, {}, None),
        ({"notifiers": {"ntfy": {"token": SECRETS["ntfy"]}}}, {}, SECRETS["ntfy"]),
        # Not a secret key, but an invalid URL's query value is still hidden.
        (
            {"advisor": {"endpoint": f"ftp://llm.example/?api_key={SECRETS['endpoint_key']}"}},
            {},
            SECRETS["endpoint_key"],
        ),
    ],
)
def test_errors_about_secret_keys_do_not_echo_them(
    tmp_path: Path, section: dict[str, Any], env: dict[str, str], secret: str | None
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"selfheal": section}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"HOME": "/h", **env})
    text = str(caught.value)
    assert "selfheal." in text or "TYPESENSE_API_KEY" in text
    if secret is not None:
        assert secret not in text


@pytest.mark.parametrize(
    ("variable", "section", "path"),
    [
        (
            "SELFHEAL_NTFY_TOKEN",
            {"notifiers": {"ntfy": {"url": "https://ntfy.sh", "topic": "nas"}}},
            ("notifiers", "ntfy", "token"),
        ),
        (
            "SELFHEAL_TELEGRAM_BOT_TOKEN",
            {"notifiers": {"telegram": {"chatId": "@my_channel"}}},
            ("notifiers", "telegram", "bot_token"),
        ),
        ("SELFHEAL_ADVISOR_API_KEY", {}, ("advisor", "api_key")),
        ("INNGEST_SIGNING_KEY", {}, ("watchdog", "inngest_signing_key")),
    ],
)
def test_secrets_can_come_from_the_environment_and_stay_secret(
    tmp_path: Path, variable: str, section: dict[str, Any], path: tuple[str, ...]
) -> None:
    value = "env-secret-" + variable.lower()
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"selfheal": section}))
    loaded = load_config(file, {"HOME": str(tmp_path), variable: value})
    found: Any = loaded.settings
    for part in path:
        found = getattr(found, part)
    assert found == value
    assert value in registered_secrets() and value not in redact_text(f"x {value} y")
    shown = {i.key: i for i in loaded.effective_items()}
    [item] = [i for i in shown.values() if variable in i.env_vars]
    assert item.source.startswith("env") and value not in str(item.value)
