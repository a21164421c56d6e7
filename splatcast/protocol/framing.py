"""`StreamDecoder`: incremental, sans-I/O splitting of a byte stream into messages."""

from __future__ import annotations

import zstandard

from .errors import FramingError, LimitExceeded, ProtocolError
from .messages import Message
from .wire import DEFAULT_LIMITS, PREFIX_BYTES, Limits, decode_body


class StreamDecoder:
    """Feed bytes in any chunking, get whole messages back (docs/PROTOCOL.md, "Framing").

    Buffers at most one message: the 4-byte length prefix is checked against
    `limits.max_message_bytes` as soon as it is complete, before any of the body is kept.
    A chunk holding whole messages is decoded without copying them.

    ``last_sizes``: byte size (length prefix included) of each message the last ``feed``
    returned, in order.

    Errors: `ProtocolError` subclasses only. When a chunk yields some messages and then hits
    an error, ``feed`` returns those messages and the error is raised by the next ``feed`` or
    ``close``; once failed, the decoder raises that error on every later call.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
        self._buf = bytearray()  # part of the prefix, or part of the body once _need is set
        self._need: int | None = None  # body length announced by the current prefix
        self._error: ProtocolError | None = None
        self.last_sizes: list[int] = []

    def feed(self, data) -> list[Message]:
        """Consume a bytes-like chunk; return the messages it completes, in order."""
        if self._error is not None:
            raise self._error
        messages: list[Message] = []
        self.last_sizes = []
        try:
            self._consume(memoryview(data).cast("B"), messages)
        except ProtocolError as e:
            self._error = e
            if not messages:
                raise
        return messages

    def close(self) -> None:
        """End of input: raise `FramingError` if a partial message is buffered."""
        if self._error is None and (self._buf or self._need is not None):
            self._error = FramingError(
                f"stream ended inside a message ({len(self._buf)} bytes of "
                f"{'a length prefix' if self._need is None else f'a {self._need}-byte body'})")
        if self._error is not None:
            raise self._error

    def _consume(self, view: memoryview, messages: list[Message]) -> None:
        pos, end = 0, len(view)
        while pos < end:
            if self._need is None:  # reading the length prefix
                take = min(PREFIX_BYTES - len(self._buf), end - pos)
                self._buf += view[pos:pos + take]
                pos += take
                if len(self._buf) == PREFIX_BYTES:
                    self._need = self._check_length(int.from_bytes(self._buf, "big"))
                    self._buf = bytearray()
                continue
            take = min(self._need - len(self._buf), end - pos)
            body: memoryview | bytearray | None
            if not self._buf and take == self._need:
                body = view[pos:pos + take]  # whole body in this chunk: no copy
            else:
                self._buf += view[pos:pos + take]
                body = self._buf if len(self._buf) == self._need else None
            pos += take
            if body is not None:
                size, self._buf, self._need = PREFIX_BYTES + self._need, bytearray(), None
                messages.append(decode_body(body, self.limits, self._dctx))
                self.last_sizes.append(size)

    def _check_length(self, length: int) -> int:
        if length == 0:
            raise FramingError("message length prefix is 0")
        if length > self.limits.max_message_bytes:
            raise LimitExceeded(f"message length {length} > max_message_bytes={self.limits.max_message_bytes}")
        return length
