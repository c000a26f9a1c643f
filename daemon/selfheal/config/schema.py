"""The typed, frozen settings model: every key, its default, bounds, env vars and meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from selfheal.config.base import (
    SECRET_URL,
    ConfigModel,
    ModelId,
    Name,
    env,
    knob,
)
from selfheal.config.fields import (
    ConfigPath,
    RedisBusUrl,
    SocketPath,
    SshFlags,
    SshHost,
    rule,
)
from selfheal.config.locate import DEFAULT_SOCKET, SOCKET_ENV
from selfheal.config.schema_backups import (
    BackupsSettings,
    NasSettings,
    RedisBackupSettings,
    RetentionSettings,
    TypesenseBackupSettings,
)
from selfheal.config.schema_healing import (
    AdvisorSettings,
    NotifiersSettings,
    NtfySettings,
    TelegramSettings,
    WatchdogSettings,
    WebhookSettings,
    WorkerSettings,
)
from selfheal.core.ssh_flags import SshOptions, parse_ssh_flags

__all__ = [
    "AdvisorSettings",
    "BackupsSettings",
    "ConfigModel",
    "NasSettings",
    "NotifiersSettings",
    "NtfySettings",
    "RedisBackupSettings",
    "RedisSettings",
    "RetentionSettings",
    "RouterSettings",
    "Settings",
    "TelegramSettings",
    "TelemetrySettings",
    "TransportSettings",
    "TypesenseBackupSettings",
    "WatchdogSettings",
    "WebhookSettings",
    "WorkerSettings",
]


class RouterSettings(ConfigModel):
    """Retry budget and pacing of the self-healing router."""

    model: Annotated[ModelId, env("SELF_HEALING_ROUTER_MODEL", "BACKUP_FAILURE_ROUTER_MODEL")] = (
        Field("gpt-5.4", description="Model ID the LLM advisor uses (must be in the allowlist).")
    )
    fallback_model: Annotated[
        ModelId, env("SELF_HEALING_ROUTER_FALLBACK_MODEL", "BACKUP_FAILURE_ROUTER_FALLBACK_MODEL")
    ] = Field("gpt-5.4", description="Model ID tried when the primary model fails.")
    max_retries: Annotated[
        int, env("BACKUP_ROUTER_MAX_RETRIES", "SELF_HEALING_ROUTER_MAX_RETRIES")
    ] = knob(5, "Retries per incident before escalating", ge=0, le=100)
    sleep_min_ms: Annotated[
        int, env("BACKUP_ROUTER_SLEEP_MIN_MS", "SELF_HEALING_ROUTER_SLEEP_MIN_MS")
    ] = knob(300_000, "Shortest retry delay in ms; <= sleepMaxMs", ge=1, le=604_800_000)
    sleep_max_ms: Annotated[
        int, env("BACKUP_ROUTER_SLEEP_MAX_MS", "SELF_HEALING_ROUTER_SLEEP_MAX_MS")
    ] = knob(14_400_000, "Longest retry delay in ms", ge=1, le=604_800_000)
    sleep_step_ms: Annotated[
        int, env("BACKUP_ROUTER_SLEEP_STEP_MS", "SELF_HEALING_ROUTER_SLEEP_STEP_MS")
    ] = knob(
        30_000, "Upper bound of the random jitter added to a retry delay, ms", ge=0, le=86_400_000
    )


class TransportSettings(ConfigModel):
    """How artifacts reach the NAS: in-copy retries, SSH target and mount roots."""

    recovery_window_hours: Annotated[
        float, env("NAS_BACKUP_RECOVERY_WINDOW_HOURS", "SELF_HEALING_RECOVERY_WINDOW_HOURS")
    ] = knob(
        4,
        "Hours a copy keeps retrying before it fails",
        gt=0,
        le=168,
        alias="nasRecoveryWindowHours",
    )
    max_attempts: Annotated[int, env("NAS_BACKUP_MAX_ATTEMPTS", "SELF_HEALING_MAX_ATTEMPTS")] = (
        knob(12, "Copy attempts within the recovery window", ge=1, le=1000, alias="nasMaxAttempts")
    )
    retry_base_ms: Annotated[int, env("NAS_BACKUP_RETRY_BASE_MS", "SELF_HEALING_RETRY_BASE_MS")] = (
        knob(
            10_000,
            "First in-copy retry delay, ms; <= nasRetryMaxMs",
            ge=1,
            le=3_600_000,
            alias="nasRetryBaseMs",
        )
    )
    retry_max_ms: Annotated[int, env("NAS_BACKUP_RETRY_MAX_MS", "SELF_HEALING_RETRY_MAX_MS")] = (
        knob(120_000, "Longest in-copy retry delay, ms", ge=1, le=86_400_000, alias="nasRetryMaxMs")
    )
    ssh_host: Annotated[SshHost, env("SELF_HEALING_NAS_HOST", "NAS_SSH_HOST")] = Field(
        "joel@three-body", alias="nasSshHost", description="SSH fallback target, [user@]host."
    )
    ssh_flags: Annotated[SshFlags, env("SELF_HEALING_NAS_FLAGS", "NAS_SSH_FLAGS")] = Field(
        "-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=2",
        alias="nasSshFlags",
        description="SSH options: only -o Key=Value (BatchMode, ConnectTimeout, "
        "ServerAliveInterval, ServerAliveCountMax, Port, IdentityFile, UserKnownHostsFile), "
        "-p PORT, -i FILE; host keys are always verified.",
    )
    hdd_root: Annotated[ConfigPath, env("SELF_HEALING_NAS_HDD_ROOT", "NAS_HDD_ROOT")] = Field(
        Path("/Volumes/three-body"),
        alias="nasHddRoot",
        description="Local mount point of the NAS HDD volume (targets with volume hdd).",
    )
    nvme_root: Annotated[ConfigPath, env("SELF_HEALING_NAS_NVME_ROOT", "NAS_NVME_ROOT")] = Field(
        Path("/Volumes/nas-nvme"),
        alias="nasNvmeRoot",
        description="Local mount point of the NAS NVMe volume (targets with volume nvme).",
    )

    @property
    def ssh_options(self) -> SshOptions:
        """The parsed `nasSshFlags` (already validated when the config loaded)."""
        return parse_ssh_flags(self.ssh_flags)


class RedisSettings(ConfigModel):
    """The Redis that carries the event bus, timers and incident records."""

    url: Annotated[RedisBusUrl, env("SELFHEAL_REDIS_URL"), SECRET_URL] = Field(
        "embedded",
        description="'embedded' (a private redis-server under stateDir), or a redis://, "
        "rediss:// or unix:// URL; with sentinelMaster, sentinels as redis://h1:p1,h2:p2.",
    )
    namespace: Name = Field(
        "selfheal", description="Key prefix and hash tag ([A-Za-z0-9_.-]{1,64})."
    )
    sentinel_master: Name | None = Field(
        None, description="Sentinel master name; null = no Sentinel."
    )
    cluster: bool = Field(False, description="Connect in Redis Cluster mode.")
    connect_timeout_seconds: float = knob(5, "Connect timeout in seconds", ge=0.1, le=120)
    ack_replicas: int = knob(
        0,
        "Replicas that must hold an event before events.send acknowledges it (Redis "
        "WAIT), so a failover cannot lose an acknowledged event; 0 = acknowledged once the "
        "master has it. Not with cluster or the embedded Redis",
        ge=0,
        le=16,
    )
    ack_timeout_seconds: float = knob(
        1, "How long events.send waits for ackReplicas before it refuses", ge=0.01, le=60
    )

    @model_validator(mode="after")
    def _one_topology(self) -> RedisSettings:
        if self.sentinel_master and self.cluster:
            raise rule("sentinelMaster and cluster: true exclude each other; choose one")
        if self.ack_replicas and (self.cluster or self.url == "embedded"):
            # WAIT counts the replicas of the connection that wrote: the embedded Redis
            # has none, and a cluster client does not keep a write and its WAIT together.
            raise rule("ackReplicas needs a standalone or Sentinel Redis with replicas")
        return self


class BusSettings(ConfigModel):
    """Delivery knobs of the event bus on Redis Streams."""

    stream_max_len: int = knob(
        100_000, "Approximate entries kept per stream (MAXLEN ~)", ge=1_000, le=100_000_000
    )
    reclaim_idle_seconds: float = knob(
        60, "A pending entry idle this long is reclaimed from its consumer", ge=1, le=86_400
    )
    max_deliveries: int = knob(
        5, "Deliveries before an entry goes to the dead-letter stream", ge=1, le=1000
    )


class TelemetrySettings(ConfigModel):
    """OTEL spans: exported over OTLP when configured, else appended to a local JSONL file."""

    service_name: Name = Field("selfheal", description="OTEL service.name.")
    span_file: ConfigPath | None = Field(
        None, description="JSONL span file; null = <stateDir>/telemetry/spans.jsonl."
    )
    span_file_max_bytes: int = knob(
        10_485_760, "Rotate the span file at this size", ge=4096, le=10_737_418_240
    )
    span_file_backups: int = knob(5, "Rotated span files kept", ge=0, le=100)


class Settings(ConfigModel):
    """Every effective setting of the daemon, validated and frozen."""

    router: RouterSettings = Field(default_factory=RouterSettings)
    transport: TransportSettings = Field(default_factory=TransportSettings)
    state_dir: Annotated[ConfigPath, env("SELFHEAL_STATE_DIR")] = Field(
        Path("~/.joelclaw/selfheal"), description="Daemon state: spool, embedded Redis, telemetry."
    )
    control_socket: Annotated[SocketPath, env(SOCKET_ENV)] = Field(
        Path(DEFAULT_SOCKET),
        description="Control socket (<= 100 bytes once expanded).",
    )
    drain_timeout_seconds: float = knob(10, "Shutdown drain before cancelling work", ge=0.1, le=600)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    nas: NasSettings = Field(default_factory=NasSettings)
    backups: BackupsSettings = Field(default_factory=BackupsSettings)
    notifiers: NotifiersSettings = Field(default_factory=NotifiersSettings)
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)
    advisor: AdvisorSettings = Field(default_factory=AdvisorSettings)

    @property
    def span_file_path(self) -> Path:
        """The telemetry JSONL file, with its default under stateDir applied."""
        return self.telemetry.span_file or self.state_dir / "telemetry" / "spans.jsonl"

    @property
    def spool_path(self) -> Path:
        """The NAS spool directory, with its default under stateDir applied."""
        return self.nas.spool_dir or self.state_dir / "spool"

    @property
    def typesense_snapshot_root(self) -> Path:
        """The Typesense snapshot directory, with its default under stateDir applied."""
        return self.backups.typesense.snapshot_root or self.state_dir / "typesense-snapshots"

    def mount_root(self, target: Literal["typesense", "redis"]) -> Path:
        """The NAS mount a target copies into: its mountRoot, else its volume's root."""
        backup = self.backups.typesense if target == "typesense" else self.backups.redis
        if backup.mount_root is not None:
            return backup.mount_root
        return self.transport.nvme_root if backup.volume == "nvme" else self.transport.hdd_root

    @property
    def advisor_models(self) -> tuple[str, str]:
        """The advisor's effective (model, fallback model), router's when unset."""
        return (
            self.advisor.model or self.router.model,
            self.advisor.fallback_model or self.router.fallback_model,
        )
