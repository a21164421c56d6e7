"""The streaming server (FastAPI + uvicorn): ``create_app(settings)``, ``Settings``, ``splatcast serve``.

Imports are lazy so that ``splatcast --help`` does not load FastAPI and torch.
"""

from __future__ import annotations

__all__ = ["BackgroundServer", "Settings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from splatcast.server.app import create_app
        return create_app
    if name == "Settings":
        from splatcast.server.settings import Settings
        return Settings
    if name == "BackgroundServer":
        from splatcast.server.runner import BackgroundServer
        return BackgroundServer
    raise AttributeError(name)
