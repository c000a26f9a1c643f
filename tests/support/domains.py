"""Domain registrations for tests that route without the daemon's planes."""

from __future__ import annotations

from selfheal.core.events import BACKUP_RETRY_REQUESTED
from selfheal.healing.domains import Domain, Domains, Probe


def backup_domains(probe: Probe | None = None) -> Domains:
    """The backup domain as the backup plane registers it (its retries served)."""
    domains = Domains()
    domains.register(Domain("backup", BACKUP_RETRY_REQUESTED, probe=probe))
    domains.serve(BACKUP_RETRY_REQUESTED, "system/backup.redis")
    return domains
