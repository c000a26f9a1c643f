"""Transport selection: mount or SSH with in-copy retries, the spool when neither answers."""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import anyio
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type

from selfheal.backup.model import Artifact, Delivery, ProgressFn, Transport, TransportError
from selfheal.backup.spool import Spool, SpoolEntry, SpoolEntryCorrupt
from selfheal.core.backoff import copy_retry_delay_s
from selfheal.core.classify import FailureClass, classify_item
from selfheal.core.contracts import Evidence
from selfheal.telemetry import Telemetry

log = logging.getLogger(__name__)

# Failures the copy gives up on at once, neither retried here nor spooled: another
# attempt of the same copy would meet them again (the router then decides: it
# escalates auth and full disks, and may retry a whole run after an integrity error).
HARD_ERRNOS: Final = frozenset({"ENOSPC", "EDQUOT", "EACCES", "EPERM"})
STOP_COPY_CLASSES: Final = frozenset(
    {FailureClass.AUTH, FailureClass.RESOURCE_EXHAUSTED, FailureClass.INTEGRITY}
)
# Probes promise to be cheap and bounded; this only guards against one that is not.
PROBE_GUARD_S: Final = 30.0


def is_hard_failure(error: TransportError) -> bool:
    """Auth, integrity and full-disk failures: no retry and no spool, escalate."""
    kind = error.kind or ""
    if kind.startswith("auth") or kind == "integrity" or error.errno_name in HARD_ERRNOS:
        return True
    # The shared classifier also knows the SSH library's auth exceptions and messages.
    try:
        found = classify_item(Evidence.model_validate(error.evidence))
    except ValidationError:
        return False
    return found is not None and found.failure_class in STOP_COPY_CLASSES


def as_transport_error(mode: str, exc: TransportError | OSError) -> TransportError:
    """A transport's stray OSError, in the shape the classification expects."""
    if isinstance(exc, TransportError):
        return exc
    name = errno.errorcode.get(exc.errno) if exc.errno else None
    return TransportError(mode, str(exc), errno_name=name, exception=type(exc).__name__)


class _CopyFailed(Exception):
    """One attempt failed transiently (the reason is in the ship's errors): retry."""


class _Spool(Exception):
    """Nothing answers, or the recovery window ended mid-copy: spool now."""


@dataclass(frozen=True)
class ShipResult:
    """How a ship ended: delivered (verified on the NAS) or spooled (not a success)."""

    status: Literal["delivered", "spooled"]
    delivery: Delivery | None
    attempts: int
    errors: list[str] = field(default_factory=list)
    spool_entry: SpoolEntry | None = None
    # Each transport's last failure, in preference order: why nothing delivered.
    reasons: dict[str, str] = field(default_factory=dict)

    def why(self) -> str:
        """`mount: <why>; ssh: <why>`, and how the retrying ended."""
        ending = [e for e in self.errors[-1:] if not e.startswith(("probe ", "attempt "))]
        parts = [f"{mode}: {reason}" for mode, reason in self.reasons.items()] + ending
        return "; ".join(parts) or "no transport reachable"


def _others(reasons: dict[str, str], failed: str) -> tuple[str, ...]:
    """The other transports' reasons, for the message of a hard failure of `failed`."""
    return tuple(f"{mode}: {why}" for mode, why in reasons.items() if mode != failed)


# Between probes while waiting for the NAS to answer at all.
NAS_WAIT_STEP_S: Final = 5.0


class TransferManager:
    """Ships artifacts over the first transport that answers, retrying and switching."""

    def __init__(
        self,
        transports: Sequence[Transport],
        spool: Spool,
        *,
        max_attempts: int,
        retry_base_ms: int,
        retry_max_ms: int,
        recovery_window_s: float,
        telemetry: Telemetry,
        nas_wait_s: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        if not transports:
            raise ValueError("at least one transport is required")
        if max_attempts < 1 or retry_base_ms < 1 or retry_max_ms < retry_base_ms:
            raise ValueError("need max_attempts >= 1 and 1 <= retry_base_ms <= retry_max_ms")
        if recovery_window_s <= 0:
            raise ValueError("recovery_window_s must be positive")
        if nas_wait_s < 0:
            raise ValueError("nas_wait_s must not be negative")
        self.transports = list(transports)  # preference order, decided by the caller
        self.spool = spool
        self.max_attempts = max_attempts
        self.retry_base_ms = retry_base_ms
        self.retry_max_ms = retry_max_ms
        self.recovery_window_s = recovery_window_s
        # How long a copy waits for a transport to answer before the artifact is spooled:
        # a NAS share or the network coming back after a wake takes seconds.
        self.nas_wait_s = nas_wait_s
        self.telemetry = telemetry
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock

    async def ship(
        self,
        artifact: Artifact,
        *,
        progress: ProgressFn | None = None,
        incident_id: str | None = None,
    ) -> ShipResult:
        """Deliver artifact + manifest verified, or spool them; hard failures raise.

        Transient failures are retried (tenacity; the delay is core/backoff.py's) over
        whichever transport answers, until the attempts or the recovery window run out.
        """
        errors: list[str] = []
        reasons = {t.mode: "not tried" for t in self.transports}
        attempts = 0
        started = self._clock()
        last: Transport | None = None

        async def once() -> Delivery:
            nonlocal attempts, last
            picking = time.time_ns()
            transport = await self._wait_for_transport(errors, reasons, last)
            if transport is None:
                raise _Spool  # nothing answers: the spool takes it, the drainer carries on
            if last is not None and transport is not last:
                # The probes that chose another way than the one that just failed.
                with self.telemetry.decision_span(
                    "selfheal.backup.switch",
                    {"artifact": artifact.name, "from": last.mode, "to": transport.mode},
                    start_ns=picking,
                ):
                    pass
            attempts += 1
            last = transport
            remaining = self.recovery_window_s - (self._clock() - started)
            with anyio.move_on_after(max(remaining, 0.0)):
                try:
                    return await self._attempt(transport, artifact, progress, attempts)
                except (TransportError, OSError) as exc:
                    error = as_transport_error(transport.mode, exc)
                    reasons[transport.mode] = error.reason
                    if is_hard_failure(error):
                        error.others = _others(reasons, error.mode)
                        raise error from (None if error is exc else exc)
                    errors.append(f"attempt {attempts} via {transport.mode}: {error}")
                    log.warning("transfer of %s: %s", artifact.name, errors[-1])
                    raise _CopyFailed from None
            errors.append(f"attempt {attempts} via {transport.mode}: recovery window ended")
            reasons[transport.mode] = "the recovery window ended during the copy"
            raise _Spool

        def stop(state: RetryCallState) -> bool:
            if attempts >= self.max_attempts:
                errors.append(f"gave up after {attempts} attempts")
                return True
            if self._clock() - started + state.upcoming_sleep > self.recovery_window_s:
                errors.append("the recovery window ends before the next attempt")
                return True
            return False

        retrying = AsyncRetrying(
            stop=stop,
            wait=lambda state: copy_retry_delay_s(
                attempts, self.retry_base_ms, self.retry_max_ms, self._jitter()
            ),
            retry=retry_if_exception_type(_CopyFailed),
            sleep=self._sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    delivery = await once()
                    return ShipResult("delivered", delivery, attempts, errors, reasons=reasons)
        except (RetryError, _Spool):
            pass  # why is in `errors`
        entry = await self.spool.add(artifact, incident_id=incident_id)
        log.warning("spooled %s after %d attempts (entry %s)", artifact.name, attempts, entry.id)
        return ShipResult("spooled", None, attempts, errors, entry, reasons)

    async def _attempt(
        self,
        transport: Transport,
        artifact: Artifact,
        progress: ProgressFn | None,
        attempt: int,
        *,
        from_spool: bool = False,
    ) -> Delivery:
        """One delivery attempt, as a span (ERROR, with the failure, when it raises)."""
        with self.telemetry.decision_span(
            "selfheal.backup.transfer",
            {
                "artifact": artifact.name,
                "target": artifact.target,
                "mode": transport.mode,
                "attempt": attempt,
                "from_spool": from_spool,
            },
        ) as span:
            delivery = await self._deliver(transport, artifact, progress)
            span.set_attribute("selfheal.bytes", delivery.bytes)
            if delivery.resumed_from:
                span.set_attribute("selfheal.resumed_from", delivery.resumed_from)
            return delivery

    async def _deliver(
        self, transport: Transport, artifact: Artifact, progress: ProgressFn | None
    ) -> Delivery:
        delivery = await transport.put(
            artifact.path,
            artifact.remote_path,
            sha256=artifact.sha256,
            size=artifact.size,
            progress=progress,
            # Written before the artifact takes its final name: a final name on the NAS
            # always has its manifest beside it, even if we are killed in between.
            manifest=artifact.manifest_bytes(),
        )
        if not delivery.verified:
            raise TransportError(
                transport.mode,
                f"{delivery.remote_path} was not verified by the transport",
                exception="IntegrityError",
                kind="integrity",
            )
        return delivery

    async def _wait_for_transport(
        self, errors: list[str], reasons: dict[str, str], last: Transport | None
    ) -> Transport | None:
        """The first transport that answers, probing again every NAS_WAIT_STEP_S for up
        to `nas_wait_s` while none does (only the first time: a transport that answered
        once and then failed is the retries' business)."""
        waited = 0.0
        while True:
            transport = await self._pick(errors, reasons, after_failure_of=last)
            if transport is not None or last is not None or waited >= self.nas_wait_s:
                if transport is not None and waited:
                    log.info("%s answered after %.0f s", transport.mode, waited)
                return transport
            step = min(NAS_WAIT_STEP_S, self.nas_wait_s - waited)
            await self._sleep(step)
            waited += step

    async def _pick(
        self,
        errors: list[str],
        reasons: dict[str, str],
        *,
        after_failure_of: Transport | None = None,
    ) -> Transport | None:
        """The first transport whose probe passes; after a failure, the others come first.
        Each failed probe goes into `errors` and is its transport's reason."""
        order = [t for t in self.transports if t is not after_failure_of]
        if after_failure_of is not None:
            order.append(after_failure_of)
        for transport in order:
            with anyio.move_on_after(PROBE_GUARD_S):
                try:
                    probe = await transport.probe()
                except Exception as exc:  # a broken probe only means "not this way"
                    reasons[transport.mode] = f"probe failed: {exc!r}"
                    errors.append(f"probe {transport.mode}: {exc!r}")
                    continue
                if probe.ok:
                    return transport
                reasons[transport.mode] = probe.reason
                if probe.error is not None and is_hard_failure(probe.error):
                    # Reachable but refusing us (host key, login): escalate, never spool.
                    probe.error.others = _others(reasons, transport.mode)
                    raise probe.error
                errors.append(f"probe {transport.mode}: {probe.reason}")
                continue
            reasons[transport.mode] = f"no answer within {PROBE_GUARD_S:g}s"
            errors.append(f"probe {transport.mode}: no answer within {PROBE_GUARD_S:g}s")
        return None

    async def drain(
        self,
        on_delivered: Callable[[SpoolEntry, Delivery], Awaitable[None]],
        *,
        target: str | None = None,
    ) -> int:
        """Try each spooled entry (of `target`, if given) once over the first transport that
        answers; count deliveries."""
        entries = [e for e in await self.spool.entries() if target is None or e.target == target]
        if not entries:
            return 0
        with self.telemetry.decision_span(
            "selfheal.backup.spool_drain", {"target": target, "entries": len(entries)}
        ) as span:
            errors: list[str] = []
            transport = await self._pick(errors, {})
            if transport is None:
                log.info("spool drain: no transport answers (%s)", "; ".join(errors))
                span.set_attributes({"selfheal.delivered": 0, "selfheal.error": "; ".join(errors)})
                return 0
            delivered = 0
            for entry in entries:
                try:
                    artifact = await self.spool.artifact(entry)
                except SpoolEntryCorrupt as exc:
                    log.error("spool drain: %s", exc)
                    continue
                try:
                    delivery = await self._attempt(transport, artifact, None, 1, from_spool=True)
                except (TransportError, OSError) as exc:
                    error = as_transport_error(transport.mode, exc)
                    if is_hard_failure(error):
                        # The next entries would hit the same wall; the router escalates it.
                        raise error from (None if error is exc else exc)
                    log.warning("spool drain: %s stays spooled: %s", entry.name, error)
                    continue
                # Callback before removal: if it fails the entry stays and is delivered
                # again (idempotently) next time, instead of its completion being lost.
                await on_delivered(entry, delivery)
                await self.spool.remove(entry)
                delivered += 1
            span.set_attributes({"selfheal.delivered": delivered, "selfheal.mode": transport.mode})
            return delivered
