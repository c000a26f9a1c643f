"""One Lua call that commits a whole batch of routing steps, one guarded group per incident.

A group is everything the steps of one incident write in a batch: its guards
(the incident still at the version that was read; the decisions to be stored not
stored yet) are all checked before any of its writes, so a group applies whole
or not at all, and a failed group leaves nothing behind. Every key is passed in
KEYS and shares the namespace hash tag, so the call stays valid on Redis Cluster.

The groups travel as one MessagePack argument (Redis's Lua has cmsgpack built
in): one string for the client to send instead of thousands of arguments, which
costs the router several microseconds per step less to pack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

# Read, for a batch, the done markers of its events and the hashes of its incidents.
# KEYS: n done markers, then incident hashes. ARGV: n.
LOAD = """
local n = tonumber(ARGV[1])
local done, hashes = {}, {}
for j = 1, n do done[j] = redis.call('EXISTS', KEYS[j]) end
for j = n + 1, #KEYS do hashes[#hashes + 1] = redis.call('HGETALL', KEYS[j]) end
return {done, hashes}
"""

# ARGV[1]: stream maxlen. ARGV[2]: MessagePack array of groups, each
# [key base, guards, ops]. A group's keys are KEYS[base + 1 ..]; guards and ops name
# them by that position within the group, so a group is built once and never rewritten.
# Every value written as text arrives as text; numbers are counts, positions, scores
# and TTLs.
# Guards: v <key> <version text> (incident version, '0' when absent) | x <key> (key absent).
# Ops:
#   h <key> <pairs> f v ...              HSET
#   z <key> <score> <member>             ZADD
#   s <key> <value> <ttl>                SET EX (a decision; its guard saw it absent)
#   a <stream> <index|0> <pairs> f v ... XADD, and remember the stream in the index
#   o <marker> <ttl> <stream> <index> <pairs> f v ...  XADD once per marker (SET NX)
#   t <timers> <payloads> <id> <due> <payload>        schedule, idempotent on the id
#   k <done> <stream> <group> <entry id> <ttl>        mark handled and XACK
# Returns one status per group: 1 applied, 0 version moved, -1 decision already stored.
COMMIT = """
local maxlen = ARGV[1]
local groups = cmsgpack.unpack(ARGV[2])
local results = {}
local base, ops = 0, {}
local function key(at) return KEYS[base + at] end
local function xadd(stream, index, first, pairs)
  redis.call('XADD', key(stream), 'MAXLEN', '~', maxlen, '*',
    unpack(ops, first, first + 2 * pairs - 1))
  if index ~= 0 then redis.call('SADD', key(index), key(stream)) end
end
for g = 1, #groups do
  local guards = groups[g][2]
  base, ops = groups[g][1], groups[g][3]
  local status = 1
  local i = 1
  while status == 1 and i <= #guards do
    local k = key(guards[i + 1])
    if guards[i] == 'v' then
      if (redis.call('HGET', k, 'version') or '0') ~= guards[i + 2] then status = 0 end
      i = i + 3
    else
      if redis.call('EXISTS', k) == 1 then status = -1 end
      i = i + 2
    end
  end
  i = 1
  while status == 1 and i <= #ops do
    local op = ops[i]
    if op == 'h' then
      local pairs = ops[i + 2]
      redis.call('HSET', key(ops[i + 1]), unpack(ops, i + 3, i + 2 + 2 * pairs))
      i = i + 3 + 2 * pairs
    elseif op == 'z' then
      redis.call('ZADD', key(ops[i + 1]), ops[i + 2], ops[i + 3])
      i = i + 4
    elseif op == 's' then
      redis.call('SET', key(ops[i + 1]), ops[i + 2], 'EX', ops[i + 3])
      i = i + 4
    elseif op == 'a' then
      local pairs = ops[i + 3]
      xadd(ops[i + 1], ops[i + 2], i + 4, pairs)
      i = i + 4 + 2 * pairs
    elseif op == 'o' then
      local pairs = ops[i + 5]
      if redis.call('SET', key(ops[i + 1]), '1', 'NX', 'EX', ops[i + 2]) then
        xadd(ops[i + 3], ops[i + 4], i + 6, pairs)
      end
      i = i + 6 + 2 * pairs
    elseif op == 't' then
      local payloads = key(ops[i + 2])
      if redis.call('HSETNX', payloads, ops[i + 3], ops[i + 5]) == 1 then
        redis.call('ZADD', key(ops[i + 1]), ops[i + 4], ops[i + 3])
      end
      i = i + 6
    elseif op == 'k' then
      redis.call('SET', key(ops[i + 1]), '1', 'EX', ops[i + 5])
      redis.call('XACK', key(ops[i + 2]), ops[i + 3], ops[i + 4])
      i = i + 6
    else
      return redis.error_reply('commit: unknown op ' .. tostring(op))
    end
  end
  results[#results + 1] = status
end
return results
"""

# Text and whole numbers. (No bytes: Redis's cmsgpack predates MessagePack's bin type.)
Value = str | int
_PACK: Final = msgspec.msgpack.Encoder()


class CommitBatch:
    """Builds the KEYS and ARGV of one COMMIT call."""

    def __init__(self, maxlen: int) -> None:
        self.keys: list[str] = []
        self._maxlen = maxlen
        self._groups: list[tuple[int, list[Value], list[Value]]] = []

    def add(self, group: Group) -> int:
        """Append a group; returns the position of its status in the reply."""
        self._groups.append((len(self.keys), group.guards, group.ops))
        self.keys += group.keys
        return len(self._groups) - 1

    @property
    def groups(self) -> int:
        """How many groups were added."""
        return len(self._groups)

    def argv(self) -> list[int | bytes]:
        """The call's ARGV (the groups encoded now: call it once they are all added)."""
        return [self._maxlen, _PACK.encode(self._groups)]


class Group:
    """The guards and writes of one incident's steps (or of plain acks).

    Keys are listed once per use in `keys` and named in the items by their 1-based
    position there (the group's own KEYS, wherever the batch puts them).
    """

    __slots__ = ("guards", "keys", "ops")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.guards: list[Value] = []
        self.ops: list[Value] = []

    def _key(self, name: str) -> int:
        keys = self.keys
        keys.append(name)
        return len(keys)

    def expect_version(self, incident_key: str, version: int) -> None:
        """Apply only while the incident hash is still at `version`."""
        self.guards += ("v", self._key(incident_key), str(version))

    def expect_absent(self, key: str) -> None:
        """Apply only if `key` does not exist (a decision not stored by anyone yet)."""
        self.guards += ("x", self._key(key))

    def hset(self, key: str, mapping: Mapping[str, str]) -> None:
        """HSET the fields."""
        ops = self.ops
        ops += ("h", self._key(key), len(mapping))
        for pair in mapping.items():
            ops += pair

    def zadd(self, key: str, score: int, member: str) -> None:
        """ZADD one member."""
        self.ops += ("z", self._key(key), score, member)

    def set(self, key: str, value: str, ttl_s: int) -> None:
        """SET with a TTL."""
        self.ops += ("s", self._key(key), value, ttl_s)

    def xadd(self, stream: str, fields: Mapping[str, str], index: str | None) -> None:
        """XADD (capped), and add the stream to `index` when given."""
        ops = self.ops
        at = self._key(stream)
        ops += ("a", at, 0 if index is None else self._key(index), len(fields))
        for pair in fields.items():
            ops += pair

    def xadd_once(
        self, marker: str, ttl_s: int, stream: str, fields: Mapping[str, str], index: str
    ) -> None:
        """XADD unless `marker` was set before (a publish deduplicated by idempotency key)."""
        ops = self.ops
        keys = self.keys
        at = len(keys)
        keys += (marker, stream, index)
        ops += ("o", at + 1, ttl_s, at + 2, at + 3, len(fields))
        for pair in fields.items():
            ops += pair

    def schedule(
        self, timers: str, payloads: str, event_id: str, due_ms: int, payload: str
    ) -> None:
        """A delayed delivery, as Bus.send_at does it."""
        keys = self.keys
        at = len(keys)
        keys += (timers, payloads)
        self.ops += ("t", at + 1, at + 2, event_id, due_ms, payload)

    def complete(self, done: str, stream: str, group: str, entry_id: str, ttl_s: int) -> None:
        """Mark the entry handled by `group` and ack it, as Bus.complete does."""
        keys = self.keys
        at = len(keys)
        keys += (done, stream)
        self.ops += ("k", at + 1, at + 2, group, entry_id, ttl_s)

    @property
    def empty(self) -> bool:
        """True when the group writes nothing."""
        return not self.ops


def statuses(reply: Any) -> list[int]:
    """The per-group statuses of a COMMIT reply."""
    return [int(status) for status in reply]
