#!/usr/bin/env python3
"""Write the protocol test vectors in tests/vectors/ (deterministic, byte for byte).

Good vectors: ``NAME.splatcast`` (an encoded stream) and ``NAME.json`` (what it decodes to).
Bad vectors: ``bad/NAME.bin`` plus ``bad.json`` naming the `ProtocolError` subclass each
must raise. The JSON layout is described in tests/vectors/README.md.

To add a vector, write a function returning its messages and decorate it with ``@vector``
(``@bad_vector`` for invalid bytes). A builder may use more than the protocol (e.g. a
real-codec vector built with splatcast.codec from a few small frames), as long as it is
deterministic and small.

Usage: python scripts/make_vectors.py [--check]   (--check: compare, write nothing, exit 1 on a difference)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import zstandard

from splatcast.protocol import EndOfStream, ErrorMessage, FrameMessage, Message, StreamHeader, encode_message
from splatcast.protocol.wire import message_map

OUT = Path(__file__).resolve().parents[1] / "tests" / "vectors"
LEVEL = 3
MAX_LISTED_VALUES = 1024  # arrays with more elements are described by sha256 only

VECTORS: dict[str, Callable[[], list[Message]]] = {}
BAD_VECTORS: dict[str, tuple[str, Callable[[], bytes]]] = {}


def vector(fn: Callable[[], list[Message]]):
    VECTORS[fn.__name__] = fn
    return fn


def bad_vector(error: str):
    def register(fn: Callable[[], bytes]):
        BAD_VECTORS[fn.__name__] = (error, fn)
        return fn
    return register


# ------------------------------------------------------------ raw building blocks (also for tests)

def framed(body: bytes, *, content_size: bool = True, checksum: bool = True, level: int = LEVEL) -> bytes:
    """Length prefix + zstd frame of `body` (msgpack bytes, valid or not), with no checks."""
    frame = zstandard.ZstdCompressor(level=level, write_content_size=content_size,
                                     write_checksum=checksum).compress(body)
    return len(frame).to_bytes(4, "big") + frame


def raw_message(obj, **kw) -> bytes:
    """`framed` ``msgpack.packb(obj)``, with no schema checks (keywords as `framed`)."""
    return framed(msgpack.packb(obj, use_bin_type=True), **kw)


def forge_content_size(message: bytes, size: int) -> bytes:
    """Rewrite a message's zstd frame header to declare `size` (8-byte field, 1 MiB window)."""
    frame = message[4:]
    fhd = frame[4]
    single_segment, checksum = (fhd >> 5) & 1, (fhd >> 2) & 1
    fcs_len = [single_segment, 2, 4, 8][fhd >> 6]
    blocks = frame[5 + (not single_segment) + fcs_len:]
    header = frame[:4] + bytes([(3 << 6) | (checksum << 2), 10 << 3]) + size.to_bytes(8, "little")
    forged = header + blocks
    return len(forged).to_bytes(4, "big") + forged


def arr(values, dtype) -> np.ndarray:
    return np.asarray(values, dtype=np.dtype(dtype))


# ------------------------------------------------------------ good vectors

def _header(**kw) -> StreamHeader:
    params = {"gop": 3, "alpha": 0.5, "step": None, "device": "cpu", "lossless": False}
    return StreamHeader(**{"codec": "synthetic", "codec_version": 1, "codec_params": params,
                           "sh_degree": 1, "fps": 30.0, **kw})


@vector
def stream() -> list[Message]:
    """Header, keyframe/intra/interframe with every dtype, scalar kind and nesting, end."""
    keyframe = {
        "b1": arr([True, False, True], "|b1"),
        "u1": arr(np.arange(12).reshape(4, 3) * 21, "|u1"),
        "i1": arr([-128, -1, 0, 127], "|i1"),
        "u2": arr([0, 1, 65535], "<u2"),
        "i2": arr([[-32768, 32767], [-2, 2]], "<i2"),
        "u4": arr([0, 4294967295, 123456789], "<u4"),
        "i4": arr([-2147483648, 2147483647, -7], "<i4"),
        "u8": arr([0, 2**64 - 1, 2**53 + 1], "<u8"),
        "i8": arr([-(2**63), 2**63 - 1, -(2**53) - 1], "<i8"),
        "f2": arr([0.5, -1.25, 65504.0, 2.0**-24], "<f2"),
        "f4": arr([[0.1, -2.5, 3e38], [1e-45, 0.0, -0.0]], "<f4"),
        "f8": arr([np.pi, -1e308, 5e-324], "<f8"),
        "scalar_f4": arr(3.5, "<f4"),
        "empty_f4": arr(np.zeros((0, 3)), "<f4"),
        "scalars": {"int": 7, "neg": -3, "big": 2**40, "float": 0.25, "str": "h\u00e9llo \u2603",
                    "true": True, "false": False},
        "nested": {"a": {"b": {"c": arr([1, 2], "<u2")}}, "empty": {}},
    }
    intra = {"ids": arr([3, 1, 4, 1], "|u1"), "step": 0.001}
    interframe = {"changed": arr([2], "<u4"), "delta": arr([[1, -1, 0]], "<i2")}
    return [_header(frame_count=3, name="vectors"),
            FrameMessage(0, 0.0, "keyframe", 4, keyframe),
            FrameMessage(1, 1 / 30, "intra", 4, intra),
            FrameMessage(2, 2 / 30, "interframe", 4, interframe),
            EndOfStream(3)]


@vector
def error() -> list[Message]:
    """A live stream (unknown frame count) that the server stops with an error message."""
    return [_header(frame_count=None, name="live"),
            FrameMessage(0, 0.0, "keyframe", 1, {"ids": arr([0], "|u1")}),
            ErrorMessage("evicted", "subscriber too slow: send timed out")]


# ------------------------------------------------------------ bad vectors

def _frame_wire(payload, num_gaussians: int = 1) -> dict:
    return {"t": "frame", "index": 0, "pts": 0.0, "frame_type": "keyframe",
            "num_gaussians": num_gaussians, "payload": payload}


def _array_wire(dtype: str, shape: list, data: bytes) -> dict:
    return {"dtype": dtype, "shape": shape, "data": data}


def _header_wire(**kw) -> dict:
    wire = {"t": "header", "magic": "splatcast", "version": [1, 0], "codec": "synthetic",
            "codec_version": 1, "codec_params": {}, "sh_degree": 0, "fps": 30.0,
            "frame_count": None, "name": ""}
    return {**wire, **kw}


@bad_vector("FramingError")
def zero_length() -> bytes:
    return b"\0\0\0\0"


@bad_vector("FramingError")
def truncated() -> bytes:
    return encode_message(EndOfStream(0))[:-3]


@bad_vector("LimitExceeded")
def huge_length_prefix() -> bytes:
    return b"\xff\xff\xff\xff" + b"\0" * 16


@bad_vector("DecompressionError")
def not_zstd() -> bytes:
    body = msgpack.packb({"t": "end", "frame_count": 0})
    return len(body).to_bytes(4, "big") + body


@bad_vector("DecompressionError")
def missing_content_size() -> bytes:
    return raw_message({"t": "end", "frame_count": 0}, content_size=False)


@bad_vector("LimitExceeded")
def forged_content_size_huge() -> bytes:
    return forge_content_size(raw_message({"t": "end", "frame_count": 0}), 2**40)


@bad_vector("DecompressionError")
def forged_content_size_small() -> bytes:
    return forge_content_size(raw_message({"t": "error", "code": "x", "message": "y" * 100}), 10)


@bad_vector("DecompressionError")
def bad_checksum() -> bytes:
    msg = bytearray(raw_message({"t": "end", "frame_count": 0}))
    msg[-1] ^= 0xFF
    return bytes(msg)


@bad_vector("SchemaError")
def ext_type() -> bytes:
    return raw_message(_frame_wire({"x": msgpack.ExtType(1, b"abcd")}))


@bad_vector("SchemaError")
def timestamp_ext() -> bytes:
    return raw_message(_frame_wire({"x": msgpack.Timestamp(1, 0)}))


@bad_vector("SchemaError")
def non_string_key() -> bytes:
    return framed(b"\x82\xa1t\xa3end\x01\x00", checksum=False)  # {"t": "end", 1: 0}


@bad_vector("SchemaError")
def wrong_array_length() -> bytes:
    return raw_message(_frame_wire({"x": _array_wire("<f4", [2, 3], b"\0" * 20)}))


@bad_vector("SchemaError")
def big_endian_dtype() -> bytes:
    return raw_message(_frame_wire({"x": _array_wire(">f4", [1], b"\0" * 4)}))


@bad_vector("SchemaError")
def negative_dim() -> bytes:
    return raw_message(_frame_wire({"x": _array_wire("|u1", [-1], b"")}))


@bad_vector("SchemaError")
def bool_not_0_or_1() -> bytes:
    return raw_message(_frame_wire({"x": _array_wire("|b1", [2], b"\x01\x02")}))


@bad_vector("SchemaError")
def unknown_frame_type() -> bytes:
    return raw_message({**_frame_wire({}), "frame_type": "bframe"})


@bad_vector("SchemaError")
def negative_index() -> bytes:
    return raw_message({**_frame_wire({}), "index": -1})


@bad_vector("LimitExceeded")
def too_many_gaussians() -> bytes:
    return raw_message(_frame_wire({}, num_gaussians=10_000_001))


@bad_vector("LimitExceeded")
def deep_nesting() -> bytes:
    payload: dict = {}
    for _ in range(40):
        payload = {"a": payload}
    return raw_message(_frame_wire(payload))


@bad_vector("VersionError")
def bad_magic() -> bytes:
    return raw_message(_header_wire(magic="splatkast"))


@bad_vector("VersionError")
def future_major_version() -> bytes:
    return raw_message(_header_wire(version=[2, 0]))


# ------------------------------------------------------------ JSON description

def _json_value(value):
    if isinstance(value, np.ndarray):
        out = {"dtype": value.dtype.str, "shape": list(value.shape),
               "sha256": hashlib.sha256(value.tobytes()).hexdigest()}
        if value.size <= MAX_LISTED_VALUES:
            flat = value.reshape(-1).tolist()
            out["values"] = [str(v) for v in flat] if value.dtype.kind in "iu" and value.itemsize == 8 else flat
        return out
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def message_json(msg: Message) -> dict:
    """The decoded msgpack map of `msg` as JSON: arrays become {dtype, shape, sha256, values}."""
    return {k: _json_value(v) for k, v in message_map(msg).items()}


def build(name: str) -> tuple[bytes, str]:
    """Encoded stream bytes and JSON text of good vector `name`."""
    chunks, described, offset = [], [], 0
    for msg in VECTORS[name]():
        data = encode_message(msg, LEVEL)
        described.append({"offset": offset, "length": len(data), "message": message_json(msg)})
        chunks.append(data)
        offset += len(data)
    doc = {"file": f"{name}.splatcast", "doc": VECTORS[name].__doc__, "zstd_level": LEVEL,
           "size": offset, "messages": described}
    return b"".join(chunks), json.dumps(doc, indent=1, allow_nan=False, ensure_ascii=False) + "\n"


def all_files() -> dict[str, bytes]:
    """Relative path -> exact content of every vector file."""
    files: dict[str, bytes] = {}
    for name in VECTORS:
        data, text = build(name)
        files[f"{name}.splatcast"] = data
        files[f"{name}.json"] = text.encode()
    manifest = {}
    for name, (error, fn) in BAD_VECTORS.items():
        files[f"bad/{name}.bin"] = fn()
        manifest[name] = {"file": f"bad/{name}.bin", "error": error}
    files["bad.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with tests/vectors, write nothing")
    args = parser.parse_args(argv)
    differ = []
    for rel, content in all_files().items():
        path = OUT / rel
        if args.check:
            if not path.exists() or path.read_bytes() != content:
                differ.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    for rel in differ:
        print(f"differs: {rel}", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
