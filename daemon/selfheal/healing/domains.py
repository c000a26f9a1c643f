"""Domains: the kinds of failing things the router can heal, as they register themselves.

A domain (backups today, workers next) registers with the router its name, the
one event a retry of it may emit, and optionally a probe that a paused incident's
re-check asks ("is the target back?"). The part of the daemon that serves the
retry event says so with `serve`. The router names no domain: a request for a
domain nobody registered escalates with `no_route`, and a registered route that
no consumer serves is refused at start-up — a retry must never be scheduled into
a stream nothing reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from selfheal.core.contracts import SelfHealingRequest
from selfheal.errors import StartupError

Probe = Callable[[SelfHealingRequest], Awaitable[bool]]


@dataclass(frozen=True)
class Domain:
    """One domain's registration."""

    name: str
    retry_event: str  # the only event a retry of this domain may emit
    probe: Probe | None = None  # for pause re-checks: True once the target is back


class Domains:
    """The registry the router reads its routes and probes from."""

    def __init__(self) -> None:
        self._domains: dict[str, Domain] = {}
        self._served: dict[str, set[str]] = {}

    def register(self, domain: Domain) -> None:
        """Add a domain; a second registration under one name is a programming error."""
        if domain.name in self._domains:
            raise ValueError(f"domain {domain.name!r} is registered twice")
        self._domains[domain.name] = domain

    def serve(self, event: str, group: str) -> None:
        """Record that consumer group `group` consumes `event`."""
        self._served.setdefault(event, set()).add(group)

    def check(self) -> None:
        """Refuse a registered retry route that no consumer serves."""
        unserved = [
            f"domain {d.name!r} retries with {d.retry_event}, which no consumer serves"
            for d in self._domains.values()
            if not self._served.get(d.retry_event)
        ]
        if unserved:
            raise StartupError("; ".join(unserved))

    @property
    def names(self) -> list[str]:
        """Registered domain names."""
        return list(self._domains)

    def routes(self) -> Mapping[str, str]:
        """Domain name -> its retry event."""
        return {d.name: d.retry_event for d in self._domains.values()}

    def probes(self) -> Mapping[str, Probe]:
        """Domain name -> its probe, for the domains that have one."""
        return {d.name: d.probe for d in self._domains.values() if d.probe is not None}

    def served_by(self, event: str) -> set[str]:
        """The consumer groups that consume `event`."""
        return set(self._served.get(event, ()))
