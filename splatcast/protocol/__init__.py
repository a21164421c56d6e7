"""Sans-I/O wire protocol: codec payloads <-> self-contained messages (docs/PROTOCOL.md).

A message is a 4-byte big-endian length, one zstd frame (with its content size) and one
msgpack map; a `.splatcast` file, an HTTP download and a WebSocket stream carry the same
messages. This package does not import `splatcast.codec`: payloads are opaque dicts.
"""

from .errors import DecompressionError, FramingError, LimitExceeded, ProtocolError, SchemaError, VersionError
from .files import read_stream, read_stream_sized, write_stream
from .framing import StreamDecoder
from .messages import (
                     DTYPES,
                     FRAME_TYPES,
                     MAGIC,
                     MEDIA_TYPE,
                     PROTOCOL_VERSION,
                     EndOfStream,
                     ErrorMessage,
                     FrameMessage,
                     Message,
                     Payload,
                     StreamHeader,
)
from .wire import Limits, encode_message, frame_size

__all__ = [
    "DTYPES", "FRAME_TYPES", "MAGIC", "MEDIA_TYPE", "PROTOCOL_VERSION", "DecompressionError", "EndOfStream",
    "ErrorMessage", "FrameMessage", "FramingError", "LimitExceeded", "Limits", "Message",
    "Payload", "ProtocolError", "SchemaError", "StreamDecoder", "StreamHeader", "VersionError",
    "encode_message", "frame_size", "read_stream", "read_stream_sized", "write_stream",
]
