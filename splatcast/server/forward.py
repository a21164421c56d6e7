"""Forwarding an upload to the replica that holds the sequence's encoder lease (scale-out).

The forwarded request carries ``X-Splatcast-Forwarded: 1`` so the receiver never forwards it
again, and the client's ``Authorization`` header. The holder's answer is returned as is. A holder
that cannot be connected to is presumed dead (``None``: the caller takes the lease over); one that
accepts the connection but does not answer within ``timeout_s`` is alive but stuck: ``Unavailable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Response

from splatcast.server.errors import Unavailable

if TYPE_CHECKING:
    import httpx

FORWARDED = "x-splatcast-forwarded"


class Forwarder:
    """One HTTP client for the forwarded uploads of this replica."""

    def __init__(self, timeout_s: float, connect_timeout_s: float, retry_after_s: float) -> None:
        import httpx  # the scale extra's (imported only when replicas forward)

        self.client: httpx.AsyncClient = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))
        self.retry_after_s = retry_after_s

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, holder: str, method: str, path: str, body: bytes, authorization: str | None,
                   content_type: str | None) -> Response | None:
        """The holder's answer to the same request, or None when it cannot be reached."""
        import httpx

        headers = {FORWARDED: "1"}
        if authorization:
            headers["authorization"] = authorization
        if content_type:
            headers["content-type"] = content_type
        try:
            answer = await self.client.request(method, holder.rstrip("/") + path, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return None
        except httpx.HTTPError as e:
            raise Unavailable(f"the replica encoding this sequence ({holder}) did not answer: {type(e).__name__}",
                              self.retry_after_s) from e
        keep = {k: v for k, v in answer.headers.items() if k in ("content-type", "retry-after", "www-authenticate")}
        return Response(answer.content, answer.status_code, headers=keep)
