"""Rules that span several keys, checked on effective values so messages can cite sources."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic_core import to_jsonable_python

from selfheal.config.leaves import LEAF_BY_KEY, show_value
from selfheal.config.sources import Candidate

Values = Mapping[str, Any]  # effective key -> validated value; a key failing validation is absent
Origins = Mapping[str, Candidate]  # effective key -> the candidate that won

_ORDERED_PAIRS = (
    ("router.sleepMinMs", "router.sleepMaxMs"),
    ("transport.nasRetryBaseMs", "transport.nasRetryMaxMs"),
)
_MODEL_KEYS = (
    ("selfheal.advisor.model", "router.model"),
    ("selfheal.advisor.fallbackModel", "router.fallbackModel"),
)


class _Rules:
    """Collects problems; `cite` renders a key with its value and where it came from."""

    def __init__(self, values: Values, origins: Origins) -> None:
        self.values = values
        self.origins = origins
        self.problems: list[str] = []

    def have(self, *keys: str) -> bool:
        return all(key in self.values for key in keys)

    def cite(self, key: str) -> str:
        value = to_jsonable_python(self.values[key], by_alias=True)
        shown = show_value(LEAF_BY_KEY[key].secret, value)
        return f"{key} = {shown} (from {self.origins[key].source})"

    def add(self, message: str) -> None:
        self.problems.append(message)


def _ordered(r: _Rules) -> None:
    for low, high in _ORDERED_PAIRS:
        if r.have(low, high) and r.values[low] > r.values[high]:
            r.add(f"{r.cite(low)} must be <= {r.cite(high)}")


def _advisor(r: _Rules) -> None:
    base = "selfheal.advisor"
    enabled, endpoint = f"{base}.enabled", f"{base}.endpoint"
    if r.have(enabled, endpoint) and r.values[enabled] and r.values[endpoint] is None:
        r.add(f"{base}.endpoint: required when {r.cite(f'{base}.enabled')}")
    allow_key = f"{base}.allowlist"
    if not r.have(allow_key):
        return
    allowlist = r.values[allow_key]
    for own_key, router_key in _MODEL_KEYS:
        if not r.have(own_key):
            continue
        key = own_key if r.values[own_key] is not None else router_key
        if r.have(key) and r.values[key] not in allowlist:
            # Checked even while the advisor is off: turning it on must not be what breaks.
            r.add(
                f"{r.cite(key)}: model {r.values[key]!r} is not in {allow_key} "
                f"{allowlist!r} (from {r.origins[allow_key].source})"
            )


def _together(r: _Rules, first: str, second: str) -> None:
    """Both keys set, or both null."""
    if r.have(first, second) and (r.values[first] is None) != (r.values[second] is None):
        missing, given = (first, second) if r.values[first] is None else (second, first)
        r.add(f"{missing}: required when {given} is set (from {r.origins[given].source})")


def _requires(r: _Rules, key: str, needed: str, is_set: Callable[[Any], bool]) -> None:
    if r.have(key, needed) and is_set(r.values[key]) and r.values[needed] is None:
        r.add(f"{key}: set (from {r.origins[key].source}) but {needed} is null")


def _notifiers(r: _Rules) -> None:
    base = "selfheal.notifiers"
    _requires(r, f"{base}.webhook.headers", f"{base}.webhook.url", bool)
    _together(r, f"{base}.ntfy.url", f"{base}.ntfy.topic")
    _requires(r, f"{base}.ntfy.token", f"{base}.ntfy.url", lambda v: v is not None)
    _together(r, f"{base}.telegram.botToken", f"{base}.telegram.chatId")


def _watchdog(r: _Rules) -> None:
    key = "selfheal.watchdog.workers"
    if not r.have(key):
        return
    names = [worker.name for worker in r.values[key]]
    for name in sorted({n for n in names if names.count(n) > 1}):
        r.add(f"{key}: worker name {name!r} is used more than once (from {r.origins[key].source})")
    enabled = "selfheal.watchdog.enabled"
    if not names and r.have(enabled) and r.values[enabled]:
        r.add(f"{key}: must list at least one worker when {r.cite(enabled)}")


def _redis(r: _Rules) -> None:
    base = "selfheal.redis"
    if not r.have(f"{base}.url", f"{base}.sentinelMaster", f"{base}.cluster"):
        return
    url: str = r.values[f"{base}.url"]
    sentinel, cluster = r.values[f"{base}.sentinelMaster"], r.values[f"{base}.cluster"]
    scheme, _, rest = url.partition("://")
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    cited = r.cite(f"{base}.url")
    if sentinel is not None and cluster:
        r.add(f"{base}.sentinelMaster and {base}.cluster: choose one (Sentinel or Cluster)")
    elif (sentinel is not None or cluster) and scheme not in ("redis", "rediss"):
        mode = "sentinelMaster" if sentinel is not None else "cluster"
        r.add(f"{cited}: {base}.{mode} needs a redis:// or rediss:// URL")
    elif sentinel is not None:
        for node in hosts.split(","):
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit():
                r.add(f"{cited}: sentinel node {node!r} must be host:port")
    elif "," in hosts:
        r.add(f"{cited}: several hosts are only allowed with {base}.sentinelMaster")


def _transports(r: _Rules) -> None:
    mount, ssh = "selfheal.nas.useMount", "selfheal.nas.useSsh"
    if r.have(mount, ssh) and not (r.values[mount] or r.values[ssh]):
        r.add(f"{r.cite(mount)} and {r.cite(ssh)}: at least one transport must be on")


def cross_check(values: Values, origins: Origins) -> list[str]:
    """Return the problems found by every cross-key rule."""
    rules = _Rules(values, origins)
    for check in (_ordered, _advisor, _notifiers, _watchdog, _redis, _transports):
        check(rules)
    return rules.problems
