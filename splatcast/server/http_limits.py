"""Limits on the HTTP request head: uvicorn's httptools protocol with a size, count and time bound.

uvicorn's httptools protocol takes request heads of any size and waits for them forever, and a
WebSocket upgrade whose request line or a header line is over 8 KiB, or that has over 128 header
lines, is never answered at all (the handshake parser of ``websockets`` refuses it without a
response). This subclass answers, before the application sees the request:

- 414 when the request target is over ``max_line_bytes``;
- 431 when a header line is over ``max_line_bytes``, when there are more than ``max_headers``
  lines, or when the head so far is over ``(max_headers + 1) * max_line_bytes`` bytes (checked
  as it arrives, so a client cannot make the server buffer more than that);
- 408 when the head is not complete ``header_timeout_s`` after the connection opened or the
  request began.

Each refusal is JSON ``{"detail": ...}`` like the application's errors, and closes the
connection. Request bodies are bounded by the application (``body_timeout_s``, size limits).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from splatcast.server.settings import Settings


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the answer is in ``_refusal``."""


class _LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_line_bytes = 8000
    max_headers = 100
    header_timeout_s = 30.0

    _head_bytes: int | None = None  # bytes received since the current request began; None once its head is in
    _head_timer: asyncio.TimerHandle | None = None
    _refusal: tuple[int, str] | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_bytes is not None and not self.transport.is_closing():
            self._head_bytes += len(data)
            limit = (self.max_headers + 1) * self.max_line_bytes
            if self._head_bytes > limit:
                self._refuse(431, f"request head over {limit} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_timer is None:
            self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_line_bytes:
            self._stop_parsing(414, f"request target over {self.max_line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(name) + len(value) + 2 > self.max_line_bytes:
            self._stop_parsing(431, f"header line {name[:64].decode('latin-1')!r} over {self.max_line_bytes} bytes")
        if len(self.headers) > self.max_headers:
            self._stop_parsing(431, f"more than {self.max_headers} header lines")

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._stop_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; one raised by a limit answers with its own status."""
        status, message = self._refusal or (400, msg)
        self._refuse(status, message)

    def _stop_parsing(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    def _refuse(self, status: int, message: str) -> None:
        self.logger.warning("refused a request from %s: %d %s", self.client, status, message)
        self._stop_head_timer()
        body = json.dumps({"detail": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nconnection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refuse(408, f"request head not complete within {self.header_timeout_s:g} s")


def http_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """The HTTP protocol class for uvicorn (``Config(http=...)``) with ``settings``' head limits."""
    return type("SplatcastHttpProtocol", (_LimitedHttpToolsProtocol,), {
        "max_line_bytes": settings.max_line_bytes, "max_headers": settings.max_headers,
        "header_timeout_s": settings.header_timeout_s})
