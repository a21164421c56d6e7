"""Python client: ``SplatcastClient`` (async), ``SyncSplatcastClient``, ``splatcast upload`` / ``watch``.

Imports are lazy so that ``splatcast --help`` does not load torch.
"""

from __future__ import annotations

__all__ = ["Batch", "ConnectionFailed", "FrameInfo", "FrameProducer", "ReceivedFrame", "Sequence", "ServerRefused",
           "SplatcastClient", "SplatcastError", "StreamError", "SyncSplatcastClient", "Uploaded"]


def __getattr__(name: str):
    if name in __all__:
        from splatcast.client import api
        return getattr(api, name)
    raise AttributeError(name)
