"""The FastAPI application: HTTP API under ``/v1``, the WebSocket stream, the browser viewer.

Documented for users in docs/API.md; FastAPI serves the same as OpenAPI at ``/docs``.
"""

from __future__ import annotations

import asyncio
import secrets
import tarfile
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from splatcast.codec import natural_key
from splatcast.server.hub import Hub
from splatcast.server.sequences import ID_PATTERN, Sequences
from splatcast.server.settings import Settings
from splatcast.server.storage import FrameRecord, SequenceInfo, SqliteStorage, StorageError, StorageFull
from splatcast.server.stream import serve_subscriber

STATIC_DIR = Path(__file__).parent / "static"
_DESCRIPTION = """Upload 3DGS PLY frames over HTTP; each is encoded on arrival and streamed to subscribers.

**WebSocket** `/v1/sequences/{seq_id}/stream[?from=start][&pace=realtime][&token=...]`: binary
messages, each one protocol message (docs/PROTOCOL.md): the stream header, frames from the latest
keyframe (or frame 0 with `from=start`), live frames as they are stored, then the end message.
Refused before the handshake with 404 (unknown sequence), 401 (token) or 429 (too many
subscribers). A subscriber that falls behind skips to the next keyframe; one that stops reading is
dropped after the send timeout. Full reference: docs/API.md."""
_CHUNK = 1024 * 1024


class ErrorOut(BaseModel):
    """Every error answer: one message saying what was wrong."""

    detail: str = Field(description="What went wrong, naming the value, limit or state concerned.")


_ERRORS = {
    400: "Malformed input: a bad PLY or tar, an empty body, an invalid Content-Length.",
    401: "Missing or wrong bearer token.",
    404: "No such sequence.",
    408: "The request body sent nothing for body_timeout_s.",
    409: "Conflicts with the sequence's state: frame order, finished, different bytes for a stored frame, "
         "id taken.",
    413: "Over a size limit: body bytes, Gaussians per frame, frames per sequence.",
    422: "Invalid parameters: JSON body, codec options, SH degree change, a frame the codec refuses.",
    429: "Over a count limit: stored sequences.",
    507: "The storage device is full; stored frames stay readable and DELETE frees space.",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, and 422 (any parameter may be invalid)."""
    return {code: {"model": ErrorOut, "description": _ERRORS[code]} for code in sorted({*codes, 422})}


class CreateSequence(BaseModel):
    """Body of ``POST /v1/sequences``."""

    name: str = Field("", max_length=200, description="Free text shown to viewers.")
    fps: float = Field(30.0, gt=0, le=1000, allow_inf_nan=False, description="Frames per second (pts = index / fps).")
    codec: dict[str, Any] = Field(default_factory=dict,
                                  description="CodecConfig fields: gop, codebook_size, alpha, step, tolerance, seed.")
    id: str | None = Field(None, pattern=ID_PATTERN, description="Choose the id (409 if taken); default: random.")


class FrameOut(BaseModel):
    index: int
    frame_type: str = Field(description="keyframe, intra or interframe")
    num_gaussians: int
    bytes: int = Field(description="Size of the encoded frame message.")
    raw_bytes: int = Field(description="Size of the uploaded PLY.")
    encode_ms: float
    received_at: float = Field(description="Unix time the upload was accepted.")

    @classmethod
    def of(cls, r: FrameRecord) -> "FrameOut":
        return cls(index=r.index, frame_type=r.frame_type, num_gaussians=r.num_gaussians, bytes=r.length,
                   raw_bytes=r.raw_bytes, encode_ms=round(r.encode_ms, 3), received_at=r.received_at)


class SequenceOut(BaseModel):
    id: str
    name: str
    fps: float
    status: Literal["open", "finished"]
    created_at: float = Field(description="Unix time.")
    sh_degree: int | None = Field(description="Known once frame 0 is stored.")
    frames: int
    keyframes: int
    stream_bytes: int = Field(description="Committed size of the .splatcast stream.")
    raw_bytes: int = Field(description="Total size of the uploaded PLYs.")
    ratio: float | None = Field(description="raw_bytes / encoded frame bytes.")
    encode_ms_mean: float | None
    subscribers: int = Field(description="Live WebSocket subscribers now.")
    codec: dict[str, Any]


class BatchOut(BaseModel):
    frames: list[FrameOut]
    sequence: SequenceOut


_bearer = HTTPBearer(auto_error=False, description="SPLATCAST_TOKEN, when the server sets one.")


def _check_token(settings: Settings, given: str | None) -> None:
    """401 unless ``given`` is the configured token (compared as UTF-8 bytes in constant time)."""
    if settings.token and not (given and secrets.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                                settings.token.encode("utf-8"))):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _write_auth(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    _check_token(request.app.state.settings, cred.credentials if cred else None)


def _read_auth(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
               token: Annotated[str | None, Query(description="Token for clients that cannot set headers.")] = None,
               ) -> None:
    if request.app.state.settings.protect_reads:
        _check_token(request.app.state.settings, cred.credentials if cred else token)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application over ``settings.data_dir`` (created if missing)."""
    settings = settings or Settings()
    storage = SqliteStorage(settings.data_dir)
    hub = Hub()
    seqs = Sequences(settings, storage, hub)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        seqs.close()
        storage.close()

    app = FastAPI(title="splatcast", version="1", lifespan=lifespan, description=_DESCRIPTION)
    app.state.settings, app.state.sequences = settings, seqs
    _add_error_handlers(app)
    def out(info: SequenceInfo) -> SequenceOut:
        return SequenceOut(
            id=info.id, name=info.name, fps=info.fps, status="finished" if info.finished else "open",
            created_at=info.created_at, sh_degree=info.sh_degree, frames=info.frame_count,
            keyframes=len(info.keyframes), stream_bytes=info.stream_bytes, raw_bytes=info.raw_bytes,
            ratio=round(info.raw_bytes / info.frame_bytes, 3) if info.frame_bytes else None,
            encode_ms_mean=round(info.encode_ms / info.frame_count, 3) if info.frame_count else None,
            subscribers=hub.count(info.id), codec=info.codec)

    # Bearer auth (and its 401) appears on an operation only where the server checks a token.
    writes = [Depends(_write_auth)] if settings.token else []
    reads = [Depends(_read_auth)] if settings.token and settings.protect_reads else []
    write_401 = (401,) if writes else ()
    read_401 = (401,) if reads else ()

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/sequences", status_code=201, dependencies=writes, tags=["sequences"],
              responses=_errors(*write_401, 409, 422, 429, 507))
    async def create_sequence(body: CreateSequence) -> SequenceOut:
        """Create an empty open sequence; frames follow with PUT .../frames/{index}."""
        return out(seqs.create(body.name, body.fps, body.codec, body.id))

    @app.get("/v1/sequences", dependencies=reads, tags=["sequences"], responses=_errors(*read_401))
    async def list_sequences() -> list[SequenceOut]:
        return [out(i) for i in storage.list()]

    @app.get("/v1/sequences/{seq_id}", dependencies=reads, tags=["sequences"], responses=_errors(*read_401, 404))
    async def get_sequence(seq_id: str) -> SequenceOut:
        return out(seqs.get(seq_id))

    @app.get("/v1/sequences/{seq_id}/frames", dependencies=reads, tags=["sequences"],
             responses=_errors(*read_401, 404))
    async def list_frames(seq_id: str) -> list[FrameOut]:
        """The per-frame index: type, Gaussians, encoded and raw sizes, encode time."""
        seqs.get(seq_id)
        return [FrameOut.of(r) for r in storage.frames(seq_id)]

    @app.put("/v1/sequences/{seq_id}/frames/{index}", status_code=201, dependencies=writes, tags=["frames"],
             openapi_extra=_binary_body("application/octet-stream", "One PLY file (INRIA 3DGS layout)."),
             responses={200: {"description": "Safe retry: this frame was already stored with the same bytes."},
                        **_errors(400, *write_401, 404, 408, 409, 413, 422, 507)})
    async def put_frame(seq_id: str, index: Annotated[int, PathParam(ge=0)], request: Request,
                        response: Response) -> FrameOut:
        """Upload frame ``index`` (the next one); it is encoded and stored before the response."""
        seqs.get(seq_id)
        body = await _read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
        result = await seqs.put_frame(seq_id, index, body)
        if not result.created:
            response.status_code = 200
        return FrameOut.of(result.record)

    @app.post("/v1/sequences/{seq_id}/frames", status_code=201, dependencies=writes, tags=["frames"],
              openapi_extra=_binary_body("application/x-tar", "A tar of PLY files, taken in natural order of names."),
              responses=_errors(400, *write_401, 404, 408, 409, 413, 422, 507))
    async def upload_tar(seq_id: str, request: Request,
                         finish: Annotated[bool, Query(description="Finish the sequence afterwards.")] = False,
                         ) -> BatchOut:
        """Append several frames in one request (after the frames already stored)."""
        seqs.get(seq_id)
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            async for chunk in _limited_stream(request, settings.max_batch_bytes, settings.body_timeout_s):
                spool.write(chunk)
            spool.seek(0)
            members = await asyncio.to_thread(_ply_members, spool, settings.max_frames)
            start = seqs.get(seq_id).frame_count
            frames = []
            for i, member in enumerate(members):
                if member.size > settings.max_upload_bytes:
                    raise HTTPException(413, f"{member.name}: {member.size} bytes over the limit of "
                                             f"{settings.max_upload_bytes} ({len(frames)} frames stored before it)")
                body = await asyncio.to_thread(_member_bytes, spool, member)
                try:
                    ingested = await seqs.put_frame(seq_id, start + i, body)
                    frames.append(FrameOut.of(ingested.record))
                except HTTPException as e:
                    raise HTTPException(e.status_code, f"{member.name}: {e.detail} "
                                                       f"({len(frames)} frames stored before it)") from None
        info = await seqs.finish(seq_id) if finish else seqs.get(seq_id)
        return BatchOut(frames=frames, sequence=out(info))

    @app.post("/v1/sequences/{seq_id}/finish", dependencies=writes, tags=["sequences"],
              responses=_errors(*write_401, 404, 409, 507))
    async def finish_sequence(seq_id: str) -> SequenceOut:
        """Write the end message; subscribers get it and close. Finishing twice is harmless."""
        return out(await seqs.finish(seq_id))

    @app.delete("/v1/sequences/{seq_id}", status_code=204, dependencies=writes, tags=["sequences"],
                responses=_errors(*write_401, 404))
    async def delete_sequence(seq_id: str) -> Response:
        await seqs.delete(seq_id)
        return Response(status_code=204)

    @app.get("/v1/sequences/{seq_id}/stream.splatcast", dependencies=reads, tags=["stream"],
             response_class=StreamingResponse,
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "The .splatcast stream so far."}, **_errors(*read_401, 404)})
    async def download(seq_id: str) -> StreamingResponse:
        """The encoded stream so far (header, frames, and the end message once finished)."""
        info = seqs.get(seq_id)

        async def chunks():
            for offset in range(0, info.stream_bytes, _CHUNK):
                yield await asyncio.to_thread(storage.read, seq_id, offset, min(_CHUNK, info.stream_bytes - offset))

        return StreamingResponse(chunks(), media_type="application/octet-stream",
                                 headers={"Content-Length": str(info.stream_bytes),
                                          "Content-Disposition": f'attachment; filename="{seq_id}.splatcast"'})

    @app.websocket("/v1/sequences/{seq_id}/stream")
    async def stream(websocket: WebSocket, seq_id: str,
                     from_: Annotated[Literal["latest", "start"], Query(alias="from")] = "latest",
                     pace: Literal["fast", "realtime"] = "fast", token: str | None = None) -> None:
        """Binary messages: header, frames from the latest keyframe (or frame 0), live frames, end."""
        if settings.protect_reads:
            header = websocket.headers.get("authorization", "")
            try:
                _check_token(settings, header[7:] if header.lower().startswith("bearer ") else token)
            except HTTPException as e:
                await websocket.send_denial_response(JSONResponse({"detail": e.detail}, e.status_code))
                return
        await serve_subscriber(websocket, seqs, seq_id, from_start=from_ == "start", realtime=pace == "realtime")

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        return FileResponse(page) if page.is_file() else RedirectResponse("/docs")

    @app.get("/view/{seq_id}", include_in_schema=False)
    async def view(seq_id: str) -> Response:
        page = STATIC_DIR / "view.html"
        if not page.is_file():
            raise HTTPException(404, "the browser viewer is not installed")
        return FileResponse(page)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """One error shape, ``{"detail": "<message>"}``: invalid requests (422, without echoing the
    input, which may not even be serialisable: NaN, lone surrogates) and storage faults (507 for
    a full disk, 500 otherwise, with the reason)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": "; ".join(_validation_message(e) for e in exc.errors())}, 422)

    @app.exception_handler(StorageError)
    async def storage_fault(request: Request, exc: StorageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 507 if isinstance(exc, StorageFull) else 500)


def _validation_message(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
    return message.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates in keys


def _binary_body(media_type: str, description: str) -> dict:
    return {"requestBody": {"required": True, "description": description,
                            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


async def _limited_stream(request: Request, limit: int, timeout: float):
    """The request body in chunks; 413 as soon as it is known to exceed ``limit`` bytes, 408 when
    no chunk comes for ``timeout`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise HTTPException(400, "invalid Content-Length")
        if int(declared) > limit:
            raise HTTPException(413, f"body of {declared} bytes over the limit of {limit}")
    size = 0
    chunks = request.stream()
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HTTPException(408, f"request body: nothing received for {timeout:g} s after {size} bytes",
                                headers={"Connection": "close"}) from None
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body over the limit of {limit} bytes")
        yield chunk


async def _read_body(request: Request, limit: int, timeout: float) -> bytearray:
    """The whole body (413 over ``limit``, 408 when idle for ``timeout`` s; hashed later, off the
    event loop: see Sequences.put_frame)."""
    body = bytearray()
    async for chunk in _limited_stream(request, limit, timeout):
        body += chunk
    if not body:
        raise HTTPException(400, "empty body: send one PLY file as application/octet-stream")
    return body


def _ply_members(spool, max_frames: int) -> list[tarfile.TarInfo]:
    try:
        with tarfile.open(fileobj=spool, mode="r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".ply")]
    except tarfile.TarError as e:
        raise HTTPException(400, f"bad tar body: {e}") from None
    if not members:
        raise HTTPException(400, "the tar holds no .ply files")
    if len(members) > max_frames:
        raise HTTPException(413, f"{len(members)} frames over the limit of {max_frames}")
    return sorted(members, key=lambda m: natural_key(m.name))


def _member_bytes(spool, member: tarfile.TarInfo) -> bytes:
    spool.seek(member.offset_data)
    return spool.read(member.size)
