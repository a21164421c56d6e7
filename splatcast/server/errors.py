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
    ├── UnsupportedMedia    415  a body of the wrong kind for the sequence: PLY for a producer-encoded
    │                            sequence, encoded messages for a server-encoded one
    ├── Invalid             422  invalid parameters: codec options, SH degree, a frame the codec refuses
    │                            (to encode it, or to decode an uploaded encoded frame)
    ├── TooMany             429  over a count limit: sequences, subscribers
    ├── StorageError        500  the storage medium failed (the server's fault, not the request's)
    │   └── StorageFull     507  no space left; nothing of the failed write was stored
    └── Unavailable         503  scale-out backbone (Redis, S3, the encoding replica) unreachable
        │                        for now; answered with ``Retry-After``, nothing of the request stored
        └── NotHolder       503  another replica holds the sequence's encoder lease (routes forward
                                 the upload there; seen by a client only when that is impossible)
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


class UnsupportedMedia(ServerError):
    status = 415


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


class Unavailable(ServerError):
    """A scale-out service (Redis, the S3 endpoint, the replica holding an encoder lease) cannot be
    reached now; nothing of the request was stored and a retry after ``Retry-After`` seconds may work."""

    status = 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, round(retry_after)))}


class NotHolder(Unavailable):
    """Another replica holds the encoder lease of the sequence; ``holder`` is its base URL."""

    def __init__(self, message: str, holder: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after)
        self.holder = holder
