"""Hostile values and faults against a real server on loopback: every one gets a clear 4xx (or 507
for a full disk) with a message, never a 5xx, a hang or a crash (issue 8)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import splatcast
from splatcast.codec import ply_files
from splatcast.protocol import EndOfStream, ErrorMessage, FrameMessage, StreamDecoder, StreamHeader
from splatcast.server import BackgroundServer, Settings, create_app


@pytest.fixture(scope="module")
def loot_plys(loot_dir) -> list[bytes]:
    return [p.read_bytes() for p in ply_files(loot_dir)[:6]]


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), body_timeout_s=1.0, header_timeout_s=1.0,
                        max_headers=50, max_line_bytes=4096)
    with BackgroundServer(settings) as srv:
        yield srv


def raw_exchange(url: str, request: bytes, timeout: float = 5.0, then_idle: bool = False) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes or ``timeout`` passes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything
        response = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            response += chunk
    return response


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode("latin-1")


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


# --- point 3: codec integers the wire cannot carry ------------------------------------------------

def test_codec_integers_beyond_the_wire_range_are_refused_at_creation(open_server, loot_plys):
    with httpx.Client(base_url=open_server.url) as c:
        for codec in ({"gop": 10**30}, {"seed": 2**60}, {"gop": 2**53}, {"tolerance": 10**20}):
            r = c.post("/v1/sequences", json={"codec": codec})
            assert r.status_code == 422, (codec, r.text)
            assert next(iter(codec)) in r.json()["detail"], r.text
        sid = c.post("/v1/sequences", json={"codec": {"gop": 2**53 - 1, "seed": 2**53 - 1,
                                                      "codebook_size": 16}}).json()["id"]
        assert c.put(f"/v1/sequences/{sid}/frames/0", content=loot_plys[0]).status_code == 201


# --- point 4: non-ASCII bearer tokens -------------------------------------------------------------

def test_non_ascii_bearer_tokens_are_refused_with_401(tmp_path):
    settings = Settings(data_dir=tmp_path, token="s3cret", protect_reads=True)
    with BackgroundServer(settings) as srv:
        host_port = srv.url.removeprefix("http://")
        for auth in ("Bearer p\u00e4ss".encode("utf-8"), "Bearer p\u00e4ss".encode("latin-1"), b"Bearer \xff\xfe"):
            for method, path in (("POST", "/v1/sequences"), ("GET", "/v1/sequences")):
                response = raw_exchange(srv.url, f"{method} {path} HTTP/1.1\r\nHost: {host_port}\r\n"
                                        f"Content-Length: 2\r\nContent-Type: application/json\r\n".encode()
                                        + b"Authorization: " + auth + b"\r\nConnection: close\r\n\r\n{}")
                assert status_line(response).startswith("HTTP/1.1 401"), (method, auth, response[:200])
                assert "token" in json_body(response)["detail"]
        with httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer s3cret"}) as c:
            sid = c.post("/v1/sequences", json={}).json()["id"]
        response = raw_exchange(srv.url, f"GET /v1/sequences/{sid}/stream?token=%C3%A4%ED%A0%80 HTTP/1.1\r\n"
                                f"Host: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                                "Authorization: Bearer \u00e4\r\n\r\n".encode())
        assert status_line(response).startswith("HTTP/1.1 401"), response[:200]


# --- point 5: JSON values the 422 answer cannot echo ----------------------------------------------

@pytest.mark.parametrize("body, field", [(b'{"fps": NaN}', "fps"), (b'{"fps": Infinity}', "fps"),
                                         (b'{"fps": -Infinity}', "fps"), (b'{"name": "a\\ud800b"}', "name"),
                                         (b'{"codec": {"alpha": NaN}}', "alpha"), (b'{"fps": 1e400}', "fps"),
                                         (b'[1, 2]', "body"), (b'{"fps": ', "JSON")])
def test_unserialisable_json_values_get_422_with_a_message(open_server, body, field):
    r = httpx.post(f"{open_server.url}/v1/sequences", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str) and field in r.json()["detail"], r.text


# --- point 8: request body timeout, header limits ---------------------------------------------------

def test_an_idle_request_body_is_answered_408(open_server):
    host_port = open_server.url.removeprefix("http://")
    sid = httpx.post(f"{open_server.url}/v1/sequences", json={}).json()["id"]
    t0 = time.monotonic()
    response = raw_exchange(open_server.url, f"PUT /v1/sequences/{sid}/frames/0 HTTP/1.1\r\nHost: {host_port}\r\n"
                            "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nply\n".encode(),
                            timeout=10)
    assert status_line(response).startswith("HTTP/1.1 408"), response[:200]
    assert "body" in json_body(response)["detail"]
    assert time.monotonic() - t0 < 5
    assert httpx.get(f"{open_server.url}/v1/sequences/{sid}").json()["frames"] == 0


def test_an_idle_request_head_is_answered_408(open_server):
    t0 = time.monotonic()
    response = raw_exchange(open_server.url, b"GET /v1/sequences HTTP/1.1\r\nHost: x\r\n", timeout=10)
    assert status_line(response).startswith("HTTP/1.1 408"), response[:200]
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("head, status", [
    (b"X-Big: " + b"a" * 1_000_000 + b"\r\n", 431),
    (b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)), 431),
    (b"X-Big: " + b"a" * 5000 + b"\r\n", 431),
    (b"".join(b"X-H%d: v\r\n" % i for i in range(60)), 431),
])
def test_oversized_or_too_many_headers_are_answered_431(open_server, head, status):
    response = raw_exchange(open_server.url, b"GET /v1/sequences HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert status_line(response).startswith(f"HTTP/1.1 {status}"), response[:200]


def test_headers_within_the_limits_pass(open_server):
    head = b"".join(b"X-H%d: v\r\n" % i for i in range(40)) + b"X-Big: " + b"a" * 3000 + b"\r\n"
    response = raw_exchange(open_server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            + head + b"\r\n")
    assert status_line(response).startswith("HTTP/1.1 200"), response[:200]


# --- point 9: long URLs, on plain HTTP and on the WebSocket upgrade ---------------------------------

@pytest.mark.parametrize("upgrade", [False, True])
def test_a_long_url_is_answered_414_also_on_a_websocket_upgrade(open_server, upgrade):
    sid = httpx.post(f"{open_server.url}/v1/sequences", json={}).json()["id"]
    extra = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n") if upgrade else b""
    for size in (5000, 9000, 100_000):
        t0 = time.monotonic()
        response = raw_exchange(open_server.url, f"GET /v1/sequences/{sid}/stream?x={'a' * size} HTTP/1.1\r\n"
                                "Host: x\r\n".encode() + extra + b"\r\n")
        assert status_line(response).startswith("HTTP/1.1 414"), (size, response[:200])
        assert time.monotonic() - t0 < 3


# --- point 10: a sequence row whose stream file is missing ------------------------------------------

def test_a_sequence_whose_stream_file_is_missing_still_takes_frames(tmp_path, loot_plys):
    with BackgroundServer(Settings(data_dir=tmp_path)) as srv, httpx.Client(base_url=srv.url) as c:
        sid = c.post("/v1/sequences", json={"codec": {"codebook_size": 16}}).json()["id"]
        (tmp_path / "streams" / f"{sid}.splatcast").unlink()  # as after a crash between row and file
        for i in range(2):
            assert c.put(f"/v1/sequences/{sid}/frames/{i}", content=loot_plys[i]).status_code == 201
        c.post(f"/v1/sequences/{sid}/finish")
        messages = StreamDecoder().feed(c.get(f"/v1/sequences/{sid}/stream.splatcast").content)
        assert [type(m) for m in messages] == [StreamHeader, FrameMessage, FrameMessage, EndOfStream]

        sid2 = c.post("/v1/sequences", json={"codec": {"codebook_size": 16}}).json()["id"]
        assert c.put(f"/v1/sequences/{sid2}/frames/0", content=loot_plys[0]).status_code == 201
        (tmp_path / "streams" / f"{sid2}.splatcast").unlink()  # stored frames lost: a server fault, said so
        r = c.put(f"/v1/sequences/{sid2}/frames/1", content=loot_plys[1])
        assert r.status_code == 500 and "missing" in r.json()["detail"], r.text
        assert c.delete(f"/v1/sequences/{sid2}").status_code == 204


# --- point 2: a full disk ------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 3 MiB tmpfs the test mounts itself (root only; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_answers_507_and_the_server_can_still_list_read_and_delete(small_fs, loot_plys):
    with BackgroundServer(Settings(data_dir=small_fs / "data")) as srv, httpx.Client(base_url=srv.url) as c:
        sid = c.post("/v1/sequences", json={"codec": {"codebook_size": 16}}).json()["id"]
        filler = small_fs / "filler"
        with open(filler, "wb") as f:  # leave about 150 kB: room for a couple of encoded loot frames
            while True:
                st = os.statvfs(small_fs)
                free = st.f_bavail * st.f_frsize
                if free <= 150_000:
                    break
                f.write(b"\0" * min(65536, free - 150_000 + 4096))
                f.flush()
        answers = []
        for i in range(6):
            r = c.put(f"/v1/sequences/{sid}/frames/{i}", content=loot_plys[i])
            answers.append(r.status_code)
            if r.status_code == 507:
                assert "storage" in r.json()["detail"] or "space" in r.json()["detail"], r.text
                break
        assert answers[-1] == 507 and set(answers[:-1]) == {201}, answers
        stored = len(answers) - 1
        assert c.get("/v1/sequences").status_code == 200
        assert c.get(f"/v1/sequences/{sid}").json()["frames"] == stored
        messages = StreamDecoder().feed(c.get(f"/v1/sequences/{sid}/stream.splatcast").content)
        assert [m.index for m in messages if isinstance(m, FrameMessage)] == list(range(stored))
        r = c.post("/v1/sequences", json={})
        assert r.status_code in (201, 507), r.text
        assert c.put(f"/v1/sequences/{sid}/frames/{stored}", content=loot_plys[stored]).status_code == 507
        assert c.delete(f"/v1/sequences/{sid}").status_code == 204  # frees space through the API
        filler.unlink()
        sid2 = c.post("/v1/sequences", json={"codec": {"codebook_size": 16}}).json()["id"]
        assert c.put(f"/v1/sequences/{sid2}/frames/0", content=loot_plys[0]).status_code == 201


# --- point 12: the OpenAPI document matches the server -----------------------------------------------

def _spec(settings: Settings) -> dict:
    return create_app(settings).openapi()


def test_openapi_declares_auth_only_when_a_token_is_set_and_documents_error_answers(tmp_path):
    open_spec = _spec(Settings(data_dir=tmp_path))
    assert "securitySchemes" not in open_spec.get("components", {})
    for path, ops in open_spec["paths"].items():
        for method, op in ops.items():
            assert "security" not in op, (method, path)
            assert "401" not in op["responses"], (method, path)
    put = open_spec["paths"]["/v1/sequences/{seq_id}/frames/{index}"]["put"]["responses"]
    for code in ("400", "404", "408", "409", "413", "422", "507"):
        assert code in put, code
        assert put[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut"), code
    assert {"409", "422", "429", "507"} <= set(open_spec["paths"]["/v1/sequences"]["post"]["responses"])
    assert "detail" in open_spec["components"]["schemas"]["ErrorOut"]["properties"]
    assert "HTTPValidationError" not in json.dumps(open_spec["paths"])  # 422 answers are ErrorOut too

    writes_only = _spec(Settings(data_dir=tmp_path, token="t"))
    assert "HTTPBearer" in writes_only["components"]["securitySchemes"]
    assert "401" in writes_only["paths"]["/v1/sequences"]["post"]["responses"]
    assert writes_only["paths"]["/v1/sequences"]["post"]["security"]
    assert "security" not in writes_only["paths"]["/v1/sequences"]["get"]
    everything = _spec(Settings(data_dir=tmp_path, token="t", protect_reads=True))
    assert everything["paths"]["/v1/sequences"]["get"]["security"]
    assert "401" in everything["paths"]["/v1/sequences/{seq_id}"]["get"]["responses"]


# --- fuzzing: no 5xx from any request body ------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(st.characters(codec=None)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_fields = st.fixed_dictionaries({}, optional={
    "name": _json, "fps": _json, "id": _json,
    "codec": st.dictionaries(st.sampled_from(["gop", "codebook_size", "alpha", "step", "tolerance", "seed",
                                              "device", "other"]), _json, max_size=4)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_json | _fields, raw=st.binary(max_size=64))
def test_fuzzed_bodies_never_get_a_5xx(tmp_path, body, raw):
    app = create_app(Settings(data_dir=tmp_path))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            created = await c.post("/v1/sequences", content=json.dumps(body).encode("utf-8", "surrogatepass"),
                                   headers={"Content-Type": "application/json"})
            raw_post = await c.post("/v1/sequences", content=raw, headers={"Content-Type": "application/json"})
            sid = created.json()["id"] if created.status_code == 201 else "nope"
            put = await c.put(f"/v1/sequences/{sid}/frames/0", content=raw)
            return created, raw_post, put

    for r in asyncio.run(go()):
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert isinstance(r.json()["detail"], str) and r.json()["detail"]


_ENCODED: dict[str, tuple[bytes, bytes]] = {}


def _encoded_frame0(seq: dict) -> tuple[bytes, bytes]:
    """(header message, frame message) of a real 3000-Gaussian frame 0 encoded for ``seq`` (cached)."""
    from splatcast.client import FrameProducer, Sequence
    from splatcast.demo import synthetic_frames

    key = json.dumps([seq["codec"], seq["name"], seq["fps"]])
    if key not in _ENCODED:
        body, _ = FrameProducer(Sequence(**seq), device="cpu").encode(0, next(synthetic_frames(1, 3000)))
        size = 4 + int.from_bytes(body[:4], "big")
        _ENCODED[key] = body[:size], body[size:]
    return _ENCODED[key]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, 2**31), truncate=st.booleans())
def test_fuzzed_encoded_frames_never_get_a_5xx_and_leave_the_sequence_usable(tmp_path, edits, cut, truncate):
    """A real producer-encoded frame 0 whose msgpack content has bytes changed (then compressed
    again, so the server's schema and codec checks see it) or is cut short."""
    import zstandard

    from splatcast.protocol import MEDIA_TYPE

    app = create_app(Settings(data_dir=tmp_path, device="cpu"))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            seq = (await c.post("/v1/sequences", json={"name": "fuzz", "encoding": "producer"})).json()
            header, frame = _encoded_frame0(seq)
            content = bytearray(zstandard.ZstdDecompressor().decompress(frame[4:]))
            for pos, value in edits:
                content[pos % len(content)] = value
            if truncate:
                del content[cut % len(content):]
            body = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(content))
            put = await c.put(f"/v1/sequences/{seq['id']}/frames/0", content=header + len(body).to_bytes(4, "big")
                              + body, headers={"Content-Type": MEDIA_TYPE})
            valid = None
            if put.status_code != 201:  # the refused frame left the sequence as it was
                valid = await c.put(f"/v1/sequences/{seq['id']}/frames/0", content=header + frame,
                                    headers={"Content-Type": MEDIA_TYPE})
            return put, valid

    put, valid = asyncio.run(go())
    assert put.status_code < 500, put.text
    if put.status_code >= 400:
        assert isinstance(put.json()["detail"], str) and put.json()["detail"]
        assert valid is not None and valid.status_code == 201, valid.text


def test_openapi_json_describes_every_response_field(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, token="t"))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return (await c.get("/openapi.json")).json()

    spec = asyncio.run(go())
    assert spec["info"]["version"] == splatcast.__version__
    for name in ("SequenceOut", "FrameOut", "BatchOut", "ErrorOut", "HealthOut"):
        props = spec["components"]["schemas"][name]["properties"]
        assert all("description" in p for p in props.values()), (name, [k for k, p in props.items()
                                                                         if "description" not in p])


def test_websocket_failures_tell_the_client_no_internals(tmp_path, loot_plys, caplog):
    """A bug while streaming: the client gets a generic error message and close 1011; the detail is logged."""
    from starlette.testclient import TestClient

    app = create_app(Settings(data_dir=tmp_path))
    with TestClient(app) as client:
        sid = client.post("/v1/sequences", json={"codec": {"codebook_size": 16}}).json()["id"]
        assert client.put(f"/v1/sequences/{sid}/frames/0", content=loot_plys[0]).status_code == 201
        storage = app.state.sequences.storage

        def broken(*args, **kwargs):
            raise RuntimeError("secret internal detail /var/lib/db")

        storage.frames = broken
        with client.websocket_connect(f"/v1/sequences/{sid}/stream") as ws:
            messages = StreamDecoder().feed(ws.receive_bytes())
            closed = ws.receive()
    (error,) = messages
    assert isinstance(error, ErrorMessage) and error.code == "internal"
    assert "secret" not in error.message and closed["code"] == 1011
    assert "secret internal detail" in caplog.text


def test_the_domain_layer_knows_nothing_of_http_frameworks():
    """Sequences, storage and the hub raise the server's own error tree; only routes/app speak HTTP."""
    import splatcast.server as server_pkg

    for module in ("sequences", "storage", "hub", "errors"):
        source = (Path(server_pkg.__file__).parent / f"{module}.py").read_text()
        assert "fastapi" not in source and "starlette" not in source and "HTTPException" not in source, module
