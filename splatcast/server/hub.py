"""Live fan-out of encoded messages to the subscribers of a sequence, with backpressure.

Each subscriber has a bounded queue of frame messages. When a new frame finds the queue full,
the subscriber has fallen behind: its queued frames are dropped and it skips every incoming
frame until the next keyframe, so it never receives a frame whose reference it lacks; the
server's sender (``stream.py``) does not wait for that keyframe but calls ``resume`` and goes on
from the latest stored keyframe. Control messages (end of stream, error) are always queued. The
messages are shared ``bytes`` objects: a subscriber costs a queue of references, not a copy.

``Broadcaster`` is the interface the server uses; ``Hub`` the in-process implementation (a
replicated deployment would feed the same interface from Redis pub/sub or Streams). Both are
used from the event loop thread only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from splatcast.server.errors import TooMany


@dataclass(frozen=True)
class Item:
    """One encoded protocol message. ``index``/``frame_type`` are set for frames only;
    ``received_at`` (Unix time the frame's upload was accepted) for live frames."""

    kind: Literal["frame", "end", "error"]
    message: bytes
    index: int = -1
    frame_type: str = ""
    received_at: float = 0.0


class TooManySubscribers(TooMany):
    """Raised by ``subscribe`` when the sequence already has the maximum number of subscribers."""


class Subscription:
    """A subscriber's bounded queue; ``skipped`` counts frames it lost to backpressure."""

    def __init__(self, seq_id: str, maxsize: int) -> None:
        self.seq_id = seq_id
        self.maxsize = maxsize
        self.skipped = 0
        self.resyncs = 0
        self._queue: deque[Item] = deque()
        self._frames = 0  # frame items in the queue (control items do not count)
        self._waiting_for_keyframe = False
        self._ready = asyncio.Event()

    def offer(self, item: Item) -> None:
        """Queue ``item`` without blocking, applying the skip-to-keyframe policy."""
        if item.kind == "frame":
            if self._waiting_for_keyframe and item.frame_type != "keyframe":
                self.skipped += 1
                return
            self._waiting_for_keyframe = False
            if self._frames >= self.maxsize:
                self.skipped += self._frames
                self.resyncs += 1
                self._queue = deque(i for i in self._queue if i.kind != "frame")
                self._frames = 0
                if item.frame_type != "keyframe":
                    self.skipped += 1
                    self._waiting_for_keyframe = True
                    return
            self._frames += 1
        self._queue.append(item)
        self._ready.set()

    @property
    def queued_frames(self) -> int:
        """Frame messages in the queue now."""
        return self._frames

    @property
    def waiting_for_keyframe(self) -> bool:
        """True after the queue overflowed, until a keyframe arrives or ``resume`` is called."""
        return self._waiting_for_keyframe

    def resume(self) -> None:
        """Stop waiting for a keyframe and take every new frame again: the server's sender reads the
        frames it needs up to now from storage instead (from the latest keyframe)."""
        self._waiting_for_keyframe = False

    async def get(self) -> Item:
        """The oldest queued item, waiting for one if the queue is empty."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        if item.kind == "frame":
            self._frames -= 1
        return item


class Broadcaster(Protocol):
    """Publish messages to the live subscribers of a sequence."""

    def subscribe(self, seq_id: str, maxsize: int, limit: int) -> Subscription:
        """A new subscription; raises ``TooManySubscribers`` when ``limit`` are already there."""

    def unsubscribe(self, sub: Subscription) -> None: ...

    def publish(self, seq_id: str, item: Item) -> None: ...

    def count(self, seq_id: str) -> int: ...

    def queued_frames(self) -> int:
        """Frame messages waiting in all subscribers' queues now."""


class Hub:
    """In-process ``Broadcaster``."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}

    def subscribe(self, seq_id: str, maxsize: int, limit: int) -> Subscription:
        subs = self._subs.setdefault(seq_id, set())
        if len(subs) >= limit:
            raise TooManySubscribers(f"sequence {seq_id} already has {len(subs)} subscribers (limit {limit})")
        sub = Subscription(seq_id, maxsize)
        subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.seq_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.seq_id]

    def publish(self, seq_id: str, item: Item) -> None:
        for sub in self._subs.get(seq_id, ()):
            sub.offer(item)

    def count(self, seq_id: str) -> int:
        return len(self._subs.get(seq_id, ()))

    def queued_frames(self) -> int:
        return sum(sub.queued_frames for subs in self._subs.values() for sub in subs)
