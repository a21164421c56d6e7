"""Seek and GOP segments on the single-node server (SQLite + files): ``?from=N`` and ``GET .../gops/{n}``."""

from __future__ import annotations

import asyncio

import httpx
import websockets

from splatcast.client.api import SyncSplatcastClient
from splatcast.protocol import FrameMessage, StreamDecoder, StreamHeader
from splatcast.server import BackgroundServer, Settings


async def _messages(url: str) -> list:
    dec, out = StreamDecoder(), []
    async with websockets.connect(url, max_size=None) as ws:
        async for data in ws:
            out += dec.feed(data)
    return out


def test_seek_and_gop_segments_single_node(loot_dir, tmp_path):
    plys = sorted(loot_dir.glob("*.ply"))[:7]
    with BackgroundServer(Settings(data_dir=tmp_path, device="cpu")) as srv:
        sid = httpx.post(f"{srv.url}/v1/sequences", json={"name": "s", "fps": 30, "codec": {"gop": 3}}).json()["id"]
        for i, p in enumerate(plys):
            assert httpx.put(f"{srv.url}/v1/sequences/{sid}/frames/{i}", content=p.read_bytes(), timeout=60).is_success
        ws = srv.url.replace("http://", "ws://") + f"/v1/sequences/{sid}/stream"
        open_gop = httpx.get(f"{srv.url}/v1/sequences/{sid}/gops/2")  # frame 6 only, the sequence is open
        assert open_gop.status_code == 200 and open_gop.headers["cache-control"] == "no-store"
        assert httpx.post(f"{srv.url}/v1/sequences/{sid}/finish").is_success
        for start, first in ((0, 0), (2, 0), (3, 3), (5, 3), (6, 6), (99, 6)):
            msgs = asyncio.run(_messages(f"{ws}?from={start}"))
            assert isinstance(msgs[0], StreamHeader)
            frames = [m for m in msgs if isinstance(m, FrameMessage)]
            assert [f.index for f in frames] == list(range(first, 7)), start
            assert frames[0].frame_type == "keyframe"
        assert httpx.get(f"{ws.replace('ws://', 'http://')}?from=-1").status_code != 101

        stream = httpx.get(f"{srv.url}/v1/sequences/{sid}/stream.splatcast").content
        gops = [httpx.get(f"{srv.url}/v1/sequences/{sid}/gops/{n}") for n in range(3)]
        assert all(g.status_code == 200 and "immutable" in g.headers["cache-control"] for g in gops)
        joined = b"".join(g.content for g in gops)
        head = stream.index(joined)  # header + GOPs in order + end message = the stream
        assert head > 0 and len(stream) - head - len(joined) > 0
        dec = StreamDecoder()
        frames = [m for m in dec.feed(joined) if isinstance(m, FrameMessage)]
        assert [f.index for f in frames] == list(range(7))
        offsets = [int(x) for x in gops[1].headers["x-splatcast-frame-offsets"].split(",")]
        assert gops[1].headers["x-splatcast-first-frame"] == "3" and len(offsets) == 3
        one = StreamDecoder().feed(gops[1].content[offsets[1]:offsets[2]])
        assert [m.index for m in one] == [4]
        size = len(gops[1].content)
        r = httpx.get(f"{srv.url}/v1/sequences/{sid}/gops/1", headers={"Range": "bytes=-100"})
        assert r.status_code == 206 and r.content == gops[1].content[-100:]
        assert r.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
        r = httpx.get(f"{srv.url}/v1/sequences/{sid}/gops/1", headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
        assert httpx.get(f"{srv.url}/v1/sequences/{sid}/gops/3").status_code == 404

        with SyncSplatcastClient(srv.url) as client:  # the Python client seeks too, decoding from the keyframe
            frames = list(client.subscribe(sid, from_index=4))
        assert [f.index for f in frames] == [3, 4, 5, 6] and frames[0].frame_type == "keyframe"
