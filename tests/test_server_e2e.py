"""End to end over loopback: real uvicorn servers, real uploads, subscribers decoding on arrival.

Frames decoded by subscribers must equal the output of the offline ``splatcast decode`` of the
server's stored stream, bit for bit.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch
from websockets.asyncio.client import connect

import splatcast
from splatcast.cli import main as splatcast_main
from splatcast.client.api import SplatcastClient, SplatcastError, StreamError
from splatcast.codec import FrameDecoder, GaussianFrame, ply_files, read_ply
from splatcast.protocol import EndOfStream, FrameMessage, StreamDecoder, StreamHeader
from splatcast.server import BackgroundServer, Settings

FIELDS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def assert_same(a: GaussianFrame, b: GaussianFrame, what: str) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), f"{what}: {name} differs"


def offline_decode(stream: bytes, tmp: Path) -> list[GaussianFrame]:
    """Frames of ``stream`` as written by the offline ``splatcast decode`` CLI."""
    path, out = tmp / "stream.splatcast", tmp / "decoded"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stream)
    assert splatcast_main(["decode", str(path), "-o", str(out)]) == 0
    return [read_ply(p) for p in ply_files(out)]


async def raw_connect(url: str, seq_id: str, query: str = "", rcvbuf: int | None = None):
    """A plain WebSocket subscriber; a small ``rcvbuf`` makes its backlog reach the server fast."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    return await connect(f"ws://{host}:{port}/v1/sequences/{seq_id}/stream{query}", sock=sock, max_queue=1,
                         compression=None, max_size=None)


def stuck_client(url: str, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads again."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def decode_messages(datas: list[bytes]) -> list:
    sd = StreamDecoder()
    return [m for d in datas for m in sd.feed(d)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), subscriber_queue=4, send_buffer_bytes=16384)
    with BackgroundServer(settings) as srv:
        yield srv


def test_loot_live_fast_slow_and_late_subscribers_and_bad_uploads(server, loot_dir, tmp_path):
    """30 real untracked loot frames; keyframes every 15 frames."""
    plys = [p.read_bytes() for p in ply_files(loot_dir)]
    assert len(plys) == 30

    async def scenario():
        async with SplatcastClient(server.url) as client:
            sid = (await client.create("loot", 30, {"gop": 15, "codebook_size": 64})).id
            fast, late = [], []
            seen15 = asyncio.Event()

            async def fast_sub():
                async for f in client.subscribe(sid, from_start=True):
                    fast.append(f)
                    if f.index == 15:
                        seen15.set()

            async def late_sub():
                await seen15.wait()
                stored = (await client.get(sid)).frames
                async for f in client.subscribe(sid):
                    late.append((stored, f))

            async def slow_sub():  # reads the header and frame 0, stalls until keyframe 15 is out, then reads on
                ws = await raw_connect(server.url, sid, "?from=start", rcvbuf=4096)
                datas = [await ws.recv(), await ws.recv()]
                await seen15.wait()
                return decode_messages(datas + [d async for d in ws])

            tasks = [asyncio.create_task(c()) for c in (fast_sub, late_sub, slow_sub)]
            await asyncio.sleep(0.5)
            for i, ply in enumerate(plys):
                assert (await client.upload_frame(sid, i, ply)).status == 201
                if i == 5:  # bad uploads get clear 4xx answers while the stream goes on
                    for index, body, status, text in [(6, b"not a ply", 400, "bad PLY"),
                                                      (6, ply[:len(ply) // 2], 400, "bad PLY"),
                                                      (8, ply, 409, "expected frame 6"),
                                                      (3, plys[4], 409, "different content"),
                                                      (-1, ply, 422, "")]:
                        with pytest.raises(SplatcastError) as e:
                            await client.upload_frame(sid, index, body)
                        assert e.value.status == status and text in e.value.detail
                    assert (await client.upload_frame(sid, 3, plys[3])).status == 200  # safe retry
            await client.finish(sid)
            _, _, slow_msgs = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            return await client.get(sid), await client.download(sid), fast, late, slow_msgs

    info, stream, fast, late, slow_msgs = asyncio.run(scenario())
    keyframes = [f.index for f in fast if f.frame_type == "keyframe"]
    assert (info.status, info.frames, info.keyframes) == ("finished", 30, len(keyframes))
    assert info.ratio > 10 and info.subscribers == 0
    offline = offline_decode(stream, tmp_path)
    assert len(offline) == 30

    assert [f.index for f in fast] == list(range(30))
    assert {0, 15} <= set(keyframes)  # at least one every gop frames
    for f in fast:
        assert_same(f.frame, offline[f.index], f"fast subscriber frame {f.index}")

    stored_at_join, first = late[0]
    assert first.frame_type == "keyframe"  # the latest keyframe when it joined
    assert max(k for k in keyframes if k < stored_at_join) <= first.index <= stored_at_join
    assert [f.index for _, f in late] == list(range(first.index, 30))
    for _, f in late:
        assert_same(f.frame, offline[f.index], f"late joiner frame {f.index}")

    assert isinstance(slow_msgs[0], StreamHeader) and isinstance(slow_msgs[-1], EndOfStream)
    slow = [m for m in slow_msgs[1:-1] if isinstance(m, FrameMessage)]
    indices = [m.index for m in slow]
    jumps = [(prev.index, cur) for prev, cur in zip(slow, slow[1:]) if cur.index != prev.index + 1]
    assert indices[0] == 0 and indices[-1] == 29 and jumps, indices  # it fell behind and skipped frames...
    for prev_index, cur in jumps:
        assert cur.index > prev_index and cur.frame_type == "keyframe", indices  # ...resyncing at keyframes only
    decoder = FrameDecoder()
    for m in slow:
        assert_same(decoder.decode(m.frame_type, m.num_gaussians, m.payload), offline[m.index], f"slow {m.index}")


def test_tracked_tile_batch_upload_then_paced_replay_equals_download(server, tile_dir, tmp_path):
    """A tracked SH-3 sequence in one tar request; a replay paced at fps is the stored stream."""
    files = ply_files(tile_dir)[:20]
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for p in reversed(files):  # the server orders members by natural sort, not tar order
            tar.add(p, arcname=f"seq/{p.name}")

    async def scenario():
        async with SplatcastClient(server.url) as client:
            sid = (await client.create("tile", 20, {"gop": 10, "codebook_size": 64})).id
            batch = await client.upload_batch(sid, tar_bytes.getvalue(), finish=True)
            assert [f.index for f in batch.frames] == list(range(20))
            assert (batch.sequence.status, batch.sequence.frames) == ("finished", 20)
            ws = await raw_connect(server.url, sid, "?from=start&pace=realtime")
            t0 = time.perf_counter()
            datas = [d async for d in ws]
            elapsed = time.perf_counter() - t0
            return datas, elapsed, await client.download(sid)

    datas, elapsed, stream = asyncio.run(scenario())
    assert b"".join(datas) == stream  # one protocol message per WebSocket message, nothing else
    assert 19 / 20 * 0.9 < elapsed < 19 / 20 + 5  # paced at 20 fps
    offline = offline_decode(stream, tmp_path)
    decoder = FrameDecoder()
    frames = [m for m in decode_messages(datas) if isinstance(m, FrameMessage)]
    assert [m.index for m in frames] == list(range(20)) and len(offline) == 20
    for m in frames:
        frame = decoder.decode(m.frame_type, m.num_gaussians, m.payload)
        assert frame.sh_degree == 3
        assert_same(frame, offline[m.index], f"tile frame {m.index}")


def test_restart_loses_no_accepted_frame(tile_dir, tmp_path):
    plys = [p.read_bytes() for p in ply_files(tile_dir)[:5]]
    settings = Settings(data_dir=tmp_path / "data")

    async def before(url):
        async with SplatcastClient(url) as client:
            sid = (await client.create("restart", 30, {"gop": 100, "codebook_size": 32})).id
            await client.upload_frames(sid, plys[:3])
            return sid, await client.download(sid)

    async def after(url, sid):
        async with SplatcastClient(url) as client:
            info = await client.get(sid)
            assert (info.status, info.frames) == ("open", 3)
            assert (await client.upload_frame(sid, 2, plys[2])).status == 200  # retry across the restart
            ups = await client.upload_frames(sid, plys[3:], start=3)
            await client.finish(sid)
            return [u.frame.frame_type for u in ups], await client.download(sid)

    with BackgroundServer(settings) as srv:
        sid, stream_before = asyncio.run(before(srv.url))
    with open(settings.data_dir / "streams" / f"{sid}.splatcast", "ab") as f:
        f.write(b"\x00\x00\x10\x00torn")  # a write interrupted by a crash: never committed
    with BackgroundServer(settings) as srv:
        types, stream_after = asyncio.run(after(srv.url, sid))
    assert types[0] == "keyframe"  # a fresh encoder after the restart starts a new GOP
    assert stream_after.startswith(stream_before)
    before_frames = offline_decode(stream_before + _end(3), tmp_path / "a")
    after_frames = offline_decode(stream_after, tmp_path / "b")
    assert len(after_frames) == 5
    for i, f in enumerate(before_frames):
        assert_same(f, after_frames[i], f"frame {i}")


def _end(n: int) -> bytes:
    from splatcast.protocol import encode_message

    return encode_message(EndOfStream(frame_count=n))


def test_auth_and_limits(tmp_path):
    from splatcast.codec import ply_bytes
    from splatcast.demo import synthetic_frames

    small = [ply_bytes(f) for f in synthetic_frames(4, num_gaussians=1000)]
    big = ply_bytes(next(synthetic_frames(1, num_gaussians=2500)))
    f1 = next(synthetic_frames(1, num_gaussians=1000))
    sh1 = ply_bytes(GaussianFrame(f1.means, f1.scales, f1.quats, f1.opacities, f1.sh0, torch.zeros(1000, 3, 3)))
    settings = Settings(data_dir=tmp_path, token="s3cret", protect_reads=True, max_upload_bytes=len(big) + 10,
                        max_gaussians=2000, max_frames=3, max_subscribers=1)

    async def scenario(url):
        anon, wrong = SplatcastClient(url), SplatcastClient(url, token="x")
        client = SplatcastClient(url, token="s3cret")

        async def status_of(coro) -> int:
            try:
                await coro
            except SplatcastError as e:
                return e.status
            return 200

        assert await status_of(anon.create("x")) == 401
        assert await status_of(wrong.create("x")) == 401
        assert await status_of(anon.list()) == 401
        raw = httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer s3cret"})
        by_query = await raw.get("/v1/sequences", headers={"Authorization": ""}, params={"token": "s3cret"})
        assert by_query.status_code == 200
        assert await status_of(client.create("x", codec={"gop": 0})) == 422
        assert await status_of(client.create("x", codec={"nope": 1})) == 422
        for bad in (0, -5, "fast", True, 1e9):
            assert await status_of(client.create("x", codec={"target_mbps": bad})) == 422
        sid = (await client.create("limits", 30, {"gop": 2, "codebook_size": 16}, seq_id="lim-1")).id
        assert sid == "lim-1"
        assert await status_of(client.create("again", seq_id="lim-1")) == 409
        assert await status_of(client.get("nope")) == 404
        assert await status_of(client.upload_frame("nope", 0, small[0])) == 404
        assert await status_of(client.subscribe("nope").__anext__()) == 404
        assert await status_of(anon.subscribe(sid).__anext__()) == 401

        too_big = small[0] + b"\x00" * (settings.max_upload_bytes)
        assert await status_of(client.upload_frame(sid, 0, too_big)) == 413

        async def chunks():
            for _ in range(4):
                yield b"\x00" * (settings.max_upload_bytes // 3)
        r = await raw.put(f"/v1/sequences/{sid}/frames/0", content=chunks())  # no Content-Length
        assert r.status_code == 413, r.text
        r = await raw.put(f"/v1/sequences/{sid}/frames/0", content=big)
        assert r.status_code == 413 and "2500 Gaussians" in r.json()["detail"]

        received = []

        async def sub():
            async for f in client.subscribe(sid):
                received.append(f.index)
        subscriber = asyncio.create_task(sub())
        while (await client.get(sid)).subscribers < 1:
            await asyncio.sleep(0.05)
        assert await status_of(client.subscribe(sid).__anext__()) == 429
        await client.upload_frames(sid, small[:3])
        assert await status_of(client.upload_frame(sid, 3, small[3])) == 413  # max_frames
        info = await client.finish(sid)
        assert info.status == "finished" and (await client.finish(sid)).status == "finished"
        assert await status_of(client.upload_frame(sid, 3, small[3])) == 409
        await asyncio.wait_for(subscriber, 30)
        assert received == [0, 1, 2]

        sid2 = (await client.create("sh")).id
        await client.upload_frame(sid2, 0, small[0])
        assert await status_of(client.upload_frame(sid2, 1, sh1)) == 422
        assert await status_of(client.finish((await client.create("empty")).id)) == 409

        async def sub2():
            async for _ in client.subscribe(sid2):
                pass
        subscriber = asyncio.create_task(sub2())
        while (await client.get(sid2)).subscribers < 1:
            await asyncio.sleep(0.05)
        assert await status_of(anon.delete(sid2)) == 401
        await client.delete(sid2)
        with pytest.raises(StreamError, match="deleted"):
            await asyncio.wait_for(subscriber, 30)
        assert await status_of(client.get(sid2)) == 404
        assert (await raw.get("/healthz")).json() == {"status": "ok"}
        for c in (anon, client, wrong, raw):
            await c.aclose()

    with BackgroundServer(settings) as srv:
        asyncio.run(scenario(srv.url))


def test_openapi_documents_the_api_and_the_viewer_pages_are_served(tmp_path):
    from splatcast.server import create_app
    from splatcast.server.app import STATIC_DIR

    app = create_app(Settings(data_dir=tmp_path))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            await c.post("/v1/sequences", json={"id": "abc123"})
            return [await c.get(p) for p in ("/openapi.json", "/", "/view/abc123", "/view/nope")]

    spec, index, view, unknown = asyncio.run(go())
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    assert spec.json()["info"]["version"] == splatcast.__version__
    paths = spec.json()["paths"]
    for path in ("/v1/sequences", "/v1/sequences/{seq_id}", "/v1/sequences/{seq_id}/frames/{index}",
                 "/v1/sequences/{seq_id}/frames", "/v1/sequences/{seq_id}/finish",
                 "/v1/sequences/{seq_id}/stream.splatcast", "/healthz"):
        assert path in paths, path
    put = paths["/v1/sequences/{seq_id}/frames/{index}"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"]
    assert "/v1/sequences/{seq_id}/stream" in spec.json()["info"]["description"]  # the WebSocket
    for page, response in (("index.html", index), ("view.html", view)):
        if (STATIC_DIR / page).is_file():
            assert response.status_code == 200 and response.content == (STATIC_DIR / page).read_bytes()


def _message(msg) -> bytes:
    from splatcast.protocol import encode_message

    return encode_message(msg)


def _refused(client: SplatcastClient, sid: str, index: int, body: bytes, status: int, text: str):
    async def put():
        with pytest.raises(SplatcastError) as e:
            await client.upload_encoded(sid, index, body)
        assert e.value.status == status and text in e.value.detail, (index, e.value)
    return put()


def test_producer_encoded_upload_is_checked_stored_as_sent_and_survives_a_restart(loot_dir, tmp_path):
    """12 real loot frames encoded by the producer (gop 5); hostile bodies get 4xx answers and
    leave the sequence usable; a restart mid-GOP rebuilds the check's decoder from storage."""
    import zstandard

    from splatcast.client.api import FrameProducer
    from splatcast.protocol import MEDIA_TYPE

    settings = Settings(data_dir=tmp_path / "data")
    plys = [p.read_bytes() for p in ply_files(loot_dir)[:12]]
    bodies, recons = [], []

    async def first_half(url):
        async with SplatcastClient(url) as client:
            seq = await client.create("loot by producer", 30, {"gop": 5, "codebook_size": 64}, encoding="producer")
            assert seq.encoding == "producer"
            producer = FrameProducer(seq, device="cpu")
            for i, ply in enumerate(plys):
                body, encoded = producer.encode(i, ply)
                bodies.append(body)
                recons.append(encoded.reconstruction)
            watched = []

            async def watch():
                async for f in client.subscribe(seq.id, from_start=True):
                    watched.append(f)
                    if f.index == 7:
                        return

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.3)
            sid, head = seq.id, StreamDecoder().feed(bodies[0])
            header, frame0 = head
            frame1 = StreamDecoder().feed(bodies[1])[0]
            raw = zstandard.ZstdCompressor().compress(__import__("msgpack").packb({"t": "frame", "index": "x"}))
            for index, body, status, text in [
                    (0, b"\x00\x00\x00\x07garbage", 400, "not a zstd frame"),
                    (0, len(raw).to_bytes(4, "big") + raw, 400, "frame message lacks"),  # valid msgpack
                    (0, bodies[0][:len(bodies[0]) // 2], 400, "stream ended inside a message"),
                    (0, _message(frame0), 400, "expected the messages ['StreamHeader', 'FrameMessage']"),
                    (0, _message(replace(header, codec_version=1)) + _message(frame0), 422, "version 1 is not"),
                    (0, _message(replace(header, codec_params={**header.codec_params, "gop": 6}))
                     + _message(frame0), 422, "differ from the sequence's codec settings in ['gop']"),
                    (0, _message(header) + _message(replace(frame1, index=0, pts=0.0)), 422, "before any keyframe"),
                    (0, _message(header) + _message(replace(frame0, num_gaussians=2_000_000, payload={})), 413,
                     "max_gaussians"),
                    (1, bodies[1], 409, "expected frame 0")]:
                await _refused(client, sid, index, body, status, text)
            with pytest.raises(SplatcastError) as e:
                await client.upload_frame(sid, 0, plys[0])  # a PLY for a producer-encoded sequence
            assert e.value.status == 415 and MEDIA_TYPE in e.value.detail
            ups = [await client.upload_encoded(sid, i, bodies[i]) for i in range(5)]
            assert [u.status for u in ups] == [201] * 5 and ups[0].frame.frame_type == "keyframe"
            frame4 = StreamDecoder().feed(bodies[4])[0]
            for index, body, status, text in [
                    (5, _message(replace(frame4, index=5, pts=5 / 30)), 422, "must be a keyframe"),
                    (5, _message(replace(frame4, index=6, pts=6 / 30)), 400, "has index 6, uploaded as frame 5"),
                    (5, _message(replace(StreamDecoder().feed(bodies[5])[0], pts=1.0)), 422, "pts 1.0"),
                    (5, _message(header) + bodies[5], 400, "expected the messages ['FrameMessage']"),
                    (3, bodies[4], 409, "different content")]:
                await _refused(client, sid, index, body, status, text)
            assert (await client.upload_encoded(sid, 3, bodies[3])).status == 200  # safe retry
            ups = [await client.upload_encoded(sid, 5, bodies[5])]
            sh1 = read_ply(plys[6])  # the same frame with SH degree 1: a keyframe the codec takes, not this sequence
            sh1 = replace(sh1, shN=torch.zeros(sh1.num_gaussians, 3, 3))
            sh1_key = StreamDecoder().feed(FrameProducer(seq, device="cpu").encode(0, sh1)[0])[1]
            await _refused(client, sid, 6, _message(replace(sh1_key, index=6, pts=6 / 30)), 422, "SH degree 1")
            ups += [await client.upload_encoded(sid, i, bodies[i]) for i in range(6, 8)]  # usable as before
            assert [u.frame.frame_type for u in ups][0] == "keyframe"
            await asyncio.wait_for(watcher, 60)
            other = await client.create("server-encoded")
            with pytest.raises(SplatcastError) as e:
                await client.upload_encoded(other.id, 0, bodies[0])
            assert e.value.status == 415 and "encoded by the server" in e.value.detail
            return sid, watched

    async def second_half(url, sid):
        async with SplatcastClient(url) as client:
            ups = [await client.upload_encoded(sid, i, bodies[i]) for i in range(8, 12)]  # mid-GOP: rebuilt decoder
            assert [u.status for u in ups] == [201] * 4
            await client.finish(sid)
            frames = [f async for f in client.subscribe(sid, from_start=True)]
            late = [f async for f in client.subscribe(sid, from_index=9)]
            return frames, late, await client.download(sid), await client.frames(sid)

    with BackgroundServer(settings) as srv:
        sid, watched = asyncio.run(first_half(srv.url))
    with BackgroundServer(settings) as srv:
        frames, late, stream, index = asyncio.run(second_half(srv.url, sid))
    assert stream == b"".join(bodies) + _end(12)  # stored byte for byte as the producer sent it
    assert [f.raw_bytes for f in index] == [len(b) for b in bodies]
    assert [f.index for f in watched] == list(range(8)) and [f.index for f in frames] == list(range(12))
    for f in watched + frames:
        assert_same(f.frame, recons[f.index], f"frame {f.index}")
    assert late[0].frame_type == "keyframe" and [f.index for f in late] == list(range(late[0].index, 12))
    assert late[0].index <= 9
