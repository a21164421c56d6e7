"""``splatcast eval ORIG_DIR STREAM.splatcast``: rendered-view quality of a coded sequence.

Decodes the stream (as ``splatcast decode`` does), pairs decoded frame i with the i-th PLY of
ORIG_DIR in natural order, renders both through the same deterministic orbit cameras (placed
from the original frame: ``splatcast.codec.render.orbit_cameras``) and prints per frame its
type, bytes per Gaussian (the frame message's wire bytes over its Gaussian count), PSNR and
SSIM (means over the views), then a summary per frame type. Invalid input raises
``CommandError`` naming the file or directory (missing or empty directory, a bad PLY, a file
that is not a splatcast stream, a bad or truncated stream, frame counts that differ) or
``UsageError`` (an option out of range); ``splatcast.cli.main`` prints them as one line and
exits with status 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from splatcast.cli import CommandError, UsageError, ply_frames


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="rendered-view PSNR of a .splatcast file against its original PLY frames",
        description="Decode STREAM, render each decoded frame and the matching original PLY (i-th file "
                    "of ORIG_DIR in natural order) from the same orbit cameras, and print PSNR/SSIM "
                    "per frame and a summary per frame type (docs/CODEC.md, 'Rendered-view quality').")
    p.add_argument("orig_dir", type=Path, help="directory of the original .ply frames")
    p.add_argument("stream", type=Path, help=".splatcast file encoded from them")
    p.add_argument("--views", type=int, default=4, help="orbit views per frame (default 4)")
    p.add_argument("--size", type=int, default=256, help="image width and height in pixels (default 256)")
    p.add_argument("--every", type=int, default=1,
                   help="evaluate every N-th frame only (all frames are decoded; default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table "
                   "(an infinite PSNR, identical images, is written as null)")
    p.set_defaults(func=evaluate)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _db(value: float | None) -> str:
    return "   n/a" if value is None or math.isnan(value) else f"{value:6.2f}"


def _summary(rows: list[dict]) -> dict:
    out = {}
    for kind in ("keyframe", "intra", "interframe", "all"):
        rs = [r for r in rows if kind == "all" or r["type"] == kind]
        if not rs:
            continue
        scored = [r for r in rs if r["psnr"] is not None]
        worst = min(scored, key=lambda r: r["psnr"]) if scored else None
        out[kind] = dict(
            frames=len(rs), evaluated=len(scored),
            bytes_per_gaussian=sum(r["bytes"] for r in rs) / max(sum(r["num_gaussians"] for r in rs), 1),
            psnr_mean=_mean([r["psnr"] for r in scored]) if scored else None,
            psnr_min=worst["psnr"] if worst else None, psnr_min_frame=worst["index"] if worst else None,
            ssim_mean=_mean([r["ssim"] for r in scored if r["ssim"] is not None]) if scored else None)
    return out


def _finite(value):
    """JSON has no infinity: inf / nan -> None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def evaluate(args: argparse.Namespace) -> int:
    from splatcast.codec import PlyError, read_ply
    from splatcast.codec.metrics import view_quality
    from splatcast.codec.render import orbit_cameras
    from splatcast.offline import decoded_stream

    if not 1 <= args.views <= 64:
        raise UsageError(f"--views must be in 1..64, got {args.views}")
    if not 11 <= args.size <= 4096:
        raise UsageError(f"--size must be in 11..4096, got {args.size}")
    if args.every < 1:
        raise UsageError(f"--every must be >= 1, got {args.every}")
    files = ply_frames(args.orig_dir)
    if not args.stream.is_file():
        raise CommandError("no such file", args.stream)

    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for header, msg, size, decoded in decoded_stream(args.stream):
        i = len(rows)
        if i == 0:
            if header.frame_count is not None and header.frame_count != len(files):
                raise CommandError(f"the stream has {header.frame_count} frames, the directory "
                                   f"{len(files)} .ply files", args.orig_dir)
            if not args.json:
                print(f"{'frame':>6} {'type':<10} {'gaussians':>10} {'bytes':>10} {'B/G':>7} {'PSNR dB':>8} "
                      f"{'SSIM':>7}")
        if i >= len(files):
            raise CommandError(f"the stream has more frames than the {len(files)} .ply files of the directory",
                               args.orig_dir)
        row: dict[str, Any] = dict(
            index=i, type=msg.frame_type, num_gaussians=msg.num_gaussians, bytes=size,
            bytes_per_gaussian=size / max(msg.num_gaussians, 1), psnr=None, ssim=None, psnr_views=None,
            file=files[i].name)
        if i % args.every == 0:
            try:
                original = read_ply(files[i])
            except PlyError as e:
                raise CommandError(str(e), files[i]) from e
            q = view_quality(original, decoded, cameras=orbit_cameras(original, args.views, args.size))
            row.update(psnr=q["psnr"], ssim=q["ssim"], psnr_views=q["psnr_views"])
        rows.append(row)
        if not args.json:
            print(f"{i:>6} {row['type']:<10} {row['num_gaussians']:>10,} {size:>10,} "
                  f"{row['bytes_per_gaussian']:>7.3f} {_db(row['psnr']):>8} "
                  f"{'' if row['ssim'] is None else format(row['ssim'], '.4f'):>7}", flush=True)
    if len(rows) != len(files):
        raise CommandError(f"the stream has {len(rows)} frames, the directory {len(files)} .ply files",
                           args.orig_dir)

    summary = _summary(rows)
    seconds = time.perf_counter() - t_start
    if args.json:
        doc = dict(orig_dir=str(args.orig_dir), stream=str(args.stream), views=args.views, size=args.size,
                   every=args.every, frames=rows, summary=summary, seconds=seconds)
        print(json.dumps(_finite(doc), indent=1))
        return 0
    print(f"summary ({args.views} views of {args.size} px per frame, PSNR and SSIM means over frames "
          f"of the per-frame means over views; {seconds:.1f} s):")
    for kind, s in summary.items():
        worst = "" if s["psnr_min"] is None else f"  min {_db(s['psnr_min']).strip()} dB (frame {s['psnr_min_frame']})"
        ssim = "" if s["ssim_mean"] is None else f"  SSIM {s['ssim_mean']:.4f}"
        print(f"  {kind:<10} {s['frames']:>5} frames ({s['evaluated']} evaluated)  "
              f"{s['bytes_per_gaussian']:7.3f} B/G  PSNR {_db(s['psnr_mean']).strip()} dB{ssim}{worst}")
    return 0
