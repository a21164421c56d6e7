"""splatcast.protocol: committed vectors, any chunking, round trips, file helpers, encoder checks."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import splatcast.protocol as proto
from splatcast.protocol import (
    DTYPES,
    FRAME_TYPES,
    EndOfStream,
    ErrorMessage,
    FrameMessage,
    FramingError,
    LimitExceeded,
    Limits,
    ProtocolError,
    SchemaError,
    StreamDecoder,
    StreamHeader,
    encode_message,
    read_stream,
    read_stream_sized,
    write_stream,
)

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors"
_spec = importlib.util.spec_from_file_location("make_vectors", REPO / "scripts" / "make_vectors.py")
mv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mv)

GOOD = sorted(mv.VECTORS)
BAD = json.loads((VECTORS / "bad.json").read_text())


def decode_all(data: bytes, chunks: list[int] | None = None, limits: Limits = Limits()) -> list:
    decoder, out, pos = StreamDecoder(limits), [], 0
    for size in chunks or [len(data)]:
        out += decoder.feed(data[pos:pos + size])
        pos += size
    out += decoder.feed(data[pos:])
    decoder.close()
    return out


def assert_same_value(a, b) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_value(a[key], b[key])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def assert_same_message(a, b) -> None:
    assert type(a) is type(b)
    for key, value in vars(a).items():
        assert_same_value(value, getattr(b, key))


# ------------------------------------------------------------------ vectors

def test_vectors_are_reproduced_byte_for_byte():
    expected = mv.all_files()  # other scripts may add their own vectors next to these
    assert {p.relative_to(VECTORS).as_posix() for p in (VECTORS / "bad").iterdir()} == {
        rel for rel in expected if rel.startswith("bad/")}
    for rel, content in expected.items():
        assert (VECTORS / rel).read_bytes() == content, f"{rel} differs: rerun scripts/make_vectors.py"
    assert sum(len(c) for c in expected.values()) < 16_000  # the vectors stay small


@pytest.mark.parametrize("name", GOOD)
def test_good_vector_decodes_to_its_json(name):
    data = (VECTORS / f"{name}.splatcast").read_bytes()
    doc = json.loads((VECTORS / f"{name}.json").read_text())
    messages = decode_all(data)
    assert [mv.message_json(m) for m in messages] == [d["message"] for d in doc["messages"]]
    assert doc["size"] == len(data)
    decoder = StreamDecoder()
    decoder.feed(data)
    assert decoder.last_sizes == [d["length"] for d in doc["messages"]]
    for described, msg in zip(doc["messages"], messages):  # each message decodes on its own
        alone = data[described["offset"]:described["offset"] + described["length"]]
        assert_same_message(decode_all(alone)[0], msg)
    for src, got in zip(mv.VECTORS[name](), messages):
        assert_same_message(src, got)


def test_stream_vector_values_independently():
    header, key, intra, inter, end = decode_all((VECTORS / "stream.splatcast").read_bytes())
    assert header == StreamHeader("synthetic", 1, {"gop": 3, "alpha": 0.5, "step": None, "device": "cpu",
                                                   "lossless": False}, 1, 30.0, 3, "vectors")
    assert (key.index, key.frame_type, key.num_gaussians, key.pts) == (0, "keyframe", 4, 0.0)
    assert intra.pts == 1 / 30 and inter.frame_type == "interframe" and end == EndOfStream(3)
    p = key.payload
    assert {a.dtype.str for a in p.values() if isinstance(a, np.ndarray)} == set(DTYPES)
    assert p["u8"].tolist() == [0, 2**64 - 1, 2**53 + 1] and p["u8"].dtype == np.uint64
    assert p["i8"].tolist() == [-(2**63), 2**63 - 1, -(2**53) - 1]
    assert p["f2"].tolist() == [0.5, -1.25, 65504.0, 2.0**-24]
    assert p["b1"].tolist() == [True, False, True] and p["b1"].dtype == np.bool_
    assert p["i2"].shape == (2, 2) and p["i2"][0, 0] == -32768
    assert p["scalar_f4"].shape == () and p["empty_f4"].shape == (0, 3)
    assert p["scalars"] == {"int": 7, "neg": -3, "big": 2**40, "float": 0.25, "str": "h\u00e9llo \u2603",
                            "true": True, "false": False}
    assert type(p["scalars"]["true"]) is bool and type(p["scalars"]["int"]) is int
    assert p["nested"]["a"]["b"]["c"].tolist() == [1, 2] and p["nested"]["empty"] == {}
    assert not p["u1"].flags.writeable  # zero-copy views of the message bytes


@pytest.mark.parametrize("name", GOOD)
def test_good_vector_any_chunking(name):
    data = (VECTORS / f"{name}.splatcast").read_bytes()
    whole = decode_all(data)
    for chunks in ([1] * len(data), *([random.Random(seed).randint(1, 64) for _ in range(len(data))]
                                      for seed in range(5))):
        got = decode_all(data, chunks)
        assert len(got) == len(whole)
        for a, b in zip(whole, got):
            assert_same_message(a, b)


@pytest.mark.parametrize("garbage", [b"\x00", b"\x00\x01", b"\xff" * 8, b"\x00\x00\x00\x05hello",
                                     b"\x00\x00\x00\x00", bytes(range(256)) * 3])
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_trailing_garbage_keeps_earlier_messages(garbage, chunk):
    data = (VECTORS / "stream.splatcast").read_bytes()
    blob = data + garbage
    sizes = [chunk] * (len(blob) // chunk + 1) if chunk else [len(blob)]
    decoder, got, pos, error = StreamDecoder(), [], 0, None
    try:
        for size in sizes:
            got += decoder.feed(blob[pos:pos + size])
            pos += size
        decoder.close()
    except ProtocolError as e:
        error = e
    assert error is not None
    assert [type(m) for m in got] == [type(m) for m in mv.stream()]
    with pytest.raises(type(error)):  # the decoder stays failed
        decoder.feed(b"")


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_bad_vector_raises_its_error(name, byte_by_byte):
    data = (VECTORS / BAD[name]["file"]).read_bytes()
    error = getattr(proto, BAD[name]["error"])
    with pytest.raises(error):
        decode_all(data, [1] * len(data) if byte_by_byte else None)


# ------------------------------------------------------------------ decoder behaviour

def test_decoder_buffers_at_most_one_message():
    msgs = mv.stream()
    encoded = [encode_message(m) for m in msgs]
    decoder = StreamDecoder()
    got = decoder.feed(b"".join(encoded[:3]) + encoded[3][:50])
    assert len(got) == 3 and len(decoder._buf) == 46  # only the partial body is kept
    with pytest.raises(FramingError, match="inside a message"):
        decoder.close()


def test_length_prefix_is_checked_before_the_body_arrives():
    decoder = StreamDecoder(Limits(max_message_bytes=1000))
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(LimitExceeded, match="max_message_bytes"):
        decoder.feed(b"\x03\xe9")  # 1001: refused with no body buffered
    with pytest.raises(LimitExceeded):
        decoder.close()


def test_error_after_messages_in_one_chunk_is_deferred():
    data = encode_message(EndOfStream(2)) + b"\x00\x00\x00\x00"
    decoder = StreamDecoder()
    assert decoder.feed(data) == [EndOfStream(2)]
    with pytest.raises(FramingError):
        decoder.close()


def test_header_minor_version_and_unknown_keys_are_accepted():
    wire = mv._header_wire(version=[1, 7], future_field={"x": [1, 2]})
    (header,) = decode_all(mv.raw_message(wire))
    assert header == StreamHeader("synthetic", 1, {}, 0, 30.0)


def test_read_and_write_stream(tmp_path):
    path = tmp_path / "s.splatcast"
    msgs = mv.stream()
    size = write_stream(path, iter(msgs), level=5)
    assert size == path.stat().st_size
    for got, src in zip(read_stream(path), msgs, strict=True):
        assert_same_message(src, got)
    assert len(list(read_stream(io.BytesIO(path.read_bytes())))) == len(msgs)
    sizes = [n for _, n in read_stream_sized(path)]
    assert len(sizes) == len(msgs) and sum(sizes) == size
    path.write_bytes(path.read_bytes()[:-5])
    seen = []
    with pytest.raises(FramingError):
        for msg in read_stream(path):
            seen.append(msg)
    assert len(seen) == len(msgs) - 1


# ------------------------------------------------------------------ encoder

def test_encoder_normalises_numpy_input():
    a = np.arange(12, dtype=">f4").reshape(3, 4).T  # big-endian, not contiguous
    msg = FrameMessage(np.int64(3), np.float32(0.5), "intra", np.uint32(2),
                       {"a": a, "s": np.float64(1.5), "b": np.bool_(True), "i": np.int16(-2)})
    (got,) = decode_all(encode_message(msg))
    assert (got.index, got.pts, got.num_gaussians) == (3, 0.5, 2)
    assert got.payload["a"].dtype == np.dtype("<f4") and np.array_equal(got.payload["a"], a)
    assert got.payload["s"] == 1.5 and got.payload["b"] is True and got.payload["i"] == -2


def test_large_bodies_compress_without_short_matches():
    """A body over LARGE_BODY (here 1 MiB of int8 residuals with a spread like an interframe's
    jittered moves) is compressed in fewer bytes than zstd's level-3 parameters give it; a small
    body exactly as level 3 compresses it. Both decode to the message."""
    import zstandard

    def sizes(count):
        rng = np.random.default_rng(0)
        msg = FrameMessage(0, 0.0, "interframe", 1, {"moves": rng.normal(0, 3, count).round().astype(np.int8)})
        data = encode_message(msg)
        (got,) = decode_all(data)
        assert np.array_equal(got.payload["moves"], msg.payload["moves"])
        body = zstandard.ZstdDecompressor().decompress(data[4:])
        return len(data) - 4, len(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(body))

    assert proto.wire.LARGE_BODY < 1 << 20
    ours, level3 = sizes(1 << 20)
    assert ours < 0.97 * level3
    ours, level3 = sizes(proto.wire.LARGE_BODY // 2)
    assert ours == level3


@pytest.mark.parametrize("make", [
    lambda: FrameMessage(-1, 0.0, "keyframe", 1, {}),
    lambda: FrameMessage(0, float("nan"), "keyframe", 1, {}),
    lambda: FrameMessage(0, -0.5, "keyframe", 1, {}),
    lambda: FrameMessage(0, 0.0, "pframe", 1, {}),
    lambda: FrameMessage(0, 0.0, "keyframe", True, {}),
    lambda: FrameMessage(0, 0.0, "keyframe", 1.0, {}),
    lambda: FrameMessage(0, 0.0, "keyframe", 1, [1]),
    lambda: StreamHeader("", 1, {}, 0, 30.0),
    lambda: StreamHeader("c", 1, {}, 4, 30.0),
    lambda: StreamHeader("c", 1, {}, 0, 0.0),
    lambda: StreamHeader("c", 1, {}, 0, float("inf")),
    lambda: StreamHeader("c", 1, {"x": [1]}, 0, 30.0),
    lambda: StreamHeader("c", 1, {1: 1}, 0, 30.0),
    lambda: StreamHeader("c", 1, {}, 0, 30.0, frame_count=-1),
    lambda: EndOfStream(2**53),
    lambda: ErrorMessage("", "x"),
    lambda: ErrorMessage("c", None),
])
def test_invalid_fields_raise_schema_error(make):
    with pytest.raises(SchemaError):
        make()


@pytest.mark.parametrize("payload", [
    {"x": [1, 2]}, {"x": None}, {"x": b"raw"}, {1: 1}, {"x": {2: 1}}, {"x": 2**64},
    {"x": np.array(["a"])}, {"x": np.array([1 + 2j])}, {"x": np.zeros(2, dtype=[("a", "<f4")])},
    {"x": np.array([object()])},
])
def test_unsendable_payload_raises_schema_error(payload):
    with pytest.raises(SchemaError):
        encode_message(FrameMessage(0, 0.0, "keyframe", 1, payload))


def test_encoder_refuses_payload_deeper_than_default_limit():
    payload: dict = {}
    for _ in range(Limits().max_depth):
        payload = {"a": payload}
    with pytest.raises(LimitExceeded):
        encode_message(FrameMessage(0, 0.0, "keyframe", 1, payload))


@pytest.mark.parametrize("levels", range(26, 32))
@pytest.mark.parametrize("leaf", [1, np.zeros(2, np.uint8)])
def test_what_encodes_decodes_at_the_depth_limit(levels, leaf):
    payload = {"leaf": leaf}
    for _ in range(levels):
        payload = {"a": payload}
    msg = FrameMessage(0, 0.0, "keyframe", 1, payload)
    try:
        data = encode_message(msg)
    except LimitExceeded:
        # payload map at depth 2; an array adds its map and its shape list
        assert levels + 2 + 2 * isinstance(leaf, np.ndarray) > Limits().max_depth
        return
    assert_same_message(decode_all(data)[0], msg)


# ------------------------------------------------------------------ round trip (hypothesis)

ints = st.integers(-(2**53) + 1, 2**53 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=12)
arrays = st.sampled_from(sorted(DTYPES)).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
leaves = st.one_of(arrays, st.integers(-(2**63), 2**64 - 1), st.floats(), text, st.booleans())
payloads = st.dictionaries(text, st.recursive(leaves, lambda c: st.dictionaries(text, c, max_size=4),
                                              max_leaves=12), max_size=6)
messages = st.one_of(
    st.builds(StreamHeader, codec=st.text(min_size=1, max_size=12), codec_version=st.integers(0, 2**53 - 1),
              codec_params=st.dictionaries(text, st.one_of(st.none(), st.booleans(), ints, st.floats(), text),
                                           max_size=6),
              sh_degree=st.integers(0, 3), fps=st.floats(min_value=0, exclude_min=True, allow_infinity=False),
              frame_count=st.one_of(st.none(), st.integers(0, 2**53 - 1)), name=text),
    st.builds(FrameMessage, index=st.integers(0, 2**53 - 1), pts=st.floats(min_value=0, allow_infinity=False),
              frame_type=st.sampled_from(FRAME_TYPES), num_gaussians=st.integers(0, 10_000_000),
              payload=payloads),
    st.builds(EndOfStream, frame_count=st.integers(0, 2**53 - 1)),
    st.builds(ErrorMessage, code=st.text(min_size=1, max_size=12), message=st.text(max_size=200)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(messages, min_size=1, max_size=3), level=st.integers(1, 9), seed=st.integers(0, 99))
def test_round_trip_any_valid_messages(msgs, level, seed):
    data = b"".join(encode_message(m, level) for m in msgs)
    rng = random.Random(seed)
    got = decode_all(data, [rng.randint(1, 40) for _ in range(len(data) // 20)])
    assert len(got) == len(msgs)
    for src, dst in zip(msgs, got):
        assert_same_message(src, dst)
