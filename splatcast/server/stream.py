"""One WebSocket subscriber: the stored frames it needs first, then live frames, then the end.

Order of a stream: the header message, frames starting at the latest keyframe (or at frame 0
with ``from=start``, or at the keyframe at or before frame N with ``from=N``), each new frame
as it is stored, and the end message; on a server-side error or a deleted sequence, an error
message and a close. Each WebSocket message is exactly one protocol message, so their
concatenation is a valid ``.splatcast`` file.

No gap and no duplicate: the subscriber joins the live fan-out *before* it reads the stored
index, sends stored frames until it has caught up, and then takes live frames, ignoring those
it already sent. It only ever moves forward to the next frame or to a keyframe, so it never
gets a frame whose reference it lacks (a subscriber that fell behind skips to a keyframe).

Slow clients. What a client has not read yet sits mostly where the server cannot see it (its
kernel receive buffer grows to several MB on loopback, its WebSocket library queues messages),
so a send finishing says little. The sender therefore follows each message with a WebSocket
ping (``ws_protocol.Connection.probe``): the client's stack answers it once it has read
everything before it. While ``max_in_flight`` pings are unanswered, or the oldest was sent over
``max_lag_s`` ago, the sender sends nothing more; meanwhile the subscriber's queue fills, drops
its frames (``hub.Subscription``), and the sender goes on from the latest stored keyframe. The
end or error message is followed by the close only once the client has read everything. A
client that answers no ping, or takes no message, for ``send_timeout_s`` is dropped: a close
frame (1008) if it can be written within ``close_timeout_s``, then the connection is reset, so
a client that never reads cannot hold the socket. Without uvicorn's
``SplatcastWebSocketProtocol`` (another ASGI server) only the send timeout applies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from splatcast.protocol import ErrorMessage, encode_message
from splatcast.server.errors import ServerError
from splatcast.server.hub import Item, Subscription
from splatcast.server.logs import event
from splatcast.server.sequences import Sequences
from splatcast.server.storage import FrameRecord
from splatcast.server.ws_protocol import EXTENSION, Connection

log = logging.getLogger("splatcast.server")
_READ_BYTES = 4 * 1024 * 1024  # stored frames are read from the stream file in batches of about this size


class SendTimeout(Exception):
    """The subscriber took no message, or answered no ping, within ``send_timeout_s``."""


async def serve_subscriber(ws: WebSocket, seqs: Sequences, seq_id: str, start: int | None, realtime: bool) -> None:
    """Run one subscriber until the stream ends, the client leaves, or it is dropped as too slow.

    Refusals (``NotFound``, ``TooManySubscribers``) are HTTP answers before the handshake. Each
    subscriber logs ``subscriber`` events (joined, resync, then finished / left / dropped / failed,
    or refused) and updates the subscriber metrics.
    """
    settings, metrics = seqs.settings, seqs.metrics
    who: dict[str, Any] = {"seq": seq_id, "client": f"{ws.client[0]}:{ws.client[1]}" if ws.client else None}
    try:
        await asyncio.to_thread(seqs.get, seq_id)
        sub = seqs.hub.subscribe(seq_id, settings.subscriber_queue, settings.max_subscribers)
    except ServerError as e:
        metrics.subscriber_events.labels("refused").inc()
        event(log, "subscriber", **who, outcome="refused", status=e.status, reason=str(e))
        await ws.send_denial_response(JSONResponse({"detail": str(e)}, e.status))
        return
    metrics.subscribers.inc()
    metrics.subscriber_events.labels("joined").inc()
    event(log, "subscriber", **who, outcome="joined", start="latest" if start is None else start)
    sender, outcome, t0 = _Sender(ws, seqs, sub, realtime, who), "left", time.monotonic()
    try:
        await ws.accept()
        sending = asyncio.create_task(sender.run(start))
        watcher = asyncio.create_task(_until_disconnect(ws))
        done, pending = await asyncio.wait({sending, watcher}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        exc = sending.exception() if sending in done else None
        if sender.ended:  # the end (or error) message went out: whoever closed first, the stream is complete
            outcome = "finished"
        elif exc is not None and watcher not in done and not isinstance(exc, WebSocketDisconnect):
            if isinstance(exc, SendTimeout):
                outcome = "dropped"
                who["reason"] = str(exc)
                await _drop(ws, "too slow", settings.close_timeout_s, settings.send_timeout_s)
            elif isinstance(exc, ServerError):  # the sequence went away under the sender
                outcome = "failed"
                await _close_with_error(ws, "gone", str(exc), settings.send_timeout_s)
            else:  # a bug: the detail goes to the log, the client learns only that the server failed
                outcome = "failed"
                log.error("stream of %s failed", seq_id, exc_info=exc)
                await _close_with_error(ws, "internal", "internal server error", settings.send_timeout_s)
    finally:
        seqs.hub.unsubscribe(sub)
        metrics.subscribers.dec()
        metrics.subscriber_events.labels(outcome).inc()
        metrics.subscriber_events.labels("resync").inc(sub.resyncs)
        metrics.skipped_frames.inc(sub.skipped)
        event(log, "subscriber", logging.WARNING if outcome in ("dropped", "failed") else logging.INFO, **who,
              outcome=outcome, messages=sender.messages_sent, bytes=sender.bytes_sent, skipped=sub.skipped,
              resyncs=sub.resyncs, seconds=round(time.monotonic() - t0, 3))


async def _until_disconnect(ws: WebSocket) -> None:
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass  # subscribers have nothing to say; ignore what they send


async def _close_with_error(ws: WebSocket, code: str, message: str, timeout: float) -> None:
    try:
        await asyncio.wait_for(ws.send_bytes(encode_message(ErrorMessage(code=code, message=message))), timeout)
        await ws.close(1011, message[:120])
    except Exception:  # the connection is already gone: nothing left to tell
        pass


async def _drop(ws: WebSocket, reason: str, timeout: float, catch_up: float) -> None:
    """Close with 1008 and reset the connection once the client had its chance to read the close.

    If the close frame is not written within ``timeout``, reset at once. Otherwise a client that
    still reads may read what was sent before the close (a reset would discard what it has not
    read, close frame included): the wait goes on while it answers a probe at least every
    ``catch_up`` seconds (at most one wait per message in flight), then ``timeout`` more for it to
    complete the close, before the reset.
    """
    conn = _connection(ws)
    try:
        await asyncio.wait_for(ws.close(1008, reason), timeout)
    except (TimeoutError, OSError, RuntimeError):  # not writable in time, or already gone (uvicorn, starlette)
        if conn is not None:
            conn.abort()
        return
    if conn is None:
        return
    while conn.in_flight:
        try:
            await conn.answer(catch_up)
        except TimeoutError:
            break
    conn.abort(timeout)


def _connection(ws: WebSocket) -> Connection | None:
    return ws.scope.get("extensions", {}).get(EXTENSION)


def _batches(rows: list[FrameRecord], max_bytes: int) -> Iterator[list[FrameRecord]]:
    """Consecutive rows in groups of at most ``max_bytes`` (a single larger row stays alone)."""
    batch: list[FrameRecord] = []
    for row in rows:
        if batch and batch[-1].offset + batch[-1].length - batch[0].offset + row.length > max_bytes:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


class _Sender:
    def __init__(self, ws: WebSocket, seqs: Sequences, sub: Subscription, realtime: bool, who: dict[str, Any]) -> None:
        self.ws, self.seqs, self.storage, self.sub, self.realtime, self.who = ws, seqs, seqs.storage, sub, realtime, who
        self.metrics = seqs.metrics
        self.messages_sent = 0
        self.ended = False  # the end or error message was sent
        self.bytes_sent = 0
        self.seq_id = sub.seq_id
        self.conn = _connection(ws)
        self.timeout = seqs.settings.send_timeout_s
        self.max_lag = seqs.settings.max_lag_s
        self.max_in_flight = seqs.settings.max_in_flight
        self.header_sent = False
        self.next_index = 0  # the frame the subscriber needs next (or any later keyframe)
        self.fps = 0.0
        self.header_bytes = 0  # from the info read in run(); 0 until frame 0 is stored
        self.clock: tuple[float, int] | None = None  # (loop time, index) of the first frame sent

    async def run(self, start: int | None) -> None:
        """Serve from the latest keyframe (``start`` None) or the keyframe at or before frame ``start``."""
        info = await asyncio.to_thread(self.storage.get, self.seq_id)  # read after subscribing: no gap
        if info is None:
            return
        self.fps, self.header_bytes = info.fps, info.header_bytes
        if start is None:
            self.next_index = info.keyframes[-1] if info.keyframes else 0
        else:
            self.next_index = max((k for k in info.keyframes if k <= start), default=0)
        await self.send_stored()
        if info.finished:
            end = await asyncio.to_thread(self.storage.read, self.seq_id, info.header_bytes + info.frame_bytes,
                                          info.end_bytes)
            await self.finish(end, 1000)
            return
        while True:
            if self.sub.waiting_for_keyframe:  # its queue overflowed: go on from the stream file instead
                self.sub.resume()  # before reading the index, as when joining: no gap, duplicates ignored
                info = await asyncio.to_thread(self.storage.get, self.seq_id)
                if info is not None and info.keyframes:
                    self.next_index = max(self.next_index, info.keyframes[-1])
                event(log, "subscriber", **self.who, outcome="resync", next=self.next_index,
                      skipped=self.sub.skipped)
                await self.send_stored()
                continue
            item = await self.next_item()
            if item.kind == "frame":
                if item.index == self.next_index or (item.index > self.next_index and item.frame_type == "keyframe"):
                    await self.send_frame(item.index, item.message)
                    self.next_index = item.index + 1
                    if item.received_at:
                        self.metrics.upload_to_send_seconds.observe(time.time() - item.received_at)
                continue
            await self.finish(item.message, 1000 if item.kind == "end" else 1011)
            return

    async def send_stored(self) -> None:
        """Send the stored frames from ``next_index`` on, until the stored index has no more."""
        while rows := await asyncio.to_thread(self.storage.frames, self.seq_id, self.next_index):
            for batch in _batches(rows, _READ_BYTES):  # one read per batch of consecutive messages
                start = batch[0].offset
                data = await asyncio.to_thread(self.storage.read, self.seq_id, start,
                                               batch[-1].offset + batch[-1].length - start)
                for row in batch:
                    await self.send_frame(row.index, data[row.offset - start:row.offset - start + row.length])
                    self.next_index = row.index + 1

    async def next_item(self) -> Item:
        """The next live item; ``SendTimeout`` if meanwhile a probe gets ``send_timeout_s`` old."""
        while self.conn is not None and self.conn.in_flight:
            remaining = self.timeout - self.conn.unanswered_for()
            if remaining <= 0:
                raise SendTimeout(f"the client answered no ping for {self.timeout:g} s")
            try:
                return await asyncio.wait_for(self.sub.get(), remaining)
            except TimeoutError:
                pass
        return await self.sub.get()

    async def send_frame(self, index: int, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        if not self.header_sent:
            await self.send(await self.seqs.stream_header(self.seq_id, self.header_bytes))
            self.header_sent = True
        if self.realtime:
            if self.clock is None:
                self.clock = (loop.time(), index)
            delay = self.clock[0] + (index - self.clock[1]) / self.fps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await self.send(data)

    async def send(self, data: bytes) -> None:
        """Send one message once the client is close enough behind, then probe behind it.

        Close enough: fewer than ``max_in_flight`` messages unread, the oldest sent at most
        ``max_lag_s`` ago. Raises ``SendTimeout`` when the client answers no probe, or takes no
        message, for ``send_timeout_s``.
        """
        conn = self.conn
        while conn is not None and conn.in_flight and (
                conn.in_flight >= self.max_in_flight or conn.unanswered_for() > self.max_lag):
            await self.client_progress(conn)
        try:
            await asyncio.wait_for(self.ws.send_bytes(data), self.timeout)
        except TimeoutError:
            raise SendTimeout(f"a send took over {self.timeout:g} s") from None
        self.messages_sent += 1
        self.bytes_sent += len(data)
        self.metrics.messages_sent.inc()
        self.metrics.bytes_sent.inc(len(data))
        if self.conn is not None:
            self.conn.probe()

    async def client_progress(self, conn: Connection) -> None:
        """Wait until the client answers a probe; ``SendTimeout`` once the oldest is ``send_timeout_s`` old."""
        try:
            await conn.answer(self.timeout - conn.unanswered_for())
        except TimeoutError:
            raise SendTimeout(f"the client answered no ping for {self.timeout:g} s") from None

    async def finish(self, message: bytes, code: int) -> None:
        """Send the last message, wait until the client has read everything, and close with ``code``."""
        await self.send(message)
        self.ended = True
        while self.conn is not None and self.conn.in_flight:
            await self.client_progress(self.conn)
        await self.ws.close(code)
