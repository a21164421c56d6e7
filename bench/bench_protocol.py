#!/usr/bin/env python3
"""Protocol layer alone: framing overhead (bytes) and encode/decode throughput (MB/s).

Compares `encode_message` / `StreamDecoder.feed` on a synthetic but codec-like payload
(quantised positions, VQ ids, float16/float32 attributes; a few MB) with plain zstd on the
same array bytes concatenated, at the same level. Throughput is raw payload bytes per
second, best of --repeat runs. Usage: python bench/bench_protocol.py [--gaussians N]
"""

from __future__ import annotations

import argparse
import timeit
from functools import partial

import numpy as np
import zstandard

from splatcast.protocol import EndOfStream, FrameMessage, StreamDecoder, encode_message


def codec_like_payload(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.integers(-3, 4, size=(n, 3)), axis=0)  # spatially coherent, like Morton order
    return {
        "positions": {"q": (walk - walk.min(0)).astype(np.uint16), "step": 0.004, "origin": np.zeros(3, np.float32)},
        "color_ids": np.minimum(rng.geometric(0.02, n), 255).astype(np.uint8),
        "opacity": rng.normal(128, 30, n).clip(0, 255).astype(np.uint8),
        "scales": rng.normal(-4.5, 0.5, (n, 3)).astype(np.float16),
        "quats": rng.integers(-127, 128, (n, 4), dtype=np.int8),
        "sh0_codebook": rng.normal(0, 1, (256, 3)).astype(np.float32),
        "residual": rng.normal(0, 0.01, (n // 10, 3)).astype(np.float32),
    }


def arrays(payload: dict):
    for value in payload.values():
        if isinstance(value, dict):
            yield from arrays(value)
        elif isinstance(value, np.ndarray):
            yield value


def best(fn, repeat: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def decode(data: bytes) -> list:
    """Decode one stream with a fresh decoder (as a subscriber does)."""
    return StreamDecoder().feed(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 3, 9])
    args = parser.parse_args()

    payload = codec_like_payload(args.gaussians)
    raw = b"".join(a.tobytes() for a in arrays(payload))
    mb = len(raw) / 1e6
    msg = FrameMessage(7, 7 / 30, "keyframe", args.gaussians, payload)
    print(f"payload: {len(list(arrays(payload)))} arrays, {len(raw):,} raw bytes ({args.gaussians:,} Gaussians)")
    print(f"fixed cost: empty frame message {len(encode_message(FrameMessage(0, 0.0, 'intra', 0, {})))} B, "
          f"end message {len(encode_message(EndOfStream(30)))} B")
    print(f"{'level':>5} {'zstd B':>10} {'message B':>10} {'overhead B':>10} "
          f"{'zstd enc':>9} {'proto enc':>9} {'zstd dec':>9} {'proto dec':>9}   (MB/s of raw payload)")
    for level in args.levels:
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        plain = cctx.compress(raw)
        dctx = zstandard.ZstdDecompressor()
        data = encode_message(msg, level)
        t_zc = best(partial(cctx.compress, raw), args.repeat)
        t_pc = best(partial(encode_message, msg, level), args.repeat)
        t_zd = best(partial(dctx.decompress, plain), args.repeat)
        t_pd = best(partial(decode, data), args.repeat)
        print(f"{level:>5} {len(plain):>10,} {len(data):>10,} {len(data) - len(plain):>10,} "
              f"{mb / t_zc:>9.0f} {mb / t_pc:>9.0f} {mb / t_zd:>9.0f} {mb / t_pd:>9.0f}")


if __name__ == "__main__":
    main()
