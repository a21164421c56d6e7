"""PLY I/O speed: parse from bytes and from a path, and write, on real scenes from ../shared.

Usage: python bench/bench_ply.py [--repeat 5]   (best of N runs; data from $SPLATCAST_SHARED
or ../shared). Scenes: playbot_sh2_250k as is, and a 250k SH 3 frame made by tiling the real
tile_sh3_14k scene.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit
from dataclasses import fields
from functools import partial
from pathlib import Path

import torch

from splatcast.codec import GaussianFrame, ply_bytes, read_ply, write_ply

SHARED = Path(os.environ.get("SPLATCAST_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def best_ms(fn, repeat: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat)) * 1000


def tiled(frame: GaussianFrame, n: int) -> GaussianFrame:
    reps = -(-n // frame.num_gaussians)
    return GaussianFrame(**{f.name: getattr(frame, f.name).repeat_interleave(reps, 0)[:n].contiguous()
                            for f in fields(frame)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    scenes = SHARED / "data" / "scenes"
    print(f"torch threads: {torch.get_num_threads()}, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        tiled_path = Path(tmp) / "tile_sh3_x18_250k.ply"
        write_ply(tiled(read_ply(scenes / "tile_sh3_14k.ply"), 250_000), tiled_path)
        for source in (scenes / "playbot_sh2_250k.ply", tiled_path):
            data = source.read_bytes()
            frame = read_ply(data)
            out = Path(tmp) / "out.ply"
            t_bytes = best_ms(partial(read_ply, data), args.repeat)
            t_path = best_ms(partial(read_ply, source), args.repeat)
            t_ply_bytes = best_ms(partial(ply_bytes, frame), args.repeat)
            t_write = best_ms(partial(write_ply, frame, out), args.repeat)
            print(f"{source.stem}: {frame.num_gaussians} Gaussians, SH {frame.sh_degree}, "
                  f"{len(data) / 1e6:.1f} MB | read bytes {t_bytes:.0f} ms | read path {t_path:.0f} ms"
                  f" | ply_bytes {t_ply_bytes:.0f} ms | write_ply {t_write:.0f} ms")


if __name__ == "__main__":
    main()
