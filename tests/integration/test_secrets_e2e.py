"""No configured secret leaves the real daemon: log, spans, status, config show, dead letters.

Every secret-bearing setting is configured with a distinctive value (the webhook's
query code by a reload); the daemon then sends one escalation to every notifier
(after one advisor call) and backs up its Redis (which wants a password). Each place
the daemon writes to is searched for every value, and shown to hold the data around
it, so the search cannot pass on an empty or missing source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from selfheal.backup.transports.mount import mark_nas
from selfheal.cli import cli
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.http import PlayedService, Posted, Reply, played_service
from tests.support.servers import RedisServer, wait_until

pytestmark = pytest.mark.slow

MASK = "***"
# Shapes the redaction patterns do not know (a ?code=, a header value, a password
# without "password=") next to ones they do (a bot token, ?api_key=).
SECRETS = {
    "webhook query code": "WHK-code-7Qx2pL9",
    "webhook header": "WHK-hdr-4Mv8sT1",
    "telegram bot token": "8151234567:TGsecret-Rk3Jd8Fq2Lm5Np7Vb9Xc1Zq4",
    "ntfy token": "tk-ntfy-secret-Hq6Wz3",
    "advisor api key": "sk-adv-secret-Pz5Tn8",
    "advisor endpoint query key": "adv-query-secret-Gm2Ry6",
    "redis password": "redis-pw-secret-Lc9Kv4",
    "typesense api key": "ts-env-secret-Bw7Xh3",
}
CODE = SECRETS["webhook query code"]
INCIDENT = "backup:redis:secrets-e2e"
ADVICE_REASON = f"NAS login keeps failing; the hook's code {CODE} may be revoked"


def chat_answer(content: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": json.dumps(content)}
    return {"id": "c1", "choices": [{"index": 0, "message": message}]}


def respond(posted: Posted) -> Reply:
    """Play the model, the Telegram Bot API, ntfy and the webhook on one server."""
    if posted.path.startswith("/v1/chat/completions"):
        # A model may quote what it was shown; only the registered value can hide this.
        advice = {"action": "escalate", "reason": ADVICE_REASON, "confidence": 0.9}
        return Reply(200, chat_answer(advice))
    if posted.path.endswith("/sendMessage"):
        return Reply(200, {"ok": True, "result": {"message_id": 1}})
    return Reply(204)


@pytest.fixture
def stand_in() -> Iterator[PlayedService]:
    with played_service(respond) as service:
        yield service


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=SECRETS["redis password"]).start()
    try:
        yield server
    finally:
        server.stop(kill=True)


def config(
    base: str, redis: RedisServer, nas: Path, known_hosts: Path, *, hook: str
) -> dict[str, Any]:
    return {
        "backupTransport": {
            # Never used: the marked NAS folder is reachable.
            "nasSshHost": "nobody@127.0.0.1",
            "nasSshFlags": f"-o BatchMode=yes -p 1 -o UserKnownHostsFile={known_hosts}",
        },
        "selfheal": {
            "redis": {"url": redis.url},
            "backups": {
                "redis": {
                    "source": "bus",
                    "runAtStart": True,
                    "mountRoot": str(nas),
                    "requireMountPoint": False,
                },
                "typesense": {"enabled": False},
            },
            "notifiers": {
                "webhook": {
                    "url": f"{base}{hook}",
                    "headers": {"X-Signature": SECRETS["webhook header"]},
                },
                "ntfy": {"url": base, "topic": "nas-alerts", "token": SECRETS["ntfy token"]},
                "telegram": {
                    "botToken": SECRETS["telegram bot token"],
                    "chatId": "42",
                    "apiBase": base,
                },
            },
            "advisor": {
                "enabled": True,
                "endpoint": f"{base}/v1?api_key={SECRETS['advisor endpoint query key']}",
                "apiKey": SECRETS["advisor api key"],
            },
        },
    }


def failure(**changes: Any) -> dict[str, Any]:
    request = {
        "sourceFunction": "system/backup.redis",
        "targetComponent": "redis",
        "problemSummary": "copy to NAS failed",
        "attempt": 0,
        "retryPolicy": {"maxRetries": 3, "sleepMinMs": 100, "sleepMaxMs": 3000, "sleepStepMs": 50},
        "evidence": [{"errno": "ETIMEDOUT"}],
        "playbook": {"actions": ["retry"]},
        "incidentId": INCIDENT,
        "domain": "backup",
    }
    return {**request, **changes}


class Cli:
    """The real CLI against the daemon, in-process, failing loudly on a non-zero exit."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.env = daemon.env()
        self.runner = CliRunner()

    def __call__(self, *args: str) -> str:
        result = self.runner.invoke(cli, list(args), env=self.env)
        assert result.exit_code == 0, (args, result.output)
        return result.output

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json"))

    def send(self, data: dict[str, Any]) -> None:
        self.json("events", "send", "system/self.healing.requested", "--data", json.dumps(data))


def assert_no_secret(source: str, text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"the {name} is in {source}:\n{text[-3000:]}"
    # The token's secret half alone (the bot id before the colon is not secret).
    assert SECRETS["telegram bot token"].split(":")[1] not in text, source


def test_no_configured_secret_leaves_the_daemon(
    short_home: Path,
    daemon_factory: Daemons,
    stand_in: PlayedService,
    guarded_redis: RedisServer,
) -> None:
    nas = short_home / "nas"
    nas.mkdir()
    mark_nas(nas, "test-nas")
    known_hosts = short_home / "known_hosts"
    known_hosts.touch()
    base = stand_in.base
    daemon = daemon_factory.start(
        # The webhook's code arrives with a reload: its secrets must be registered too.
        config=config(base, guarded_redis, nas, known_hosts, hook="/hook"),
        # The Typesense key comes from the environment; httpx's request lines are asked
        # for, so the log has the URLs that held the Telegram token and the query keys.
        env={"TYPESENSE_API_KEY": SECRETS["typesense api key"], "SELFHEAL_HTTP_LOG_LEVEL": "INFO"},
    )
    run = Cli(daemon)
    daemon.write_config(config(base, guarded_redis, nas, known_hosts, hook=f"/hook?code={CODE}"))
    reloaded = run.json("reload")
    # The watcher may have applied the edit first; either way it is in force now.
    assert reloaded["ok"] and daemon.status()["config"]["generation"] == 2, reloaded

    # One escalation (the advisor says so at once), one dead letter, one backup.
    run.send(failure())
    # A request without its retry policy, whose summary quotes the webhook URL.
    bad = failure(incidentId="backup:redis:bad", problemSummary=f"POST {base}/hook?code={CODE}")
    del bad["retryPolicy"]
    run.send(bad)

    def escalated() -> bool:
        return bool(run.json("incidents", "show", INCIDENT)["state"] == "escalated")

    def delivered() -> bool:
        runs = daemon.status()["backups"]["last_runs"]
        return bool(runs.get("redis", {}).get("status") == "delivered")

    wait_until(escalated, 30, "the advised escalation")
    wait_until(lambda: len(stand_in.posts) >= 4, 30, "the advisor call and three notifications")
    wait_until(delivered, 60, "the run-at-start backup of the password-protected Redis")
    wait_until(lambda: run.json("queue", "dead")["deadLetters"], 30, "the dead letter")

    # The stand-in got the real values: redaction only touches what is shown.
    by_path = {post.path: post for post in stand_in.posts}
    advisor_path = f"/v1/chat/completions?api_key={SECRETS['advisor endpoint query key']}"
    bot_path = f"/bot{SECRETS['telegram bot token']}/sendMessage"
    assert set(by_path) == {advisor_path, f"/hook?code={CODE}", "/nas-alerts", bot_path}
    assert by_path[advisor_path].headers["Authorization"] == f"Bearer {SECRETS['advisor api key']}"
    assert by_path[f"/hook?code={CODE}"].headers["X-Signature"] == SECRETS["webhook header"]
    assert by_path["/nas-alerts"].headers["Authorization"] == f"Bearer {SECRETS['ntfy token']}"
    webhook_body = by_path[f"/hook?code={CODE}"].body
    assert webhook_body["incidentId"] == INCIDENT and "may be revoked" in webhook_body["reason"]
    assert_no_secret("the webhook payload", json.dumps(webhook_body))

    # -- what the daemon answers ----------------------------------------------------------
    status = run("status", "--json")
    assert_no_secret("status --json", status)
    facts = json.loads(status)
    assert facts["redis"]["target"] == f"redis://:{MASK}@127.0.0.1:{guarded_redis.port}/0"
    assert facts["redis"]["connected"] is True
    assert facts["healing"]["advisor"]["calls"] == 1
    assert facts["backups"]["last_runs"]["redis"]["status"] == "delivered"

    shown = run.json("incidents", "show", INCIDENT)
    assert_no_secret("incidents show", json.dumps(shown))
    reason = shown["lastDecision"]["reason"]
    assert f"the hook's code {MASK} may be revoked" in reason, reason

    dead_table = run("queue", "dead")
    dead_json = run("queue", "dead", "--json")
    assert_no_secret("queue dead", dead_table)
    assert_no_secret("queue dead --json", dead_json)
    [letter] = json.loads(dead_json)["deadLetters"]
    assert letter["reason"].startswith("rejected: invalid request") and "retryPolicy" in dead_table
    # The entry as sent, its quote of the webhook URL (a secret as a whole) masked.
    assert f"POST {MASK}" in json.loads(json.loads(letter["fields"])["data"])["problemSummary"]

    # -- config show, every form --------------------------------------------------------------
    endpoint = f"{base}/v1?api_key={MASK}"
    for flags in ((), ("--effective",), ("--json",), ("--effective", "--json")):
        text = run("nas", "config", "show", *flags)
        assert_no_secret(f"config show {' '.join(flags)}", text)
        assert endpoint in text and "selfheal.notifiers.telegram.botToken" in text
        assert f"redis://:{MASK}@127.0.0.1:{guarded_redis.port}/0" in text
        assert ("selfheal.backups.redis.retention.keepLast" in text) == ("--effective" in flags)
    items = {i["key"]: i for i in run.json("nas", "config", "show", "--effective")["items"]}
    typesense_key = items["selfheal.backups.typesense.apiKey"]
    assert (typesense_key["value"], typesense_key["source"]) == (MASK, "env:TYPESENSE_API_KEY")
    assert items["selfheal.notifiers.webhook.url"]["value"] == MASK
    assert items["selfheal.notifiers.webhook.headers"]["value"] == {"X-Signature": MASK}

    assert daemon.stop() == 0  # flushes the span file

    # -- what the daemon wrote ------------------------------------------------------------------
    spans = "".join(
        path.read_text() for path in sorted((daemon.state_dir / "telemetry").glob("spans.jsonl*"))
    )
    assert_no_secret("the span file", spans)
    decided = [
        json.loads(line)["attributes"]
        for line in spans.splitlines()
        if f'"selfheal.incident_id":"{INCIDENT}"' in line.replace(" ", "")
    ]
    assert any("may be revoked" in str(a.get("selfheal.reason")) for a in decided), decided

    log = daemon.log()
    assert_no_secret("the daemon log", log)
    http_lines = [line for line in log.splitlines() if "INFO httpx: HTTP Request: POST" in line]
    assert len(http_lines) == 4, "\n".join(http_lines)
    for expected in (
        f"POST {base}/v1/chat/completions?api_key={MASK} ",
        f"POST {base}/bot{MASK}/sendMessage ",
        f"POST {base}/nas-alerts ",
        f"POST {MASK} ",  # the webhook URL is a secret as a whole
    ):
        assert any(expected in line for line in http_lines), (expected, http_lines)
    assert "dead-lettered" in log
