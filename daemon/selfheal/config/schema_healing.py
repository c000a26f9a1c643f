"""Settings of what happens around a failure: notifiers, the worker watchdog, the LLM advisor."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from annotated_types import Ge, Le
from pydantic import BaseModel, Field, StringConstraints, model_validator
from pydantic_core import to_jsonable_python

from selfheal.config.base import (
    SECRET,
    SECRET_VALUES,
    ConfigModel,
    ModelId,
    Name,
    Token,
    env,
    knob,
)
from selfheal.config.fields import (
    ConfigPath,
    HttpUrlText,
    rule,
)


class WebhookSettings(ConfigModel):
    """JSON POST to any URL."""

    url: Annotated[HttpUrlText | None, env("SELFHEAL_WEBHOOK_URL"), SECRET] = Field(
        None, description="Webhook URL (such URLs often embed a token); null = off."
    )
    headers: Annotated[dict[str, Token], SECRET_VALUES] = Field(
        default_factory=dict, description="Extra HTTP headers (the values are secret)."
    )


class NtfySettings(ConfigModel):
    """ntfy.sh (or self-hosted ntfy) push."""

    url: HttpUrlText | None = Field(
        None, description="ntfy server, e.g. https://ntfy.sh; null = off."
    )
    topic: Name | None = Field(None, description="Topic to publish to; required with url.")
    token: Annotated[Token | None, env("SELFHEAL_NTFY_TOKEN"), SECRET] = Field(
        None, description="Access token."
    )


class TelegramSettings(ConfigModel):
    """Telegram bot message."""

    bot_token: Annotated[Token | None, env("SELFHEAL_TELEGRAM_BOT_TOKEN"), SECRET] = Field(
        None, description="Bot token; null = off."
    )
    chat_id: (
        Annotated[str, StringConstraints(pattern=r"^(-?\d{1,20}|@[A-Za-z0-9_]{5,64})$")] | None
    ) = Field(
        None, description="Chat ID (a number as a string, or @channel); required with botToken."
    )
    api_base: HttpUrlText = Field("https://api.telegram.org", description="Bot API base URL.")


class NotifiersSettings(ConfigModel):
    """Where escalations are announced (once per incident)."""

    quiet_window_minutes: int = knob(
        60, "Minimum minutes between two notifications of one incident", ge=0, le=10_080
    )
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    ntfy: NtfySettings = Field(default_factory=NtfySettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)


# A log line holding one of these (case-sensitive, plain text) is a sign the worker is
# unreachable; "Unable to reach SDK URL" is always looked for.
LogPattern = Annotated[str, StringConstraints(min_length=3, max_length=200)]
SDK_UNREACHABLE = "Unable to reach SDK URL"


class WorkerSettings(ConfigModel):
    """One worker whose SDK endpoint the watchdog probes and may restart."""

    name: Name
    sdk_url: HttpUrlText = "http://127.0.0.1:3111/api/inngest"
    health_url: HttpUrlText | None = None
    launchd_label: Name = "com.joel.system-bus-worker"
    launchd_plist: ConfigPath | None = None
    service_manager: Literal["launchd", "systemd", "command"] = "launchd"
    restart_command: list[Token] | None = None
    expected_program: ConfigPath | None = None
    expected_working_directory: ConfigPath | None = None
    log_files: list[ConfigPath] = Field(default_factory=list)
    log_patterns: list[LogPattern] = Field(default_factory=list, max_length=32)
    probe_interval_seconds: float = Field(30, ge=0.2, le=3600)
    probe_timeout_seconds: float = Field(5, ge=0.1, le=120)
    failure_threshold: int = Field(3, ge=1, le=100)
    restart_cooldown_minutes: float = Field(10, ge=0, le=1440)
    max_restarts_per_window: int = Field(3, ge=1, le=100)
    restart_window_minutes: float = Field(60, ge=0.01, le=10_080)
    start_grace_seconds: float = Field(60, ge=0, le=3600)
    verify_timeout_seconds: float = Field(60, ge=1, le=3600)

    @model_validator(mode="after")
    def _restart_command_matches_manager(self) -> WorkerSettings:
        if self.service_manager == "command" and not self.restart_command:
            raise rule(
                "restartCommand (a non-empty argument list) is required "
                "when serviceManager is 'command'"
            )
        if self.service_manager != "command" and self.restart_command is not None:
            raise rule("restartCommand is only used when serviceManager is 'command'; remove it")
        return self


def _item_doc(model: type[BaseModel]) -> str:
    """Summarise a list item's keys with defaults and bounds (list items have no table)."""
    parts = []
    for name, info in model.model_fields.items():
        text = info.alias or name
        if not info.is_required():
            default = to_jsonable_python(info.get_default(call_default_factory=True))
            text += f" {json.dumps(default)}"
        low = next((m.ge for m in info.metadata if isinstance(m, Ge)), None)
        high = next((m.le for m in info.metadata if isinstance(m, Le)), None)
        if low is not None and high is not None:
            text += f" ({low}..{high})"
        parts.append(text)
    return ", ".join(parts)


WORKER_DOC = (
    f"Workers to probe, each {{{_item_doc(WorkerSettings)}}}. Names are unique; "
    "restartCommand (an argument list) is required with, and only allowed with, "
    "serviceManager 'command' (others: launchd, systemd); "
    "launchdLabel is the unit name under systemd; healthUrl defaults to sdkUrl; "
    "launchdPlist (for bootstrap when the job is not loaded) defaults to "
    "~/Library/LaunchAgents/<launchdLabel>.plist; expectedProgram and "
    "expectedWorkingDirectory, when set, must match the loaded job or no restart "
    "happens (the incident escalates showing the drift); logPatterns are plain texts "
    "looked for in logFiles besides 'Unable to reach SDK URL'."
)


class WatchdogSettings(ConfigModel):
    """SDK reachability watchdog and guarded restarts."""

    enabled: bool = Field(False, description="Probe workers and request restarts.")
    workers: list[WorkerSettings] = Field(
        default_factory=lambda: [WorkerSettings(name="system-bus-worker")], description=WORKER_DOC
    )
    inngest_url: HttpUrlText | None = Field(
        None,
        description="Inngest server URL (dev server or API) whose failed runs are scanned for "
        "the workers' patterns; null = probes and logs only.",
    )
    inngest_signing_key: Annotated[Token | None, env("INNGEST_SIGNING_KEY"), SECRET] = Field(
        None, description="Bearer key for the Inngest API (Inngest Cloud); null = none."
    )
    inngest_lookback_minutes: float = knob(
        30, "How far back each scan looks for failed runs, minutes", ge=1, le=10_080
    )
    inngest_scan_seconds: float = knob(
        60, "Seconds between two scans of Inngest's runs", ge=1, le=86_400
    )


class AdvisorSettings(ConfigModel):
    """Optional LLM advice for the router (OpenAI-compatible HTTP)."""

    enabled: bool = Field(False, description="Ask the model before deciding; off = policy only.")
    endpoint: HttpUrlText | None = Field(
        None, description="OpenAI-compatible base URL; required when enabled."
    )
    api_key: Annotated[Token | None, env("SELFHEAL_ADVISOR_API_KEY"), SECRET] = Field(
        None, description="API key."
    )
    model: ModelId | None = Field(None, description="Model ID; null = router.model.")
    fallback_model: ModelId | None = Field(
        None, description="Fallback model; null = router.fallbackModel."
    )
    allowlist: list[ModelId] = Field(
        default_factory=lambda: ["gpt-5.4"],
        min_length=1,
        description="Model IDs allowed; the effective model and fallbackModel must be listed.",
    )
    timeout_ms: int = knob(15_000, "Per-call timeout, ms", ge=100, le=600_000)
    circuit_breaker_failures: int = knob(
        5, "Consecutive failures that open the breaker", ge=1, le=1000
    )
    circuit_breaker_reset_seconds: float = knob(
        300, "Seconds before a half-open retry", ge=1, le=86_400
    )
