#!/usr/bin/env python3
"""Write real-codec test vectors for the browser decoder: tests/vectors/codec_*.{splatcast,json}.

Each vector is a small stream encoded by `splatcast.codec.FrameEncoder` from real frames in
../shared, and a JSON file with what the Python `FrameDecoder` returns for each frame: per
field (means, scales, quats, opacities, sh0, shN) the float32 shape, the SHA-256 of its
little-endian bytes and its first values. web/test/codec.test.mjs checks that the JavaScript
decoder gives the same bytes; tests/test_web_decoder.py checks that Python still does.

- `codec_tracked`: 3 frames of the tile scene (SH degree 3) animated by tools/animate.py,
  first 2,000 Gaussians: a keyframe, then interframes (same count, rows correspond). A fine
  explicit step (2e-5) makes Morton deltas need 8 byte planes and position deltas wide ints.
- `codec_tracked_high`: the same frames at quality "high" (SH rest bands scalar-quantised
  instead of vector-quantised as in the others, which use the default "standard"), with
  interframe unit 3 (tolerance 1): positions and scalar values change in multiples of 3 steps,
  the moves as differences along the order (`pos_block` 0) with small rows.
- `codec_jittered`: the same 2,000 Gaussians from frames animated with `--jitter 0.003` (every
  position jitters, as in re-optimised frames): the first interframe codes its moves as
  differences along the order, the second as block medians and residuals (`pos_block` 32),
  every row escaped (few rows are small).
- `codec_untracked`: 3 loot frames (SH degree 0), every 24th voxel (about 2,000 Gaussians):
  a keyframe, then intra frames (the count changes every frame).
- `codec_predicted`: 4 loot frames, the voxels above y = 1.45 m (about 7,000, a spatial crop so
  that voxels persist): a keyframe (sh0 vector-quantised, 256 entries), then predicted
  interframes (docs/CODEC.md section 6b: kept voxels, new codes, ids as ranks).
- `codec_predicted_scalar`: the same frames with 64-entry codebooks (sh0 stays scalar-quantised):
  predicted interframes whose values are differences modulo the type.

Deterministic (CPU, fixed seed). Needs ../shared (or $SPLATCAST_SHARED).
Usage: python scripts/make_codec_vectors.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from splatcast.codec import CODEC_NAME, CODEC_VERSION, CodecConfig, FrameDecoder, FrameEncoder, GaussianFrame, read_ply
from splatcast.protocol import EndOfStream, FrameMessage, StreamHeader
from splatcast.protocol.files import read_stream, write_stream

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "vectors"
SHARED = Path(os.environ.get("SPLATCAST_SHARED", REPO.parent / "shared"))
CONFIG = CodecConfig(gop=30, codebook_size=64, seed=0, device="cpu")
FINE = CodecConfig(gop=30, codebook_size=64, step=2e-5, seed=0, device="cpu")
HIGH = CodecConfig(gop=30, quality="high", tolerance=1, seed=0, device="cpu")
PREDICTED = CodecConfig(gop=30, codebook_size=256, seed=0, device="cpu")
FPS = 30.0
FIELDS = ("means", "scales", "quats", "opacities", "sh0", "shN")
FIRST_VALUES = 8


def _tool(name: str, *args: str) -> None:
    subprocess.run([sys.executable, str(SHARED / "tools" / name), *args], check=True, stdout=subprocess.DEVNULL)


def _rows(frame: GaussianFrame, rows) -> GaussianFrame:
    return GaussianFrame(**{f: getattr(frame, f)[rows].contiguous() for f in FIELDS})


def tracked_frames(tmp: Path, *jitter: str) -> list[GaussianFrame]:
    _tool("animate.py", str(SHARED / "data/scenes/tile_sh3_14k.ply"), str(tmp), "--frames", "3", *jitter)
    return [_rows(read_ply(p), slice(0, 2000)) for p in sorted(tmp.glob("*.ply"))]


def loot_frames(tmp: Path) -> list[GaussianFrame]:
    _tool("loot_to_ply.py", str(tmp), "--count", "4")
    return [read_ply(p) for p in sorted(tmp.glob("*.ply"))]


def untracked_frames(loot: list[GaussianFrame]) -> list[GaussianFrame]:
    return [_rows(f, slice(None, None, 24)) for f in loot[:3]]


def predicted_frames(loot: list[GaussianFrame]) -> list[GaussianFrame]:
    return [_rows(f, f.means[:, 1] > 1.45) for f in loot]


def describe(frame: GaussianFrame) -> dict:
    """Shape, SHA-256 and first values of each float32 field, as the JSON lists them."""
    out = {}
    for name in FIELDS:
        a = np.ascontiguousarray(getattr(frame, name).cpu().numpy(), dtype="<f4")
        out[name] = {"shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
                     "first": a.reshape(-1)[:FIRST_VALUES].tolist()}
    return out


def decode_file(path: Path) -> list[dict]:
    """Decode a vector stream with the Python decoder: one JSON entry per frame."""
    decoder, frames = FrameDecoder("cpu"), []
    for msg in read_stream(path):
        if isinstance(msg, FrameMessage):
            frame = decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
            frames.append({"index": msg.index, "frame_type": msg.frame_type, "num_gaussians": msg.num_gaussians,
                           "sh_degree": frame.sh_degree, "fields": describe(frame)})
    return frames


def write_vector(name: str, frames: list[GaussianFrame], config: CodecConfig, doc: str) -> None:
    encoder = FrameEncoder(config)
    messages = [StreamHeader(codec=CODEC_NAME, codec_version=CODEC_VERSION, codec_params=config.to_dict(),
                             sh_degree=frames[0].sh_degree, fps=FPS, frame_count=len(frames), name=name)]
    for i, frame in enumerate(frames):
        enc = encoder.encode(frame)
        messages.append(FrameMessage(i, i / FPS, enc.frame_type, enc.num_gaussians, enc.payload))
    messages.append(EndOfStream(len(frames)))
    stream = OUT / f"{name}.splatcast"
    write_stream(stream, messages)
    entries = decode_file(stream)
    text = json.dumps({"file": stream.name, "doc": doc, "frames": entries}, indent=1) + "\n"
    (OUT / f"{name}.json").write_text(text)
    kinds = ", ".join(f"{e['frame_type']} ({e['num_gaussians']})" for e in entries)
    print(f"{stream.name}: {stream.stat().st_size} bytes: {kinds}")


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, and no stray arguments
    if not SHARED.is_dir():
        print(f"shared data missing: {SHARED} (set SPLATCAST_SHARED)", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tile").mkdir()
        (Path(tmp) / "loot").mkdir()
        (Path(tmp) / "jitter").mkdir()
        tracked = tracked_frames(Path(tmp) / "tile")
        write_vector("codec_tracked", tracked, FINE,
                     "tile scene (SH 3), first 2,000 Gaussians, 3 animated frames, step 2e-5: keyframe + interframes")
        write_vector("codec_tracked_high", tracked, HIGH,
                     "the same frames at quality 'high' (scalar-quantised SH rest bands)")
        write_vector("codec_jittered", tracked_frames(Path(tmp) / "jitter", "--jitter", "0.003"), CONFIG,
                     "the same 2,000 Gaussians with jittered positions: interframes of block-median moves")
        loot = loot_frames(Path(tmp) / "loot")
        write_vector("codec_untracked", untracked_frames(loot), CONFIG,
                     "3 loot frames (SH 0), every 24th voxel: keyframe + intra frames")
        write_vector("codec_predicted", predicted_frames(loot), PREDICTED,
                     "4 loot frames (SH 0), voxels above y = 1.45 m: keyframe (sh0 VQ) + predicted interframes")
        write_vector("codec_predicted_scalar", predicted_frames(loot), CONFIG,
                     "the same frames, sh0 scalar-quantised: keyframe + predicted interframes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
