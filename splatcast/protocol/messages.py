"""The four message kinds of a splatcast stream, as validated frozen dataclasses.

Field names are also the msgpack map keys on the wire (docs/PROTOCOL.md). Constructors check
every field's type and range and raise `SchemaError`; the decoder builds messages through
them, so a decoded message always satisfies the same rules as one about to be encoded. The
contents of `FrameMessage.payload` are checked when the message is encoded or decoded
(`splatcast.protocol.wire`).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SchemaError

MAGIC = "splatcast"
MEDIA_TYPE = "application/x-splatcast"  # HTTP content type of a body of concatenated messages
PROTOCOL_VERSION = (1, 0)  # (major, minor): a decoder accepts any minor of its own major
FRAME_TYPES = ("keyframe", "intra", "interframe")  # same as splatcast.codec.FRAME_TYPES
MAX_SH_DEGREE = 3
MAX_FIELD_INT = 2**53 - 1  # integer fields stay exact in JavaScript numbers

# Allowed array dtypes, by their numpy little-endian type string (the wire "dtype" value).
DTYPES: dict[str, np.dtype] = {
    np.dtype(name).str: np.dtype(name)
    for name in ("|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8")
}

Payload = np.ndarray | int | float | str | bool | dict[str, "Payload"]
Scalar = None | bool | int | float | str


def _int(name: str, value: Any, lo: int = 0, hi: int = MAX_FIELD_INT) -> int:
    if isinstance(value, bool):
        raise SchemaError(f"{name} must be an integer, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise SchemaError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise SchemaError(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def _float(name: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SchemaError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise SchemaError(f"{name}={value} must be finite and {'> 0' if positive else '>= 0'}")
    return value


def _str(name: str, value: Any, nonempty: bool = False) -> str:
    if not isinstance(value, str) or (nonempty and not value):
        raise SchemaError(f"{name} must be a {'non-empty ' if nonempty else ''}string, got {value!r:.80}")
    return value


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalise a field of a frozen dataclass


@dataclass(frozen=True)
class StreamHeader:
    """First message of a stream: what the frames need to be decoded.

    codec / codec_version: codec name and version (``splatcast.codec.CODEC_NAME/VERSION``).
    codec_params: str -> None | bool | int | float | str (``CodecConfig.to_dict()``).
    sh_degree: 0..3. fps: frames per second, finite > 0. frame_count: int >= 0, or None
    while a live stream's length is unknown. name: free text (the sequence name).
    Raises `SchemaError` for a field of the wrong type or range.
    """

    codec: str
    codec_version: int
    codec_params: dict
    sh_degree: int
    fps: float
    frame_count: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        _str("codec", self.codec, nonempty=True)
        _set(self, "codec_version", _int("codec_version", self.codec_version))
        if not isinstance(self.codec_params, dict):
            raise SchemaError("codec_params must be a dict")
        for key, value in self.codec_params.items():
            _str("codec_params key", key)
            if isinstance(value, int) and not isinstance(value, bool):
                _int(f"codec_params[{key!r}]", value, -MAX_FIELD_INT, MAX_FIELD_INT)
            elif value is not None and not isinstance(value, (bool, float, str)):
                raise SchemaError(f"codec_params[{key!r}] must be None/bool/int/float/str, "
                                  f"got {type(value).__name__}")
        _set(self, "sh_degree", _int("sh_degree", self.sh_degree, 0, MAX_SH_DEGREE))
        _set(self, "fps", _float("fps", self.fps, positive=True))
        if self.frame_count is not None:
            _set(self, "frame_count", _int("frame_count", self.frame_count))
        _str("name", self.name)


@dataclass(frozen=True, eq=False)
class FrameMessage:
    """One encoded frame.

    index: frame number >= 0. pts: presentation time in seconds, finite >= 0.
    frame_type: one of FRAME_TYPES. num_gaussians: Gaussian count >= 0.
    payload: the codec's ``EncodedFrame.payload``, a dict[str, Payload] (arrays are sent
    zero-copy and come back read-only). ``eq=False``: compare payloads explicitly.
    Raises `SchemaError` for a field of the wrong type or range.
    """

    index: int
    pts: float
    frame_type: str
    num_gaussians: int
    payload: dict

    def __post_init__(self) -> None:
        _set(self, "index", _int("index", self.index))
        _set(self, "pts", _float("pts", self.pts))
        if self.frame_type not in FRAME_TYPES:
            raise SchemaError(f"frame_type must be one of {FRAME_TYPES}, got {self.frame_type!r:.80}")
        _set(self, "num_gaussians", _int("num_gaussians", self.num_gaussians))
        if not isinstance(self.payload, dict):
            raise SchemaError(f"payload must be a dict, got {type(self.payload).__name__}")


@dataclass(frozen=True)
class EndOfStream:
    """Last message of a complete stream; frame_count: number of frame messages sent (>= 0)."""

    frame_count: int

    def __post_init__(self) -> None:
        _set(self, "frame_count", _int("frame_count", self.frame_count))


@dataclass(frozen=True)
class ErrorMessage:
    """Sent instead of more frames to say why a stream stops.

    code: short machine-readable reason (non-empty), message: human-readable text.
    """

    code: str
    message: str

    def __post_init__(self) -> None:
        _str("code", self.code, nonempty=True)
        _str("message", self.message)


Message = StreamHeader | FrameMessage | EndOfStream | ErrorMessage
MESSAGE_TYPES: dict[str, type] = {"header": StreamHeader, "frame": FrameMessage,
                                  "end": EndOfStream, "error": ErrorMessage}
