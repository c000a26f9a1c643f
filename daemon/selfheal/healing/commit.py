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

# ARGV: stream maxlen, then groups: <ARGV items after this one> <guard count> guards ops.
# Guards: v <key> <version> (incident version, '0' when absent) | x <key> (key absent).
# Ops (keys are KEYS indexes):
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
local function xadd(stream, index, first, pairs)
  redis.call('XADD', KEYS[tonumber(stream)], 'MAXLEN', '~', maxlen, '*',
    unpack(ARGV, first, first + 2 * pairs - 1))
  if index ~= '0' then redis.call('SADD', KEYS[tonumber(index)], KEYS[tonumber(stream)]) end
end
while i <= #ARGV do
  local stop = i + 1 + tonumber(ARGV[i])
  local guards = tonumber(ARGV[i + 1])
  local status = 1
  i = i + 2
  for _ = 1, guards do
    local key = KEYS[tonumber(ARGV[i + 1])]
    if ARGV[i] == 'v' then
      if status == 1 and (redis.call('HGET', key, 'version') or '0') ~= ARGV[i + 2] then
        status = 0
      end
      i = i + 3
    else
      if status == 1 and redis.call('EXISTS', key) == 1 then status = -1 end
      i = i + 2
    end
  end
  while status == 1 and i < stop do
    local op = ARGV[i]
    if op == 'h' then
      local pairs = tonumber(ARGV[i + 2])
      redis.call('HSET', KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + 2 * pairs))
      i = i + 3 + 2 * pairs
    elseif op == 'z' then
      redis.call('ZADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
      i = i + 4
    elseif op == 's' then
      redis.call('SET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], 'EX', ARGV[i + 3])
      i = i + 4
    elseif op == 'a' then
      local pairs = tonumber(ARGV[i + 3])
      xadd(ARGV[i + 1], ARGV[i + 2], i + 4, pairs)
      i = i + 4 + 2 * pairs
    elseif op == 'o' then
      local pairs = tonumber(ARGV[i + 5])
      if redis.call('SET', KEYS[tonumber(ARGV[i + 1])], '1', 'NX', 'EX', ARGV[i + 2]) then
        xadd(ARGV[i + 3], ARGV[i + 4], i + 6, pairs)
      end
      i = i + 6 + 2 * pairs
    elseif op == 't' then
      local payloads = KEYS[tonumber(ARGV[i + 2])]
      if redis.call('HSETNX', payloads, ARGV[i + 3], ARGV[i + 5]) == 1 then
        redis.call('ZADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 4], ARGV[i + 3])
      end
      i = i + 6
    elseif op == 'k' then
      redis.call('SET', KEYS[tonumber(ARGV[i + 1])], '1', 'EX', ARGV[i + 5])
      redis.call('XACK', KEYS[tonumber(ARGV[i + 2])], ARGV[i + 3], ARGV[i + 4])
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
        self._index: dict[str, int] = {}

    def add(self, group: Group) -> int:
        """Append a group; returns the position of its status in the reply."""
        index = self._index
        for part in (group.guards, group.ops):
            for slot in part.slots:
                name = part.items[slot]
                assert isinstance(name, str)
                at = index.get(name)
                if at is None:
                    self.keys.append(name)
                    at = index[name] = len(self.keys)
                part.items[slot] = at
        self.args.append(1 + len(group.guards.items) + len(group.ops.items))
        self.args.append(group.guard_count)
        self.args.extend(group.guards.items)
        self.args.extend(group.ops.items)
        self.groups += 1
        return self.groups - 1


class _Part:
    """ARGV items with key names in `slots`, turned into KEYS indexes when added."""

    __slots__ = ("items", "slots")

    def __init__(self) -> None:
        self.items: list[Value] = []
        self.slots: list[int] = []

    def key(self, name: str) -> None:
        self.slots.append(len(self.items))
        self.items.append(name)


class Group:
    """The guards and writes of one incident's steps (or of plain acks)."""

    def __init__(self) -> None:
        self.guards = _Part()
        self.ops = _Part()
        self.guard_count = 0

    def expect_version(self, incident_key: str, version: int) -> None:
        """Apply only while the incident hash is still at `version`."""
        self.guard_count += 1
        self.guards.items.append("v")
        self.guards.key(incident_key)
        self.guards.items.append(version)

    def expect_absent(self, key: str) -> None:
        """Apply only if `key` does not exist (a decision not stored by anyone yet)."""
        self.guard_count += 1
        self.guards.items.append("x")
        self.guards.key(key)

    def hset(self, key: str, mapping: dict[str, Value]) -> None:
        """HSET the fields."""
        ops = self.ops
        ops.items.append("h")
        ops.key(key)
        ops.items.append(len(mapping))
        for field, value in mapping.items():
            ops.items += (field, value)

    def zadd(self, key: str, score: int, member: str) -> None:
        """ZADD one member."""
        self.ops.items.append("z")
        self.ops.key(key)
        self.ops.items += (score, member)

    def set(self, key: str, value: Value, ttl_s: int) -> None:
        """SET with a TTL."""
        self.ops.items.append("s")
        self.ops.key(key)
        self.ops.items += (value, ttl_s)

    def xadd(self, stream: str, fields: dict[str, str], index: str | None) -> None:
        """XADD (capped), and add the stream to `index` when given."""
        ops = self.ops
        ops.items.append("a")
        ops.key(stream)
        if index is None:
            ops.items.append(0)
        else:
            ops.key(index)
        ops.items.append(len(fields))
        _extend_pairs(ops.items, fields)

    def xadd_once(
        self, marker: str, ttl_s: int, stream: str, fields: dict[str, str], index: str
    ) -> None:
        """XADD unless `marker` was set before (a publish deduplicated by idempotency key)."""
        ops = self.ops
        ops.items.append("o")
        ops.key(marker)
        ops.items.append(ttl_s)
        ops.key(stream)
        ops.key(index)
        ops.items.append(len(fields))
        _extend_pairs(ops.items, fields)

    def schedule(
        self, timers: str, payloads: str, event_id: str, due_ms: int, payload: str
    ) -> None:
        """A delayed delivery, as Bus.send_at does it."""
        ops = self.ops
        ops.items.append("t")
        ops.key(timers)
        ops.key(payloads)
        ops.items += (event_id, due_ms, payload)

    def complete(self, done: str, stream: str, group: str, entry_id: str, ttl_s: int) -> None:
        """Mark the entry handled by `group` and ack it, as Bus.complete does."""
        ops = self.ops
        ops.items.append("k")
        ops.key(done)
        ops.key(stream)
        ops.items += (group, entry_id, ttl_s)

    @property
    def empty(self) -> bool:
        """True when the group writes nothing."""
        return not self.ops.items


def _extend_pairs(out: list[Value], fields: dict[str, str]) -> None:
    for field, value in fields.items():
        out += (field, value)


def statuses(reply: Any) -> list[int]:
    """The per-group statuses of a COMMIT reply."""
    return [int(status) for status in reply]
