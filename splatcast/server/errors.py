"""The server's one error tree: what the domain layer (sequences, storage, hub) raises.

Each class carries the HTTP status it maps to; ``app.py`` turns any ``ServerError`` into the
JSON answer ``{"detail": str(error)}`` in one place, and a WebSocket refusal into the same
status before the handshake. The message says what was wrong and names the value, limit or
sequence concerned. Any other exception is a bug (logged, answered 500 without details).

::

    ServerError
    ├── BadRequest          400  malformed input: a bad PLY or tar, an empty body
    ├── Unauthorized        401  missing or wrong bearer token
    ├── NotFound            404  no such sequence
    ├── RequestTimeout      408  a request body idle for too long
    ├── Conflict            409  against the sequence's state: frame order, finished, id taken
    ├── TooLarge            413  over a size limit: bytes, Gaussians, frames
    ├── Invalid             422  invalid parameters: codec options, SH degree, a frame the codec refuses
    ├── TooMany             429  over a count limit: sequences, subscribers
    └── StorageError        500  the storage medium failed (the server's fault, not the request's)
        └── StorageFull     507  no space left; nothing of the failed write was stored
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error the server answers with its own message; ``status`` is the HTTP status."""

    status = 500
    headers: dict[str, str] | None = None


class BadRequest(ServerError):
    status = 400


class Unauthorized(ServerError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class NotFound(ServerError):
    status = 404


class RequestTimeout(ServerError):
    status = 408
    headers = {"Connection": "close"}


class Conflict(ServerError):
    status = 409


class TooLarge(ServerError):
    status = 413


class Invalid(ServerError):
    status = 422


class TooMany(ServerError):
    status = 429


class StorageError(ServerError):
    """Storage failed: a server fault (the message says what), not a problem of the request."""

    status = 500


class StorageFull(StorageError):
    """No space left for a write (ENOSPC, EDQUOT, or SQLite's "database or disk is full");
    nothing of that write was committed."""

    status = 507
