"""Sequence life cycle: create, ingest frames in order (encoded off the event loop), finish, delete.

One ``asyncio.Lock`` per sequence orders its uploads; parsing, encoding and the durable write
run while holding it in a thread of a pool reserved for encoding (``settings.encode_workers``
threads), so other sequences, HTTP requests and WebSocket sends (whose file reads use the
default executor) stay responsive during a keyframe's k-means. A frame is published
to live subscribers only after it is stored, in index order.

The ``FrameEncoder`` of a sequence lives in memory. It is trusted only while every frame it
encoded is stored: after any failure (and after a restart) the next frame gets a fresh encoder,
whose first frame is a keyframe, i.e. a new GOP.

Producer-encoded sequences (``encoding="producer"``, docs/API.md) take protocol messages
instead of PLYs: each upload is checked fully (protocol limits and schema, the stream header of
frame 0 against the sequence, index, pts, GOP length, Gaussian count, and the codec by decoding
it with the sequence's ``FrameDecoder``) and then stored byte for byte as sent. That decoder is
trusted like the encoder: when it is missing (a restart, a lease takeover, a failed commit) it
is rebuilt by decoding the stored open GOP again, so the producer may go on with interframes.

Scale-out (``leases`` given, docs/SCALEOUT.md): a replica encodes a sequence only while it holds
the sequence's encoder lease (``lease.py``); otherwise ``put_frame`` and ``finish`` raise
``NotHolder`` naming the holder (the routes forward the request there), or, with ``takeover``
(the holder is unreachable), wait up to ``lease_wait_s`` for its lease to expire and take it
over: a new epoch, a fresh encoder, a new GOP. Commits carry the lease value as their fence.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from splatcast.codec import (
    CODEC_NAME,
    CODEC_VERSION,
    CodecConfig,
    CodecError,
    FrameDecoder,
    FrameEncoder,
    PlyError,
    check_codec,
    read_ply,
)
from splatcast.codec.rate import RateController, make_encoder
from splatcast.protocol import (
    MEDIA_TYPE,
    EndOfStream,
    ErrorMessage,
    FrameMessage,
    LimitExceeded,
    Limits,
    ProtocolError,
    StreamDecoder,
    StreamHeader,
    encode_message,
    frame_size,
)
from splatcast.server.errors import (
    BadRequest,
    Conflict,
    Invalid,
    NotFound,
    NotHolder,
    TooLarge,
    TooMany,
    Unavailable,
    UnsupportedMedia,
)
from splatcast.server.hub import Broadcaster, Item
from splatcast.server.metrics import Metrics
from splatcast.server.settings import Settings
from splatcast.server.storage import FrameRecord, SequenceInfo, Storage

if TYPE_CHECKING:  # redis is needed only for scale-out
    from splatcast.server.lease import Leases

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ENCODINGS = ("server", "producer")
"""Who encodes a sequence's frames: the server (uploads are PLYs) or the producer (uploads are
protocol messages, checked by decoding them)."""


@dataclass
class Ingested:
    """Result of one frame upload: ``created`` is False for a safe retry of a stored frame."""

    record: FrameRecord
    created: bool


class Sequences:
    """The server's operations on sequences; refusals raise ``splatcast.server.errors.ServerError``
    subclasses with a clear message (storage faults: ``StorageError``)."""

    def __init__(self, settings: Settings, storage: Storage, hub: Broadcaster, metrics: Metrics,
                 leases: Leases | None = None) -> None:
        self.settings = settings
        self.storage = storage
        self.hub = hub
        self.metrics = metrics
        self.leases = leases
        self._locks: dict[str, asyncio.Lock] = {}
        self._header_reads: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._encoders: dict[str, FrameEncoder | RateController] = {}
        self._decoders: dict[str, FrameDecoder] = {}  # producer-encoded sequences: the check's decoder
        self.limits = Limits(max_message_bytes=min(settings.max_upload_bytes, (1 << 32) - 1),
                             max_gaussians=settings.max_gaussians)  # of uploaded messages
        self._pool = ThreadPoolExecutor(settings.encode_workers, thread_name_prefix="splatcast-encode")
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="splatcast-hash")

    def close(self) -> None:
        """Wait for running encodes and stop the encoding and hashing threads."""
        self._pool.shutdown(wait=True)
        self._hasher.shutdown(wait=True)

    def get(self, seq_id: str) -> SequenceInfo:
        """The sequence's info (blocking: SQLite); ``NotFound`` if there is none."""
        info = self.storage.get(seq_id)
        if info is None:
            raise NotFound(f"no sequence {seq_id!r}")
        return info

    async def _lock(self, seq_id: str) -> asyncio.Lock:
        lock = self._locks.get(seq_id)
        if lock is None:  # the callers read the sequence again once they hold the lock
            await asyncio.to_thread(self.get, seq_id)  # 404 before an unknown id gets a lock
            lock = self._locks.setdefault(seq_id, asyncio.Lock())
        return lock

    async def stream_header(self, seq_id: str, header_bytes: int = 0) -> bytes:
        """The sequence's stream header message (``header_bytes`` long if known, else read from its
        info: ``NotFound`` if it was deleted). Subscribers asking at the same time (all of them at
        frame 0 of a live upload) share one read: one storage round trip instead of hundreds."""
        key = (seq_id, header_bytes)
        read = self._header_reads.get(key)
        if read is None:
            read = asyncio.ensure_future(asyncio.to_thread(self._read_header, seq_id, header_bytes))
            self._header_reads[key] = read
            read.add_done_callback(lambda _: self._header_reads.pop(key, None))
        return await asyncio.shield(read)

    def _read_header(self, seq_id: str, header_bytes: int) -> bytes:
        return self.storage.read(seq_id, 0, header_bytes or self.get(seq_id).header_bytes)

    def create(self, name: str, fps: float, codec: dict, seq_id: str | None = None,
               encoding: str = "server") -> SequenceInfo:
        """Store a new empty open sequence (blocking: SQLite). ``encoding``: one of ``ENCODINGS``;
        a producer encodes with ``CodecConfig.from_dict(info.codec)`` (any device) and sends
        ``info.codec`` as its stream header's ``codec_params``. ``Invalid`` for a bad id, encoding
        or codec options (including integers the stream header cannot carry), ``TooMany`` over
        ``max_sequences``, ``Conflict`` when the id is taken."""
        if seq_id is not None and not re.match(ID_PATTERN, seq_id):
            raise Invalid(f"invalid sequence id {seq_id!r}: use 1-64 of A-Z a-z 0-9 _ - (not first)")
        if encoding not in ENCODINGS:
            raise Invalid(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        try:
            config = CodecConfig.from_dict({**self.settings.codec_defaults, **codec, "device": self.settings.device})
            StreamHeader(codec=CODEC_NAME, codec_version=CODEC_VERSION, codec_params=config.to_dict(), sh_degree=0,
                         fps=fps, name=name)  # what frame 0 will write: the wire's own bounds (ints < 2^53)
        except (ValueError, TypeError, ProtocolError) as e:
            raise Invalid(str(e)) from None
        if len(self.storage.list()) >= self.settings.max_sequences:
            raise TooMany(f"the server already stores {self.settings.max_sequences} sequences")
        info = SequenceInfo(id=seq_id or secrets.token_hex(6), name=name, fps=fps, codec=config.to_dict(),
                            created_at=time.time(), encoding=encoding)
        try:
            self.storage.create(info)
        except KeyError:
            raise Conflict(f"sequence {info.id!r} already exists") from None
        return info

    async def _fence(self, seq_id: str, takeover: bool) -> str | None:
        """The encoder lease value to commit with (None without scale-out); ``NotHolder`` while
        another replica holds it, unless ``takeover``: then wait for it to expire (``Unavailable``
        after ``lease_wait_s``)."""
        if self.leases is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.lease_wait_s
        while True:
            lease = await asyncio.to_thread(self.leases.acquire, seq_id)
            if lease.mine:
                if lease.new:  # someone else may have encoded meanwhile: start a new GOP
                    self._forget(seq_id)
                    self.metrics.lease_events.labels("acquired").inc()
                return lease.value
            if not takeover:
                raise NotHolder(f"replica {lease.holder} encodes sequence {seq_id!r}", lease.holder,
                                self.settings.retry_after_s)
            if loop.time() > deadline:
                raise Unavailable(f"the replica encoding {seq_id!r} ({lease.holder}) is unreachable and its lease "
                                  f"has not expired within {self.settings.lease_wait_s:g} s",
                                  self.settings.retry_after_s)
            await asyncio.sleep(0.1)

    def _forget(self, seq_id: str) -> None:
        """Drop the sequence's codec state (encoder, or the check's decoder): it no longer matches
        what is stored. The next frame starts a new GOP (server-encoded) or rebuilds the decoder."""
        self._encoders.pop(seq_id, None)
        self._decoders.pop(seq_id, None)

    async def _lost(self, seq_id: str) -> None:
        """A commit failed: forget the encoder, and give the lease back if it is still ours (the next
        frame takes a new epoch at once: a new GOP, fenced from anything of this attempt)."""
        self._forget(seq_id)
        if self.leases is not None:
            await asyncio.to_thread(self.leases.release, seq_id)
            self.metrics.lease_events.labels("lost").inc()

    async def put_frame(self, seq_id: str, index: int, body: bytes | bytearray, takeover: bool = False,
                        encoded: bool = False) -> Ingested:
        """Store frame ``index`` (the next one), or confirm a retry of a stored identical frame.

        ``body`` is one PLY file, or with ``encoded`` (a producer-encoded sequence) the frame's
        protocol messages: frame 0's stream header and frame message, one frame message for every
        later frame (checked as ``_check_and_store`` says, stored as sent). Its SHA-256 (stored,
        compared for retries) is computed in a thread of its own meanwhile (41 MB take about 40 ms).
        Refusals: ``NotFound``, ``Conflict``, ``TooLarge``, ``BadRequest``, ``Invalid``,
        ``UnsupportedMedia`` (``encoded`` does not match the sequence's encoding), ``StorageError``.
        """
        self.metrics.encode_pending.inc()
        try:
            ingested = await self._put_frame(seq_id, index, body, takeover, encoded)
        except NotHolder:
            self.metrics.frame_uploads.labels("forwarded").inc()
            raise
        except Exception:
            self.metrics.frame_uploads.labels("refused").inc()
            raise
        finally:
            self.metrics.encode_pending.dec()
        self.metrics.frame_uploads.labels("stored" if ingested.created else "retry").inc()
        return ingested

    async def _put_frame(self, seq_id: str, index: int, body: bytes | bytearray, takeover: bool,
                         encoded: bool) -> Ingested:
        async with await self._lock(seq_id):
            digest = self._hasher.submit(_sha256, body)
            info = await asyncio.to_thread(self.get, seq_id)
            if encoded != (info.encoding == "producer"):
                raise UnsupportedMedia(
                    f"sequence {seq_id!r} is encoded by the producer: send its encoded frames as {MEDIA_TYPE}"
                    if info.encoding == "producer" else
                    f"sequence {seq_id!r} is encoded by the server: send PLY files, not {MEDIA_TYPE}")
            if index < info.frame_count:
                return await asyncio.to_thread(self._check_retry, seq_id, index, await asyncio.wrap_future(digest))
            if info.finished:
                raise Conflict(f"sequence {seq_id!r} is finished ({info.frame_count} frames)")
            if index != info.frame_count:
                raise Conflict(f"expected frame {info.frame_count}, got {index}: frames must come in order")
            if index >= self.settings.max_frames:
                raise TooLarge(f"sequence {seq_id!r} reached the limit of {self.settings.max_frames} frames")
            fence = await self._fence(seq_id, takeover)
            store = self._check_and_store if encoded else self._encode_and_store
            try:
                record, message = await asyncio.get_running_loop().run_in_executor(
                    self._pool, store, info, index, body, digest, fence)
            except Unavailable:
                await self._lost(seq_id)  # lease lost or backbone down: the next frame starts a new GOP
                raise
            self.hub.publish(seq_id, Item("frame", message, record.index, record.frame_type, record.received_at))
            return Ingested(record, created=True)

    def _check_retry(self, seq_id: str, index: int, sha256: str) -> Ingested:
        (record,) = self.storage.frames(seq_id, index, index + 1)
        if sha256 != record.sha256:
            raise Conflict(f"frame {index} is already stored with different content")
        return Ingested(record, created=False)

    def _encode_and_store(self, info: SequenceInfo, index: int, body: bytes | bytearray,
                          digest: Future[str], fence: str | None = None) -> tuple[FrameRecord, bytes]:
        received_at = time.time()
        t0 = time.perf_counter()
        try:
            frame = read_ply(body)
        except PlyError as e:
            raise BadRequest(f"bad PLY: {e}") from None
        self.metrics.parse_seconds.observe(time.perf_counter() - t0)
        if frame.num_gaussians > self.settings.max_gaussians:
            raise TooLarge(f"{frame.num_gaussians} Gaussians over the limit of {self.settings.max_gaussians}")
        if info.sh_degree is not None and frame.sh_degree != info.sh_degree:
            raise Invalid(f"frame has SH degree {frame.sh_degree}, the sequence has {info.sh_degree}")
        encoder = self._encoders.pop(info.id, None) or make_encoder(CodecConfig.from_dict(info.codec), info.fps,
                                                                    frame_size)
        t0 = time.perf_counter()
        try:
            encoded = encoder.encode(frame)
        except CodecError as e:
            raise Invalid(f"cannot encode frame {index}: {e}") from None
        encode_ms = (time.perf_counter() - t0) * 1000
        self.metrics.encode_seconds.labels(encoded.frame_type).observe(encode_ms / 1000)
        message = encode_message(FrameMessage(index=index, pts=index / info.fps, frame_type=encoded.frame_type,
                                              num_gaussians=encoded.num_gaussians, payload=encoded.payload))
        header = None
        if index == 0:
            header = encode_message(StreamHeader(codec=CODEC_NAME, codec_version=CODEC_VERSION,
                                                 codec_params=info.codec, sh_degree=frame.sh_degree,
                                                 fps=info.fps, name=info.name))
        record = FrameRecord(index=index, frame_type=encoded.frame_type, num_gaussians=encoded.num_gaussians,
                             raw_bytes=len(body), sha256=digest.result(), encode_ms=encode_ms,
                             received_at=received_at)
        record = self.storage.append(info.id, record, message, header=header, sh_degree=frame.sh_degree,
                                     fence=fence)
        self._encoders[info.id] = encoder  # trusted again: everything it encoded is stored
        self.metrics.frames_encoded.labels(record.frame_type).inc()
        return record, message

    def _check_and_store(self, info: SequenceInfo, index: int, body: bytes | bytearray,
                         digest: Future[str], fence: str | None = None) -> tuple[FrameRecord, bytes]:
        """Check a producer-encoded frame fully, then store it byte for byte.

        Checks, in order: the protocol (``self.limits`` before each allocation, the schema), the
        body's messages (frame 0: a stream header then a frame message; later: one frame message),
        the header against the sequence (this server's codec and version, ``codec_params`` equal
        to the sequence's codec, its fps and name, no frame count), the frame's index (the URL's),
        pts (index / fps) and GOP length (a keyframe at least every ``gop`` frames), then decodes
        it with the sequence's decoder (which refuses an intra or interframe before any keyframe
        and any payload inconsistent with itself or its Gaussian count) and checks its SH degree.
        Refusals: ``BadRequest`` (malformed), ``TooLarge`` (a protocol limit), ``Invalid`` (the
        codec or the sequence's settings refuse it); the decoder is unchanged by a refused frame
        (a keyframe is decoded by a fresh one, as it needs no earlier state).
        """
        received_at = time.time()
        t0 = time.perf_counter()
        decoder_in = StreamDecoder(self.limits)
        try:
            messages = decoder_in.feed(body)
            decoder_in.close()
        except LimitExceeded as e:
            raise TooLarge(f"frame {index}: {e}") from None
        except ProtocolError as e:
            raise BadRequest(f"frame {index}: not a valid {MEDIA_TYPE} body: {e}") from None
        expected = (StreamHeader, FrameMessage) if index == 0 else (FrameMessage,)
        if tuple(map(type, messages)) != expected:
            raise BadRequest(f"frame {index}: expected the messages {[c.__name__ for c in expected]}, got "
                             f"{[type(m).__name__ for m in messages]}")
        header = cast(StreamHeader, messages[0]) if index == 0 else None
        msg = cast(FrameMessage, messages[-1])
        header_bytes = decoder_in.last_sizes[0] if header is not None else 0
        if header is not None:
            _check_header(header, info)
        if msg.index != index:
            raise BadRequest(f"frame message has index {msg.index}, uploaded as frame {index}")
        if msg.pts != index / info.fps:
            raise Invalid(f"frame {index}: pts {msg.pts!r} is not index / fps = {index / info.fps!r}")
        gop = info.codec.get("gop")
        if (msg.frame_type != "keyframe" and info.keyframes and isinstance(gop, int)
                and index - info.keyframes[-1] >= gop):
            raise Invalid(f"frame {index} must be a keyframe: the sequence's GOP is {gop} frames and the last "
                          f"keyframe is frame {info.keyframes[-1]}")
        previous = self._decoders.pop(info.id, None)
        keyframe = msg.frame_type == "keyframe"  # needs no earlier state: a fresh decoder, the previous one kept
        decoder = FrameDecoder() if keyframe else previous or self._rebuild_decoder(info)
        sh_degree = header.sh_degree if header is not None else info.sh_degree
        try:
            state = decoder.update(msg.frame_type, msg.num_gaussians, msg.payload)
            error = None if state.sh_degree == sh_degree else \
                f"frame {index} has SH degree {state.sh_degree}, the sequence has {sh_degree}"
        except CodecError as e:
            error = f"frame {index} does not decode: {e}"
        if error is not None:
            kept = previous if keyframe else decoder  # neither was changed by the refused frame
            if kept is not None:
                self._decoders[info.id] = kept
            raise Invalid(error)
        check_ms = (time.perf_counter() - t0) * 1000
        self.metrics.check_seconds.labels(msg.frame_type).observe(check_ms / 1000)
        view = memoryview(body)
        message = bytes(view[header_bytes:])
        record = FrameRecord(index=index, frame_type=msg.frame_type, num_gaussians=msg.num_gaussians,
                             raw_bytes=len(body), sha256=digest.result(), encode_ms=check_ms, received_at=received_at)
        record = self.storage.append(info.id, record, message, header=bytes(view[:header_bytes]) or None,
                                     sh_degree=state.sh_degree, fence=fence)
        self._decoders[info.id] = decoder  # trusted again: everything it decoded is stored
        return record, message

    def _rebuild_decoder(self, info: SequenceInfo) -> FrameDecoder:
        """A decoder at the end of the stored stream: the stored open GOP (from the last keyframe)
        checked again (``FrameDecoder.update``; blocking: storage reads, at 250k Gaussians about
        20-30 ms a frame on a CPU)."""
        decoder = FrameDecoder()
        if info.keyframes:
            rows = self.storage.frames(info.id, info.keyframes[-1])
            data = self.storage.read(info.id, rows[0].offset, rows[-1].offset + rows[-1].length - rows[0].offset)
            for msg in StreamDecoder(self.limits).feed(data):
                assert isinstance(msg, FrameMessage)
                decoder.update(msg.frame_type, msg.num_gaussians, msg.payload)
        return decoder

    async def finish(self, seq_id: str, takeover: bool = False) -> SequenceInfo:
        """Append the end message (idempotent: finishing a finished sequence changes nothing)."""
        async with await self._lock(seq_id):
            info = await asyncio.to_thread(self.get, seq_id)
            if info.finished:
                return info
            if info.frame_count == 0:
                raise Conflict(f"sequence {seq_id!r} has no frames to finish")
            message = encode_message(EndOfStream(frame_count=info.frame_count))
            fence = await self._fence(seq_id, takeover)
            try:
                await asyncio.to_thread(self.storage.finish, seq_id, message, fence)
            except Unavailable:
                await self._lost(seq_id)
                raise
            self._forget(seq_id)
            if self.leases is not None:
                await asyncio.to_thread(self.leases.release, seq_id)
            self.hub.publish(seq_id, Item("end", message))
            return await asyncio.to_thread(self.get, seq_id)

    async def delete(self, seq_id: str) -> None:
        async with await self._lock(seq_id):
            if not await asyncio.to_thread(self.storage.delete, seq_id):
                raise NotFound(f"no sequence {seq_id!r}")
            self._forget(seq_id)
            if self.leases is not None:
                await asyncio.to_thread(self.leases.release, seq_id)
            message = encode_message(ErrorMessage(code="deleted", message=f"sequence {seq_id!r} was deleted"))
            self.hub.publish(seq_id, Item("error", message))
        self._locks.pop(seq_id, None)


def _check_header(header: StreamHeader, info: SequenceInfo) -> None:
    """``Invalid`` unless a producer's stream header is the one the server would write for ``info``."""
    try:
        check_codec(header.codec, header.codec_version)
    except CodecError as e:
        raise Invalid(f"stream header: {e}") from None
    if header.codec_params != info.codec:
        differ = sorted(k for k in {*header.codec_params, *info.codec}
                        if header.codec_params.get(k, ...) != info.codec.get(k, ...))
        raise Invalid(f"stream header: codec_params differ from the sequence's codec settings in {differ} "
                      "(encode with the sequence's codec as GET /v1/sequences/ID gives it)")
    if header.fps != info.fps or header.name != info.name or header.frame_count is not None:
        raise Invalid(f"stream header: fps {header.fps!r}, name {header.name!r} and frame_count "
                      f"{header.frame_count!r} must be the sequence's ({info.fps!r}, {info.name!r}, None)")


def _sha256(body: bytes | bytearray) -> str:
    return hashlib.sha256(body).hexdigest()
