"""Encoder leases: one replica encodes a sequence at a time, fenced by an epoch.

The lease of sequence ``<id>`` is the Redis key ``splatcast:lease:<id>`` holding
``"<epoch>|<holder URL>"``, set with ``NX PX`` by one Lua script that also ``INCR``s
``splatcast:epoch:<id>``: every acquisition gets a larger epoch, the fencing token. The holder
renews its leases every third of ``lease_s``; a holder that dies lets it expire, and the next
upload (on any replica) takes it over with a new epoch and a fresh encoder, i.e. a new GOP.
Every commit (``ScaleStorage.append``/``finish``) checks the lease value atomically in Redis and
names its objects with the epoch, so a holder that lost its lease can neither add a frame to the
stream nor overwrite what the new holder wrote.

All methods block (Redis): call them in threads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import redis

from splatcast.server.errors import Unavailable
from splatcast.server.scale_storage import keys

log = logging.getLogger("splatcast.server")

_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v then
  if v == ARGV[3] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return {v, 0} end
  return {v, 0}
end
local e = redis.call('INCR', KEYS[2])
v = e .. '|' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {v, 1}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Lease:
    """The lease of a sequence as seen by this replica: ``value`` is ``"<epoch>|<url>"``."""

    value: str
    mine: bool
    new: bool  # acquired by this call: the encoder must start over (a new GOP)

    @property
    def holder(self) -> str:
        return self.value.split("|", 1)[1]


class Leases:
    """This replica's encoder leases (``url`` = how the other replicas reach it)."""

    def __init__(self, client: redis.Redis, url: str, lease_s: float, retry_after_s: float) -> None:
        self.redis, self.url = client, url
        self.ttl_ms = int(lease_s * 1000)
        self.retry_after_s = retry_after_s
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _call(self, script: Any, seq_id: str, *args: Any) -> Any:
        k = keys(seq_id)
        try:
            return script(keys=[k["lease"], k["epoch"]], args=list(args))
        except redis.RedisError as e:
            raise Unavailable(f"Redis unreachable while taking the encoder lease of {seq_id}",
                              self.retry_after_s) from e

    def acquire(self, seq_id: str) -> Lease:
        """This replica's lease of ``seq_id`` (taken now if free), or the other holder's."""
        with self._lock:
            held = self._held.get(seq_id, "")
        answer: Any = self._call(self._acquire, seq_id, self.url, self.ttl_ms, held)
        raw, new = answer
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        mine = value.split("|", 1)[1] == self.url and (bool(new) or value == held)
        with self._lock:
            if mine:
                self._held[seq_id] = value
            else:
                self._held.pop(seq_id, None)
        return Lease(value, mine, bool(new))

    def value(self, seq_id: str) -> str | None:
        """The lease value this replica holds for ``seq_id`` (the fence of its commits)."""
        with self._lock:
            return self._held.get(seq_id)

    def release(self, seq_id: str) -> None:
        """Give the lease back (sequence finished or deleted, server stopping)."""
        with self._lock:
            value = self._held.pop(seq_id, None)
        if value is not None:
            try:
                self._call(self._release, seq_id, value)
            except Unavailable:
                pass  # it expires by itself

    def renew_all(self) -> None:
        """Extend every held lease; those found lost are forgotten."""
        with self._lock:
            held = dict(self._held)
        for seq_id, value in held.items():
            try:
                if not self._call(self._renew, seq_id, value, self.ttl_ms):
                    log.warning("encoder lease of %s lost", seq_id)
                    with self._lock:
                        if self._held.get(seq_id) == value:
                            del self._held[seq_id]
            except Unavailable as e:
                log.warning("renewing the lease of %s failed: %s", seq_id, e)

    def release_all(self) -> None:
        with self._lock:
            held = list(self._held)
        for seq_id in held:
            self.release(seq_id)
