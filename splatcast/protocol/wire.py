"""One message <-> bytes: 4-byte big-endian length, one zstd frame, one msgpack map.

Byte-level specification: docs/PROTOCOL.md. Everything here is pure computation (sans-I/O).
Decoding checks every `Limits` bound before the matching allocation: the zstd content size
and window from the frame header before decompressing (python-zstandard would otherwise
trust a forged content size, indygreg/python-zstandard#332), msgpack lengths while
unpacking, the total number of map/list entries as containers are built, then nesting
depth, types, array dtype/shape/length and the Gaussian count while building the message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import numpy as np
import zstandard

from .errors import DecompressionError, LimitExceeded, ProtocolError, SchemaError, VersionError
from .messages import DTYPES, MAGIC, MESSAGE_TYPES, PROTOCOL_VERSION, FrameMessage, Message, Payload, StreamHeader

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PREFIX_BYTES = 4
MSGPACK_INT_RANGE = (-(2**63), 2**64 - 1)
ARRAY_KEYS = {"dtype", "shape", "data"}
MESSAGE_TAGS = {cls: tag for tag, cls in MESSAGE_TYPES.items()}


@dataclass(frozen=True)
class Limits:
    """Decoder limits; each is checked before the allocation it bounds (bytes unless noted).

    max_message_bytes: length prefix (the compressed zstd frame).
    max_decompressed_bytes: zstd frame content size (the msgpack map).
    max_window_bytes: zstd window size (memory the decompressor may need).
    max_array_bytes: one msgpack bin, i.e. one array's data.
    max_str_len: one msgpack str, in bytes.
    max_list_len / max_map_len: entries of one msgpack array (shapes, version) / map.
    max_items: entries of all maps and arrays of one message together.
    max_depth: msgpack container nesting, the message map being depth 1.
    max_gaussians: `FrameMessage.num_gaussians`.
    """

    max_message_bytes: int = 256 << 20
    max_decompressed_bytes: int = 512 << 20
    max_window_bytes: int = 128 << 20
    max_array_bytes: int = 256 << 20
    max_str_len: int = 1 << 16
    max_list_len: int = 32
    max_map_len: int = 1024
    max_items: int = 1 << 16
    max_depth: int = 32
    max_gaussians: int = 10_000_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{f.name} must be a positive int, got {value!r}")
        if self.max_message_bytes >= 1 << 32:
            raise ValueError("Limits.max_message_bytes must fit the 4-byte length prefix")


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------- encoding

def encode_message(msg: Message, level: int = 3) -> bytes:
    """Encode one message: 4-byte big-endian length, then one zstd frame (content size and
    checksum in its header, compression `level` <= 22; negative levels are zstd's fast modes)
    holding one msgpack map.

    Raises `SchemaError` for a payload value that cannot be sent (type, dtype, int range, non
    str key), `LimitExceeded` for payload nesting deeper than the default `Limits.max_depth`
    or a compressed message over 4 GiB - 1, TypeError when `msg` is not a message,
    ValueError for a level over 22.
    """
    wire = message_map(msg)
    if type(msg) is FrameMessage:
        wire["payload"] = _payload_to_wire(msg.payload, depth=2)
    try:
        body = msgpack.packb(wire, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a bin or str over 4 GiB
        raise SchemaError(f"cannot pack message: {e}") from e
    frame = _compress(body, level)
    if len(frame) >= 1 << 32:
        raise LimitExceeded(f"compressed message of {len(frame)} bytes does not fit the length prefix")
    return len(frame).to_bytes(PREFIX_BYTES, "big") + frame


LARGE_BODY = 256 << 10
"""Bodies over this many bytes are also compressed with a minimum match of 7 bytes, and the
smaller result is sent (``_compress``)."""


def _compress(body: bytes, level: int) -> bytes:
    """One zstd frame of ``body`` (content size and checksum) at ``level``, with zstd's
    parameters for that level and the body's size; over LARGE_BODY also with a minimum match of
    7 bytes instead of the level's 5, keeping the smaller. Large bodies are frames of 100k+
    Gaussians, where the codec's residual arrays of jittered content are noise in which short
    matches are chance repeats that cost more than the literals they replace, while finer
    presets' arrays profit from them (shared sequences, first 10 frames, level 3: at
    `standard` B -5.9 %, C -2.3 %, D -0.8 % against the level's parameters alone; the other
    choice wins at `high` and `near-lossless`)."""
    frame = _compressor(level, len(body)).compress(body)
    if len(body) > LARGE_BODY:
        frame = min(frame, _compressor(level, len(body), min_match=7).compress(body), key=len)
    return frame


def _compressor(level: int, size: int, **params: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        level, source_size=size, write_checksum=1, write_content_size=1, **params))


def frame_size(frame: Any, level: int = 3) -> int:
    """Wire bytes of ``frame`` (anything with ``frame_type``, ``num_gaussians`` and ``payload``,
    e.g. a codec ``EncodedFrame``) sent as frame 0: another index and pts change the compressed
    size by under 0.5 %. The size a rate controller counts. Raises as `encode_message`."""
    return len(encode_message(FrameMessage(0, 0.0, frame.frame_type, frame.num_gaussians, frame.payload), level))


def message_map(msg: Message) -> dict[str, Any]:
    """The message's msgpack map with the payload (if any) not yet converted: "t", then a
    header's "magic" and "version", then the dataclass fields. Raises TypeError for a non-message."""
    cls = type(msg)
    if cls not in MESSAGE_TAGS:
        raise TypeError(f"not a protocol message: {cls.__name__}")
    wire: dict[str, Any] = {"t": MESSAGE_TAGS[cls]}
    if cls is StreamHeader:
        wire.update(magic=MAGIC, version=list(PROTOCOL_VERSION))
    wire.update((f.name, getattr(msg, f.name)) for f in fields(msg))
    return wire


def _payload_to_wire(value: Payload, depth: int):
    if isinstance(value, dict):
        _check_depth(depth, DEFAULT_LIMITS)
        for key in value:
            if not isinstance(key, str):
                raise SchemaError(f"payload keys must be str, got {type(key).__name__}")
        return {key: _payload_to_wire(v, depth + 1) for key, v in value.items()}
    if isinstance(value, np.ndarray):
        _check_depth(depth + 1, DEFAULT_LIMITS)  # the array map's shape list
        dtype = value.dtype.newbyteorder("<")
        if dtype.str not in DTYPES:
            raise SchemaError(f"array dtype {value.dtype} is not allowed (allowed: {sorted(DTYPES)})")
        value = np.asarray(value, dtype=dtype, order="C")  # (ascontiguousarray makes 0-d 1-d)
        return {"dtype": dtype.str, "shape": list(value.shape), "data": value.reshape(-1).view(np.uint8).data}
    if isinstance(value, np.generic):
        value = value.item()  # numpy scalar -> Python scalar
    if isinstance(value, int) and not isinstance(value, bool):
        if not MSGPACK_INT_RANGE[0] <= value <= MSGPACK_INT_RANGE[1]:
            raise SchemaError(f"payload int {value} is outside the msgpack range")
    elif not isinstance(value, (bool, float, str)):
        raise SchemaError(f"payload value of type {type(value).__name__} is not allowed")
    return value


# ---------------------------------------------------------------- decoding

def decode_body(body, limits: Limits, dctx: zstandard.ZstdDecompressor) -> Message:
    """Decode one message body (the bytes after the length prefix: one zstd frame).

    `dctx` is a ZstdDecompressor(max_window_size=limits.max_window_bytes) reused by the caller.
    Raises only `ProtocolError` subclasses.
    """
    return _message_from_wire(_unpack(_decompress(body, limits, dctx), limits), limits)


def _decompress(body, limits: Limits, dctx: zstandard.ZstdDecompressor) -> bytes:
    if bytes(body[:4]) != ZSTD_MAGIC:
        raise DecompressionError("message body is not a zstd frame (bad magic number)")
    try:
        params = zstandard.get_frame_parameters(body)
    except zstandard.ZstdError as e:
        raise DecompressionError(f"bad zstd frame header: {e}") from e
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise DecompressionError("zstd frame header does not declare its content size")
    if params.content_size > limits.max_decompressed_bytes:
        raise LimitExceeded(f"zstd content size {params.content_size} > max_decompressed_bytes="
                            f"{limits.max_decompressed_bytes}")
    if params.window_size > limits.max_window_bytes:
        raise LimitExceeded(f"zstd window {params.window_size} > max_window_bytes={limits.max_window_bytes}")
    if params.dict_id:
        raise DecompressionError("zstd frames with a dictionary are not allowed")
    try:
        raw = dctx.decompress(body, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise DecompressionError(f"zstd: {e}") from e
    if len(raw) != params.content_size:  # libzstd checks this; keep the guarantee explicit
        raise DecompressionError(f"zstd frame gave {len(raw)} bytes, header said {params.content_size}")
    return raw


def _no_ext(code: int, data: bytes):
    raise SchemaError(f"msgpack ext type {code} is not allowed")


def _unpack(raw: bytes, limits: Limits):
    items = 0

    def count(container):  # called as each map/array is completed, bounding total entries
        nonlocal items
        items += len(container)
        if items > limits.max_items:
            raise LimitExceeded(f"more than max_items={limits.max_items} map/array entries")
        return container

    try:
        return msgpack.unpackb(
            raw, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext,
            object_hook=count, list_hook=count, max_bin_len=limits.max_array_bytes,
            max_str_len=limits.max_str_len, max_array_len=limits.max_list_len,
            max_map_len=limits.max_map_len)
    except ProtocolError:
        raise
    except msgpack.StackError as e:
        raise LimitExceeded("msgpack nesting deeper than the unpacker's stack") from e
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        # msgpack reports its length limits as plain ValueError("N exceeds max_..._len(M)")
        cls = LimitExceeded if "exceeds max_" in str(e) else SchemaError
        raise cls(f"msgpack: {e}") from e


def _message_from_wire(wire, limits: Limits) -> Message:
    if not isinstance(wire, dict):
        raise SchemaError(f"message is a msgpack {type(wire).__name__}, not a map")
    kind = wire.get("t")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError(f"unknown message type t={kind!r:.80}")
    if cls is StreamHeader:
        _check_version(wire)
    missing = [f.name for f in fields(cls) if f.name not in wire]
    if missing:
        raise SchemaError(f"{kind} message lacks {missing}")
    args = {f.name: wire[f.name] for f in fields(cls)}
    if cls is FrameMessage:
        n = args["num_gaussians"]
        if isinstance(n, int) and n > limits.max_gaussians:
            raise LimitExceeded(f"num_gaussians={n} > max_gaussians={limits.max_gaussians}")
        if not isinstance(args["payload"], dict):
            raise SchemaError("payload must be a map")
        args["payload"] = _payload_from_wire(args["payload"], 2, limits)
    return cls(**args)


def _check_version(wire: dict) -> None:
    if wire.get("magic") != MAGIC:
        raise VersionError(f"bad magic {wire.get('magic')!r:.80}, expected {MAGIC!r}")
    version = wire.get("version")
    if not (isinstance(version, list) and len(version) == 2
            and all(type(v) is int and v >= 0 for v in version)):
        raise SchemaError(f"version must be [major, minor], got {version!r:.80}")
    if version[0] != PROTOCOL_VERSION[0]:
        raise VersionError(f"protocol version {version[0]}.{version[1]} is not supported "
                           f"(this decoder reads {PROTOCOL_VERSION[0]}.x)")


def _check_depth(depth: int, limits: Limits) -> None:
    if depth > limits.max_depth:
        raise LimitExceeded(f"payload nesting over max_depth={limits.max_depth}")


def _payload_from_wire(value, depth: int, limits: Limits) -> Payload:
    if isinstance(value, dict):
        _check_depth(depth, limits)
        if isinstance(value.get("data"), bytes):
            return _array_from_wire(value, depth, limits)
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise SchemaError(f"payload keys must be str, got {type(key).__name__}")
            out[key] = _payload_from_wire(item, depth + 1, limits)
        return out
    if type(value) in (bool, int, float, str):
        return value
    raise SchemaError(f"payload value of type {type(value).__name__} is not allowed")


def _array_from_wire(m: dict, depth: int, limits: Limits) -> np.ndarray:
    if m.keys() != ARRAY_KEYS:
        raise SchemaError(f"array map must have exactly the keys {sorted(ARRAY_KEYS)}")
    dtype = DTYPES.get(m["dtype"]) if isinstance(m["dtype"], str) else None
    if dtype is None:
        raise SchemaError(f"array dtype {m['dtype']!r:.80} is not allowed (allowed: {sorted(DTYPES)})")
    shape, data = m["shape"], m["data"]
    _check_depth(depth + 1, limits)  # the shape list
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise SchemaError(f"array shape must be a list of ints >= 0, got {shape!r:.80}")
    if math.prod(d for d in shape if d) * dtype.itemsize > limits.max_array_bytes:
        raise LimitExceeded(f"array shape {shape} is over max_array_bytes={limits.max_array_bytes}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != len(data):
        raise SchemaError(f"array of shape {shape} and dtype {dtype.str} needs {nbytes} bytes, "
                          f"data has {len(data)}")
    array = np.frombuffer(data, dtype).reshape(tuple(shape))
    if dtype.kind == "b" and data and np.frombuffer(data, np.uint8).max() > 1:
        raise SchemaError("bool array bytes must be 0 or 1")
    return array
