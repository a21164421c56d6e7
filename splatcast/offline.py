"""``splatcast encode | decode | info``: PLY sequences <-> ``.splatcast`` files, offline.

A ``.splatcast`` file is a header message, one frame message per PLY and an end message
(docs/PROTOCOL.md); the payloads come from ``splatcast.codec.FrameEncoder`` (docs/CODEC.md).
Invalid input (no PLY files, a bad PLY, a bad, empty or truncated stream, bytes after the end
message) prints ``error: ...`` on stderr, saying after which message a stream went wrong, and
returns exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("encode", help="encode a directory of PLY frames into a .splatcast file",
                              description="Encode INPUT_DIR/*.ply (natural sort order) into one .splatcast file.")
    p.add_argument("input_dir", type=Path, help="directory of INRIA-layout .ply frames")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .splatcast file")
    p.add_argument("--gop", type=int, help="a keyframe at least every N frames")
    p.add_argument("--codebook-size", type=int, help="entries per VQ codebook")
    p.add_argument("--alpha", type=float,
                   help="position step = ALPHA x the 5%% quantile of nearest-neighbour distances")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="k-means device")
    p.add_argument("--zstd-level", type=int, default=3, help="zstd level of the messages, 1..22 (default 3)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second in the header (default 30)")
    p.set_defaults(func=encode)
    p.epilog = "Codec settings left out take CodecConfig's defaults (docs/CODEC.md)."

    p = subparsers.add_parser("decode", help="decode a .splatcast file into PLY frames",
                              description="Decode IN.splatcast into OUT_DIR/frame_0000.ply, ...")
    p.add_argument("input", type=Path, help=".splatcast file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.set_defaults(func=decode)

    p = subparsers.add_parser("info", help="print a .splatcast file's header and frame sizes")
    p.add_argument("input", type=Path, help=".splatcast file")
    p.set_defaults(func=info)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


_NAMES = {"StreamHeader": "the header", "ErrorMessage": "an error message"}


def _fail_after(last, error: Exception) -> int:
    """Fail with ``error``, met in a stream after its message ``last`` (None: at its start)."""
    if last is None:
        return _fail(str(error))
    index = getattr(last, "index", None)
    where = f"frame {index}" if index is not None else _NAMES.get(type(last).__name__, "a message")
    return _fail(f"after {where}: {error}")


def encode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from splatcast.codec import CODEC_NAME, CODEC_VERSION, CodecConfig, FrameEncoder, ply_files, read_ply
    from splatcast.protocol import EndOfStream, FrameMessage, StreamHeader, encode_message

    try:
        files = ply_files(args.input_dir)
    except FileNotFoundError as e:
        return _fail(str(e))
    if not 1 <= args.zstd_level <= 22:
        return _fail(f"--zstd-level must be in 1..22, got {args.zstd_level}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.name + ".part")  # renamed when complete
    ply_bytes = out_bytes = gaussians = 0
    try:
        settings = {"gop": args.gop, "codebook_size": args.codebook_size, "alpha": args.alpha,
                    "device": args.device}
        config = CodecConfig(**{k: v for k, v in settings.items() if v is not None})
        encoder = FrameEncoder(config)
        with open(partial, "wb") as out, tqdm(files, unit="frame", file=sys.stderr) as bar:
            for index, path in enumerate(bar):
                frame = read_ply(path)
                ply_bytes += path.stat().st_size
                if index == 0:
                    header = StreamHeader(CODEC_NAME, CODEC_VERSION, config.to_dict(), frame.sh_degree,
                                          args.fps, len(files), args.input_dir.resolve().name)
                    out_bytes += out.write(encode_message(header, args.zstd_level))
                t0 = time.perf_counter()
                enc = encoder.encode(frame)
                data = encode_message(FrameMessage(index, index / args.fps, enc.frame_type,
                                                   enc.num_gaussians, enc.payload), args.zstd_level)
                ms = (time.perf_counter() - t0) * 1e3
                out_bytes += out.write(data)
                gaussians += enc.num_gaussians
                bar.write(f"frame {index:5d}  {enc.frame_type:<10} {len(data):>10,} B "
                          f"{len(data) / max(enc.num_gaussians, 1):7.3f} B/G  {ms:8.1f} ms", file=sys.stdout)
            out_bytes += out.write(encode_message(EndOfStream(len(files)), args.zstd_level))
        os.replace(partial, args.output)
    except (ValueError, OSError) as e:  # PlyError, CodecError, bad settings, I/O
        partial.unlink(missing_ok=True)
        return _fail(str(e))
    print(f"{len(files)} frames, {gaussians:,} Gaussians: {ply_bytes:,} B of PLY -> {out_bytes:,} B "
          f"({ply_bytes / out_bytes:.1f}x smaller, {out_bytes / max(gaussians, 1):.3f} B/G) in {args.output}")
    return 0


def decode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from splatcast.codec import CODEC_NAME, CODEC_VERSION, FrameDecoder, write_ply
    from splatcast.protocol import EndOfStream, ErrorMessage, FrameMessage, StreamHeader, read_stream

    decoder, header, frames, bar, last = FrameDecoder("cpu"), None, 0, None, None
    try:
        for msg in read_stream(args.input):  # ends with the end message, or raises
            if isinstance(msg, StreamHeader):
                if header is not None:
                    return _fail("a second stream header")
                if (msg.codec, msg.codec_version) != (CODEC_NAME, CODEC_VERSION):
                    return _fail(f"codec {msg.codec} v{msg.codec_version} is not {CODEC_NAME} v{CODEC_VERSION}")
                header = msg
                args.output.mkdir(parents=True, exist_ok=True)
                bar = tqdm(total=msg.frame_count, unit="frame", file=sys.stderr)
            elif header is None:
                return _fail(f"the stream does not start with a header ({type(msg).__name__} first)")
            elif isinstance(msg, FrameMessage):
                frame = decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
                write_ply(frame, args.output / f"frame_{msg.index:04d}.ply")
                frames += 1
                bar.update()
            elif isinstance(msg, ErrorMessage):
                return _fail(f"the stream stopped with error {msg.code}: {msg.message}")
            elif isinstance(msg, EndOfStream) and msg.frame_count != frames:
                return _fail(f"end message counts {msg.frame_count} frames, the stream had {frames}")
            last = msg
    except (ValueError, OSError) as e:  # ProtocolError, CodecError, I/O
        return _fail_after(last, e)
    finally:
        if bar is not None:
            bar.close()
    print(f"{frames} frames written to {args.output}")
    return 0


def info(args: argparse.Namespace) -> int:
    from splatcast.protocol import EndOfStream, ErrorMessage, FrameMessage, StreamHeader, read_stream_sized

    counts: dict[str, int] = {}
    total = gaussians = 0
    last = None
    try:
        for msg, size in read_stream_sized(args.input):  # ends with the end message, or raises
            total += size
            if isinstance(msg, StreamHeader):
                print(f"header: codec {msg.codec} v{msg.codec_version}, SH degree {msg.sh_degree}, "
                      f"{msg.fps:g} fps, {msg.frame_count if msg.frame_count is not None else 'unknown'} frames, "
                      f"name {msg.name!r}, {size:,} B")
                print(f"codec params: {msg.codec_params}")
                print(f"{'index':>6} {'pts s':>8} {'type':<10} {'gaussians':>10} {'bytes':>10} {'B/G':>7}")
            elif isinstance(msg, FrameMessage):
                counts[msg.frame_type] = counts.get(msg.frame_type, 0) + 1
                gaussians += msg.num_gaussians
                print(f"{msg.index:>6} {msg.pts:>8.3f} {msg.frame_type:<10} {msg.num_gaussians:>10,} {size:>10,} "
                      f"{size / max(msg.num_gaussians, 1):>7.3f}")
            elif isinstance(msg, EndOfStream):
                print(f"end: {msg.frame_count} frames")
            elif isinstance(msg, ErrorMessage):
                print(f"error message: {msg.code}: {msg.message}")
            last = msg
    except (ValueError, OSError) as e:  # ProtocolError, I/O
        return _fail_after(last, e)
    kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no frames"
    print(f"total: {total:,} B, {kinds}, {total / max(gaussians, 1):.3f} B/G over {gaussians:,} Gaussians")
    return 0
