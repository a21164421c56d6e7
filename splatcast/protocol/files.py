"""Thin blocking helpers for `.splatcast` files (header + frames + end, concatenated)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from .framing import StreamDecoder
from .messages import Message
from .wire import DEFAULT_LIMITS, Limits, encode_message

CHUNK_BYTES = 1 << 20


def _opened(source, mode: str):
    if isinstance(source, (str, os.PathLike)):
        return open(source, mode)
    return contextlib.nullcontext(source)  # caller's file object: left open


def read_stream(source: str | os.PathLike | BinaryIO, limits: Limits = DEFAULT_LIMITS) -> Iterator[Message]:
    """Yield the messages of a file (path or binary file object), reading 1 MiB at a time.

    Raises `ProtocolError` subclasses for invalid bytes (after yielding the messages before
    them), `FramingError` for a file that ends inside a message, OSError for I/O failures.
    """
    return (msg for msg, _ in read_stream_sized(source, limits))


def read_stream_sized(source: str | os.PathLike | BinaryIO,
                      limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[Message, int]]:
    """Like `read_stream`, yielding (message, its size in bytes including the length prefix)."""
    decoder = StreamDecoder(limits)
    with _opened(source, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            messages = decoder.feed(chunk)
            yield from zip(messages, decoder.last_sizes)
    decoder.close()


def write_stream(target: str | os.PathLike | BinaryIO, messages: Iterable[Message], level: int = 3) -> int:
    """Encode and write messages one by one (a generator is consumed lazily); return bytes written."""
    written = 0
    with _opened(target, "wb") as f:
        for msg in messages:
            written += f.write(encode_message(msg, level))
    return written
