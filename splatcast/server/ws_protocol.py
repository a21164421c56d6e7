"""uvicorn's WebSocket protocol plus the two connection controls a streaming server needs.

ASGI lets an application send messages and close, but it cannot tell how far the client has
read (the kernel and the client's WebSocket library hold megabytes the server never sees), and
a close never completes for a client that stopped reading (uvicorn's ``transport.close()`` waits
for the write buffer to drain). ``SplatcastWebSocketProtocol`` is uvicorn's default sans-I/O
protocol with a ``Connection`` in the ASGI scope, ``scope["extensions"]["splatcast.connection"]``:

- ``probe()`` sends a WebSocket ping behind everything written so far. The client's WebSocket
  stack answers it once it has read all the data before it, so the unanswered probes
  (``in_flight``, ``unanswered_for()``) tell how far the client is behind what the server sent,
  buffers included.
- ``abort()`` resets the connection (RST: unsent data is discarded and the socket freed).

Independently of the application, a connection still open ``linger_s`` seconds after the
application returned is aborted, so a client that never reads cannot hold a socket. Other
ASGI servers have no such extension; the application then runs without these controls.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame

EXTENSION = "splatcast.connection"


class Connection:
    """Probes and abort for one WebSocket connection (used from the event loop thread only)."""

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol
        self._probes: deque[tuple[bytes, float]] = deque()  # unanswered (payload, loop time sent), oldest first
        self._count = 0
        self._pong = asyncio.Event()
        self._abort_timer: asyncio.TimerHandle | None = None

    def probe(self) -> None:
        """Send a ping behind the data written so far (nothing once the connection is closing)."""
        p = self._protocol
        if p.close_sent or p.disconnected or p.transport.is_closing():
            return
        self._count += 1
        payload = b"splatcast" + struct.pack("!Q", self._count)
        try:
            p.conn.send_ping(payload)
        except InvalidState:  # closing: nothing left to measure
            return
        p.transport.write(b"".join(p.conn.data_to_send()))
        self._probes.append((payload, p.loop.time()))

    @property
    def in_flight(self) -> int:
        """Probes not answered yet: with one probe per message, the messages the client has not read."""
        return len(self._probes)

    def unanswered_for(self) -> float:
        """Seconds the oldest unanswered probe has been waiting; 0 when none is."""
        return self._protocol.loop.time() - self._probes[0][1] if self._probes else 0.0

    async def answer(self, timeout: float) -> None:
        """Wait for the next answer to a probe (or the end of the connection); raises ``TimeoutError``."""
        self._pong.clear()
        await asyncio.wait_for(self._pong.wait(), max(timeout, 0.0))

    def abort(self, delay: float = 0.0) -> None:
        """Reset the connection now, or after ``delay`` seconds unless it has ended by then."""
        p = self._protocol
        if p.disconnected:
            return
        if delay > 0:
            when = p.loop.time() + delay
            if self._abort_timer is None or when < self._abort_timer.when():
                if self._abort_timer is not None:
                    self._abort_timer.cancel()
                self._abort_timer = p.loop.call_at(when, self.abort)
            return
        sock = p.transport.get_extra_info("socket")
        try:  # linger 0: close() sends RST and drops what the kernel still holds
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (AttributeError, OSError):  # no socket, or already closed
            pass
        p.transport.abort()

    def _on_pong(self, data: bytes) -> bool:
        """Take a pong: it answers its probe and every older one (a client may answer only the latest)."""
        if all(payload != data for payload, _ in self._probes):
            return False
        while self._probes.popleft()[0] != data:
            pass
        self._pong.set()
        return True

    def _on_lost(self) -> None:
        self._probes.clear()
        self._pong.set()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None


class SplatcastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``WebSocketsSansIOProtocol`` with a ``Connection`` in the scope and an abort ``linger_s``
    seconds after the application returned (``ws_protocol(linger_s)`` makes the class for uvicorn)."""

    linger_s = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = Connection(self)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # unset when the handshake was refused
        if scope is not None:
            scope["extensions"][EXTENSION] = self.connection

    def handle_pong(self, event: Frame) -> None:
        if not self.connection._on_pong(bytes(event.data)):
            super().handle_pong(event)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.connection._on_lost()

    async def run_asgi(self) -> None:
        await super().run_asgi()
        self.connection.abort(self.linger_s)


def ws_protocol(linger_s: float) -> type[SplatcastWebSocketProtocol]:
    """The WebSocket protocol class for uvicorn (``Config(ws=...)``) that aborts ``linger_s`` s after the app."""
    return type("SplatcastWebSocketProtocol", (SplatcastWebSocketProtocol,), {"linger_s": linger_s})
