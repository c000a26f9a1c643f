"""Settings of the backup targets and of the NAS they land on."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from selfheal.config.base import (
    SECRET,
    SECRET_URL,
    Compression,
    ConfigModel,
    Token,
    env,
    knob,
)
from selfheal.config.fields import (
    ConfigPath,
    HttpUrlText,
    PosixAbsolute,
    RedisSourceUrl,
    Schedule,
)

NasVolume = Literal["hdd", "nvme"]


class NasSettings(ConfigModel):
    """Where backups land on the NAS and where they wait when it is unreachable."""

    remote_root: PosixAbsolute = Field(
        "/volume1/joelclaw/backups", description="NAS-side root for SSH copies (<root>/<target>/)."
    )
    prefer_remote: Annotated[bool, env("NAS_BACKUP_PREFER_REMOTE")] = Field(
        False, description="Try SSH before the local mount."
    )
    use_mount: Annotated[bool, env("SELFHEAL_NAS_USE_MOUNT")] = Field(
        True, description="Copy over the local NAS mount; false = SSH only (no mount needed)."
    )
    wait_for_nas_seconds: float = knob(
        60,
        "When no transport answers, probe again for this long before the artifact is "
        "spooled (a NAS or network coming back after a wake); 0 = spool at once",
        ge=0,
        le=3600,
    )
    use_ssh: Annotated[bool, env("SELFHEAL_NAS_USE_SSH")] = Field(
        True, description="Copy over SSH/SFTP; false = the mount only (no SSH host needed)."
    )
    lean_ssh_send: Annotated[bool, env("SELFHEAL_SSH_LEAN_SEND")] = Field(
        True,
        description="Under AEAD ciphers, skip asyncssh's empty IGNORE packet before every "
        "packet (faster uploads); false = asyncssh's stock send path.",
    )
    spool_dir: Annotated[ConfigPath | None, env("NAS_BACKUP_QUEUE_ROOT")] = Field(
        None, description="Spool for artifacts while the NAS is down; null = <stateDir>/spool."
    )


class RetentionSettings(ConfigModel):
    """How many NAS copies to keep; a copy survives if any rule keeps it."""

    keep_last: int = knob(7, "Newest copies always kept", ge=1, le=1000)
    daily: int = knob(7, "Days with one kept copy each", ge=0, le=1000)
    weekly: int = knob(4, "Weeks with one kept copy each", ge=0, le=1000)
    monthly: int = knob(6, "Months with one kept copy each", ge=0, le=1000)


class TypesenseBackupSettings(ConfigModel):
    """Typesense snapshot backups."""

    enabled: Annotated[bool, env("SELFHEAL_TYPESENSE_ENABLED")] = Field(
        True, description="Run this backup on its schedule."
    )
    run_at_start: bool = Field(
        False, description="Also run once as soon as the daemon is ready (the quickstart does)."
    )
    catch_up: bool = Field(
        True, description="Run once on wake for ticks missed while the machine slept."
    )
    schedule: Schedule = Field(
        "TZ=America/Los_Angeles 0 3 * * *", description="Optional 'TZ=Zone ' then 5 cron fields."
    )
    drill: Schedule | None = Field(
        None,
        description="When to restore the newest artifact into a throwaway server and "
        "compare it with its manifest (as `backup drill`); null = only on demand.",
    )
    url: Annotated[HttpUrlText, env("TYPESENSE_URL")] = Field(
        "http://localhost:8108", description="Typesense base URL."
    )
    api_key: Annotated[Token | None, env("TYPESENSE_API_KEY"), SECRET] = Field(
        None, description="Typesense admin API key."
    )
    snapshot_root: Annotated[ConfigPath | None, env("TYPESENSE_SNAPSHOT_ROOT")] = Field(
        None,
        description="Server-side snapshot directory; null = <stateDir>/typesense-snapshots.",
    )
    snapshot_fallback_root: ConfigPath | None = Field(
        None, description="Second snapshot directory, tried when snapshotRoot fails; null = none."
    )
    snapshot_timeout_seconds: float = knob(
        900,
        "How long the snapshot call may take before the run fails as a timeout (a large "
        "collection set takes minutes; a hung server must not hold the run for ever)",
        ge=1,
        le=86_400,
    )
    snapshot_retention_count: Annotated[int, env("TYPESENSE_SNAPSHOT_RETENTION_COUNT")] = knob(
        2, "Local snapshots kept after archiving", ge=1, le=100
    )
    compression: Compression = Field("gzip", description="Archive compression: none, gzip, zstd.")
    volume: NasVolume = Field(
        "hdd",
        description="NAS volume to copy into when mountRoot is null: hdd = transport.nasHddRoot, "
        "nvme = transport.nasNvmeRoot.",
    )
    mount_root: ConfigPath | None = Field(
        None, description="NAS mount to copy into; null = the mount of its volume."
    )
    require_mount_point: bool = Field(
        True,
        description="Require mountRoot to be a real mount point (marker file always required).",
    )
    retention: RetentionSettings = Field(default_factory=RetentionSettings)


class RedisBackupSettings(ConfigModel):
    """Redis RDB backups."""

    enabled: bool = Field(True, description="Run this backup on its schedule.")
    run_at_start: bool = Field(
        False, description="Also run once as soon as the daemon is ready (the quickstart does)."
    )
    catch_up: bool = Field(
        True, description="Run once on wake for ticks missed while the machine slept."
    )
    schedule: Schedule = Field(
        "TZ=America/Los_Angeles 30 3 * * *", description="Optional 'TZ=Zone ' then 5 cron fields."
    )
    drill: Schedule | None = Field(
        None,
        description="When to restore the newest artifact into a throwaway server and "
        "compare it with its manifest (as `backup drill`); null = only on demand.",
    )
    source: Annotated[RedisSourceUrl, SECRET_URL] = Field(
        "bus", description="'bus' (the daemon's own Redis) or a redis://, rediss://, unix:// URL."
    )
    rdb_path: ConfigPath | None = Field(
        None, description="RDB file to copy; null = ask the server (CONFIG GET dir/dbfilename)."
    )
    compression: Compression = Field("none", description="Archive compression: none, gzip, zstd.")
    volume: NasVolume = Field(
        "hdd",
        description="NAS volume to copy into when mountRoot is null: hdd = transport.nasHddRoot, "
        "nvme = transport.nasNvmeRoot.",
    )
    mount_root: ConfigPath | None = Field(
        None, description="NAS mount to copy into; null = the mount of its volume."
    )
    require_mount_point: bool = Field(
        True,
        description="Require mountRoot to be a real mount point (marker file always required).",
    )
    bgsave_timeout_seconds: float = knob(120, "Wait for BGSAVE this long", ge=1, le=3600)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)


class BackupsSettings(ConfigModel):
    """The backup targets."""

    typesense: TypesenseBackupSettings = Field(default_factory=TypesenseBackupSettings)
    redis: RedisBackupSettings = Field(default_factory=RedisBackupSettings)
