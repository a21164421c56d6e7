"""Running the app under uvicorn: the one configuration, and a background server for tests and the demo."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from splatcast.server.app import create_app
from splatcast.server.http_limits import http_protocol
from splatcast.server.logs import log_config
from splatcast.server.settings import Settings
from splatcast.server.ws_protocol import ws_protocol


def make_server(settings: Settings) -> tuple[uvicorn.Server, socket.socket]:
    """A uvicorn server for ``create_app(settings)`` and its listening socket on ``settings.host:port``.

    No per-message deflate (payloads are zstd already). The listening socket carries
    ``SO_SNDBUF = settings.send_buffer_bytes``, which every accepted connection inherits, so the
    kernel does not hide megabytes of stale frames in front of a slow subscriber. Request heads are
    bounded in size, count and time (``splatcast.server.http_limits``).
    WebSockets run on ``SplatcastWebSocketProtocol`` (uvicorn's sans-I/O protocol plus pings that
    tell how far a client has read, and a reset of connections still open
    ``settings.close_timeout_s`` after their handler returned).
    Logs go to stderr in ``settings.log_format`` at ``settings.log_level`` (``logs.log_config``).
    Raises ``OSError`` if the address cannot be bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
    sock.bind(address)
    sock.listen(1024)
    if settings.scale_out and not settings.advertise_url:  # how the other replicas reach this one
        host, port = sock.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        settings = settings.model_copy(update={"advertise_url": f"http://{host}:{port}"})
    config = uvicorn.Config(create_app(settings), log_config=log_config(settings.log_level, settings.log_format),
                            access_log=False, http=http_protocol(settings),
                            ws=ws_protocol(settings.close_timeout_s),
                            ws_per_message_deflate=False,
                            ws_max_size=64 * 1024, timeout_graceful_shutdown=3)
    return uvicorn.Server(config), sock


class BackgroundServer:
    """A real uvicorn server in a daemon thread on a free loopback port; use as a context manager.

    It logs warnings and errors only, unless ``settings.log_level`` was set explicitly.

    ``url`` is ``http://127.0.0.1:<port>``. Leaving the context stops the server (and its
    WebSocket streams) and waits for the thread. Raises ``RuntimeError`` if it does not start
    within ``start_timeout`` seconds.
    """

    def __init__(self, settings: Settings, start_timeout: float = 30.0) -> None:
        quiet = {} if "log_level" in settings.model_fields_set else {"log_level": "warning"}
        self.server, self.sock = make_server(settings.model_copy(update={"host": "127.0.0.1", "port": 0, **quiet}))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.start_timeout = start_timeout
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="splatcast-server", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the splatcast server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
