"""``splatcast demo``: serve, upload a sequence live and watch it decode, in one command.

Without ``--input`` the sequence is made here (``synthetic_frames``: a rainbow torus that
turns and ripples), so the demo needs no network and no data outside the package.
``--generate DIR`` only writes that sequence as PLY files (the docker producer uploads them).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when frames are made: `splatcast --help` stays fast
    from splatcast.codec import GaussianFrame

DEFAULT_FRAMES = 30


def synthetic_frames(num_frames: int = DEFAULT_FRAMES, num_gaussians: int = 20_000, fps: float = 30.0,
                     seed: int = 0) -> Iterator[GaussianFrame]:
    """Yield a tracked sequence: ``num_gaussians`` Gaussians (SH degree 0) on a turning, rippling torus.

    Deterministic for a seed. Units: a torus of radius 1 (tube 0.35) around the y axis, turning
    at 0.5 rad/s; splats of about 2 cm; colours a rainbow around the ring.
    """
    import torch

    from splatcast.codec import C0, GaussianFrame

    g = torch.Generator().manual_seed(seed)
    n = num_gaussians
    u = torch.rand(n, generator=g) * 2 * math.pi  # around the ring
    v = torch.rand(n, generator=g) * 2 * math.pi  # around the tube
    hue = u / (2 * math.pi)
    rgb = torch.stack([0.5 + 0.5 * torch.cos(2 * math.pi * (hue + k / 3)) for k in range(3)], dim=1)  # [N, 3]
    sh0 = (rgb - 0.5) / C0
    scales = torch.log(torch.tensor([0.02, 0.02, 0.008])).expand(n, 3).contiguous()
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    opacities = torch.full((n,), math.log(0.9 / 0.1))
    for i in range(num_frames):
        t = i / fps
        r = 0.35 * (1 + 0.15 * torch.sin(3 * u + 2 * math.pi * t))
        x, y, z = (1 + r * torch.cos(v)) * torch.cos(u), r * torch.sin(v), (1 + r * torch.cos(v)) * torch.sin(u)
        a = 0.5 * t
        means = torch.stack([x * math.cos(a) + z * math.sin(a), y, -x * math.sin(a) + z * math.cos(a)], dim=1)
        yield GaussianFrame(means=means.float(), scales=scales.clone(), quats=quats.clone(),
                            opacities=opacities.clone(), sh0=sh0.float(), shN=torch.zeros(n, 0, 3))


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="serve, upload a sequence live and watch it decode, in one command",
                              description="Start a server on a free loopback port with a temporary data "
                                          "directory, upload a sequence live (paced at --fps) and watch it at "
                                          "the same time, printing one line per decoded frame.")
    p.add_argument("--input", help="directory of PLY frames (default: a built-in synthetic sequence)")
    p.add_argument("--frames", type=int, help=f"number of frames (default: all of --input, {DEFAULT_FRAMES} built-in)")
    p.add_argument("--fps", type=float, default=30.0, help="upload pace in frames per second (default 30)")
    p.add_argument("--gaussians", type=int, default=20_000, help="Gaussians of the built-in sequence (default 20000)")
    p.add_argument("--gop", type=int, help="keyframe interval in frames (codec default otherwise)")
    p.add_argument("--generate", metavar="DIR", help="only write the built-in sequence as DIR/frame_NNNNN.ply")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from splatcast.cli import UsageError, frame_name, ply_frames
    from splatcast.codec import ply_bytes, write_ply

    if args.frames is not None and args.frames < 1 or args.gaussians < 1 or args.fps <= 0:
        raise UsageError(f"--frames, --gaussians and --fps must be positive, got {args.frames}, {args.gaussians}, "
                         f"{args.fps}")
    if args.generate:
        out = Path(args.generate)
        out.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(synthetic_frames(args.frames or DEFAULT_FRAMES, args.gaussians, args.fps)):
            write_ply(frame, out / frame_name(i))
        print(f"wrote {i + 1} frames of {args.gaussians} Gaussians to {out}")
        return 0
    if args.input:
        files = ply_frames(args.input)[:args.frames]
        plys, name = (p.read_bytes() for p in files), Path(args.input).resolve().name
    else:
        plys = (ply_bytes(f) for f in synthetic_frames(args.frames or DEFAULT_FRAMES, args.gaussians, args.fps))
        name = "built-in torus"
    return _demo(plys, name, args.fps, {"gop": args.gop} if args.gop is not None else {})


def _demo(plys: Iterable[bytes], name: str, fps: float, codec: dict) -> int:
    import asyncio
    import statistics
    import tempfile

    from splatcast.client.api import ReceivedFrame, SplatcastClient, Uploaded
    from splatcast.server import BackgroundServer, Settings

    async def session(url: str) -> None:
        async with SplatcastClient(url) as client:
            seq = await client.create(name, fps, codec)
            print(f"server {url}, sequence {seq.id} ({name}), uploading live at {fps:g} fps; "
                  f"watch it at {client.viewer_url(seq.id)}\n")
            print(f"{'frame':>5} {'type':<10} {'gaussians':>9} {'kbytes':>7} {'x PLY':>6} {'encode ms':>9} "
                  f"{'decode ms':>9} {'upload->decode ms':>17}")
            uploaded: dict[int, Uploaded] = {}
            decoded: dict[int, ReceivedFrame] = {}
            latency: dict[int, float] = {}  # frame index -> upload-to-decode ms

            def row(i: int) -> None:  # printed once both the upload answer and the decoded frame are in
                if i in uploaded and i in decoded:
                    u, f = uploaded[i], decoded[i]
                    latency[i] = (f.decoded_at - u.sent_at) * 1000
                    print(f"{i:>5} {f.frame_type:<10} {f.num_gaussians:>9} {f.nbytes / 1024:>7.1f} "
                          f"{u.frame.raw_bytes / f.nbytes:>6.1f} {u.frame.encode_ms:>9.1f} "
                          f"{f.decode_ms:>9.1f} {latency[i]:>17.1f}", flush=True)

            async def watch() -> None:
                async for f in client.subscribe(seq.id, from_start=True):
                    decoded[f.index] = f
                    row(f.index)

            async def produce() -> None:
                def progress(u: Uploaded) -> None:
                    uploaded[u.index] = u
                    row(u.index)
                await client.upload_frames(seq.id, plys, fps=fps, progress=progress)
                await client.finish(seq.id)

            watcher = asyncio.create_task(watch())
            await produce()
            await watcher
            info = await client.get(seq.id)
            inter = [latency[i] for i, f in decoded.items() if f.frame_type != "keyframe" and i in latency]
            keyframes = f"{info.keyframes} keyframe{'s' if info.keyframes != 1 else ''}"
            print(f"\n{info.frames} frames ({keyframes}) streamed and decoded: "
                  f"{info.stream_bytes:,} bytes, {info.ratio}x smaller than the PLYs; "
                  f"encode {info.encode_ms_mean:.0f} ms, decode "
                  f"{statistics.mean(f.decode_ms for f in decoded.values()):.0f} ms per frame; upload->decode "
                  f"median {statistics.median(inter) if inter else float('nan'):.0f} ms for non-keyframes")

    with tempfile.TemporaryDirectory(prefix="splatcast-demo-") as data_dir:
        with BackgroundServer(Settings(data_dir=data_dir)) as server:
            asyncio.run(session(server.url))
    return 0
