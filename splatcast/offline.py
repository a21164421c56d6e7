"""``splatcast encode | decode | info``: PLY sequences <-> ``.splatcast`` files, offline.

A ``.splatcast`` file is a header message, one frame message per PLY and an end message
(docs/PROTOCOL.md); the payloads come from ``splatcast.codec.FrameEncoder`` (docs/CODEC.md).
Invalid input raises ``CommandError`` naming the file (no PLY files, a bad PLY, a file that is
not a splatcast stream, a bad, empty or truncated stream, bytes after the end message: saying
after which message the stream went wrong) or ``UsageError`` (an option out of range);
``splatcast.cli.main`` prints them as one line and exits with status 1 (2 for usage).
``encode --json`` and ``info --json`` print one JSON document instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from splatcast.cli import CommandError, UsageError, frame_name, ply_frames

if TYPE_CHECKING:
    from splatcast.codec import GaussianFrame
    from splatcast.protocol import FrameMessage, StreamHeader


def register(subparsers) -> None:
    p = subparsers.add_parser("encode", help="encode a directory of PLY frames into a .splatcast file",
                              description="Encode INPUT_DIR/*.ply (natural sort order) into one .splatcast file.")
    p.add_argument("input_dir", type=Path, help="directory of INRIA-layout .ply frames")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .splatcast file")
    p.add_argument("--gop", type=int, help="a keyframe at least every N frames")
    p.add_argument("--quality", choices=("preview", "standard", "medium", "high", "near-lossless"),
                   help="quality preset, coarsest first (default standard; docs/CODEC.md section 7)")
    p.add_argument("--codebook-size", type=int,
                   help="entries per VQ codebook (SH rest bands of preview, standard, medium); "
                        "default 256, 512 for scenes of 131,072 Gaussians or more")
    p.add_argument("--alpha", type=float,
                   help="position step = ALPHA x the 5%% quantile of nearest-neighbour distances")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="k-means device")
    p.add_argument("--target-mbps", type=float,
                   help="hold this bitrate (megabits per second at --fps) by turning the quantisation steps "
                        "at each keyframe (docs/CODEC.md, Rate control); default: constant quality")
    p.add_argument("--zstd-level", type=int, default=3, help="zstd level of the messages, 1..22 (default 3)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second in the header (default 30)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (per-frame rows and a summary) instead of the table")
    p.set_defaults(func=encode)
    p.epilog = "Codec settings left out take CodecConfig's defaults (docs/CODEC.md)."

    p = subparsers.add_parser("decode", help="decode a .splatcast file into PLY frames",
                              description=f"Decode IN.splatcast into OUT_DIR/{frame_name(0)}, {frame_name(1)}, ...")
    p.add_argument("input", type=Path, help=".splatcast file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.set_defaults(func=decode)

    p = subparsers.add_parser("info", help="print a .splatcast file's header and frame sizes")
    p.add_argument("input", type=Path, help=".splatcast file")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (header, per-frame rows, end, summary) instead of the table")
    p.set_defaults(func=info)


_NAMES = {"StreamHeader": "the header", "ErrorMessage": "an error message"}


def _check_start(path: Path) -> None:
    """Raise ``CommandError`` when a non-empty file does not start like a splatcast stream: a
    4-byte length, then a zstd frame (docs/PROTOCOL.md, section 2). OSError when unreadable."""
    from splatcast.protocol.wire import PREFIX_BYTES, ZSTD_MAGIC

    with open(path, "rb") as f:
        head = f.read(PREFIX_BYTES + len(ZSTD_MAGIC))
    if head and head[PREFIX_BYTES:] != ZSTD_MAGIC:
        raise CommandError("not a splatcast stream", path)


def _stream_error(path: Path, last, error: Exception) -> CommandError:
    """``error`` met in stream ``path`` after its message ``last`` (None: at its start)."""
    if last is None:
        return CommandError(str(error), path)
    index = getattr(last, "index", None)
    where = f"frame {index}" if index is not None else _NAMES.get(type(last).__name__, "a message")
    return CommandError(f"after {where}: {error}", path)


def encode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from splatcast.codec import CODEC_NAME, CODEC_VERSION, CodecConfig, CodecError, PlyError, read_ply
    from splatcast.codec.rate import RateController, buffer_seconds, make_encoder, window_mbps
    from splatcast.protocol import EndOfStream, FrameMessage, StreamHeader, encode_message

    files = ply_frames(args.input_dir)
    if not 1 <= args.zstd_level <= 22:
        raise UsageError(f"--zstd-level must be in 1..22, got {args.zstd_level}")
    settings = {"gop": args.gop, "quality": args.quality, "codebook_size": args.codebook_size, "alpha": args.alpha,
                "target_mbps": args.target_mbps, "device": args.device}
    index = 0

    def message(enc) -> bytes:  # frame ``index``'s message (the rate controller sizes its trials with it)
        return encode_message(FrameMessage(index, index / args.fps, enc.frame_type, enc.num_gaussians, enc.payload),
                              args.zstd_level)

    try:
        config = CodecConfig(**{k: v for k, v in settings.items() if v is not None})
        encoder = make_encoder(config, args.fps, lambda enc: len(message(enc)))
    except ValueError as e:
        raise UsageError(str(e)) from None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.name + ".part")  # renamed when complete
    ply_bytes = out_bytes = gaussians = 0
    rows, sizes = [], []  # sizes: each frame message's bytes
    try:
        with open(partial, "wb") as out, tqdm(files, unit="frame", file=sys.stderr, disable=args.json) as bar:
            for index, path in enumerate(bar):
                try:
                    frame = read_ply(path)
                except PlyError as e:
                    raise CommandError(str(e), path) from e
                if index == 0:
                    header = StreamHeader(CODEC_NAME, CODEC_VERSION, config.to_dict(), frame.sh_degree,
                                          args.fps, len(files), args.input_dir.resolve().name)
                    out_bytes += out.write(encode_message(header, args.zstd_level))
                t0 = time.perf_counter()
                try:
                    enc = encoder.encode(frame)
                except CodecError as e:  # e.g. an SH degree other than frame 0's
                    raise CommandError(str(e), path) from e
                data = message(enc)
                ms = (time.perf_counter() - t0) * 1e3
                out_bytes += out.write(data)
                sizes.append(len(data))
                ply_bytes += path.stat().st_size
                gaussians += enc.num_gaussians
                rows.append({"index": index, "file": str(path), "frame_type": enc.frame_type,
                             "num_gaussians": enc.num_gaussians, "bytes": len(data), "encode_ms": round(ms, 3),
                             "step_scale": encoder.step_scale if isinstance(encoder, RateController)
                             else config.step_scale,
                             "keep": encoder.keep if isinstance(encoder, RateController) else 1.0})
                if not args.json:
                    bar.write(f"frame {index:5d}  {enc.frame_type:<10} {len(data):>10,} B "
                              f"{len(data) / max(enc.num_gaussians, 1):7.3f} B/G  {ms:8.1f} ms", file=sys.stdout)
            out_bytes += out.write(encode_message(EndOfStream(len(files)), args.zstd_level))
        os.replace(partial, args.output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    windows = window_mbps(sizes, args.fps)
    bitrate = {"mbps": sum(sizes) * 8 * args.fps / len(sizes) / 1e6, "target_mbps": config.target_mbps,
               "window_mbps_min": float(windows.min()) if len(windows) else None,
               "window_mbps_max": float(windows.max()) if len(windows) else None,
               "buffer_s": buffer_seconds(sizes, args.fps, config.target_mbps) if config.target_mbps else None}
    if args.json:
        summary = {"frames": len(files), "gaussians": gaussians, "ply_bytes": ply_bytes, "stream_bytes": out_bytes,
                   "ratio": ply_bytes / out_bytes, "bytes_per_gaussian": out_bytes / max(gaussians, 1), **bitrate}
        print(json.dumps({"output": str(args.output), "codec_params": config.to_dict(), "frames": rows,
                          "summary": summary}, indent=1))
    else:
        print(f"{len(files)} frames, {gaussians:,} Gaussians: {ply_bytes:,} B of PLY -> {out_bytes:,} B "
              f"({ply_bytes / out_bytes:.1f}x smaller, {out_bytes / max(gaussians, 1):.3f} B/G) in {args.output}")
        print(_bitrate_line(bitrate))
    return 0


def _bitrate_line(b: dict) -> str:
    """One line: mean bitrate of the frames, min/max over the 1 s windows, and against the target."""
    line = f"bitrate {b['mbps']:.3f} Mbit/s"
    if b["window_mbps_min"] is not None:
        line += f", 1 s windows {b['window_mbps_min']:.3f}..{b['window_mbps_max']:.3f}"
    if b["target_mbps"] is not None:
        line += f" (target {b['target_mbps']:g}, leaky bucket at the target needs {b['buffer_s']:.3f} s)"
    return line


def decoded_stream(path: Path) -> Iterator[tuple[StreamHeader, FrameMessage, int, GaussianFrame]]:
    """The frames of the ``.splatcast`` file ``path``, decoded in order: ``(header, frame message,
    message size in bytes, decoded frame)``.

    The file must hold one header of this codec (``check_codec``), frames, and an end message
    counting them, and nothing after it; anything else (an error message, a cut or corrupt file, a
    payload the codec refuses) raises ``CommandError`` naming the file and after which message it
    went wrong. Used by ``splatcast decode`` and ``splatcast eval``.
    """
    from splatcast.codec import CodecError, FrameDecoder, check_codec
    from splatcast.protocol import (
        EndOfStream,
        ErrorMessage,
        FrameMessage,
        ProtocolError,
        StreamHeader,
        read_stream_sized,
    )

    _check_start(path)
    decoder, header, frames, last = FrameDecoder("cpu"), None, 0, None
    try:
        for msg, size in read_stream_sized(path):  # ends with the end message, or raises
            if isinstance(msg, StreamHeader):
                if header is not None:
                    raise CommandError("a second stream header", path)
                try:
                    check_codec(msg.codec, msg.codec_version)
                except CodecError as e:
                    raise CommandError(str(e), path) from e
                header = msg
            elif header is None:
                raise CommandError(f"the stream does not start with a header ({type(msg).__name__} first)", path)
            elif isinstance(msg, FrameMessage):
                yield header, msg, size, decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
                frames += 1
            elif isinstance(msg, ErrorMessage):
                raise CommandError(f"the stream stopped with error {msg.code}: {msg.message}", path)
            elif isinstance(msg, EndOfStream) and msg.frame_count != frames:
                raise CommandError(f"end message counts {msg.frame_count} frames, the stream had {frames}", path)
            last = msg
    except (ProtocolError, CodecError) as e:
        raise _stream_error(path, last, e) from e


def decode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from splatcast.codec import write_ply

    frames, bar = 0, None
    try:
        for header, msg, _, frame in decoded_stream(args.input):
            if bar is None:
                args.output.mkdir(parents=True, exist_ok=True)
                bar = tqdm(total=header.frame_count, unit="frame", file=sys.stderr)
            write_ply(frame, args.output / frame_name(msg.index))
            frames += 1
            bar.update()
    finally:
        if bar is not None:
            bar.close()
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"{frames} frames written to {args.output}")
    return 0


def info(args: argparse.Namespace) -> int:
    from splatcast.protocol import (
        EndOfStream,
        ErrorMessage,
        FrameMessage,
        ProtocolError,
        StreamHeader,
        read_stream_sized,
    )

    _check_start(args.input)
    counts: dict[str, int] = {}
    total = gaussians = 0
    last = None
    doc: dict = {"file": str(args.input), "header": None, "frames": [], "end": None, "errors": []}
    say = (lambda text: None) if args.json else print
    try:
        for msg, size in read_stream_sized(args.input):  # ends with the end message, or raises
            total += size
            if isinstance(msg, StreamHeader):
                doc["header"] = {"codec": msg.codec, "codec_version": msg.codec_version, "sh_degree": msg.sh_degree,
                                 "fps": msg.fps, "frame_count": msg.frame_count, "name": msg.name, "bytes": size,
                                 "codec_params": msg.codec_params}
                say(f"header: codec {msg.codec} v{msg.codec_version}, SH degree {msg.sh_degree}, "
                    f"{msg.fps:g} fps, {msg.frame_count if msg.frame_count is not None else 'unknown'} frames, "
                    f"name {msg.name!r}, {size:,} B")
                say(f"codec params: {msg.codec_params}")
                say(f"{'index':>6} {'pts s':>8} {'type':<10} {'gaussians':>10} {'bytes':>10} {'B/G':>7}")
            elif isinstance(msg, FrameMessage):
                counts[msg.frame_type] = counts.get(msg.frame_type, 0) + 1
                gaussians += msg.num_gaussians
                doc["frames"].append({"index": msg.index, "pts": msg.pts, "frame_type": msg.frame_type,
                                      "num_gaussians": msg.num_gaussians, "bytes": size})
                say(f"{msg.index:>6} {msg.pts:>8.3f} {msg.frame_type:<10} {msg.num_gaussians:>10,} {size:>10,} "
                    f"{size / max(msg.num_gaussians, 1):>7.3f}")
            elif isinstance(msg, EndOfStream):
                doc["end"] = {"frame_count": msg.frame_count, "bytes": size}
                say(f"end: {msg.frame_count} frames")
            elif isinstance(msg, ErrorMessage):
                doc["errors"].append({"code": msg.code, "message": msg.message})
                say(f"error message: {msg.code}: {msg.message}")
            last = msg
    except ProtocolError as e:
        raise _stream_error(args.input, last, e) from e
    if args.json:
        doc["summary"] = {"bytes": total, "frame_types": counts, "gaussians": gaussians,
                          "bytes_per_gaussian": total / max(gaussians, 1)}
        print(json.dumps(doc, indent=1))
        return 0
    kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no frames"
    print(f"total: {total:,} B, {kinds}, {total / max(gaussians, 1):.3f} B/G over {gaussians:,} Gaussians")
    return 0
