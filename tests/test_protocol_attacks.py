"""splatcast.protocol against hostile bytes: bombs, forged headers, limits, fuzzing.

Every failure must be a ProtocolError subclass, raised before the allocation it guards.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splatcast.protocol import (
    DecompressionError,
    FrameMessage,
    LimitExceeded,
    Limits,
    ProtocolError,
    SchemaError,
    StreamDecoder,
    VersionError,
    encode_message,
)

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_vectors", REPO / "scripts" / "make_vectors.py")
mv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mv)

pytestmark = pytest.mark.timeout(120)


class NoDecompress:
    def decompress(self, *args, **kwargs):
        raise AssertionError("decompress must not be reached")


def decode(data: bytes, limits: Limits = Limits(), guard: bool = False) -> list:
    decoder = StreamDecoder(limits)
    if guard:
        decoder._dctx = NoDecompress()  # proves the check happens before decompressing
    out = decoder.feed(data)
    decoder.close()
    return out


def rle_bomb(content: int, declare: bool) -> bytes:
    """A hand-made zstd frame of `content` zero bytes in RLE blocks (4 bytes per 128 KiB)."""
    block = 128 << 10
    fhd = (3 << 6) if declare else 0  # 8-byte content size field, or none
    frame = b"\x28\xb5\x2f\xfd" + bytes([fhd, 17 << 3])  # window 2**(10+17) = 128 MiB
    if declare:
        frame += content.to_bytes(8, "little")
    left = content
    while left:
        size = min(block, left)
        left -= size
        frame += ((size << 3) | (1 << 1) | (left == 0)).to_bytes(3, "little") + b"\0"
    return len(frame).to_bytes(4, "big") + frame


def frame_wire(payload, **kw) -> dict:
    return {**mv._frame_wire(payload), **kw}


# ------------------------------------------------------------------ zstd

def test_zstd_bomb_with_honest_size_is_refused_before_decompressing():
    bomb = rle_bomb(600 << 20, declare=True)  # 600 MiB from 19 KB
    assert len(bomb) < 20_000
    with pytest.raises(LimitExceeded, match="content size"):
        decode(bomb, guard=True)


def test_real_bomb_under_small_limits():
    data = mv.raw_message({"t": "error", "code": "x", "message": "a" * (2 << 20)})
    assert len(data) < 1000
    with pytest.raises(LimitExceeded):
        decode(data, Limits(max_decompressed_bytes=1 << 20, max_str_len=4 << 20), guard=True)
    assert decode(data, Limits(max_str_len=4 << 20))[0].message == "a" * (2 << 20)


def test_bomb_without_content_size_is_refused():
    with pytest.raises(DecompressionError, match="content size"):
        decode(rle_bomb(4 << 20, declare=False), guard=True)


@pytest.mark.parametrize("declared", [0, 10, 60, 1000, 2**31, 2**40, 2**64 - 2])
def test_forged_content_size(declared):
    honest = mv.raw_message({"t": "error", "code": "x", "message": "y" * 50})
    with pytest.raises((DecompressionError, LimitExceeded, SchemaError)):
        decode(mv.forge_content_size(honest, declared))
    if declared > Limits().max_decompressed_bytes:
        with pytest.raises(LimitExceeded):
            decode(mv.forge_content_size(honest, declared), guard=True)


def test_window_over_limit_is_refused():
    data = encode_message(FrameMessage(0, 0.0, "keyframe", 1, {"x": np.zeros(1 << 16, np.uint8)}))
    with pytest.raises(LimitExceeded, match="window"):
        decode(data, Limits(max_window_bytes=1 << 12), guard=True)


def test_two_zstd_frames_in_one_message_are_refused():
    one = mv.raw_message({"t": "end", "frame_count": 0})[4:]
    with pytest.raises(DecompressionError):
        decode((2 * len(one)).to_bytes(4, "big") + one + one)


def test_skippable_frame_is_refused():
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd"
    with pytest.raises(DecompressionError):
        decode(len(skippable).to_bytes(4, "big") + skippable)


# ------------------------------------------------------------------ framing limits

@pytest.mark.parametrize("prefix", [b"\xff\xff\xff\xff", b"\x10\x00\x00\x01"])
def test_huge_length_prefix_rejected_from_the_prefix_alone(prefix):
    decoder = StreamDecoder()
    with pytest.raises(LimitExceeded):
        decoder.feed(prefix + b"\0" * 1000)
    assert len(decoder._buf) <= 4  # none of the body was kept


# ------------------------------------------------------------------ msgpack

def test_deep_list_nesting_maps_stack_error():
    body = b"\x81\xa1t" + b"\x91" * 5000 + b"\x00"
    with pytest.raises(LimitExceeded):
        decode(mv.framed(body))


def test_nesting_just_within_and_over_max_depth():
    def nested(levels: int) -> dict:
        payload: dict = {"leaf": 1}
        for _ in range(levels):
            payload = {"a": payload}
        return payload
    limits = Limits(max_depth=8)
    assert decode(mv.raw_message(frame_wire(nested(5))), limits)  # depths 2..7
    with pytest.raises(LimitExceeded, match="max_depth"):
        decode(mv.raw_message(frame_wire(nested(7))), limits)
    arr = mv._array_wire("|u1", [1], b"\0")  # an array map and its shape list count too
    with pytest.raises(LimitExceeded, match="max_depth"):
        decode(mv.raw_message(frame_wire({"a": {"b": {"c": {"d": {"e": {"f": arr}}}}}})), limits)


@pytest.mark.parametrize("obj, limits", [
    (frame_wire({"s": "x" * 200}), Limits(max_str_len=100)),
    (frame_wire({"x": mv._array_wire("|u1", [200], b"\0" * 200)}), Limits(max_array_bytes=100)),
    (frame_wire({"x": mv._array_wire("|u1", [1] * 40, b"\0")}), Limits()),  # 40 dims > max_list_len
    (frame_wire({str(i): i for i in range(2000)}), Limits()),  # map > max_map_len
    (frame_wire({str(i): {str(j): j for j in range(50)} for i in range(50)}), Limits(max_items=1000)),
    (frame_wire({"x": mv._array_wire("<f8", [0, 2**40, 2**40], b"")}), Limits()),
    (frame_wire({}, num_gaussians=10_000_001), Limits()),
    (frame_wire({}, num_gaussians=101), Limits(max_gaussians=100)),
])
def test_limits(obj, limits):
    with pytest.raises(LimitExceeded):
        decode(mv.raw_message(obj), limits)


@pytest.mark.parametrize("obj", [
    5, [1, 2], "frame", None,
    {"t": "frame"},
    {"t": "nope"}, {"t": 1}, {"t": ["frame"]},
    frame_wire({"x": msgpack.ExtType(3, b"\0\0")}),
    frame_wire({"x": msgpack.Timestamp(0, 5)}),
    frame_wire({"x": b"raw bytes"}), frame_wire({"x": None}), frame_wire({"x": [1, 2]}),
    frame_wire({b"bytes key": 1}),
    frame_wire({"x": {b"k": 1}}),
    frame_wire([1, 2]), frame_wire(None),
    frame_wire({"x": mv._array_wire("<f4", [2], b"\0" * 7)}),
    frame_wire({"x": mv._array_wire("<f4", [2, 2], b"\0" * 8)}),
    frame_wire({"x": mv._array_wire("<c8", [1], b"\0" * 8)}),
    frame_wire({"x": mv._array_wire("|O", [1], b"\0" * 8)}),
    frame_wire({"x": mv._array_wire(["<f4"], [1], b"\0" * 4)}),
    frame_wire({"x": mv._array_wire("<f4", 1, b"\0" * 4)}),
    frame_wire({"x": mv._array_wire("<f4", [True], b"\0" * 4)}),
    frame_wire({"x": mv._array_wire("<f4", [1.0], b"\0" * 4)}),
    frame_wire({"x": {**mv._array_wire("<f4", [1], b"\0" * 4), "extra": 1}}),
    frame_wire({"x": {"shape": [1], "data": b"\0"}}),
    frame_wire({}, index="0"), frame_wire({}, index=1.5), frame_wire({}, pts="0"),
    frame_wire({}, pts=float("inf")), frame_wire({}, num_gaussians=-1), frame_wire({}, num_gaussians=None),
    frame_wire({}, frame_type=None),
    {"t": "end"}, {"t": "end", "frame_count": True}, {"t": "error", "code": "", "message": ""},
    mv._header_wire(version=[1]), mv._header_wire(version="1.0"), mv._header_wire(version=[1, -1]),
    mv._header_wire(codec_params={"x": {"y": 1}}), mv._header_wire(sh_degree=9), mv._header_wire(fps=0),
    {k: v for k, v in mv._header_wire().items() if k != "codec"},
])
def test_schema_violations(obj):
    with pytest.raises(SchemaError):
        decode(mv.raw_message(obj))


@pytest.mark.parametrize("obj", [mv._header_wire(magic=None), {k: v for k, v in mv._header_wire().items()
                                                              if k != "magic"},
                                 mv._header_wire(version=[0, 9]), mv._header_wire(version=[2**40, 0])])
def test_version_errors(obj):
    with pytest.raises(VersionError):
        decode(mv.raw_message(obj))


def test_invalid_utf8_is_a_schema_error():
    body = b"\x82\xa1t\xa3end\xabframe_count\xa2\xff\xfe"
    with pytest.raises(SchemaError):
        decode(mv.framed(body))


# ------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD_BYTES = b"".join((REPO / "tests" / "vectors" / f"{n}.splatcast").read_bytes() for n in sorted(mv.VECTORS))
GOOD_BODIES = [zstandard.ZstdDecompressor().decompress(m[4:]) for m in
               (encode_message(msg) for name in sorted(mv.VECTORS) for msg in mv.VECTORS[name]())]


def feed_all(data: bytes, chunk: int) -> None:
    decoder = StreamDecoder(Limits(max_message_bytes=1 << 20, max_decompressed_bytes=1 << 20))
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i:i + chunk])
        decoder.close()
    except ProtocolError:
        pass


@FUZZ
@given(data=st.binary(max_size=300), chunk=st.integers(1, 64))
def test_random_bytes_raise_only_protocol_errors(data, chunk):
    feed_all(data, chunk)
    feed_all(len(data).to_bytes(4, "big") + data, chunk)
    feed_all(len(data).to_bytes(4, "big") + b"\x28\xb5\x2f\xfd" + data, chunk)


@FUZZ
@given(st.data())
def test_mutated_streams_raise_only_protocol_errors(data):
    blob = bytearray(GOOD_BYTES)
    for _ in range(data.draw(st.integers(1, 4))):
        if not blob:
            break
        pos = data.draw(st.integers(0, len(blob) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip":
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del blob[pos:pos + data.draw(st.integers(1, 8))]
        else:
            del blob[pos:]
    feed_all(bytes(blob), data.draw(st.integers(1, 4096)))


@FUZZ
@given(st.data())
def test_mutated_msgpack_in_valid_zstd_raises_only_protocol_errors(data):
    body = bytearray(data.draw(st.sampled_from(GOOD_BODIES)))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, max(0, len(body) - 1)))
        if data.draw(st.booleans()):
            body[pos:pos + 1] = bytes([data.draw(st.integers(0, 255))])
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=6))
    feed_all(mv.framed(bytes(body), level=1), 1 << 20)


wire_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=6),
              st.binary(max_size=8)),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)),
    max_leaves=10)


@FUZZ
@given(kind=st.sampled_from(["frame", "header", "end", "error"]), key=st.text(max_size=14),
       pick=st.integers(0, 20), value=wire_values)
def test_any_field_value_gives_a_message_or_a_protocol_error(kind, key, pick, value):
    base = {"frame": frame_wire({"a": mv._array_wire("|u1", [1], b"\x01")}), "header": mv._header_wire(),
            "end": {"t": "end", "frame_count": 1}, "error": {"t": "error", "code": "c", "message": "m"}}[kind]
    fields = sorted(base) + [key]  # replace a field, or add an unknown key
    wire = {**base, fields[pick % len(fields)]: value}
    try:
        decode(mv.raw_message(wire))
    except ProtocolError:
        pass
