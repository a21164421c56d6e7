"""``Broadcaster`` fed by Redis Streams: every replica sees every message of a live sequence.

The messages enter the stream ``splatcast:live:<id>`` when they are committed
(``ScaleStorage``: frames and the end message by the commit scripts, the 'deleted' error by
``tell_deleted``), so ``publish`` has nothing to do here. Each replica runs one reader task per
sequence that has local subscribers: an ``XREAD BLOCK`` loop (no consumer group: groups split
the entries, every replica needs all of them) that offers each entry to the local subscribers
through an in-process ``Hub`` (the same skip-to-keyframe backpressure). A new reader starts
``stream_skew_ms`` back in the stream: a subscriber joins the fan-out before it reads the stored
index, so nothing committed after it joined is missed; the duplicates are dropped by the sender.
Redis errors are logged and the reader tries again every ``retry_after_s``: when Redis comes
back (with its AOF: the stream ids persist) it goes on from the last entry it saw.

Used from the event loop thread only (redis-py asyncio).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from splatcast.server.hub import Hub, Item, Subscription
from splatcast.server.scale_storage import keys

log = logging.getLogger("splatcast.server")


class RedisHub:
    """``Broadcaster`` over Redis Streams (``block_ms``: XREAD BLOCK time)."""

    def __init__(self, redis_url: str, block_ms: int, skew_ms: int, timeout_s: float, retry_after_s: float,
                 count: int = 32) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=block_ms / 1000 + timeout_s,
                                             socket_connect_timeout=timeout_s, protocol=2)  # RESP2: list replies
        self.block_ms, self.skew_ms, self.retry_s, self.batch = block_ms, skew_ms, retry_after_s, count
        self._local = Hub()
        self._readers: dict[str, asyncio.Task] = {}
        self._telling: set[asyncio.Task] = set()

    def subscribe(self, seq_id: str, maxsize: int, limit: int) -> Subscription:
        sub = self._local.subscribe(seq_id, maxsize, limit)
        if seq_id not in self._readers:
            start = f"{max(0, int(time.time() * 1000) - self.skew_ms)}-0"
            self._readers[seq_id] = asyncio.get_running_loop().create_task(self._read(seq_id, start))
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._local.unsubscribe(sub)
        if not self._local.count(sub.seq_id):
            task = self._readers.pop(sub.seq_id, None)
            if task is not None:
                task.cancel()

    def publish(self, seq_id: str, item: Item) -> None:
        """Frames and the end message: nothing to do, their commit put them in the Redis stream. An
        error message (the sequence was deleted) is added to the stream, which expires a minute later."""
        if item.kind == "error":
            task = asyncio.get_running_loop().create_task(self._tell(seq_id, item.message))
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)

    async def _tell(self, seq_id: str, message: bytes) -> None:
        key = keys(seq_id)["live"]
        try:
            await self.redis.xadd(key, {"kind": "error", "msg": message})
            await self.redis.expire(key, 60)
        except RedisError as e:
            log.warning("telling the subscribers of %s that it is gone failed: %s", seq_id, e)

    def count(self, seq_id: str) -> int:
        return self._local.count(seq_id)

    def queued_frames(self) -> int:
        return self._local.queued_frames()

    async def close(self) -> None:
        for task in self._readers.values():
            task.cancel()
        await asyncio.gather(*self._readers.values(), return_exceptions=True)
        self._readers.clear()
        await self.redis.aclose()

    async def _read(self, seq_id: str, last_id: str) -> None:
        key = keys(seq_id)["live"]
        while True:
            try:
                found: Any = await self.redis.xread({key: last_id}, count=self.batch, block=self.block_ms)
            except RedisError as e:
                log.warning("reading the live stream of %s failed (retrying): %s", seq_id, e)
                await asyncio.sleep(self.retry_s)
                continue
            for _, entries in found or ():
                for entry_id, fields in entries:
                    last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    self._local.publish(seq_id, _item(fields))


def _item(fields: dict) -> Item:
    kind = fields[b"kind"].decode()
    if kind == "frame":
        return Item("frame", fields[b"msg"], int(fields[b"index"]), fields[b"type"].decode(), float(fields[b"at"]))
    return Item("end" if kind == "end" else "error", fields[b"msg"])
