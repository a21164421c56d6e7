"""Client library: HTTP calls with httpx, streams with websockets, frames decoded on arrival.

``SplatcastClient`` is async; ``SyncSplatcastClient`` wraps it for blocking code. Both raise
``SplatcastError`` for HTTP errors (with the server's message) and ``StreamError`` when a
stream stops without its end message.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from splatcast.codec import FrameDecoder, GaussianFrame, ply_files
from splatcast.protocol import EndOfStream, ErrorMessage, FrameMessage, Limits, Message, StreamDecoder


class SplatcastError(Exception):
    """An HTTP request the server refused; ``status`` is the HTTP status, ``detail`` its message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class StreamError(SplatcastError):
    """A stream that ended without its end message (``status`` 0), or with an error message."""


@dataclass
class Uploaded:
    """One frame upload: ``sent_at``/``answered_at`` are ``time.perf_counter()`` seconds."""

    index: int
    status: int  # 201 stored now, 200 already stored (safe retry)
    sent_at: float
    answered_at: float
    frame: dict  # the server's FrameOut: frame_type, num_gaussians, bytes, raw_bytes, encode_ms...


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


class SplatcastClient:
    """Async client of one server, e.g. ``async with SplatcastClient("http://127.0.0.1:8000") as c:``.

    ``token``: bearer token sent with every request (and the WebSocket handshake).
    ``transport``: an httpx transport (tests may pass ``httpx.ASGITransport``; streams always
    use a real WebSocket connection). ``limits``: protocol limits for received messages; the
    WebSocket ``max_size`` follows ``limits.max_message_bytes``.
    """

    def __init__(self, base_url: str, token: str | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 300.0, limits: Limits = Limits()) -> None:
        self.base_url = base_url.rstrip("/")
        self.limits = limits
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, transport=transport,
                                       timeout=timeout)

    async def __aenter__(self) -> "SplatcastClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise SplatcastError(response.status_code, str(detail))
        return response

    async def create(self, name: str = "", fps: float = 30.0, codec: dict[str, Any] | None = None,
                     seq_id: str | None = None) -> dict:
        """Create a sequence; returns the server's SequenceOut (``["id"]`` is its id)."""
        body = {"name": name, "fps": fps, "codec": codec or {}}
        if seq_id is not None:
            body["id"] = seq_id
        return (await self._request("POST", "/v1/sequences", json=body)).json()

    async def upload_frame(self, seq_id: str, index: int, ply: bytes) -> Uploaded:
        """PUT one PLY file as frame ``index``; returns when the server has encoded and stored it."""
        sent_at = time.perf_counter()
        response = await self._request("PUT", f"/v1/sequences/{seq_id}/frames/{index}", content=_pieces(ply),
                                        headers={"Content-Type": "application/octet-stream",
                                                 "Content-Length": str(len(ply))})
        return Uploaded(index, response.status_code, sent_at, time.perf_counter(), response.json())

    async def upload_frames(self, seq_id: str, plys: Iterable[bytes], start: int = 0, fps: float | None = None,
                            progress: Callable[[Uploaded], None] | None = None) -> list[Uploaded]:
        """Upload frames ``start, start+1, ...`` in order; with ``fps``, no faster than that (a live rig)."""
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
        """Upload the directory's ``*.ply`` files in natural order as frames 0, 1, ..."""
        return await self.upload_frames(seq_id, (p.read_bytes() for p in ply_files(directory)), fps=fps,
                                        progress=progress)

    async def finish(self, seq_id: str) -> dict:
        return (await self._request("POST", f"/v1/sequences/{seq_id}/finish")).json()

    async def list(self) -> list[dict]:
        return (await self._request("GET", "/v1/sequences")).json()

    async def get(self, seq_id: str) -> dict:
        return (await self._request("GET", f"/v1/sequences/{seq_id}")).json()

    async def frames(self, seq_id: str) -> list[dict]:
        """The server's per-frame index (type, Gaussians, bytes, encode ms)."""
        return (await self._request("GET", f"/v1/sequences/{seq_id}/frames")).json()

    async def delete(self, seq_id: str) -> None:
        await self._request("DELETE", f"/v1/sequences/{seq_id}")

    async def download(self, seq_id: str) -> bytes:
        """The ``.splatcast`` stream stored so far."""
        return (await self._request("GET", f"/v1/sequences/{seq_id}/stream.splatcast")).content

    async def messages(self, seq_id: str, from_start: bool = False,
                       realtime: bool = False) -> AsyncIterator[tuple[Message, int, float]]:
        """Yield ``(message, nbytes, arrived_at)`` for every message of the WebSocket stream.

        Ends after the end message. Raises ``StreamError`` for an error message or a close
        without the end message, ``SplatcastError`` when the server refuses the connection
        (404 unknown sequence, 401 token, 429 too many subscribers), ``ProtocolError`` for
        bytes that break the protocol.
        """
        query = "&".join(q for q, on in (("from=start", from_start), ("pace=realtime", realtime)) if on)
        url = re.sub(r"^http", "ws", self.base_url) + f"/v1/sequences/{seq_id}/stream" + (f"?{query}" if query else "")
        decoder = StreamDecoder(self.limits)
        try:
            async with connect(url, additional_headers=self._headers, compression=None,
                               max_size=self.limits.max_message_bytes + 4) as ws:
                async for data in ws:
                    arrived_at = time.perf_counter()
                    if isinstance(data, str):
                        raise StreamError(0, "the server sent a text message")
                    for msg in decoder.feed(data):
                        if isinstance(msg, ErrorMessage):
                            raise StreamError(0, f"server error {msg.code}: {msg.message}")
                        yield msg, len(data), arrived_at
                        if isinstance(msg, EndOfStream):
                            return
        except InvalidStatus as e:
            raise SplatcastError(e.response.status_code, e.response.body.decode(errors="replace")) from None
        except ConnectionClosed as e:
            raise StreamError(0, f"the stream closed before its end ({e})") from None
        raise StreamError(0, "the stream closed before its end message")

    async def subscribe(self, seq_id: str, from_start: bool = False, realtime: bool = False,
                        device: str = "cpu") -> AsyncIterator[ReceivedFrame]:
        """Yield every frame of the stream decoded on arrival (decoding runs in a worker thread).

        Starts at the latest keyframe, or at frame 0 with ``from_start``; ``realtime`` asks the
        server to pace the replay at the sequence's fps. Errors as in ``messages``; a frame the
        codec cannot decode raises ``CodecError``.
        """
        decoder = FrameDecoder(device=device)

        def decode(msg: FrameMessage) -> tuple[GaussianFrame, float, float]:
            t0 = time.perf_counter()
            frame = decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
            t1 = time.perf_counter()
            return frame, (t1 - t0) * 1000, t1

        async for msg, nbytes, arrived_at in self.messages(seq_id, from_start, realtime):
            if isinstance(msg, FrameMessage):
                frame, decode_ms, decoded_at = await asyncio.to_thread(decode, msg)
                yield ReceivedFrame(index=msg.index, frame_type=msg.frame_type, num_gaussians=msg.num_gaussians,
                                    pts=msg.pts, nbytes=nbytes, decode_ms=decode_ms, arrived_at=arrived_at,
                                    decoded_at=decoded_at, frame=frame)


UPLOAD_PIECE = 1024 * 1024
"""Bytes per write of an upload body: one write of a whole 41 MB PLY goes through asyncio's
transport buffer and takes about 2.5x as long on loopback (~140 vs ~55 ms)."""


async def _pieces(data: bytes) -> AsyncIterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), UPLOAD_PIECE):
        yield view[start:start + UPLOAD_PIECE]


class SyncSplatcastClient:
    """Blocking wrapper of ``SplatcastClient`` with the same methods and arguments.

    Runs the async client on a private event loop; do not use it from inside a running loop.
    """

    def __init__(self, base_url: str, token: str | None = None, **kwargs) -> None:
        self._runner = asyncio.Runner()
        self._client = SplatcastClient(base_url, token, **kwargs)

    def __enter__(self) -> "SyncSplatcastClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()

    def _iterate(self, agen) -> Iterator:
        try:
            while True:
                try:
                    yield self._runner.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._runner.run(agen.aclose())

    def subscribe(self, seq_id: str, from_start: bool = False, realtime: bool = False,
                  device: str = "cpu") -> Iterator[ReceivedFrame]:
        return self._iterate(self._client.subscribe(seq_id, from_start, realtime, device))

    def messages(self, seq_id: str, from_start: bool = False, realtime: bool = False) -> Iterator[tuple]:
        return self._iterate(self._client.messages(seq_id, from_start, realtime))


def _blocking(name: str):
    def method(self, *args, **kwargs):
        return self._runner.run(getattr(self._client, name)(*args, **kwargs))

    method.__name__ = name
    method.__doc__ = getattr(SplatcastClient, name).__doc__
    return method


for _name in ("create", "upload_frame", "upload_frames", "upload_dir", "finish", "list", "get", "frames",
              "delete", "download"):
    setattr(SyncSplatcastClient, _name, _blocking(_name))
