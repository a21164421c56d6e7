"""Server settings: every limit is explicit, read from ``SPLATCAST_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Configuration of one server process.

    Each field can be set with an environment variable ``SPLATCAST_<FIELD>`` (for example
    ``SPLATCAST_TOKEN=secret``, ``SPLATCAST_MAX_SUBSCRIBERS=50``); ``codec_defaults`` is JSON.
    Invalid values raise ``pydantic.ValidationError`` at start-up.
    """

    model_config = SettingsConfigDict(env_prefix="SPLATCAST_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Directory of the SQLite index and the .splatcast streams.")
    host: str = Field("127.0.0.1", description="Interface `splatcast serve` binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of `splatcast serve`.")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$", description="Encoding device: auto = CUDA when available.")
    encode_workers: int = Field(2, gt=0, description="Threads encoding frames (each sequence uses one at a time).")
    token: str | None = Field(None, description="Bearer token every write needs; unset or empty = open.")
    protect_reads: bool = Field(False, description="Also require the token for reads and WebSocket streams.")
    max_upload_bytes: int = Field(256 * MiB, gt=0, description="Largest PLY body of one frame upload (413 above).")
    max_batch_bytes: int = Field(1024 * MiB, gt=0,
                                 description="Largest tar body of a whole-sequence upload (413 above).")
    max_gaussians: int = Field(1_000_000, gt=0, description="Most Gaussians in one frame (413 above).")
    max_frames: int = Field(100_000, gt=0, description="Most frames in one sequence (413 above).")
    max_sequences: int = Field(10_000, gt=0, description="Most stored sequences (429 above).")
    body_timeout_s: float = Field(30.0, gt=0, description="A request body that sends nothing for this long is "
                                                          "answered 408 and its connection closed.")
    header_timeout_s: float = Field(30.0, gt=0, description="A request line and headers not complete this long "
                                                            "after the request began are answered 408.")
    max_line_bytes: int = Field(8000, ge=256, le=8000,
                                description="Longest request target (414 above) and header line (431 above); at "
                                            "most 8000, below the WebSocket handshake parser's own 8 KiB limit.")
    max_headers: int = Field(100, ge=8, le=120, description="Most header lines in one request (431 above); at most "
                                                           "120, below the WebSocket handshake parser's 128.")
    max_subscribers: int = Field(200, gt=0, description="Most live WebSocket subscribers per sequence (429 above).")
    subscriber_queue: int = Field(16, gt=0, description="Frame messages queued per subscriber before it skips "
                                                          "to the next keyframe.")
    send_buffer_bytes: int = Field(256 * 1024, gt=0, description="Kernel send buffer of each connection (SO_SNDBUF): "
                                   "small, so a slow subscriber's backlog stays in its queue, where it can skip to a "
                                   "keyframe.")
    max_lag_s: float = Field(2.0, gt=0, description="A subscriber whose client has not yet read what was sent "
                             "this many seconds ago (its WebSocket ping is unanswered) is sent nothing more until it "
                             "has; meanwhile its queue fills and it skips to a keyframe.")
    max_in_flight: int = Field(16, gt=0, description="Most messages sent to a subscriber that its client has not "
                               "read yet (a WebSocket ping follows each one); the sender waits, its queue fills.")
    send_timeout_s: float = Field(20.0, gt=0, description="A subscriber that takes no message, or answers no "
                                  "WebSocket ping, for this long is dropped (close 1008, then reset).")
    close_timeout_s: float = Field(2.0, gt=0, description="Time a closing WebSocket connection gets to take its "
                                   "close frame and finish before the server resets it (a client that does not read "
                                   "cannot hold the socket).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Level of the splatcast and uvicorn loggers.")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text (key=value fields) or "
                                                                     "JSON objects, one per line, on stderr.")
    codec_defaults: dict[str, Any] = Field(default_factory=dict, description="CodecConfig fields applied to new "
                                                                             "sequences unless the request sets them.")
    # --- scale-out (docs/SCALEOUT.md): all unset = one process on SQLite + local files ---
    redis_url: str | None = Field(None, description="Redis URL (redis://host:port/db) of the live backbone, the "
                                  "sequence metadata and the encoder leases; needs s3_url too.")
    s3_url: str | None = Field(None, description="S3 API endpoint (http://host:port) of the GOP objects and "
                               "manifests; credentials from the AWS_* variables. Needs redis_url too.")
    s3_bucket: str = Field("splatcast", description="Bucket of the GOP objects (created when missing).")
    s3_region: str = Field("us-east-1", description="Region name sent to the S3 endpoint.")
    advertise_url: str | None = Field(None, description="Base URL other replicas reach this one at (forwarded "
                                      "uploads); default http://<host or hostname>:<port>.")
    lease_s: float = Field(3.0, gt=0, description="Time to live of an encoder lease; the holder renews it every "
                           "third of it. A dead holder's sequences are taken over after at most this long.")
    lease_wait_s: float = Field(6.0, gt=0, description="How long an upload waits to take over the lease of an "
                                "unreachable holder before it is answered 503.")
    forward_timeout_s: float = Field(60.0, gt=0, description="Time a forwarded upload gets on the lease holder.")
    backbone_timeout_s: float = Field(3.0, gt=0, description="Connect and read timeout of Redis and S3 calls.")
    retry_after_s: float = Field(2.0, gt=0, description="Retry-After of the 503 answers of backbone outages.")
    stream_block_ms: int = Field(1000, gt=0, description="XREAD BLOCK time of a replica's reader per sequence.")
    stream_skew_ms: int = Field(2000, ge=0, description="A new reader starts this far back in the live stream "
                                "(covers clock skew between replicas and Redis; duplicates are dropped).")

    @model_validator(mode="after")
    def _scale_pair(self) -> Settings:
        if bool(self.redis_url) != bool(self.s3_url):
            raise ValueError("set both SPLATCAST_REDIS_URL and SPLATCAST_S3_URL (scale-out), or neither")
        return self

    @property
    def scale_out(self) -> bool:
        """True when Redis and S3 are configured (docs/SCALEOUT.md)."""
        return bool(self.redis_url and self.s3_url)
