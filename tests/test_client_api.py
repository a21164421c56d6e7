"""The Python client: typed results, one error class, timeouts and the frame PUT retry.

Mock transports (``httpx.MockTransport``) make the server fail on purpose; a real server on
loopback shows that a retried PUT is answered as the already stored frame.
"""

from __future__ import annotations

import asyncio
import inspect
import socket

import httpx
import pytest

from splatcast.client import (
    Batch,
    ConnectionFailed,
    FrameInfo,
    Sequence,
    ServerRefused,
    SplatcastClient,
    SplatcastError,
    SyncSplatcastClient,
)
from splatcast.codec import ply_bytes
from splatcast.demo import synthetic_frames
from splatcast.server import BackgroundServer, Settings

SEQUENCE = {"id": "s1", "name": "n", "fps": 30.0, "status": "open", "created_at": 1.0, "sh_degree": 0, "frames": 1,
            "keyframes": 1, "stream_bytes": 100, "raw_bytes": 1000, "ratio": 12.5, "encode_ms_mean": 3.0,
            "subscribers": 0, "codec": {"gop": 30}}
FRAME = {"index": 0, "frame_type": "keyframe", "num_gaussians": 500, "bytes": 80, "raw_bytes": 1000,
         "encode_ms": 3.0, "received_at": 2.0}


def mock_client(handler, **kwargs) -> SplatcastClient:
    return SplatcastClient("http://splatcast.test", transport=httpx.MockTransport(handler), backoff=0.01, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with BackgroundServer(Settings(data_dir=tmp_path_factory.mktemp("data"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def plys():
    return [ply_bytes(f) for f in synthetic_frames(2, num_gaussians=500)]


def silent_port() -> socket.socket:
    """A listening socket that never answers (the kernel completes the TCP handshake)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_results_are_dataclasses_and_unknown_fields_are_ignored():
    def handler(request: httpx.Request) -> httpx.Response:
        extra = {"added_later": True}  # a newer server's field
        answers = {("POST", "/v1/sequences"): (201, SEQUENCE | extra),
                   ("GET", "/v1/sequences"): (200, [SEQUENCE, SEQUENCE | {"id": "s2"}]),
                   ("GET", "/v1/sequences/s1/frames"): (200, [FRAME | extra]),
                   ("PUT", "/v1/sequences/s1/frames/0"): (201, FRAME),
                   ("POST", "/v1/sequences/s1/frames"): (201, {"frames": [FRAME], "sequence": SEQUENCE}),
                   ("POST", "/v1/sequences/s1/finish"): (200, SEQUENCE | {"status": "finished"})}
        status, body = answers[request.method, request.url.path]
        return httpx.Response(status, json=body)

    async def scenario():
        async with mock_client(handler) as client:
            seq = await client.create("n")
            assert seq == Sequence(**SEQUENCE) and seq.codec == {"gop": 30}
            assert [s.id for s in await client.list()] == ["s1", "s2"]
            assert await client.frames("s1") == [FrameInfo(**FRAME)]
            up = await client.upload_frame("s1", 0, b"ply")
            assert (up.index, up.status, up.frame, up.attempts) == (0, 201, FrameInfo(**FRAME), 1)
            assert await client.upload_batch("s1", b"tar") == Batch([FrameInfo(**FRAME)], Sequence(**SEQUENCE))
            assert (await client.finish("s1")).status == "finished"

    asyncio.run(scenario())


def test_a_malformed_answer_is_a_splatcast_error():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/frames"):
            return httpx.Response(200, text="<html>a proxy page</html>")
        return httpx.Response(200, json={"id": "s1"})  # fields missing

    async def scenario():
        async with mock_client(handler) as client:
            with pytest.raises(SplatcastError, match="unexpected answer from the server.*http://splatcast.test/v1/"
                                                     "sequences/s1$"):
                await client.get("s1")
            with pytest.raises(SplatcastError, match=r"not JSON\), http://splatcast.test/v1/sequences/s1/frames"):
                await client.frames("s1")

    asyncio.run(scenario())


def test_refusals_carry_status_detail_and_url_whatever_the_body():
    bodies = {"/a": (401, {"detail": "missing or wrong bearer token"}),
              "/b": (422, {"detail": [{"loc": ["body", "fps"], "msg": "Input should be greater than 0"},
                                      {"loc": ["body", "id"], "msg": "String should match pattern"}]}),
              "/c": (502, "Bad gateway from the proxy"),
              "/d": (500, "")}

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = bodies[request.url.path]
        return httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)

    expected = {"/a": "missing or wrong bearer token",
                "/b": "body.fps: Input should be greater than 0; body.id: String should match pattern",
                "/c": "Bad gateway from the proxy", "/d": "Internal Server Error"}

    async def scenario():
        async with mock_client(handler) as client:
            for path, detail in expected.items():
                with pytest.raises(ServerRefused) as e:
                    await client._request("GET", path)
                status = bodies[path][0]
                assert (e.value.status, e.value.detail, e.value.url) == (status, detail, f"http://splatcast.test{path}")
                assert str(e.value) == f"HTTP {status}: {detail}, http://splatcast.test{path}"

    asyncio.run(scenario())


def test_frame_put_is_retried_after_a_transport_error_and_a_503():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        if len(bodies) == 1:
            raise httpx.ConnectError("connection reset", request=request)
        if len(bodies) == 2:
            return httpx.Response(503, json={"detail": "busy"})
        return httpx.Response(201, json=FRAME)

    async def scenario():
        async with mock_client(handler) as client:
            return await client.upload_frame("s1", 0, b"ply body")

    up = asyncio.run(scenario())
    assert (up.status, up.attempts, up.frame.frame_type) == (201, 3, "keyframe")
    assert bodies == [b"ply body"] * 3  # the whole body each time


@pytest.mark.parametrize("status, attempts", [(503, 3), (409, 1), (507, 1)])
def test_frame_put_gives_up_after_its_retries_and_never_retries_a_refusal(status, attempts):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"detail": "no"})

    async def scenario():
        async with mock_client(handler, retries=2) as client:
            await client.upload_frame("s1", 4, b"ply")

    with pytest.raises(ServerRefused) as e:
        asyncio.run(scenario())
    assert e.value.status == status and len(calls) == attempts
    assert e.value.url == "http://splatcast.test/v1/sequences/s1/frames/4"


def test_gets_and_posts_are_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    async def scenario():
        async with mock_client(handler) as client:
            for call in (client.get("s1"), client.create("x"), client.upload_batch("s1", b"tar")):
                with pytest.raises(ConnectionFailed):
                    await call

    asyncio.run(scenario())
    assert len(calls) == 3


class LoseFirstPutAnswer(httpx.AsyncHTTPTransport):
    """Sends every request to the real server, but drops the answer to the first PUT."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "PUT" and not self.lost:
            self.lost = response.status_code
            await response.aclose()
            raise httpx.ReadError("connection lost before the answer", request=request)
        return response


def test_a_put_whose_answer_was_lost_is_retried_against_a_real_server(server, plys):
    transport = LoseFirstPutAnswer()

    async def scenario():
        async with SplatcastClient(server.url, transport=transport, backoff=0.01) as client:
            sid = (await client.create("retry", 30, {"codebook_size": 16})).id
            ups = await client.upload_frames(sid, plys)
            return ups, await client.get(sid), await client.frames(sid)

    ups, seq, index = asyncio.run(scenario())
    assert transport.lost == 201  # the server stored frame 0 the first time
    assert [(u.status, u.attempts) for u in ups] == [(200, 2), (201, 1)]  # the retry: "already stored"
    assert seq.frames == 2 and [f.index for f in index] == [0, 1] and ups[0].frame == index[0]


def test_unreachable_and_silent_servers_are_connection_failures_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    silent = silent_port()
    quiet = f"http://127.0.0.1:{silent.getsockname()[1]}"

    async def scenario():
        async with SplatcastClient(closed, retries=0) as client:
            with pytest.raises(ConnectionFailed, match=f"cannot connect to the server.*, {closed}/v1/sequences/x$"):
                await client.get("x")
            with pytest.raises(ConnectionFailed, match="cannot open the stream.*, ws://127.0.0.1:.*/v1/sequences/x/"
                                                       "stream$"):
                await client.messages("x").__anext__()
        async with SplatcastClient(quiet, timeout=httpx.Timeout(0.3), open_timeout=0.3, retries=0) as client:
            with pytest.raises(ConnectionFailed, match=f"no answer from the server \\(ReadTimeout\\), {quiet}/v1/"):
                await client.get("x")
            with pytest.raises(ConnectionFailed, match="cannot open the stream \\(TimeoutError"):
                await client.messages("x").__anext__()

    try:
        asyncio.run(scenario())
    finally:
        silent.close()


def test_websocket_refusal_is_a_server_refusal(server):
    async def scenario():
        async with SplatcastClient(server.url) as client:
            with pytest.raises(ServerRefused) as e:
                await client.subscribe("nope").__anext__()
        return e.value

    error = asyncio.run(scenario())
    assert error.status == 404 and "nope" in error.detail and error.url.endswith("/v1/sequences/nope/stream")
    assert isinstance(error, SplatcastError)


def test_constructor_refuses_a_url_without_scheme():
    with pytest.raises(ValueError, match="http:// or https://"):
        SplatcastClient("127.0.0.1:8000")


def test_sync_client_has_the_async_signatures():
    for name, method in inspect.getmembers(SplatcastClient, inspect.iscoroutinefunction):
        if not name.startswith("_") and name != "aclose":
            sync = getattr(SyncSplatcastClient, name)
            assert inspect.signature(sync) == inspect.signature(method), name
            assert sync.__doc__, name
    for name in ("messages", "subscribe", "__init__"):  # iterators: the same parameters
        assert inspect.signature(getattr(SyncSplatcastClient, name)).parameters == \
            inspect.signature(getattr(SplatcastClient, name)).parameters, name


def test_json_detail_of_the_real_server_is_one_string(server):
    """The real server's validation errors come back as one readable string."""
    async def scenario():
        async with SplatcastClient(server.url) as client:
            with pytest.raises(ServerRefused) as e:
                await client.create("x", fps=-1)
        return e.value

    error = asyncio.run(scenario())
    assert isinstance(error.detail, str) and error.status == 422
    assert "fps" in error.detail and not error.detail.startswith("[")


def test_subscribe_refuses_a_stream_of_another_codec_version():
    """A stream stored before an upgrade (its header says the previous codec version) is refused with a
    CodecError before any frame is decoded: a loopback WebSocket server sends that header."""
    from websockets.asyncio.server import serve

    from splatcast.codec import CODEC_NAME, CODEC_VERSION, CodecError
    from splatcast.protocol import StreamHeader, encode_message

    old = encode_message(StreamHeader(codec=CODEC_NAME, codec_version=CODEC_VERSION - 1, codec_params={},
                                      sh_degree=0, fps=30.0))

    async def handler(ws):
        await ws.send(old)  # as the server sends them: length-prefixed messages
        await ws.close()  # (without the check: a StreamError, not a CodecError)

    async def scenario():
        async with serve(handler, "127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            async with SplatcastClient(f"http://127.0.0.1:{port}") as client:
                with pytest.raises(CodecError, match=f"version {CODEC_VERSION - 1} is not supported"):
                    await client.subscribe("old").__anext__()

    asyncio.run(scenario())
