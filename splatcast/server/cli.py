"""``splatcast serve``: run the streaming server under uvicorn."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the HTTP/WebSocket streaming server",
                              description="Run the streaming server. Every setting can also come from "
                                          "SPLATCAST_* environment variables (see docs/API.md).")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1, SPLATCAST_HOST)")
    p.add_argument("--port", type=int, help="TCP port (default 8000, SPLATCAST_PORT)")
    p.add_argument("--data-dir", help="where sequences are stored (default ./data, SPLATCAST_DATA_DIR)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="encoding device (default auto)")
    p.add_argument("--token", help="bearer token every write needs (default: open; SPLATCAST_TOKEN)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"),
                   help="log level (default info, SPLATCAST_LOG_LEVEL)")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="log lines as text or JSON on stderr (default text, SPLATCAST_LOG_FORMAT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import re

    from splatcast.server.runner import make_server
    from splatcast.server.settings import Settings

    overrides = {k: v for k in ("host", "port", "data_dir", "device", "token", "log_level", "log_format")
                 if (v := getattr(args, k)) is not None}
    settings = Settings(**overrides)
    server, sock = make_server(settings)
    host, port = sock.getsockname()[:2]
    hide = lambda url: re.sub(r"//[^@/]*@", "//***@", url or "")  # noqa: E731  (no password on stdout)
    where = (f"replica on Redis {hide(settings.redis_url)} and S3 {hide(settings.s3_url)} bucket {settings.s3_bucket}"
             if settings.scale_out else f"data in {settings.data_dir.resolve()}")
    print(f"splatcast serving http://{host}:{port} (API: /docs), {where}", flush=True)
    server.run(sockets=[sock])
    return 0
