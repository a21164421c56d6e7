"""JSON bodies of the HTTP API (pydantic models; FastAPI publishes them in the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from splatcast.server.sequences import ID_PATTERN
from splatcast.server.storage import FrameRecord, SequenceInfo


class CreateSequence(BaseModel):
    """Body of ``POST /v1/sequences``."""

    name: str = Field("", max_length=200, description="Free text shown to viewers.")
    fps: float = Field(30.0, gt=0, le=1000, allow_inf_nan=False, description="Frames per second (pts = index / fps).")
    codec: dict[str, Any] = Field(default_factory=dict,
                                  description="CodecConfig fields: gop, quality, codebook_size, alpha, step, "
                                              "tolerance, step_scale, target_mbps (rate control at this sequence's "
                                              "fps), seed (docs/CODEC.md); the server's codec_defaults fill the rest.")
    id: str | None = Field(None, pattern=ID_PATTERN, description="Choose the id (409 if taken); default: random.")
    encoding: Literal["server", "producer"] = Field(
        "server", description="server: frames are uploaded as PLY and encoded by the server; producer: the producer "
                              "encodes with the sequence's codec and uploads protocol messages "
                              "(application/x-splatcast), which the server checks by decoding them.")


class ErrorOut(BaseModel):
    """Every error answer: one message saying what was wrong."""

    detail: str = Field(description="What went wrong, naming the value, limit or state concerned.")


class FrameOut(BaseModel):
    """One row of a sequence's frame index."""

    index: int = Field(description="Frame number, from 0.")
    frame_type: Literal["keyframe", "intra", "interframe"] = Field(
        description="keyframe: new codebooks, decodable alone; intra: all Gaussians with the GOP's codebooks; "
                    "interframe: changes since the previous frame.")
    num_gaussians: int = Field(description="Gaussians in the frame.")
    bytes: int = Field(description="Size of the encoded frame message.")
    raw_bytes: int = Field(description="Size of the uploaded body: the PLY, or the producer's encoded messages.")
    encode_ms: float = Field(description="Server time spent encoding the frame, or checking (parsing and "
                                         "decoding) a producer-encoded one, milliseconds.")
    received_at: float = Field(description="Unix time the upload was accepted.")
    window_mbps: float | None = Field(None, description=(
        "Achieved bitrate of the 1 s window ending with this frame, Mbit/s: 8 x the message bytes of the "
        "k = round(fps) frames up to this one / (k / fps) / 1e6. Null for the first k - 1 frames and in the "
        "answers of uploads (only the frame index GET .../frames fills it)."))

    @classmethod
    def of(cls, r: FrameRecord, window_mbps: float | None = None) -> FrameOut:
        return cls(index=r.index, frame_type=r.frame_type, num_gaussians=r.num_gaussians,  # type: ignore[arg-type]
                   bytes=r.length, raw_bytes=r.raw_bytes, encode_ms=round(r.encode_ms, 3),
                   received_at=r.received_at,
                   window_mbps=None if window_mbps is None else round(window_mbps, 6))


class SequenceOut(BaseModel):
    """A sequence's metadata and running totals."""

    id: str = Field(description="Sequence id.")
    name: str = Field(description="Free text given at creation.")
    fps: float = Field(description="Frames per second.")
    status: Literal["open", "finished"] = Field(description="open: takes frames; finished: the end message is "
                                                            "written.")
    created_at: float = Field(description="Unix time.")
    sh_degree: int | None = Field(description="SH degree of every frame; known once frame 0 is stored.")
    frames: int = Field(description="Frames stored.")
    keyframes: int = Field(description="Keyframes among them.")
    stream_bytes: int = Field(description="Committed size of the .splatcast stream.")
    raw_bytes: int = Field(description="Total size of the uploaded bodies (PLYs, or the producer's encoded frames).")
    ratio: float | None = Field(description="raw_bytes / encoded frame bytes; null before frame 0 and when the "
                                            "producer encodes.")
    bitrate_mbps: float | None = Field(description="Achieved mean bitrate of the frames stored, Mbit/s: 8 x their "
                                                   "message bytes x fps / frames / 1e6; null before frame 0.")
    encode_ms_mean: float | None = Field(description="Mean encode time per frame, milliseconds; null before frame 0.")
    subscribers: int = Field(description="Live WebSocket subscribers now.")
    codec: dict[str, Any] = Field(description="The CodecConfig fixed at creation.")
    encoding: Literal["server", "producer"] = Field(description="Who encodes the frames (fixed at creation).")

    @classmethod
    def of(cls, info: SequenceInfo, subscribers: int) -> SequenceOut:
        return cls(
            id=info.id, name=info.name, fps=info.fps, status="finished" if info.finished else "open",
            created_at=info.created_at, sh_degree=info.sh_degree, frames=info.frame_count,
            keyframes=len(info.keyframes), stream_bytes=info.stream_bytes, raw_bytes=info.raw_bytes,
            ratio=(round(info.raw_bytes / info.frame_bytes, 3) if info.frame_bytes and info.encoding == "server"
                   else None),
            bitrate_mbps=(round(info.frame_bytes * 8 * info.fps / info.frame_count / 1e6, 6) if info.frame_count
                          else None),
            encode_ms_mean=round(info.encode_ms / info.frame_count, 3) if info.frame_count else None,
            subscribers=subscribers, codec=info.codec, encoding=info.encoding)  # type: ignore[arg-type]


class BatchOut(BaseModel):
    """Answer of a tar upload."""

    frames: list[FrameOut] = Field(description="The frames stored by this request, in order.")
    sequence: SequenceOut = Field(description="The sequence afterwards.")


class HealthOut(BaseModel):
    status: Literal["ok"] = Field(description="Always ok while the server answers.")
