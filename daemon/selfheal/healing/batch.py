"""The router's batch path: a whole consumer batch in a few loads and a stream of commits.

Same semantics as `Router.handle`, entry by entry: (1) LOAD calls read every
event's done marker and every incident hash (plus one MGET for the decisions
already stored for open incidents), each written as soon as its entries are
validated; (2) plain Python routes the events in order, each incident's events
against its updated in-memory state (healing/plan.py); (3) COMMIT calls apply
each incident's steps as a guarded group (healing/commit.py) and ack their
entries. All these calls are written on one connection (bus/pipelined.py): Redis
runs one while Python prepares the next, and the replies are read when needed.
Invalid requests, replays inside the batch, steps that raise and groups whose
guard failed go back to the consumer's per-entry path, which is `Router.handle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from selfheal.bus.consumer import Delivery, Outcome
from selfheal.bus.pipelined import PackedPipeline
from selfheal.bus.streams import as_text
from selfheal.core.contracts import InvalidRequest, RequestView, parse_request
from selfheal.core.events import EventDecodeError
from selfheal.core.fast_request import decode_request
from selfheal.core.policy import Action, Decision
from selfheal.healing.commit import COMMIT, LOAD, CommitBatch, Group, statuses
from selfheal.healing.plan import Chain, Entry, Planner, Step
from selfheal.healing.store import snapshot_from
from selfheal.telemetry import OpenSpan

if TYPE_CHECKING:
    from selfheal.healing.router import Router

log = logging.getLogger("selfheal.router")

# Incidents per COMMIT call: small enough that Redis applies one while Python plans
# the next (and that little is left to wait for at the end), large enough that the
# calls stay few.
FLUSH_EVERY: Final = 16
TAIL_FLUSH: Final = 4
# Entries per LOAD call: Redis reads one chunk's state while the next is validated.
LOAD_EVERY: Final = 50


class BatchRouter:
    """Routes consumer batches for one Router (see the module docstring)."""

    def __init__(self, router: Router, notify_event: str) -> None:
        self.router = router
        self.bus = router.bus
        self.keys = router.bus.keys
        self._notify = notify_event
        self._load = self.bus.client.register_script(LOAD)
        self._commit = self.bus.client.register_script(COMMIT)
        self.flush_every = FLUSH_EVERY
        self._scripts_loaded = False

    async def handle(self, entries: list[Delivery]) -> list[Outcome]:
        """One outcome per entry, in order."""
        outcomes = [Outcome.SLOW] * len(entries)
        if not self._scripts_loaded:
            # Loaded up front: otherwise every call written in the first batch meets
            # NOSCRIPT and runs again on its own. (After a Redis restart the calls of
            # one batch do, through _rerun_if_unloaded.)
            for script in (self._load, self._commit):
                script.sha = await self.bus.client.script_load(script.script)
            self._scripts_loaded = True
        planner = Planner(self.router, self._notify)
        async with PackedPipeline(self.bus.client) as pipe:
            valid, loads = await self._validate_and_load(entries, planner, pipe)
            if not valid:
                return outcomes
            done, chains = await self._loaded(loads, await pipe.replies())
            await self._load_stored(chains)
            return await self._route(planner, pipe, valid, done, chains, outcomes)

    async def _route(
        self,
        planner: Planner,
        pipe: PackedPipeline,
        valid: list[Entry],
        done: dict[int, bool],
        chains: dict[str, Chain],
        outcomes: list[Outcome],
    ) -> list[Outcome]:
        """Plan every valid entry, writing each incident's group once it is complete."""
        # An incident's group can be committed once its last event of the batch is
        # planned; writing such groups early lets Redis apply them while Python plans
        # the rest (the groups touch disjoint incidents, so order does not matter).
        last = {entry.request.resolved_incident_id: pos for pos, entry in enumerate(valid)}
        acks = Group()
        steps: list[Step] = []
        ready: list[Chain] = []
        sent: list[_Commit] = []
        knobs = self.router.knobs()
        for pos, entry in enumerate(valid):
            incident_id = entry.request.resolved_incident_id
            chain = chains[incident_id]
            if done[entry.index]:
                planner.ack(acks, entry)  # handled before; only the ack was lost
                outcomes[entry.index] = Outcome.DUPLICATE
            elif not chain.broken:
                try:
                    steps.append(await planner.route(chain, entry, knobs))
                except Exception as exc:  # the slow path retries it and reports the error
                    log.info("batch left %s to the slow path: %s", entry.envelope.id, exc)
                    chain.broken = True
            if last[incident_id] == pos and chain.group is not None:
                ready.append(chain)
                # Near the end, smaller calls: the last one is what the batch waits for.
                flush_at = self.flush_every if len(valid) - pos > self.flush_every else TAIL_FLUSH
                if len(ready) >= flush_at:
                    await self._send(pipe, sent, ready, None)
                    ready = []
        await self._send(pipe, sent, ready, acks)
        replies = await pipe.replies()
        await self._applied(sent, replies)
        self._finish(steps, outcomes)
        return outcomes

    async def _send(
        self, pipe: PackedPipeline, sent: list[_Commit], chains: list[Chain], acks: Group | None
    ) -> None:
        """Write one COMMIT call for the chains' groups (and the acks of duplicates), if
        there is anything to write, and note it in `sent`."""
        commit = CommitBatch(self.bus.maxlen)
        for chain in chains:
            assert chain.group is not None
            commit.add(chain.group)
        if acks is not None and not acks.empty:
            commit.add(acks)
        if not commit.groups:
            return
        call = _Commit(chains, commit.keys, commit.argv())
        await pipe.send_script(self._commit, call.keys, call.args)
        sent.append(call)

    async def _applied(self, sent: list[_Commit], replies: list[Any]) -> None:
        """Mark the chains whose group applied, from the replies of the COMMIT calls sent."""
        for call, reply in zip(sent, replies, strict=True):
            reply = await self._rerun_if_unloaded(self._commit, call.keys, call.args, reply)
            for chain, status in zip(call.chains, statuses(reply), strict=False):
                chain.applied = status == 1

    async def _validate_and_load(
        self, entries: list[Delivery], planner: Planner, pipe: PackedPipeline
    ) -> tuple[list[Entry], list[_Load]]:
        """The valid entries; a LOAD call is written for every LOAD_EVERY of them, so
        Redis runs one while the next ones are validated."""
        valid: list[Entry] = []
        loads: list[_Load] = []
        incidents: set[str] = set()  # each incident's hash is read once, by its first LOAD
        start = 0
        for entry in _valid(entries):
            valid.append(entry)
            if len(valid) - start >= LOAD_EVERY:
                loads.append(await self._send_load(pipe, planner, valid[start:], incidents))
                start = len(valid)
        if len(valid) > start:
            loads.append(await self._send_load(pipe, planner, valid[start:], incidents))
        return valid, loads

    async def _send_load(
        self, pipe: PackedPipeline, planner: Planner, entries: list[Entry], incidents: set[str]
    ) -> _Load:
        ids = [
            incident_id
            for incident_id in dict.fromkeys(
                entry.request.resolved_incident_id for entry in entries
            )
            if incident_id not in incidents
        ]
        incidents.update(ids)
        keys = [planner.done_key(entry.envelope) for entry in entries]
        keys += [self.keys.incident(incident_id) for incident_id in ids]
        await pipe.send_script(self._load, keys, [len(entries)])
        return _Load(entries, ids, keys)

    async def _loaded(
        self, loads: list[_Load], replies: list[Any]
    ) -> tuple[dict[int, bool], dict[str, Chain]]:
        """The done flags (by entry index) and the incidents' chains, from the LOAD replies."""
        done: dict[int, bool] = {}
        chains: dict[str, Chain] = {}
        for load, reply in zip(loads, replies, strict=True):
            reply = await self._rerun_if_unloaded(self._load, load.keys, [len(load.entries)], reply)
            flags, hashes = reply
            for entry, flag in zip(load.entries, flags, strict=True):
                done[entry.index] = bool(flag)
            for incident_id, flat in zip(load.incident_ids, hashes, strict=True):
                snapshot = snapshot_from(incident_id, zip(flat[::2], flat[1::2], strict=True))
                chains[incident_id] = Chain.of(snapshot, self.keys.incident(incident_id))
        return done, chains

    async def _rerun_if_unloaded(
        self, script: AsyncScript, keys: list[str], args: list[Any], reply: Any
    ) -> Any:
        """A script's reply; after NOSCRIPT (e.g. a Redis restart), loaded and run again."""
        if isinstance(reply, NoScriptError):
            return await self.bus.eval_packed(script, keys, args)
        if isinstance(reply, Exception):
            raise reply  # the consumer takes every entry the slow way
        return reply

    async def _load_stored(self, chains: dict[str, Chain]) -> None:
        """Decisions already stored for open incidents' current steps (a crash mid-way)."""
        store = self.router.store
        open_chains: list[tuple[Chain, str]] = [
            (chain, store.decision_key(chain.incident))
            for chain in chains.values()
            if chain.incident is not None and not chain.incident.closed
        ]
        if not open_chains:
            return
        raw = await self.bus.execute_packed("MGET", *[key for _, key in open_chains])
        for (chain, _), value in zip(open_chains, raw, strict=True):
            if value is not None:
                chain.stored = Decision.from_json(as_text(value))

    def _finish(self, steps: list[Step], outcomes: list[Outcome]) -> None:
        """Count and close the steps whose group applied; the rest go the slow way."""
        end_ns = time.time_ns()
        stats = self.router.stats
        conflicts = 0
        finished: list[tuple[OpenSpan, dict[str, Any]]] = []
        for step in steps:
            if not step.chain.applied:
                conflicts += 1
                continue  # its span is never recorded: the slow path opens its own
            outcomes[step.index] = Outcome.ACKED
            if step.joined:
                stats.joined += 1
            elif step.decision is not None:
                stats.decisions += 1
                stats.reused += int(step.reused)
                stats.escalations += int(step.decision.action == Action.ESCALATE)
            finished.append((step.span, step.attributes))
        self.router.telemetry.close_spans(finished, end_ns)
        if conflicts:
            log.debug("batch: %d step(s) lost a race and go one by one", conflicts)


class _Commit(NamedTuple):
    """One COMMIT call written: the chains whose groups it carries (in order), its keys
    and its arguments (encoded once, kept for a run again after NOSCRIPT)."""

    chains: list[Chain]
    keys: list[str]
    args: list[int | bytes]


class _Load(NamedTuple):
    """One LOAD call written: its entries, the incidents whose hashes it reads, its keys."""

    entries: list[Entry]
    incident_ids: list[str]
    keys: list[str]


def _valid(entries: list[Delivery]) -> Iterator[Entry]:
    """The entries the batch can route: valid requests, each event once."""
    seen: set[str] = set()
    for index, delivery in enumerate(entries):
        envelope = delivery.envelope
        if envelope.id in seen:
            continue  # a replay of an event of this batch: after it, one by one
        request: RequestView | None = decode_request(envelope.data)
        if request is None:  # not an ordinary request: the contract decides
            try:
                request = parse_request(delivery.event.data)
            except (EventDecodeError, InvalidRequest):
                continue  # the slow path answers completed{invalid} or dead-letters it
        seen.add(envelope.id)  # (an invalid entry does not keep a valid one of its id out)
        yield Entry(index, delivery.entry_id, envelope, request, envelope.data)
