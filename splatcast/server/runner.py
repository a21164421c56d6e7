"""Running the app under uvicorn: the one configuration, and a background server for tests and the demo."""

from __future__ import annotations

import threading
import time

import uvicorn

from splatcast.server.app import create_app
from splatcast.server.settings import Settings


def uvicorn_config(settings: Settings, host: str | None = None, port: int | None = None,
                   log_level: str = "info") -> uvicorn.Config:
    """uvicorn settings for splatcast: no per-message deflate (payloads are zstd already)."""
    return uvicorn.Config(create_app(settings), host=host or settings.host,
                          port=settings.port if port is None else port, log_level=log_level,
                          ws_per_message_deflate=False, ws_max_size=64 * 1024, timeout_graceful_shutdown=3)


class BackgroundServer:
    """A real uvicorn server in a daemon thread on a free loopback port; use as a context manager.

    ``url`` is ``http://127.0.0.1:<port>``. Leaving the context stops the server (and its
    WebSocket streams) and waits for the thread. Raises ``RuntimeError`` if it does not start
    within ``start_timeout`` seconds.
    """

    def __init__(self, settings: Settings, log_level: str = "warning", start_timeout: float = 30.0) -> None:
        self.server = uvicorn.Server(uvicorn_config(settings, host="127.0.0.1", port=0, log_level=log_level))
        self.start_timeout = start_timeout
        self.thread = threading.Thread(target=self.server.run, name="splatcast-server", daemon=True)
        self.url = ""

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the splatcast server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
