"""Concurrent encoding: encoder threads share no unsafe state (issue 8, point 1).

The encoders of different sequences run at the same time in the server's encode pool; each
must give exactly what a single-threaded offline encode of the same PLYs gives.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from splatcast.codec import CodecConfig, FrameDecoder, FrameEncoder, ply_files, read_ply
from splatcast.protocol import EndOfStream, FrameMessage, StreamDecoder, StreamHeader, encode_message
from splatcast.server import BackgroundServer, Settings

FIELDS = ("means", "scales", "quats", "opacities", "sh0", "shN")
UPLOADERS = 4
FRAMES = 10
OFFSET = 5  # uploader k sends loot frames k * OFFSET ... k * OFFSET + FRAMES - 1: different content


def encode_all(config: CodecConfig, frames) -> list[bytes]:
    """The frame messages of one sequence, encoded by one encoder."""
    encoder = FrameEncoder(config)
    return [encode_message(FrameMessage(i, i / 30, e.frame_type, e.num_gaussians, e.payload))
            for i, e in enumerate(map(encoder.encode, frames))]


def test_encoders_in_parallel_threads_give_the_sequential_bytes(loot_dir):
    frames = [read_ply(p) for p in ply_files(loot_dir)[:8]]
    config = CodecConfig(gop=4, codebook_size=64, device="cpu")  # keyframes and interframes
    jobs = [frames[k:] + frames[:k] for k in range(UPLOADERS)]  # each encoder its own sequence
    sequential = [encode_all(config, job) for job in jobs]
    with ThreadPoolExecutor(UPLOADERS) as pool:
        parallel = list(pool.map(lambda job: encode_all(config, job), jobs))
    assert parallel == sequential


def test_four_live_uploads_at_once_store_the_offline_encoding(loot_dir, tmp_path):
    paths = ply_files(loot_dir)
    assert len(paths) >= (UPLOADERS - 1) * OFFSET + FRAMES
    plys = [[paths[k * OFFSET + i].read_bytes() for i in range(FRAMES)] for k in range(UPLOADERS)]

    async def upload(http: httpx.AsyncClient, bodies: list[bytes]) -> tuple[dict, bytes]:
        r = await http.post("/v1/sequences", json={"name": "concurrent", "fps": 30})
        assert r.status_code == 201, r.text
        seq = r.json()
        for i, body in enumerate(bodies):
            r = await http.put(f"/v1/sequences/{seq['id']}/frames/{i}", content=body,
                               headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, (seq["id"], i, r.status_code, r.text)
        assert (await http.post(f"/v1/sequences/{seq['id']}/finish")).status_code == 200
        return seq, (await http.get(f"/v1/sequences/{seq['id']}/stream.splatcast")).content

    async def scenario(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            return await asyncio.gather(*(upload(http, bodies) for bodies in plys))

    with BackgroundServer(Settings(data_dir=tmp_path)) as server:  # default encode_workers (2)
        results = asyncio.run(scenario(server.url))

    for (seq, stream), bodies in zip(results, plys):
        messages = StreamDecoder().feed(stream)
        assert isinstance(messages[0], StreamHeader) and messages[-1] == EndOfStream(FRAMES)
        got = [m for m in messages if isinstance(m, FrameMessage)]
        assert [m.index for m in got] == list(range(FRAMES))
        encoder, decoder = FrameEncoder(CodecConfig.from_dict(seq["codec"])), FrameDecoder()
        for m, body in zip(got, bodies):
            expected = encoder.encode(read_ply(body))
            assert (m.frame_type, m.num_gaussians) == (expected.frame_type, expected.num_gaussians)
            frame = decoder.decode(m.frame_type, m.num_gaussians, m.payload)
            for name in FIELDS:
                assert torch.equal(getattr(frame, name), getattr(expected.reconstruction, name)), \
                    (seq["id"], m.index, name)
