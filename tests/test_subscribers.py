"""Slow and stalled WebSocket subscribers on a real server over loopback (issue 8, points 6 and 7).

A slow client can hide megabytes of frames from the server: its kernel receive buffer grows to
several MB on loopback and its WebSocket library queues messages too, so the server's queue
never fills unless the server measures how far the client has read (WebSocket pings).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

from test_server_e2e import decode_messages, raw_connect, stuck_client
from websockets.exceptions import ConnectionClosed

from splatcast.client.api import SplatcastClient
from splatcast.codec import ply_bytes, ply_files
from splatcast.protocol import EndOfStream, FrameMessage, StreamHeader
from splatcast.server import BackgroundServer, Settings

TCP_ESTABLISHED = 1  # first byte of struct tcp_info (Linux)


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock``, read without consuming any data."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


async def wait_no_subscribers(client: SplatcastClient, sid: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get(sid)).subscribers:
        assert time.monotonic() < deadline, "the subscriber was not dropped"
        await asyncio.sleep(0.1)


def test_a_slow_subscriber_with_deep_client_buffers_skips_to_keyframes(tmp_path, loot_dir):
    """Point 6: a client with a 4 MiB receive buffer stops reading during a live upload.

    Every frame fits in the client's buffers, so before the fix the server never saw the
    backlog: the client got every frame, long after it was published. Now the server stops
    sending once the client has not confirmed for ``max_lag_s``; the queue fills and the
    subscriber moves forward to a keyframe. (The server must stall for longer than the queue's
    3 frames take to publish: with max_lag_s 0.3 a loot encode of 34 ms left too few frames
    behind the stall on one run in eight; 0.1 leaves about ten.)
    """
    plys = [p.read_bytes() for p in ply_files(loot_dir)[:20]]
    settings = Settings(data_dir=tmp_path, subscriber_queue=3, max_lag_s=0.1, send_timeout_s=60)

    async def scenario(url):
        async with SplatcastClient(url) as client:
            sid = (await client.create("slow", 30, {"gop": 4, "codebook_size": 16})).id
            ws = await raw_connect(url, sid, "?from=start", rcvbuf=4 * 1024 * 1024)
            await client.upload_frame(sid, 0, plys[0])
            datas = [await ws.recv(), await ws.recv()]  # header, frame 0; then it stops reading
            await client.upload_frames(sid, plys[1:16], start=1)
            resumed = asyncio.create_task(asyncio.wait_for(_read_all(ws), 60))
            await client.upload_frames(sid, plys[16:], start=16)
            await client.finish(sid)
            return decode_messages(datas + await resumed)

    with BackgroundServer(settings) as srv:
        msgs = asyncio.run(scenario(srv.url))
    assert isinstance(msgs[0], StreamHeader) and isinstance(msgs[-1], EndOfStream)
    frames = [m for m in msgs if isinstance(m, FrameMessage)]
    indices = [m.index for m in frames]
    jumps = [cur for prev, cur in itertools.pairwise(frames) if cur.index != prev.index + 1]
    assert jumps and all(m.frame_type == "keyframe" for m in jumps), indices
    assert indices[0] == 0 and indices[-1] == 19 and indices == sorted(indices), indices


async def _read_all(ws) -> list[bytes]:
    """Messages until the connection closes, whatever its close code."""
    datas = []
    try:
        while True:
            datas.append(await ws.recv())
    except ConnectionClosed:
        return datas


def test_a_subscriber_that_stops_reading_is_dropped_and_its_socket_reset(tmp_path):
    """Point 7: the dropped subscriber's connection is gone, although its client never reads."""
    from splatcast.demo import synthetic_frames

    settings = Settings(data_dir=tmp_path, subscriber_queue=2, send_buffer_bytes=8192, send_timeout_s=1,
                        close_timeout_s=0.5)

    async def scenario(url):
        async with SplatcastClient(url) as client:
            sid = (await client.create("stuck", 30, {"gop": 100, "codebook_size": 16})).id
            await client.upload_frames(sid, (ply_bytes(f) for f in synthetic_frames(4, num_gaussians=60_000)))
            stuck = stuck_client(url, f"/v1/sequences/{sid}/stream?from=start")
            await wait_no_subscribers(client, sid, 20)
            deadline = time.monotonic() + 5
            while tcp_state(stuck) == TCP_ESTABLISHED and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            state = tcp_state(stuck)
            stuck.close()
            await client.finish(sid)
            assert len([f async for f in client.subscribe(sid, from_start=True)]) == 4  # others are served
            return state

    with BackgroundServer(settings) as srv:
        assert asyncio.run(scenario(srv.url)) != TCP_ESTABLISHED  # the server reset the connection


def test_a_live_subscriber_that_confirms_nothing_is_dropped_with_a_close_frame(tmp_path, loot_dir):
    """A live subscriber whose client stops reading is dropped after ``send_timeout_s``, close frame first.

    Its buffers hold everything the server sends, so no send ever blocks: only the unanswered
    ping shows that the client stopped, also once no frame is left to send. The close frame
    (1008) reaches the client when it reads again.
    """
    plys = [p.read_bytes() for p in ply_files(loot_dir)[:6]]
    settings = Settings(data_dir=tmp_path, subscriber_queue=2, max_lag_s=0.2, send_timeout_s=1, close_timeout_s=3)

    async def scenario(url):
        async with SplatcastClient(url) as client:
            sid = (await client.create("gone", 30, {"gop": 3, "codebook_size": 16})).id
            ws = await raw_connect(url, sid, rcvbuf=4 * 1024 * 1024)
            await client.upload_frame(sid, 0, plys[0])
            datas = [await ws.recv(), await ws.recv()]
            t0 = time.monotonic()
            await client.upload_frames(sid, plys[1:], start=1)
            await wait_no_subscribers(client, sid, 20)
            dropped_after = time.monotonic() - t0
            datas += await asyncio.wait_for(_read_all(ws), 10)
            return datas, ws.close_code, dropped_after

    with BackgroundServer(settings) as srv:
        datas, close_code, dropped_after = asyncio.run(scenario(srv.url))
    assert close_code == 1008 and dropped_after < 15
    frames = [m for m in decode_messages(datas) if isinstance(m, FrameMessage)]
    assert [m.index for m in frames] == list(range(len(frames)))  # what it got before the drop, in order


def test_subscribers_reading_slower_than_the_upload_skip_to_keyframes_and_end_with_a_close_frame(tmp_path):
    """The reported case, scaled down: subscribers read one message every 0.4 s while a live upload
    runs several times faster. Each moves forward to keyframes and ends with the end message and a
    normal close soon after the upload, instead of getting every frame minutes late and being cut
    off without a close frame. (The client library's own queue, 4 messages here, is a backlog no
    server can see: the websockets client answers pings as it reads the socket.)"""
    from websockets.asyncio.client import connect

    from splatcast.demo import synthetic_frames

    plys = [ply_bytes(f) for f in synthetic_frames(40, num_gaussians=5000)]
    settings = Settings(data_dir=tmp_path, subscriber_queue=3, max_lag_s=0.3, send_timeout_s=10, close_timeout_s=1)

    async def slow(url: str, sid: str) -> tuple[list[bytes], int | None]:
        datas = []
        async with connect(f"{url.replace('http', 'ws')}/v1/sequences/{sid}/stream?from=start", max_size=None,
                           compression=None, max_queue=4) as ws:
            try:
                while True:
                    datas.append(await ws.recv())
                    await asyncio.sleep(0.4)
            except ConnectionClosed:
                return datas, ws.close_code

    async def scenario(url):
        async with SplatcastClient(url) as client:
            sid = (await client.create("slow5", 30, {"gop": 5, "codebook_size": 16})).id
            await client.upload_frame(sid, 0, plys[0])
            readers = [asyncio.create_task(slow(url, sid)) for _ in range(3)]
            t0 = time.monotonic()
            await client.upload_frames(sid, plys[1:], start=1)
            await client.finish(sid)
            upload_s = time.monotonic() - t0
            results = await asyncio.wait_for(asyncio.gather(*readers), 60)
            return results, upload_s, time.monotonic() - t0 - upload_s

    with BackgroundServer(settings) as srv:
        results, upload_s, after_upload = asyncio.run(scenario(srv.url))
    assert upload_s < 0.4 * 40 / 3, upload_s  # the readers are much slower than the upload
    assert after_upload < 15, after_upload  # not minutes of stale frames after the upload ended
    for datas, close_code in results:
        msgs = decode_messages(datas)
        assert close_code == 1000 and isinstance(msgs[-1], EndOfStream), close_code
        frames = [m for m in msgs if isinstance(m, FrameMessage)]
        jumps = [cur for prev, cur in itertools.pairwise(frames) if cur.index != prev.index + 1]
        assert jumps and all(m.frame_type == "keyframe" for m in jumps), [m.index for m in frames]
