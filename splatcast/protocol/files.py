"""Thin blocking helpers for `.splatcast` files (header + frames + end, concatenated).

A file is complete: it ends with its end message. A stream still being uploaded (no end
message yet) is read with a `StreamDecoder` directly, not with these helpers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from .errors import FramingError
from .framing import StreamDecoder
from .messages import EndOfStream, Message
from .wire import DEFAULT_LIMITS, Limits, encode_message

CHUNK_BYTES = 1 << 20


def _opened(source, mode: str):
    if isinstance(source, (str, os.PathLike)):
        return open(source, mode)
    return contextlib.nullcontext(source)  # caller's file object: left open


def read_stream(source: str | os.PathLike | BinaryIO, limits: Limits = DEFAULT_LIMITS) -> Iterator[Message]:
    """Yield the messages of a file (path or binary file object), reading 1 MiB at a time,
    up to and including its end message.

    Raises `ProtocolError` subclasses for invalid bytes (after yielding the messages before
    them); `FramingError` for an empty file, a file that ends inside a message or without an
    end message, and for bytes after the end message (checked before the end message is
    yielded); OSError for I/O failures.
    """
    return (msg for msg, _ in read_stream_sized(source, limits))


def read_stream_sized(source: str | os.PathLike | BinaryIO,
                      limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[Message, int]]:
    """Like `read_stream`, yielding (message, its size in bytes including the length prefix)."""
    decoder = StreamDecoder(limits)
    read = used = 0  # bytes read from the file / in the messages decoded so far
    with _opened(source, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            read += len(chunk)
            for msg, size in zip(decoder.feed(chunk), decoder.last_sizes):
                used += size
                if isinstance(msg, EndOfStream):
                    extra = read - used + sum(map(len, iter(lambda: f.read(CHUNK_BYTES), b"")))
                    if extra:
                        raise FramingError(f"the end message is followed by {extra:,} more bytes")
                    yield msg, size
                    return
                yield msg, size
    decoder.close()
    raise FramingError("the stream is empty" if read == 0 else
                       "the stream is truncated: it ends without an end message")


def write_stream(target: str | os.PathLike | BinaryIO, messages: Iterable[Message], level: int = 3) -> int:
    """Encode and write messages one by one (a generator is consumed lazily); return bytes written."""
    written = 0
    with _opened(target, "wb") as f:
        for msg in messages:
            written += f.write(encode_message(msg, level))
    return written
