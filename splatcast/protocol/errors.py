"""The protocol's one error tree. Any other exception escaping the decoder is a bug.

::

    ProtocolError(ValueError)      base class: bytes that are not a valid splatcast stream
    ├── FramingError               length prefix of 0, or the stream ends inside a message; a file
    │                              (read_stream) that is empty, lacks its end message or goes on after it
    ├── LimitExceeded              a size, count or depth over `Limits` (refused before allocating)
    ├── DecompressionError         not exactly one valid zstd frame with its content size
    ├── SchemaError                msgpack that is malformed or does not match the message schema
    │                              (also raised by the message constructors and `encode_message`)
    └── VersionError               wrong magic or unsupported protocol major version in a header

After a `StreamDecoder` has raised, it stays failed: every later ``feed``/``close`` raises the
same error again (a byte stream cannot be resynchronised). Specified in docs/PROTOCOL.md.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Base class of every error raised for bytes or messages that break the protocol."""


class FramingError(ProtocolError):
    """The 4-byte length prefix is 0, or the stream ended in the middle of a message; or (files
    read by `read_stream`) the file is empty, ends without its end message or has bytes after it."""


class LimitExceeded(ProtocolError):
    """A length, size, count or nesting depth is over the decoder's `Limits`."""


class DecompressionError(ProtocolError):
    """The message body is not exactly one zstd frame declaring its content size, or is corrupt."""


class SchemaError(ProtocolError):
    """The msgpack is malformed, uses ext types, or a field is missing or of the wrong type/value."""


class VersionError(ProtocolError):
    """A stream header with the wrong magic or an unsupported protocol major version."""
