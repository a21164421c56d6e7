"""The FastAPI application: wiring of storage, fan-out and sequences; error answers; viewer pages.

Routes live in ``routes.py``; documented for users in docs/API.md, and served as OpenAPI at
``/docs``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from splatcast import __version__
from splatcast.server.errors import NotFound, ServerError
from splatcast.server.hub import Broadcaster, Hub
from splatcast.server.logs import event
from splatcast.server.metrics import Metrics
from splatcast.server.routes import add_routes
from splatcast.server.sequences import Sequences
from splatcast.server.settings import Settings
from splatcast.server.storage import SqliteStorage, Storage

if TYPE_CHECKING:  # redis is needed only for scale-out
    from splatcast.server.lease import Leases

log = logging.getLogger("splatcast.server")
STATIC_DIR = Path(__file__).parent / "static"
_DESCRIPTION = """Upload 3DGS PLY frames over HTTP; each is encoded on arrival and streamed to subscribers.

**WebSocket** `/v1/sequences/{seq_id}/stream[?from=start][&pace=realtime][&token=...]`: binary
messages, each one protocol message (docs/PROTOCOL.md): the stream header, frames from the latest
keyframe (or frame 0 with `from=start`), live frames as they are stored, then the end message.
Refused before the handshake with 404 (unknown sequence), 401 (token) or 429 (too many
subscribers). A subscriber that falls behind skips to the next keyframe; one that stops reading is
dropped after the send timeout. Full reference: docs/API.md.

Every error answer is JSON `{"detail": "<message>"}`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application over ``settings.data_dir`` (created if missing)."""
    settings = settings or Settings()
    metrics = Metrics()
    scale = None
    if settings.scale_out:  # many replicas on Redis + S3 (docs/SCALEOUT.md)
        from splatcast.server.scale import build
        scale = build(settings)
        storage: Storage = scale.storage
        hub: Broadcaster = scale.hub
        close_storage = scale.storage.close
    else:  # one process: SQLite + local files + in-process hub
        sqlite, hub = SqliteStorage(settings.data_dir), Hub()
        storage, close_storage = sqlite, sqlite.close
    metrics.watch_queues(hub.queued_frames)
    seqs = Sequences(settings, storage, hub, metrics, leases=scale.leases if scale else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        renewing = asyncio.create_task(_renew_leases(scale.leases, settings.lease_s / 3)) if scale else None
        yield
        if scale is not None and renewing is not None:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            await asyncio.to_thread(scale.leases.release_all)
            await scale.hub.close()
            await scale.forwarder.close()
        seqs.close()
        close_storage()

    app = FastAPI(title="splatcast", version=__version__, lifespan=lifespan, description=_DESCRIPTION)
    app.state.settings, app.state.sequences, app.state.metrics = settings, seqs, metrics
    app.state.forwarder = scale.forwarder if scale else None
    app.add_middleware(RequestLog, metrics=metrics)
    _add_error_handlers(app)
    add_routes(app, settings)
    _add_viewer(app, seqs)
    return app


async def _renew_leases(leases: Leases, every_s: float) -> None:
    """Renew this replica's encoder leases every ``every_s`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(leases.renew_all)


class RequestLog:
    """ASGI middleware: one ``request`` log event and the request metrics per HTTP request.

    Fields: ``method``, ``path``, ``route`` (the template, e.g. ``/v1/sequences/{seq_id}``),
    ``status``, ``ms``, ``client``. WebSocket sessions log their own ``subscriber`` events.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.request_seconds.labels(scope["method"], route).observe(seconds)
            client = scope.get("client")
            event(log, "request", method=scope["method"], path=scope["path"], route=route, status=status,
                  ms=round(seconds * 1000, 1), client=f"{client[0]}:{client[1]}" if client else None)


def _add_error_handlers(app: FastAPI) -> None:
    """One error shape, ``{"detail": "<message>"}``, mapped from the error tree in one place:
    ``ServerError`` with its status and message; invalid requests 422, without echoing the input
    (which may not even be serialisable: NaN, lone surrogates); anything else is a bug: logged,
    and answered 500 without internals."""

    @app.exception_handler(ServerError)
    async def refused(request: Request, exc: ServerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": "; ".join(_validation_message(e) for e in exc.errors())}, 422)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error (logged on the server)"}, 500)


def _validation_message(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
    return message.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates in keys


def _add_viewer(app: FastAPI, seqs: Sequences) -> None:
    """The browser viewer: ``/`` lists sequences, ``/view/{id}`` plays one (404 for unknown ids)."""
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        return FileResponse(page) if page.is_file() else RedirectResponse("/docs")

    @app.get("/view/{seq_id}", include_in_schema=False)
    async def view(seq_id: str) -> Response:
        await asyncio.to_thread(seqs.get, seq_id)
        page = STATIC_DIR / "view.html"
        if not page.is_file():
            raise NotFound("the browser viewer is not installed")
        return FileResponse(page)
