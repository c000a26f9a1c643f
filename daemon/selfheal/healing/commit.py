"""One Lua call that commits a whole batch of routing steps, one guarded group per incident.

A group is everything the steps of one incident write in a batch: its guards
(the incident still at the version that was read; the decisions to be stored not
stored yet) are all checked before any of its writes, so a group applies whole
or not at all, and a failed group leaves nothing behind. Every key is passed in
KEYS and shares the namespace hash tag, so the call stays valid on Redis Cluster.
"""

from __future__ import annotations

from typing import Any

# Read, for a batch, the done markers of its events and the hashes of its incidents.
# KEYS: n done markers, then incident hashes. ARGV: n.
LOAD = """
local n = tonumber(ARGV[1])
local done, hashes = {}, {}
for j = 1, n do done[j] = redis.call('EXISTS', KEYS[j]) end
for j = n + 1, #KEYS do hashes[#hashes + 1] = redis.call('HGETALL', KEYS[j]) end
return {done, hashes}
"""

# ARGV: stream maxlen, then groups: <ARGV items after this one> <key base> <guard count>
# guards ops. A group's keys are KEYS[base + 1 ..]; the ops below name them by that
# position within the group, so a group is built once and never rewritten.
# Guards: v <key> <version> (incident version, '0' when absent) | x <key> (key absent).
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
local results = {}
local i = 2
local base = 0
local function key(at) return KEYS[base + tonumber(at)] end
local function xadd(stream, index, first, pairs)
  redis.call('XADD', key(stream), 'MAXLEN', '~', maxlen, '*',
    unpack(ARGV, first, first + 2 * pairs - 1))
  if index ~= '0' then redis.call('SADD', key(index), key(stream)) end
end
while i <= #ARGV do
  local stop = i + 1 + tonumber(ARGV[i])
  base = tonumber(ARGV[i + 1])
  local guards = tonumber(ARGV[i + 2])
  local status = 1
  i = i + 3
  for _ = 1, guards do
    local k = key(ARGV[i + 1])
    if ARGV[i] == 'v' then
      if status == 1 and (redis.call('HGET', k, 'version') or '0') ~= ARGV[i + 2] then
        status = 0
      end
      i = i + 3
    else
      if status == 1 and redis.call('EXISTS', k) == 1 then status = -1 end
      i = i + 2
    end
  end
  while status == 1 and i < stop do
    local op = ARGV[i]
    if op == 'h' then
      local pairs = tonumber(ARGV[i + 2])
      redis.call('HSET', key(ARGV[i + 1]), unpack(ARGV, i + 3, i + 2 + 2 * pairs))
      i = i + 3 + 2 * pairs
    elseif op == 'z' then
      redis.call('ZADD', key(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3])
      i = i + 4
    elseif op == 's' then
      redis.call('SET', key(ARGV[i + 1]), ARGV[i + 2], 'EX', ARGV[i + 3])
      i = i + 4
    elseif op == 'a' then
      local pairs = tonumber(ARGV[i + 3])
      xadd(ARGV[i + 1], ARGV[i + 2], i + 4, pairs)
      i = i + 4 + 2 * pairs
    elseif op == 'o' then
      local pairs = tonumber(ARGV[i + 5])
      if redis.call('SET', key(ARGV[i + 1]), '1', 'NX', 'EX', ARGV[i + 2]) then
        xadd(ARGV[i + 3], ARGV[i + 4], i + 6, pairs)
      end
      i = i + 6 + 2 * pairs
    elseif op == 't' then
      local payloads = key(ARGV[i + 2])
      if redis.call('HSETNX', payloads, ARGV[i + 3], ARGV[i + 5]) == 1 then
        redis.call('ZADD', key(ARGV[i + 1]), ARGV[i + 4], ARGV[i + 3])
      end
      i = i + 6
    elseif op == 'k' then
      redis.call('SET', key(ARGV[i + 1]), '1', 'EX', ARGV[i + 5])
      redis.call('XACK', key(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4])
      i = i + 6
    else
      return redis.error_reply('commit: unknown op ' .. tostring(op))
    end
  end
  results[#results + 1] = status
  i = stop
end
return results
"""

Value = str | int | bytes


class CommitBatch:
    """Builds the KEYS and ARGV of one COMMIT call."""

    def __init__(self, maxlen: int) -> None:
        self.keys: list[str] = []
        self.args: list[Value] = [maxlen]
        self.groups = 0

    def add(self, group: Group) -> int:
        """Append a group; returns the position of its status in the reply."""
        guards, ops = group.guards, group.ops
        self.args += (2 + len(guards) + len(ops), len(self.keys), group.guard_count)
        self.args += guards
        self.args += ops
        self.keys += group.keys
        self.groups += 1
        return self.groups - 1


class Group:
    """The guards and writes of one incident's steps (or of plain acks).

    Keys are listed once per use in `keys` and named in the items by their 1-based
    position there (the group's own KEYS, wherever the batch puts them).
    """

    __slots__ = ("guard_count", "guards", "keys", "ops")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.guards: list[Value] = []
        self.ops: list[Value] = []
        self.guard_count = 0

    def _key(self, name: str) -> int:
        keys = self.keys
        keys.append(name)
        return len(keys)

    def expect_version(self, incident_key: str, version: int) -> None:
        """Apply only while the incident hash is still at `version`."""
        self.guard_count += 1
        self.guards += ("v", self._key(incident_key), version)

    def expect_absent(self, key: str) -> None:
        """Apply only if `key` does not exist (a decision not stored by anyone yet)."""
        self.guard_count += 1
        self.guards += ("x", self._key(key))

    def hset(self, key: str, mapping: dict[str, Value]) -> None:
        """HSET the fields."""
        ops = self.ops
        ops += ("h", self._key(key), len(mapping))
        for pair in mapping.items():
            ops += pair

    def zadd(self, key: str, score: int, member: str) -> None:
        """ZADD one member."""
        self.ops += ("z", self._key(key), score, member)

    def set(self, key: str, value: Value, ttl_s: int) -> None:
        """SET with a TTL."""
        self.ops += ("s", self._key(key), value, ttl_s)

    def xadd(self, stream: str, fields: dict[str, str], index: str | None) -> None:
        """XADD (capped), and add the stream to `index` when given."""
        ops = self.ops
        at = self._key(stream)
        ops += ("a", at, 0 if index is None else self._key(index), len(fields))
        for pair in fields.items():
            ops += pair

    def xadd_once(
        self, marker: str, ttl_s: int, stream: str, fields: dict[str, str], index: str
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
