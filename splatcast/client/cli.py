"""``splatcast upload`` and ``splatcast watch``: the client library on the command line."""

from __future__ import annotations

import argparse
import os

from splatcast.cli import frame_name

QUALITY_NAMES = ("preview", "standard", "medium", "high", "near-lossless")
"""``splatcast.codec.config.QUALITIES``' names (not imported: the client needs no torch)."""


def register(subparsers) -> None:
    token_help = "bearer token (default: $SPLATCAST_TOKEN)"
    up = subparsers.add_parser("upload", help="upload a directory of PLY frames to a server",
                               description="Create a sequence (or continue the one named by --id) and upload "
                                           "DIR/*.ply in natural order; the server encodes each frame on arrival.")
    up.add_argument("input_dir", metavar="DIR")
    up.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    up.add_argument("--name", default="", help="sequence name (default: the directory name)")
    up.add_argument("--id", dest="seq_id", help="sequence id to create, or to continue if it exists")
    up.add_argument("--fps", type=float, default=30.0, help="frames per second (default 30)")
    up.add_argument("--live", action="store_true", help="pace uploads at --fps, like a capture rig")
    up.add_argument("--gop", type=int, help="keyframe interval in frames (codec default otherwise)")
    up.add_argument("--quality", choices=QUALITY_NAMES,
                    help="codec quality preset, coarsest first (default: the codec's, standard)")
    up.add_argument("--target-mbps", type=float,
                    help="ask the server to hold this bitrate, megabits per second at --fps (rate control, "
                         "docs/CODEC.md); default: constant quality")
    up.add_argument("--no-finish", action="store_true", help="leave the sequence open after the last frame")
    up.add_argument("--encode", action="store_true",
                    help="encode on this machine and upload encoded frames instead of PLY (the server checks each "
                         "by decoding it); continuing a sequence starts after its stored frames with a keyframe")
    up.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="encoder device with --encode (default auto: CUDA when available)")
    up.add_argument("--token", default=os.environ.get("SPLATCAST_TOKEN"), help=token_help)
    up.set_defaults(func=upload)

    w = subparsers.add_parser("watch", help="subscribe to a sequence and decode every frame on arrival",
                              description="Print one line per decoded frame and a summary; write PLYs with --out.")
    w.add_argument("seq_id", metavar="ID")
    w.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    w.add_argument("--out", help="write each decoded frame as OUT/frame_NNNNN.ply")
    w.add_argument("--from", dest="start", type=_start, default="latest", metavar="latest|start|N",
                   help="start at the latest keyframe (default), at frame 0, or at the keyframe at or before frame N")
    w.add_argument("--realtime", action="store_true", help="ask the server to pace the replay at the fps")
    w.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the sequence to appear")
    w.add_argument("--token", default=os.environ.get("SPLATCAST_TOKEN"), help=token_help)
    w.set_defaults(func=watch)


def _client(args: argparse.Namespace):
    """The async client of ``--server`` with ``--token``; a URL that is not http(s) is a usage error."""
    from splatcast.cli import UsageError
    from splatcast.client.api import SplatcastClient

    try:
        return SplatcastClient(args.server, token=args.token)
    except ValueError as e:
        raise UsageError(str(e)) from None


def upload(args: argparse.Namespace) -> int:
    """Create (or continue) a sequence, print its viewer link, upload the frames, finish it.

    With ``--encode`` the frames are encoded here (``FrameProducer``) and uploaded as protocol
    messages to a sequence created with ``encoding="producer"``.

    Raises ``CommandError`` (no PLY files; a frame refused, naming its file and URL) and the
    client's ``SplatcastError``; ``main`` prints them.
    """
    import asyncio
    from pathlib import Path

    from tqdm import tqdm

    from splatcast.cli import CommandError, ply_frames
    from splatcast.client.api import ServerRefused

    files = ply_frames(args.input_dir)

    async def run() -> None:
        async with _client(args) as client:
            codec = {k: v for k, v in (("gop", args.gop), ("quality", args.quality), ("target_mbps", args.target_mbps))
                     if v is not None}
            try:
                name = args.name or Path(args.input_dir).resolve().name
                seq = await client.create(name, args.fps, codec, args.seq_id, "producer" if args.encode else "server")
                print(f"created sequence {seq.id}, watch it at {client.viewer_url(seq.id)}", flush=True)
            except ServerRefused as e:
                if e.status != 409 or args.seq_id is None:
                    raise
                seq = await client.get(args.seq_id)  # continue it: stored frames are safe retries
                print(f"continuing sequence {seq.id} ({seq.frames} frames stored), watch it at "
                      f"{client.viewer_url(seq.id)}", flush=True)
            start = _encoded_start(seq, args.encode)
            with tqdm(total=len(files), initial=start, unit="frame", desc=f"upload {seq.id}") as bar:
                def progress(u):
                    bar.set_postfix(type=u.frame.frame_type, kb=u.frame.bytes // 1024,
                                    enc_ms=round(u.producer_encode_ms or u.frame.encode_ms))
                    bar.update()
                fps = args.fps if args.live else None
                try:
                    if args.encode:
                        await client.upload_encoded_frames(seq, files[start:], start, fps, progress, args.device)
                    else:
                        await client.upload_frames(seq.id, (p.read_bytes() for p in files), fps=fps, progress=progress)
                except ServerRefused as e:  # name the file as well as the URL
                    raise CommandError(f"HTTP {e.status}: {e.detail}", f"{files[bar.n]}, {e.url}") from e
            if not args.no_finish:
                await client.finish(seq.id)
            info = await client.get(seq.id)
            print(f"sequence {info.id} ({info.status}): {info.frames} frames, {info.keyframes} keyframes, "
                  f"{info.stream_bytes:,} bytes, {info.bitrate_mbps} Mbit/s, "
                  + (f"encoded here ({args.device}), {info.encode_ms_mean} ms server check per frame" if args.encode
                     else f"{info.ratio}x smaller than PLY, {info.encode_ms_mean} ms encode per frame"))

    asyncio.run(run())
    return 0


def _encoded_start(seq, encode: bool) -> int:
    """The first frame to upload: 0 (PLYs: stored frames are safe retries), or with ``--encode``
    the first frame not stored yet. ``CommandError`` when ``--encode`` does not match how the
    sequence is encoded."""
    from splatcast.cli import CommandError

    if encode != (seq.encoding == "producer"):
        raise CommandError(f"sequence {seq.id} is encoded by the {seq.encoding}: upload it "
                           + ("without" if seq.encoding == "server" else "with") + " --encode", seq.id)
    return seq.frames if encode else 0


def watch(args: argparse.Namespace) -> int:
    """Subscribe, print a line per decoded frame and a summary; ``--out`` writes OUT/frame_NNNNN.ply.

    Raises the client's ``SplatcastError`` (404 after ``--wait``), ``ProtocolError``,
    ``CodecError`` or OSError; ``main`` prints them.
    """
    import asyncio
    import time
    from pathlib import Path

    from splatcast.client.api import ServerRefused
    from splatcast.codec import write_ply

    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        async with _client(args) as client:
            deadline = time.monotonic() + args.wait
            while True:
                try:
                    await client.get(args.seq_id)
                    break
                except ServerRefused as e:
                    if e.status != 404 or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            t0, count, nbytes, decode_ms, skipped, last = time.perf_counter(), 0, 0, 0.0, 0, None
            print(f"{'frame':>6} {'type':<10} {'gaussians':>9} {'kbytes':>8} {'decode ms':>9} {'at s':>8}")
            async for f in client.subscribe(args.seq_id, from_start=args.start == "start", realtime=args.realtime,
                                            from_index=args.start if isinstance(args.start, int) else None):
                if last is not None and f.index != last + 1:
                    skipped += f.index - last - 1
                last = f.index
                count, nbytes, decode_ms = count + 1, nbytes + f.nbytes, decode_ms + f.decode_ms
                print(f"{f.index:>6} {f.frame_type:<10} {f.num_gaussians:>9} {f.nbytes / 1024:>8.1f} "
                      f"{f.decode_ms:>9.1f} {f.arrived_at - t0:>8.3f}", flush=True)
                if out is not None:
                    write_ply(f.frame, out / frame_name(f.index))
            print(f"{count} frames decoded, {skipped} skipped to resync, {nbytes:,} bytes, "
                  f"{decode_ms / max(count, 1):.1f} ms decode per frame, {time.perf_counter() - t0:.2f} s"
                  + (f"; PLYs in {out}" if out else ""))

    asyncio.run(run())
    return 0


def _start(value: str) -> str | int:
    """``--from``: "latest", "start" or a frame index >= 0."""
    if value in ("latest", "start"):
        return value
    if value.isascii() and value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected latest, start or a frame index, got {value!r}")
