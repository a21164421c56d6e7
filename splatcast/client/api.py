"""Client library: HTTP calls with httpx, streams with websockets, frames decoded on arrival.

``SplatcastClient`` is async; ``SyncSplatcastClient`` wraps it for blocking code. Results are
dataclasses (``Sequence``, ``FrameInfo``, ``Batch``, ``Uploaded``, ``ReceivedFrame``). Every
failure to talk to the server is a ``SplatcastError``::

    SplatcastError             base class: ``url`` (the URL concerned), ``status`` (HTTP status or None)
    ├── ServerRefused          the server answered an HTTP error (``status``, ``detail``), also
    │                          when it refuses a WebSocket handshake
    ├── ConnectionFailed       no answer: connection refused, DNS, timeout, connection lost (httpx
    │                          transport errors, WebSocket handshake failures)
    └── StreamError            a stream that stopped without its end message, or with an error message

Bytes that break the protocol raise ``splatcast.protocol.ProtocolError``, a frame the codec
cannot decode ``splatcast.codec.CodecError`` (both are bugs or attacks, not network trouble).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from splatcast.codec import (
    CODEC_NAME,
    CODEC_VERSION,
    CodecConfig,
    EncodedFrame,
    FrameDecoder,
    GaussianFrame,
    check_codec,
    ply_files,
    read_ply,
)
from splatcast.codec.rate import make_encoder
from splatcast.protocol import (
    MEDIA_TYPE,
    EndOfStream,
    ErrorMessage,
    FrameMessage,
    Limits,
    Message,
    StreamDecoder,
    StreamHeader,
    encode_message,
    frame_size,
)

__all__ = ["Batch", "ConnectionFailed", "FrameInfo", "FrameProducer", "ReceivedFrame", "Sequence", "ServerRefused",
           "SplatcastClient", "SplatcastError", "StreamError", "SyncSplatcastClient", "Uploaded", "ply_files"]

DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
"""Connect within 10 s; 300 s for the rest: a PUT is answered only once the frame is encoded
(a keyframe's k-means on a large frame takes seconds to minutes on a CPU)."""

RETRY_STATUSES = frozenset({500, 502, 503, 504})
"""Answers after which ``upload_frame`` tries again (a fault that may pass; 507, disk full, does not)."""


# ---------------------------------------------------------------- errors

class SplatcastError(Exception):
    """Base class of every failure to talk to a server.

    ``url``: the URL concerned; ``status``: the HTTP status of a refusal, None otherwise;
    ``detail``: what went wrong, without the URL. ``str(error)`` is ``"<detail>, <url>"``.
    """

    def __init__(self, detail: str, url: str, status: int | None = None) -> None:
        super().__init__(f"{detail}, {url}")
        self.detail, self.url, self.status = detail, url, status


class ServerRefused(SplatcastError):
    """The server answered with an HTTP error status (``status``) and its message (``detail``)."""

    def __init__(self, status: int, detail: str, url: str) -> None:
        super().__init__(f"HTTP {status}: {detail}", url, status)
        self.detail = detail


class ConnectionFailed(SplatcastError):
    """No answer from the server: it could not be reached, timed out or dropped the connection."""


class StreamError(SplatcastError):
    """A stream that stopped without its end message, or with an error message from the server."""


def _refusal_detail(body: bytes | bytearray, reason: str) -> str:
    """The server's message in an error answer's ``body``: ``{"detail": "..."}`` as it is; a list
    of validation errors (``[{"loc": [...], "msg": ...}]``) as ``loc: msg; ...``; anything else
    as its text (shortened); ``reason`` (the status's phrase) for an empty body."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(d, dict) and "msg" in d for d in detail):
        return "; ".join(".".join(map(str, d.get("loc", ()))) + f": {d['msg']}" for d in detail)
    text = json.dumps(detail) if detail is not None else body.decode(errors="replace").strip()
    return (text[:300] + "...") if len(text) > 300 else (text or reason)


def _describe(error: BaseException) -> str:
    """A transport error as words: its message, or its type when it has none (httpx timeouts)."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# ---------------------------------------------------------------- results

def _from_json(cls, data: Any, url: str):
    """Build result dataclass ``cls`` from the server's JSON object (unknown keys ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except (AttributeError, TypeError) as e:
        raise SplatcastError(f"unexpected answer from the server ({e})", url) from None


@dataclass(frozen=True)
class Sequence:
    """A sequence as the server describes it (docs/API.md, ``Sequence``)."""

    id: str
    name: str
    fps: float
    status: str  # "open" or "finished"
    created_at: float  # Unix time
    sh_degree: int | None  # None before frame 0
    frames: int
    keyframes: int
    stream_bytes: int
    raw_bytes: int  # uploaded PLY bytes
    ratio: float | None  # raw_bytes / encoded frame bytes
    encode_ms_mean: float | None
    subscribers: int  # live now
    codec: dict[str, Any]  # CodecConfig fields
    encoding: str = "server"  # "server" or "producer": who encodes the frames
    bitrate_mbps: float | None = None  # mean over the frames stored; None before frame 0


@dataclass(frozen=True)
class FrameInfo:
    """One stored frame (docs/API.md, ``Frame``): ``bytes`` is its encoded message's size."""

    index: int
    frame_type: str  # "keyframe", "intra" or "interframe"
    num_gaussians: int
    bytes: int
    raw_bytes: int  # size of the uploaded body (PLY, or the producer's encoded messages)
    encode_ms: float  # server time: encoding the PLY, or checking a producer-encoded frame
    received_at: float  # Unix time
    window_mbps: float | None = None  # bitrate of the 1 s window ending here (frame index only)


@dataclass(frozen=True)
class Batch:
    """The answer to a tar upload: the frames stored by it and the sequence afterwards."""

    frames: list[FrameInfo]
    sequence: Sequence


@dataclass
class Uploaded:
    """One frame upload: ``sent_at``/``answered_at`` are ``time.perf_counter()`` seconds
    (``sent_at`` of the first attempt, ``answered_at`` of the one answered)."""

    index: int
    status: int  # 201 stored now, 200 already stored (safe retry)
    sent_at: float
    answered_at: float
    frame: FrameInfo
    attempts: int = 1  # more than 1 when a transport error or a 5xx answer made it try again
    producer_encode_ms: float | None = None  # producer-side encoding: this machine's encode time (before sent_at)


@dataclass
class ReceivedFrame:
    """One decoded frame of a stream.

    ``arrived_at`` / ``decoded_at``: ``time.perf_counter()`` seconds when its message arrived
    and when its decode finished (compare with ``Uploaded.sent_at`` in the same process for the
    upload-to-decode latency). ``nbytes``: size of its protocol message.
    """

    index: int
    frame_type: str
    num_gaussians: int
    pts: float  # seconds
    nbytes: int
    decode_ms: float
    arrived_at: float
    decoded_at: float
    frame: GaussianFrame


# ---------------------------------------------------------------- async client

class SplatcastClient:
    """Async client of one server, e.g. ``async with SplatcastClient("http://127.0.0.1:8000") as c:``.

    ``base_url``: ``http://`` or ``https://`` URL of the server (ValueError otherwise).
    ``token``: bearer token sent with every request (and the WebSocket handshake).
    ``timeout``: httpx timeouts of HTTP requests (``DEFAULT_TIMEOUT``: connect 10 s, 300 s for
    the rest, as a PUT is answered only after its frame is encoded). ``open_timeout``: seconds
    for a WebSocket handshake. ``retries``: further attempts of a frame PUT after a transport
    error or a 500/502/503/504 answer (safe: the server answers 200 for a frame it already
    stored), waiting ``backoff`` s, then twice as long each time.
    ``transport``: an httpx transport (tests may pass ``httpx.ASGITransport`` or
    ``httpx.MockTransport``; streams always use a real WebSocket connection). ``limits``:
    protocol limits for received messages; the WebSocket ``max_size`` follows
    ``limits.max_message_bytes``.
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 open_timeout: float = 10.0, retries: int = 3, backoff: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None, limits: Limits = Limits()) -> None:
        if not re.match(r"https?://[^/]", base_url):
            raise ValueError(f"server URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.limits, self.open_timeout, self.retries, self.backoff = limits, open_timeout, retries, backoff
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, transport=transport,
                                       timeout=timeout)

    async def __aenter__(self) -> SplatcastClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    def viewer_url(self, seq_id: str) -> str:
        """The browser viewer's page of a sequence: ``<server>/view/<id>``."""
        return f"{self.base_url}/view/{seq_id}"

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        url = self.base_url + path
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            what = "cannot connect to the server" if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)) \
                else "no answer from the server"
            raise ConnectionFailed(f"{what} ({_describe(e)})", url) from e
        if response.status_code >= 400:
            raise ServerRefused(response.status_code, _refusal_detail(response.content, response.reason_phrase), url)
        return response

    async def _json(self, method: str, path: str, cls, **kwargs):
        response = await self._request(method, path, **kwargs)
        try:
            data = response.json()
        except ValueError:
            raise SplatcastError("unexpected answer from the server (not JSON)", self.base_url + path) from None
        if cls is None:
            return data
        if isinstance(data, list):
            return [_from_json(cls, d, self.base_url + path) for d in data]
        return _from_json(cls, data, self.base_url + path)

    async def create(self, name: str = "", fps: float = 30.0, codec: dict[str, Any] | None = None,
                     seq_id: str | None = None, encoding: str = "server") -> Sequence:
        """Create a sequence (``codec``: CodecConfig fields; ``seq_id``: choose its id;
        ``encoding``: "server" (upload PLYs) or "producer" (encode here: ``upload_encoded_frames``)).

        Raises ``ServerRefused`` (409 id taken, 422 invalid parameters, 401 token...) or
        ``ConnectionFailed``.
        """
        body: dict[str, Any] = {"name": name, "fps": fps, "codec": codec or {}, "encoding": encoding}
        if seq_id is not None:
            body["id"] = seq_id
        return await self._json("POST", "/v1/sequences", Sequence, json=body)

    async def upload_frame(self, seq_id: str, index: int, ply: bytes) -> Uploaded:
        """PUT one PLY file as frame ``index``; returns when the server has encoded and stored it.

        After a transport error or a 500/502/503/504 answer it tries again, up to ``retries``
        more times with exponential backoff (the server answers 200 for a frame it stored
        already). Raises ``ServerRefused`` (400 bad PLY, 409 out of order, 413, 422...) or
        ``ConnectionFailed`` once the attempts are spent.
        """
        return await self._put_frame(seq_id, index, ply, "application/octet-stream")

    async def upload_encoded(self, seq_id: str, index: int, body: bytes) -> Uploaded:
        """PUT frame ``index`` of a producer-encoded sequence: ``body`` is ``FrameProducer.encode``'s
        (protocol messages). Retried and refused as ``upload_frame`` (400 malformed, 409 out of
        order, 413 over a limit, 415 a server-encoded sequence, 422 refused by the codec or unlike
        the sequence's stream header)."""
        return await self._put_frame(seq_id, index, body, MEDIA_TYPE)

    async def _put_frame(self, seq_id: str, index: int, body: bytes, content_type: str) -> Uploaded:
        path = f"/v1/sequences/{seq_id}/frames/{index}"
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        sent_at = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                response = await self._request("PUT", path, content=_pieces(body), headers=headers)
                break
            except SplatcastError as e:
                retry = isinstance(e, ConnectionFailed) or e.status in RETRY_STATUSES
                if not retry or attempt == self.retries:
                    raise
                await asyncio.sleep(self.backoff * 2 ** attempt)
        frame = _from_json(FrameInfo, response.json(), self.base_url + path)
        return Uploaded(index, response.status_code, sent_at, time.perf_counter(), frame, attempt + 1)

    async def upload_frames(self, seq_id: str, plys: Iterable[bytes], start: int = 0, fps: float | None = None,
                            progress: Callable[[Uploaded], None] | None = None) -> list[Uploaded]:
        """Upload frames ``start, start+1, ...`` in order; with ``fps``, no faster than that (a live rig).

        ``progress`` is called with each ``Uploaded``. Errors as in ``upload_frame``.
        """
        results, t0 = [], time.perf_counter()
        for i, ply in enumerate(plys):
            if fps is not None:
                await asyncio.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
            results.append(await self.upload_frame(seq_id, start + i, ply))
            if progress is not None:
                progress(results[-1])
        return results

    async def upload_dir(self, seq_id: str, directory: str | os.PathLike, fps: float | None = None,
                         progress: Callable[[Uploaded], None] | None = None) -> list[Uploaded]:
        """Upload the directory's ``*.ply`` files in natural order as frames 0, 1, ...

        Raises FileNotFoundError when it holds no ``.ply`` file, else as ``upload_frame``.
        """
        return await self.upload_frames(seq_id, (p.read_bytes() for p in ply_files(directory)), fps=fps,
                                        progress=progress)

    async def upload_encoded_frames(self, seq: Sequence, frames: Iterable[GaussianFrame | str | os.PathLike | bytes],
                                    start: int = 0, fps: float | None = None,
                                    progress: Callable[[Uploaded], None] | None = None,
                                    device: str = "auto") -> list[Uploaded]:
        """Encode frames on this machine and upload them as frames ``start, start+1, ...`` of the
        producer-encoded sequence ``seq`` (``create(..., encoding="producer")``), one at a time.

        ``frames``: GaussianFrames, or PLY files (paths or bytes) read in the encoding thread;
        ``device``: the encoder's ("auto": CUDA when there is one). The first frame is a keyframe
        (a fresh encoder), so ``start`` may continue a sequence after its stored frames. With
        ``fps``, no faster than that. Each ``Uploaded`` has ``producer_encode_ms``. Raises
        ``CodecError`` / ``PlyError`` for a frame that cannot be encoded, else as ``upload_encoded``.
        """
        producer = FrameProducer(seq, device)
        results, t0 = [], time.perf_counter()
        for i, frame in enumerate(frames):
            if fps is not None:
                await asyncio.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
            t1 = time.perf_counter()
            body, _ = await asyncio.to_thread(producer.encode, start + i, frame)
            encode_ms = (time.perf_counter() - t1) * 1000
            results.append(await self.upload_encoded(seq.id, start + i, body))
            results[-1].producer_encode_ms = encode_ms
            if progress is not None:
                progress(results[-1])
        return results

    async def upload_batch(self, seq_id: str, tar: bytes, finish: bool = False) -> Batch:
        """POST a tar of PLY files: appended in natural order of their names after the stored
        frames (``finish``: then finish the sequence). Not retried (a tar is not idempotent).

        Raises ``ServerRefused`` naming the member at fault, or ``ConnectionFailed``.
        """
        path = f"/v1/sequences/{seq_id}/frames" + ("?finish=true" if finish else "")
        data = await self._json("POST", path, None, content=tar, headers={"Content-Type": "application/x-tar"})
        url = self.base_url + path
        if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
            raise SplatcastError("unexpected answer from the server (not a batch)", url)
        return Batch([_from_json(FrameInfo, f, url) for f in data["frames"]],
                     _from_json(Sequence, data.get("sequence"), url))

    async def finish(self, seq_id: str) -> Sequence:
        """Finish a sequence (no more frames; subscribers get the end message). Idempotent.

        Raises ``ServerRefused`` (404, 409 no frame yet) or ``ConnectionFailed``.
        """
        return await self._json("POST", f"/v1/sequences/{seq_id}/finish", Sequence)

    async def list(self) -> list[Sequence]:
        """Every stored sequence. Raises ``ServerRefused`` or ``ConnectionFailed``."""
        return await self._json("GET", "/v1/sequences", Sequence)

    async def get(self, seq_id: str) -> Sequence:
        """One sequence. Raises ``ServerRefused`` (404 unknown) or ``ConnectionFailed``."""
        return await self._json("GET", f"/v1/sequences/{seq_id}", Sequence)

    async def frames(self, seq_id: str) -> builtins.list[FrameInfo]:
        """The server's per-frame index. Raises ``ServerRefused`` (404) or ``ConnectionFailed``."""
        return await self._json("GET", f"/v1/sequences/{seq_id}/frames", FrameInfo)

    async def delete(self, seq_id: str) -> None:
        """Delete a sequence (its subscribers get an error message). Raises ``ServerRefused`` or
        ``ConnectionFailed``."""
        await self._request("DELETE", f"/v1/sequences/{seq_id}")

    async def download(self, seq_id: str) -> bytes:
        """The ``.splatcast`` stream stored so far. Raises ``ServerRefused`` or ``ConnectionFailed``."""
        return (await self._request("GET", f"/v1/sequences/{seq_id}/stream.splatcast")).content

    async def messages(self, seq_id: str, from_start: bool = False, realtime: bool = False,
                       from_index: int | None = None) -> AsyncIterator[tuple[Message, int, float]]:
        """Yield ``(message, nbytes, arrived_at)`` for every message of the WebSocket stream.

        ``from_index`` seeks: the stream starts at the keyframe at or before that frame (it
        overrides ``from_start``; a subscriber that lost its server resumes with the next index).

        Ends after the end message. Raises ``StreamError`` for an error message or a close
        without the end message, ``ServerRefused`` when the server refuses the connection
        (404 unknown sequence, 401 token, 429 too many subscribers), ``ConnectionFailed`` when
        the handshake fails otherwise (no server, ``open_timeout``), ``ProtocolError`` for bytes
        that break the protocol.
        """
        start = f"from={from_index}" if from_index is not None else "from=start"
        query = "&".join(q for q, on in ((start, from_start or from_index is not None),
                                         ("pace=realtime", realtime)) if on)
        url = re.sub(r"^http", "ws", self.base_url) + f"/v1/sequences/{seq_id}/stream" + (f"?{query}" if query else "")
        decoder = StreamDecoder(self.limits)
        try:
            ws = await connect(url, additional_headers=self._headers, compression=None,
                               open_timeout=self.open_timeout, max_size=self.limits.max_message_bytes + 4)
        except InvalidStatus as e:
            status = e.response.status_code
            detail = _refusal_detail(e.response.body or b"", e.response.reason_phrase)
            raise ServerRefused(status, detail, url) from None
        except (OSError, TimeoutError, WebSocketException) as e:
            raise ConnectionFailed(f"cannot open the stream ({_describe(e)})", url) from e
        async with ws:
            try:
                async for data in ws:
                    arrived_at = time.perf_counter()
                    if isinstance(data, str):
                        raise StreamError("the server sent a text message", url)
                    for msg in decoder.feed(data):
                        if isinstance(msg, ErrorMessage):
                            raise StreamError(f"server error {msg.code}: {msg.message}", url)
                        yield msg, len(data), arrived_at
                        if isinstance(msg, EndOfStream):
                            return
            except ConnectionClosed as e:
                raise StreamError(f"the stream closed before its end ({e})", url) from None
        raise StreamError("the stream closed before its end message", url)

    async def subscribe(self, seq_id: str, from_start: bool = False, realtime: bool = False,
                        device: str = "cpu", from_index: int | None = None) -> AsyncIterator[ReceivedFrame]:
        """Yield every frame of the stream decoded on arrival (decoding runs in a worker thread).

        Starts at the latest keyframe, at frame 0 with ``from_start``, or at the keyframe at or
        before ``from_index``; ``realtime`` asks the server to pace the replay at the sequence's
        fps. Errors as in ``messages``; a stream header of another codec or codec version (e.g.
        a stream stored before an upgrade) and a frame the codec cannot decode raise ``CodecError``.
        """
        decoder = FrameDecoder(device=device)

        def decode(msg: FrameMessage) -> tuple[GaussianFrame, float, float]:
            t0 = time.perf_counter()
            frame = decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
            t1 = time.perf_counter()
            return frame, (t1 - t0) * 1000, t1

        async for msg, nbytes, arrived_at in self.messages(seq_id, from_start, realtime, from_index):
            if isinstance(msg, StreamHeader):
                check_codec(msg.codec, msg.codec_version)
            if isinstance(msg, FrameMessage):
                frame, decode_ms, decoded_at = await asyncio.to_thread(decode, msg)
                yield ReceivedFrame(index=msg.index, frame_type=msg.frame_type, num_gaussians=msg.num_gaussians,
                                    pts=msg.pts, nbytes=nbytes, decode_ms=decode_ms, arrived_at=arrived_at,
                                    decoded_at=decoded_at, frame=frame)


class FrameProducer:
    """Producer-side encoding of one sequence: frames -> the bodies of its frame uploads.

    ``seq``: the producer-encoded sequence (its ``codec``, ``fps`` and ``name`` make the stream
    header the server checks); ``device``: the encoder's ("auto": CUDA when available, "cpu",
    "cuda"). Holds one encoder (``make_encoder``: a ``RateController`` when the codec sets
    ``target_mbps``): frames must be encoded in index order, the first one
    is a keyframe. ValueError for a bad ``device`` or codec settings.
    """

    def __init__(self, seq: Sequence, device: str = "auto") -> None:
        self.seq = seq
        config = CodecConfig.from_dict({**seq.codec, "device": device})
        self.encoder = make_encoder(config, seq.fps, frame_size)

    def encode(self, index: int, frame: GaussianFrame | str | os.PathLike | bytes) -> tuple[bytes, EncodedFrame]:
        """The body of frame ``index``'s upload (frame 0: the stream header message, then the frame
        message; later frames: the frame message) and the encoded frame (its ``reconstruction``
        is what every decoder will get). ``frame``: a GaussianFrame or a PLY file (path or bytes).
        Raises ``CodecError`` (e.g. another SH degree than earlier frames) or ``PlyError``."""
        if not isinstance(frame, GaussianFrame):
            frame = read_ply(frame)
        encoded = self.encoder.encode(frame)
        body = encode_message(FrameMessage(index=index, pts=index / self.seq.fps, frame_type=encoded.frame_type,
                                           num_gaussians=encoded.num_gaussians, payload=encoded.payload))
        if index == 0:
            body = encode_message(StreamHeader(codec=CODEC_NAME, codec_version=CODEC_VERSION,
                                               codec_params=self.seq.codec, sh_degree=frame.sh_degree,
                                               fps=self.seq.fps, name=self.seq.name)) + body
        return body, encoded


UPLOAD_PIECE = 1024 * 1024
"""Bytes per write of an upload body: one write of a whole 41 MB PLY goes through asyncio's
transport buffer and takes about 2.5x as long on loopback (~140 vs ~55 ms)."""


async def _pieces(data: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), UPLOAD_PIECE):
        yield view[start:start + UPLOAD_PIECE]


# ---------------------------------------------------------------- blocking client

class SyncSplatcastClient:
    """Blocking client with the methods, arguments, results and errors of ``SplatcastClient``.

    Runs the async client on a private event loop; do not use it from inside a running loop.
    Use it as a context manager or call ``close()``.
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 open_timeout: float = 10.0, retries: int = 3, backoff: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None, limits: Limits = Limits()) -> None:
        self._client = SplatcastClient(base_url, token, timeout=timeout, open_timeout=open_timeout, retries=retries,
                                       backoff=backoff, transport=transport, limits=limits)
        self._runner = asyncio.Runner()
        self.base_url = self._client.base_url

    def __enter__(self) -> SyncSplatcastClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections and the private event loop."""
        self._runner.run(self._client.aclose())
        self._runner.close()

    def _run(self, coro):
        return self._runner.run(coro)

    def viewer_url(self, seq_id: str) -> str:
        """The browser viewer's page of a sequence: ``<server>/view/<id>``."""
        return self._client.viewer_url(seq_id)

    def create(self, name: str = "", fps: float = 30.0, codec: dict[str, Any] | None = None,
               seq_id: str | None = None, encoding: str = "server") -> Sequence:
        """Create a sequence; see ``SplatcastClient.create``."""
        return self._run(self._client.create(name, fps, codec, seq_id, encoding))

    def upload_frame(self, seq_id: str, index: int, ply: bytes) -> Uploaded:
        """PUT one PLY as frame ``index``, retried on transport errors and 5xx; see ``SplatcastClient.upload_frame``."""
        return self._run(self._client.upload_frame(seq_id, index, ply))

    def upload_encoded(self, seq_id: str, index: int, body: bytes) -> Uploaded:
        """PUT frame ``index`` of a producer-encoded sequence; see ``SplatcastClient.upload_encoded``."""
        return self._run(self._client.upload_encoded(seq_id, index, body))

    def upload_encoded_frames(self, seq: Sequence, frames: Iterable[GaussianFrame | str | os.PathLike | bytes],
                              start: int = 0, fps: float | None = None,
                              progress: Callable[[Uploaded], None] | None = None,
                              device: str = "auto") -> list[Uploaded]:
        """Encode frames here and upload them; see ``SplatcastClient.upload_encoded_frames``."""
        return self._run(self._client.upload_encoded_frames(seq, frames, start, fps, progress, device))

    def upload_frames(self, seq_id: str, plys: Iterable[bytes], start: int = 0, fps: float | None = None,
                      progress: Callable[[Uploaded], None] | None = None) -> list[Uploaded]:
        """Upload frames ``start, start+1, ...`` in order; see ``SplatcastClient.upload_frames``."""
        return self._run(self._client.upload_frames(seq_id, plys, start, fps, progress))

    def upload_dir(self, seq_id: str, directory: str | os.PathLike, fps: float | None = None,
                   progress: Callable[[Uploaded], None] | None = None) -> list[Uploaded]:
        """Upload a directory's ``*.ply`` files as frames 0, 1, ...; see ``SplatcastClient.upload_dir``."""
        return self._run(self._client.upload_dir(seq_id, directory, fps, progress))

    def upload_batch(self, seq_id: str, tar: bytes, finish: bool = False) -> Batch:
        """POST a tar of PLY files; see ``SplatcastClient.upload_batch``."""
        return self._run(self._client.upload_batch(seq_id, tar, finish))

    def finish(self, seq_id: str) -> Sequence:
        """Finish a sequence; see ``SplatcastClient.finish``."""
        return self._run(self._client.finish(seq_id))

    def list(self) -> list[Sequence]:
        """Every stored sequence; see ``SplatcastClient.list``."""
        return self._run(self._client.list())

    def get(self, seq_id: str) -> Sequence:
        """One sequence; see ``SplatcastClient.get``."""
        return self._run(self._client.get(seq_id))

    def frames(self, seq_id: str) -> builtins.list[FrameInfo]:
        """The per-frame index of a sequence; see ``SplatcastClient.frames``."""
        return self._run(self._client.frames(seq_id))

    def delete(self, seq_id: str) -> None:
        """Delete a sequence; see ``SplatcastClient.delete``."""
        self._run(self._client.delete(seq_id))

    def download(self, seq_id: str) -> bytes:
        """The ``.splatcast`` stream stored so far; see ``SplatcastClient.download``."""
        return self._run(self._client.download(seq_id))

    def messages(self, seq_id: str, from_start: bool = False, realtime: bool = False,
                 from_index: int | None = None) -> Iterator[tuple[Message, int, float]]:
        """Iterate ``(message, nbytes, arrived_at)`` of the stream; see ``SplatcastClient.messages``."""
        return self._iterate(self._client.messages(seq_id, from_start, realtime, from_index))

    def subscribe(self, seq_id: str, from_start: bool = False, realtime: bool = False,
                  device: str = "cpu", from_index: int | None = None) -> Iterator[ReceivedFrame]:
        """Iterate the stream's frames decoded on arrival; see ``SplatcastClient.subscribe``."""
        return self._iterate(self._client.subscribe(seq_id, from_start, realtime, device, from_index))

    def _iterate(self, agen) -> Iterator:
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())
