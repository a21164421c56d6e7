"""The HTTP and WebSocket routes under ``/v1``: thin handlers over ``Sequences`` and ``Storage``.

No handler blocks the event loop: those that only read SQLite or files are plain functions
(FastAPI runs them in its thread pool), the others are coroutines that run SQLite and file work
in threads (``asyncio.to_thread``, or ``Sequences``' encode pool). Refusals are ``splatcast.server.errors``
exceptions, turned into HTTP answers in ``app.py``. ``add_routes`` declares each route once,
with its OpenAPI answers; bearer security appears only where a token is checked.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import tarfile
import tempfile
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request, Response, WebSocket
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from splatcast.codec import natural_key
from splatcast.codec.rate import window_mbps
from splatcast.protocol import MEDIA_TYPE
from splatcast.server.errors import BadRequest, NotFound, NotHolder, RequestTimeout, ServerError, TooLarge, Unauthorized
from splatcast.server.forward import FORWARDED
from splatcast.server.schemas import BatchOut, CreateSequence, ErrorOut, FrameOut, HealthOut, SequenceOut
from splatcast.server.sequences import Sequences
from splatcast.server.settings import Settings
from splatcast.server.storage import SequenceInfo
from splatcast.server.stream import serve_subscriber

if TYPE_CHECKING:
    from splatcast.server.forward import Forwarder

_CHUNK = 1024 * 1024  # download read size
_SPOOL_BYTES = 64 * 1024 * 1024  # tar bodies up to this size stay in memory

_ERRORS = {
    400: "Malformed input: a bad PLY or tar, an empty body, an invalid Content-Length.",
    401: "Missing or wrong bearer token.",
    404: "No such sequence.",
    408: "The request body sent nothing for body_timeout_s.",
    409: "Conflicts with the sequence's state: frame order, finished, different bytes for a stored frame, "
         "id taken.",
    413: "Over a size limit: body bytes, Gaussians per frame, frames per sequence, a protocol limit.",
    415: f"A body of the wrong kind: PLY for a sequence encoded by its producer, {MEDIA_TYPE} for one the "
         "server encodes.",
    422: "Invalid parameters: JSON body, codec options, SH degree change, a frame the codec refuses (to encode, "
         "or to decode an uploaded encoded frame), a stream header unlike the sequence's.",
    429: "Over a count limit: stored sequences.",
    503: "Scale-out backbone (Redis, S3, the encoding replica) unreachable for now: retry after Retry-After.",
    507: "The storage device is full; stored frames stay readable and DELETE frees space.",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, and 422 (any parameter may be invalid)."""
    return {code: {"model": ErrorOut, "description": _ERRORS[code]} for code in sorted({*codes, 422})}


def _binary_body(media_type: str, description: str) -> dict:
    return {"requestBody": {"required": True, "description": description,
                            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


# --- dependencies ---------------------------------------------------------------------------------

def _sequences(request: Request) -> Sequences:
    return request.app.state.sequences


def _settings(request: Request) -> Settings:
    return request.app.state.settings


Seqs = Annotated[Sequences, Depends(_sequences)]
Config = Annotated[Settings, Depends(_settings)]
_bearer = HTTPBearer(auto_error=False, description="SPLATCAST_TOKEN, as set on the server.")


def check_token(settings: Settings, given: str | None) -> None:
    """``Unauthorized`` unless ``given`` is the configured token (compared as UTF-8 bytes in
    constant time, so any string, non-ASCII included, is simply right or wrong)."""
    if settings.token and not (given and secrets.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                                settings.token.encode("utf-8"))):
        raise Unauthorized("missing or wrong bearer token")


def _write_auth(settings: Config, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    check_token(settings, cred.credentials if cred else None)


def _read_auth(settings: Config, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
               token: Annotated[str | None, Query(description="Token for clients that cannot set headers.")] = None,
               ) -> None:
    check_token(settings, cred.credentials if cred else token)


# --- handlers ---------------------------------------------------------------------------------------

def healthz() -> HealthOut:
    return HealthOut(status="ok")


def metrics(request: Request) -> Response:
    """Prometheus metrics of this server (text exposition format; names in docs/API.md)."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _out(seqs: Sequences, info: SequenceInfo) -> SequenceOut:
    return SequenceOut.of(info, subscribers=seqs.hub.count(info.id))


async def create_sequence(body: CreateSequence, seqs: Seqs) -> SequenceOut:
    """Create an empty open sequence; frames follow with PUT .../frames/{index}."""
    return _out(seqs, await asyncio.to_thread(seqs.create, body.name, body.fps, body.codec, body.id, body.encoding))


async def list_sequences(seqs: Seqs) -> list[SequenceOut]:
    """Every stored sequence, oldest first."""
    return [_out(seqs, i) for i in await asyncio.to_thread(seqs.storage.list)]


async def get_sequence(seq_id: str, seqs: Seqs) -> SequenceOut:
    return _out(seqs, await asyncio.to_thread(seqs.get, seq_id))


def list_frames(seq_id: str, seqs: Seqs) -> list[FrameOut]:
    """The per-frame index: type, Gaussians, encoded and raw sizes, encode time, and the bitrate
    of the 1 s window ending at each frame."""
    info = seqs.get(seq_id)
    rows = seqs.storage.frames(seq_id)
    windows = window_mbps([r.length for r in rows], info.fps)  # windows[i]: frames i .. i + k - 1
    first = len(rows) - len(windows)  # = k - 1: the frame that ends windows[0]
    return [FrameOut.of(r, float(windows[i - first]) if len(windows) and i >= first else None)
            for i, r in enumerate(rows)]


async def _forward(request: Request, error: NotHolder, body: bytes, path: str, method: str | None = None,
                   content_type: str | None = None) -> Response | None:
    """Scale-out: the lease holder's answer to ``method path`` with ``body`` (this request's method
    and content type by default), or None when the holder is unreachable (the caller then takes
    the lease over). A request forwarded once is never forwarded again."""
    forwarder: Forwarder | None = request.app.state.forwarder
    if forwarder is None or request.headers.get(FORWARDED):
        raise error
    return await forwarder.send(error.holder, method or request.method, path, body,
                                request.headers.get("authorization"),
                                content_type or request.headers.get("content-type"))


class Refused(ServerError):
    """A refusal of the replica an upload was forwarded to, passed on with its status and message."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def _passed_on(answer: Response) -> Refused:
    try:
        detail = json.loads(bytes(answer.body))["detail"]
    except (ValueError, KeyError, TypeError):
        detail = f"the encoding replica answered {answer.status_code}"
    retry = answer.headers.get("retry-after")
    return Refused(str(detail), answer.status_code, {"Retry-After": retry} if retry else None)


async def _put_member(request: Request, seqs: Sequences, seq_id: str, index: int, body: bytes) -> FrameOut:
    """One frame of a tar upload, stored here or on the encoder lease holder (as a PUT of that frame)."""
    try:
        return FrameOut.of((await seqs.put_frame(seq_id, index, body)).record)
    except NotHolder as e:
        answer = await _forward(request, e, body, f"/v1/sequences/{seq_id}/frames/{index}", "PUT",
                                "application/octet-stream")
        if answer is None:
            return FrameOut.of((await seqs.put_frame(seq_id, index, body, takeover=True)).record)
        if answer.status_code >= 300:
            raise _passed_on(answer) from None
        return FrameOut.model_validate_json(bytes(answer.body))


async def _finish(request: Request, seqs: Sequences, seq_id: str) -> SequenceOut:
    """Finish here, or on the encoder lease holder (its answer passed on)."""
    try:
        return _out(seqs, await seqs.finish(seq_id))
    except NotHolder as e:
        answer = await _forward(request, e, b"", f"/v1/sequences/{seq_id}/finish", "POST")
        if answer is None:
            return _out(seqs, await seqs.finish(seq_id, takeover=True))
        if answer.status_code >= 300:
            raise _passed_on(answer) from None
        return SequenceOut.model_validate_json(bytes(answer.body))


async def put_frame(seq_id: str, index: Annotated[int, PathParam(ge=0)], request: Request, response: Response,
                    seqs: Seqs, settings: Config) -> Any:
    """Upload frame ``index`` (the next one); it is encoded (or, for a sequence encoded by its
    producer, checked by decoding it) and stored before the response.

    With several replicas, the one holding the sequence's encoder lease encodes it: the upload is
    forwarded there, or the lease is taken over when that replica is gone (503 + Retry-After while
    neither is possible)."""
    await asyncio.to_thread(seqs.get, seq_id)
    encoded = request.headers.get("content-type", "").split(";")[0].strip().lower() == MEDIA_TYPE
    body = bytearray()
    async for chunk in _limited_stream(request, settings.max_upload_bytes, settings.body_timeout_s):
        body += chunk
    if not body:
        raise BadRequest(f"empty body: send one PLY file as application/octet-stream, or encoded frames as "
                         f"{MEDIA_TYPE}")
    try:
        result = await seqs.put_frame(seq_id, index, body, encoded=encoded)  # hashed off the event loop there
    except NotHolder as e:
        answer = await _forward(request, e, bytes(body), request.url.path)
        if answer is not None:
            return answer
        result = await seqs.put_frame(seq_id, index, body, takeover=True, encoded=encoded)
    if not result.created:
        response.status_code = 200
    return FrameOut.of(result.record)


async def upload_tar(seq_id: str, request: Request, seqs: Seqs, settings: Config,
                     finish: Annotated[bool, Query(description="Finish the sequence afterwards.")] = False,
                     ) -> BatchOut:
    """Append several frames in one request (after the frames already stored)."""
    await asyncio.to_thread(seqs.get, seq_id)
    frames: list[FrameOut] = []
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        async for chunk in _limited_stream(request, settings.max_batch_bytes, settings.body_timeout_s):
            await asyncio.to_thread(spool.write, chunk)
        members = await asyncio.to_thread(_ply_members, spool, settings.max_frames)
        start = (await asyncio.to_thread(seqs.get, seq_id)).frame_count
        for i, member in enumerate(members):
            try:
                if member.size > settings.max_upload_bytes:
                    raise TooLarge(f"{member.size} bytes over the limit of {settings.max_upload_bytes}")
                body = await asyncio.to_thread(_member_bytes, spool, member)
                frames.append(await _put_member(request, seqs, seq_id, start + i, body))
            except ServerError as e:
                e.args = (f"{member.name}: {e} ({len(frames)} frames stored before it)",)
                raise e from None
    out = await _finish(request, seqs, seq_id) if finish else _out(seqs, await asyncio.to_thread(seqs.get, seq_id))
    return BatchOut(frames=frames, sequence=out)


async def finish_sequence(seq_id: str, request: Request, seqs: Seqs) -> SequenceOut:
    """Write the end message; subscribers get it and close. Finishing twice is harmless."""
    return await _finish(request, seqs, seq_id)


async def delete_sequence(seq_id: str, seqs: Seqs) -> Response:
    """Delete the sequence and its stream; live subscribers get an error message and a close."""
    await seqs.delete(seq_id)
    return Response(status_code=204)


def download(seq_id: str, seqs: Seqs) -> StreamingResponse:
    """The encoded stream so far (header, frames, and the end message once finished)."""
    info = seqs.get(seq_id)

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, info.stream_bytes, _CHUNK):
            yield await asyncio.to_thread(seqs.storage.read, seq_id, offset, min(_CHUNK, info.stream_bytes - offset))

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"Content-Length": str(info.stream_bytes),
                                      "Content-Disposition": f'attachment; filename="{seq_id}.splatcast"'})


def get_gop(seq_id: str, n: Annotated[int, PathParam(ge=0)], seqs: Seqs,
            range_: Annotated[str | None, Header(alias="range")] = None) -> Response:
    """GOP ``n``: the frame messages from the sequence's ``n``-th keyframe up to the next one.

    A closed GOP (a later keyframe exists, or the sequence is finished) never changes:
    ``Cache-Control: immutable``; the open one is ``no-store``. ``Range: bytes=a-b`` is honoured
    (206). ``X-Splatcast-First-Frame`` and ``X-Splatcast-Frame-Offsets`` (the byte offset of each
    frame message in the GOP) describe it; header + GOPs in order + end = the .splatcast stream."""
    info = seqs.get(seq_id)
    if n >= len(info.keyframes):
        raise NotFound(f"sequence {seq_id!r} has {len(info.keyframes)} GOPs, no GOP {n}")
    first = info.keyframes[n]
    closed = n + 1 < len(info.keyframes) or info.finished
    rows = seqs.storage.frames(seq_id, first, info.keyframes[n + 1] if n + 1 < len(info.keyframes) else None)
    start, size = rows[0].offset, rows[-1].offset + rows[-1].length - rows[0].offset
    headers = {"Accept-Ranges": "bytes", "X-Splatcast-First-Frame": str(first),
               "X-Splatcast-Frame-Offsets": ",".join(str(r.offset - start) for r in rows),
               "Cache-Control": "public, max-age=31536000, immutable" if closed else "no-store",
               "ETag": f'"{seq_id}-{info.created_at!r}-{n}-{size}"'}
    lo, hi, status = 0, size - 1, 200
    if range_ is not None:
        parsed = _byte_range(range_, size)
        if parsed is None:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        (lo, hi), status = parsed, 206
        headers["Content-Range"] = f"bytes {lo}-{hi}/{size}"
    data = seqs.storage.read(seq_id, start + lo, hi - lo + 1)
    return Response(data, status, headers=headers, media_type="application/octet-stream")


def _byte_range(value: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=a-b`` / ``a-`` / ``-n`` range within ``size``; None if unsatisfiable."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    if m is None or m.group(1) == m.group(2) == "":
        return None
    if m.group(1) == "":
        lo, hi = max(0, size - int(m.group(2))), size - 1
    else:
        lo, hi = int(m.group(1)), min(size - 1, int(m.group(2))) if m.group(2) else size - 1
    return (lo, hi) if lo <= hi and lo < size else None


async def stream(websocket: WebSocket, seq_id: str,
                 from_: Annotated[str, Query(alias="from", pattern=r"^(latest|start|[0-9]{1,9})$",
                                             description="latest (keyframe), start (frame 0), or a frame index: "
                                                         "starts at the keyframe at or before it.")] = "latest",
                 pace: Literal["fast", "realtime"] = "fast", token: str | None = None) -> None:
    """Binary messages: header, frames from the latest keyframe (or frame 0), live frames, end."""
    seqs: Sequences = websocket.app.state.sequences
    if seqs.settings.protect_reads:
        header = websocket.headers.get("authorization", "")
        try:
            check_token(seqs.settings, header[7:] if header.lower().startswith("bearer ") else token)
        except Unauthorized as e:
            await websocket.send_denial_response(JSONResponse({"detail": str(e)}, e.status))
            return
    start = None if from_ == "latest" else 0 if from_ == "start" else int(from_)
    await serve_subscriber(websocket, seqs, seq_id, start=start, realtime=pace == "realtime")


def add_routes(app: FastAPI, settings: Settings) -> None:
    """Declare the API on ``app``: each route once, with its answers and auth as ``settings`` has them."""
    writes = [Depends(_write_auth)] if settings.token else []
    reads = [Depends(_read_auth)] if settings.token and settings.protect_reads else []
    w401 = (401,) if writes else ()
    r401 = (401,) if reads else ()
    api = app.add_api_route
    api("/healthz", healthz, methods=["GET"], tags=["health"])
    api("/metrics", metrics, methods=["GET"], dependencies=reads, tags=["health"], response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
                   **_errors(*r401)})
    api("/v1/sequences", create_sequence, methods=["POST"], status_code=201, dependencies=writes,
        tags=["sequences"], responses=_errors(*w401, 409, 422, 429, 507))
    api("/v1/sequences", list_sequences, methods=["GET"], dependencies=reads, tags=["sequences"],
        responses=_errors(*r401))
    api("/v1/sequences/{seq_id}", get_sequence, methods=["GET"], dependencies=reads, tags=["sequences"],
        responses=_errors(*r401, 404))
    api("/v1/sequences/{seq_id}/frames", list_frames, methods=["GET"], dependencies=reads, tags=["sequences"],
        responses=_errors(*r401, 404))
    api("/v1/sequences/{seq_id}/frames/{index}", put_frame, methods=["PUT"], status_code=201, response_model=FrameOut,
        dependencies=writes, tags=["frames"],
        openapi_extra={"requestBody": {
            "required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                             "description": "One PLY file (INRIA 3DGS layout)."},
                MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"},
                             "description": "Sequences encoded by the producer: the frame's protocol messages "
                                            "(frame 0: stream header + frame message; later: the frame message)."}}}},
        responses={200: {"model": FrameOut,
                         "description": "Safe retry: this frame was already stored with the same bytes."},
                   **_errors(400, *w401, 404, 408, 409, 413, 415, 422, 503, 507)})
    api("/v1/sequences/{seq_id}/frames", upload_tar, methods=["POST"], status_code=201, dependencies=writes,
        tags=["frames"],
        openapi_extra=_binary_body("application/x-tar", "A tar of PLY files, taken in natural order of names "
                                                         "(sequences the server encodes)."),
        responses=_errors(400, *w401, 404, 408, 409, 413, 415, 422, 507))
    api("/v1/sequences/{seq_id}/finish", finish_sequence, methods=["POST"], dependencies=writes,
        response_model=SequenceOut, tags=["sequences"], responses=_errors(*w401, 404, 409, 503, 507))
    api("/v1/sequences/{seq_id}/gops/{n}", get_gop, methods=["GET"], dependencies=reads, tags=["stream"],
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}, "description": "GOP n's frame messages."},
                   206: {"description": "The requested byte range of the GOP."},
                   416: {"description": "Unsatisfiable byte range."}, **_errors(*r401, 404)})
    api("/v1/sequences/{seq_id}", delete_sequence, methods=["DELETE"], status_code=204, dependencies=writes,
        tags=["sequences"], responses={204: {"description": "Deleted."}, **_errors(*w401, 404)})
    api("/v1/sequences/{seq_id}/stream.splatcast", download, methods=["GET"], dependencies=reads,
        tags=["stream"], response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}},
                         "description": "The .splatcast stream so far."}, **_errors(*r401, 404)})
    app.add_api_websocket_route("/v1/sequences/{seq_id}/stream", stream)


# --- request bodies ---------------------------------------------------------------------------------

async def _limited_stream(request: Request, limit: int, timeout: float) -> AsyncIterator[bytes]:
    """The request body in chunks. ``TooLarge`` as soon as it is known to exceed ``limit`` bytes,
    ``RequestTimeout`` when no chunk comes for ``timeout`` seconds, ``BadRequest`` for a
    Content-Length that is not a number."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise TooLarge(f"body of {declared} bytes over the limit of {limit}")
    size = 0
    chunks = request.stream()
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(f"request body: nothing received for {timeout:g} s after {size} bytes") from None
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body over the limit of {limit} bytes")
        yield chunk


def _ply_members(spool: IO[bytes], max_frames: int) -> list[tarfile.TarInfo]:
    spool.seek(0)
    try:
        with tarfile.open(fileobj=spool, mode="r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".ply")]
    except tarfile.TarError as e:
        raise BadRequest(f"bad tar body: {e}") from None
    if not members:
        raise BadRequest("the tar holds no .ply files")
    if len(members) > max_frames:
        raise TooLarge(f"{len(members)} frames over the limit of {max_frames}")
    return sorted(members, key=lambda m: natural_key(m.name))


def _member_bytes(spool: IO[bytes], member: tarfile.TarInfo) -> bytes:
    spool.seek(member.offset_data)
    return spool.read(member.size)
