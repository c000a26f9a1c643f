"""Failure classification: which kind of failure the evidence shows, and why we think so."""

from __future__ import annotations

import errno as errno_module
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from typing import Any, Final

import msgspec

from selfheal.core.contracts import Evidence


class FailureClass(StrEnum):
    """What kind of failure happened; decides retry, pause or escalate."""

    TRANSIENT_TRANSPORT = "transient_transport"  # network, SSH session, timeouts
    TRANSIENT_INFRA = "transient_infra"  # a mount, a server or a disk that is briefly away
    RESOURCE_EXHAUSTED = "resource_exhausted"  # disk full, quota
    AUTH = "auth"  # permissions, credentials, host keys
    CONFIG = "config"  # wrong paths, bad settings
    INTEGRITY = "integrity"  # checksums do not match
    UNKNOWN = "unknown"


# Retrying cannot fix these; a human must act, so the router escalates at once.
HARD_CLASSES: Final = frozenset(
    {FailureClass.RESOURCE_EXHAUSTED, FailureClass.AUTH, FailureClass.CONFIG}
)

# When evidence disagrees the most severe class wins. Auth ranks first among the hard
# classes because a changed host key may be an attack, which matters before a full disk.
SEVERITY: Final = {
    FailureClass.AUTH: 6,
    FailureClass.RESOURCE_EXHAUSTED: 5,
    FailureClass.CONFIG: 4,
    FailureClass.INTEGRITY: 3,
    FailureClass.TRANSIENT_INFRA: 2,
    FailureClass.TRANSIENT_TRANSPORT: 1,
    FailureClass.UNKNOWN: 0,
}


class Classification(msgspec.Struct, frozen=True):
    """A failure class and the evidence that decided it (a Struct: quick to build)."""

    failure_class: FailureClass
    reason: str


UNKNOWN: Final = Classification(FailureClass.UNKNOWN, "no evidence matched a known pattern")

_ERRNO_NAMES: Final = {
    FailureClass.RESOURCE_EXHAUSTED: ("ENOSPC", "EDQUOT"),
    FailureClass.AUTH: ("EACCES", "EPERM"),
    FailureClass.TRANSIENT_TRANSPORT: (
        "ETIMEDOUT",
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "EPIPE",
        "EAGAIN",
    ),
    FailureClass.TRANSIENT_INFRA: ("EIO", "ESTALE", "ENOTCONN", "ENODEV"),
    FailureClass.CONFIG: ("ENAMETOOLONG", "EINVAL"),
}
_ERRNO_BY_NAME: Final = {n: c for c, names in _ERRNO_NAMES.items() for n in names}
# Numbers differ between Linux and macOS, so they come from this host's errno module;
# the evidence is produced on the same host. Names missing on this platform are skipped.
_NAME_BY_NUMBER: Final = {
    getattr(errno_module, n): n for n in _ERRNO_BY_NAME if hasattr(errno_module, n)
}

_EXCEPTIONS: Final = {
    "HostKeyNotVerifiable": FailureClass.AUTH,
    "PermissionDenied": FailureClass.AUTH,  # asyncssh authentication failure
    "PermissionError": FailureClass.AUTH,
    "ConnectionLost": FailureClass.TRANSIENT_TRANSPORT,
    "SFTPConnectionLost": FailureClass.TRANSIENT_TRANSPORT,
    "DisconnectError": FailureClass.TRANSIENT_TRANSPORT,
    "TimeoutError": FailureClass.TRANSIENT_TRANSPORT,
    "timeout": FailureClass.TRANSIENT_TRANSPORT,  # socket.timeout
    "ConnectionError": FailureClass.TRANSIENT_TRANSPORT,
    "ConnectionRefusedError": FailureClass.TRANSIENT_TRANSPORT,
    "ConnectionResetError": FailureClass.TRANSIENT_TRANSPORT,
    "ConnectionAbortedError": FailureClass.TRANSIENT_TRANSPORT,
    "BrokenPipeError": FailureClass.TRANSIENT_TRANSPORT,
    "gaierror": FailureClass.TRANSIENT_TRANSPORT,  # socket.gaierror: DNS
    "ConnectError": FailureClass.TRANSIENT_TRANSPORT,  # httpx
    "ConnectTimeout": FailureClass.TRANSIENT_TRANSPORT,  # httpx
    "ReadTimeout": FailureClass.TRANSIENT_TRANSPORT,  # httpx
    "ChecksumMismatch": FailureClass.INTEGRITY,
    "IntegrityError": FailureClass.INTEGRITY,
    "ConfigError": FailureClass.CONFIG,
    "ValidationError": FailureClass.CONFIG,
    "BusyLoadingError": FailureClass.TRANSIENT_INFRA,  # redis is loading its dataset
    # The watchdog's guarded restart: a flapping worker used up its restarts in the
    # window (as systemd's start limit), or the loaded job is not the expected program.
    "RestartLimitReached": FailureClass.RESOURCE_EXHAUSTED,
    "WorkerBindingDrift": FailureClass.CONFIG,
}
# redis-py reuses builtin names; from redis they mean the source server is away (infra).
_PACKAGE_EXCEPTIONS: Final = {
    ("redis", "ConnectionError"): FailureClass.TRANSIENT_INFRA,
    ("redis", "TimeoutError"): FailureClass.TRANSIENT_INFRA,
}

# The original's patterns (case-insensitive), plus a few that name the same conditions.
# "snapshot failed (500)" and "no snapshot files staged" were hard errors there; we call
# them config because both mean Typesense's server-side snapshot path is not where we
# read it (a wrong TYPESENSE_SNAPSHOT_ROOT or mount), which no retry can fix.
_MESSAGE_RULES: Final = tuple(
    (re.compile(pattern, re.IGNORECASE), failure_class, label)
    for pattern, failure_class, label in (
        (r"host key verification failed", FailureClass.AUTH, None),
        (r"remote host identification has changed", FailureClass.AUTH, None),
        (r"permission denied", FailureClass.AUTH, None),
        (r"no space left on device", FailureClass.RESOURCE_EXHAUSTED, None),
        (r"disk quota exceeded", FailureClass.RESOURCE_EXHAUSTED, None),
        (r"snapshot failed \(500\)", FailureClass.CONFIG, "snapshot failed (500)"),
        (r"no snapshot files staged", FailureClass.CONFIG, None),
        (r"checksum mismatch", FailureClass.INTEGRITY, None),
        (r"sha256 mismatch", FailureClass.INTEGRITY, None),
        (r"input/output error", FailureClass.TRANSIENT_INFRA, None),
        (r"stale file handle", FailureClass.TRANSIENT_INFRA, None),
        (r"transport endpoint is not connected", FailureClass.TRANSIENT_INFRA, None),
        (r"server is unavailable", FailureClass.TRANSIENT_INFRA, None),
        (r"no route to host", FailureClass.TRANSIENT_TRANSPORT, None),
        (r"network is unreachable", FailureClass.TRANSIENT_TRANSPORT, None),
        (r"resource temporarily unavailable", FailureClass.TRANSIENT_TRANSPORT, None),
        (r"temporary failure", FailureClass.TRANSIENT_TRANSPORT, None),
        (r"timed out", FailureClass.TRANSIENT_TRANSPORT, None),
        (r"timeout", FailureClass.TRANSIENT_TRANSPORT, None),
        (r"\beconn[a-z]*", FailureClass.TRANSIENT_TRANSPORT, "ECONN*"),
        (r"connection", FailureClass.TRANSIENT_TRANSPORT, None),
        (r"ssh:", FailureClass.TRANSIENT_TRANSPORT, None),
    )
)


def _most_severe(found: Iterable[Classification]) -> Classification | None:
    """The most severe classification; the first one wins a tie."""
    best: Classification | None = None
    for item in found:
        if best is None or SEVERITY[item.failure_class] > SEVERITY[best.failure_class]:
            best = item
    return best


def _errno_name(value: int | str) -> str | None:
    if isinstance(value, int):
        return _NAME_BY_NUMBER.get(value)
    text = value.strip().upper()
    if text.isdecimal():  # isdigit also takes "²", which int() refuses
        return _NAME_BY_NUMBER.get(int(text))
    if text in _ERRNO_BY_NAME:
        return text
    # An alias such as EWOULDBLOCK shares its number with a listed name (EAGAIN).
    number = getattr(errno_module, text, None) if text.startswith("E") else None
    return _NAME_BY_NUMBER.get(number) if isinstance(number, int) else None


def _by_errno(item: Evidence) -> Classification | None:
    if item.errno is None:
        return None
    name = _errno_name(item.errno)
    if name is not None:
        return Classification(_ERRNO_BY_NAME[name], f"errno {name}")
    # ENOENT is only telling on a mount point: the NAS share went away underneath us.
    on_mount = (item.kind or "").lower() == "mount"
    if on_mount and _is_errno(item.errno, "ENOENT"):
        return Classification(FailureClass.TRANSIENT_INFRA, "errno ENOENT on a mount")
    return None


def _is_errno(value: int | str, name: str) -> bool:
    number: int = getattr(errno_module, name)
    if isinstance(value, int):
        return value == number
    text = value.strip().upper()
    return text == name or (text.isdecimal() and int(text) == number)


def _by_exception(item: Evidence) -> Classification | None:
    if not item.exception:
        return None
    # "pkg.mod.Name: text" or "Name(args)" -> the dotted type name only.
    name = re.split(r"[:(\s]", item.exception.strip(), maxsplit=1)[0]
    package, _, _ = name.partition(".")
    last = name.rsplit(".", 1)[-1]
    found = _PACKAGE_EXCEPTIONS.get((package, last)) or _EXCEPTIONS.get(last)
    return Classification(found, f"exception {name}") if found is not None else None


def _by_message(texts: Iterable[str | None]) -> Classification | None:
    # The most severe match of each text, then of the texts: the same first-wins order
    # as ranking every match of every text at once.
    return _most_severe(
        found
        for text in texts
        if text and (found := (_text_class(text) if len(text) <= _CACHED_TEXT else _scan(text)))
    )


def _scan(text: str) -> Classification | None:
    """The most severe message rule `text` matches (the first one on a tie)."""
    return _most_severe(
        Classification(failure_class, f"message matches {label or pattern.pattern!r}")
        for pattern, failure_class, label in _MESSAGE_RULES
        if pattern.search(text)
    )


# A failing thing reports the same messages again and again; long texts are scanned
# each time so the cache stays small.
_CACHED_TEXT: Final = 512
_text_class = functools.lru_cache(maxsize=2048)(_scan)


def _texts(item: Evidence) -> Iterator[str | None]:
    """Every text of an item that may describe the failure, in order: its message,
    snippet and exception, then each text under its extra keys (`detail`, `log`,
    `stderr`...), nested objects and lists included. Its kind and the names it carries
    (path, key, eventId) label things rather than describe what went wrong (a folder
    called "timeouts" is no timeout), so they are not read."""
    yield item.message
    yield item.snippet
    yield item.exception
    if item.model_extra:
        yield from texts_in(list(item.model_extra.values()))


def texts_in(value: Any) -> Iterator[str]:
    """Every text inside a JSON value, objects and lists walked, in document order
    (iterative: no nesting makes it raise)."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def classify_item(item: Evidence) -> Classification | None:
    """Classify one evidence item: errno first, then the exception type, then its texts."""
    return _by_errno(item) or _by_exception(item) or _by_message(_texts(item))


def classify(evidence: Sequence[Evidence], *, summary: str | None = None) -> Classification:
    """Classify a failure; the most severe item wins; `summary` is a last resort."""
    found = _most_severe(c for c in map(classify_item, evidence) if c is not None)
    if found is not None:
        return found
    # The problem summary is prose written for humans, so it only counts when no
    # evidence item says anything.
    from_summary = _by_message((summary,))
    if from_summary is not None:
        return Classification(from_summary.failure_class, f"summary {from_summary.reason}")
    return UNKNOWN
