"""Rate control on the shared sequences (issue 12 item 2): bitrate of every 1 s window and
rendered PSNR at target bitrates; writes the figure docs/rate.png.

usage: python bench/bench_rate.py [--seq D,A,C] [--targets 5,15,30] [--frames 90] [--workdir DIR]
                                  [--psnr-every 10] [--psnr-views 2] [--psnr-size 256] [--plot docs/rate.png]

Sequences (generated with ../shared/tools into WORKDIR, a temp dir unless given, and reused;
30 fps): D = the real loot capture, frames 0..N-1 (untracked, 48.6k Gaussians, SH 0);
A = tile_sh3_14k animated N frames (tracked, SH 3); C = biker_sh0_153k animated N frames
(tracked, SH 0). N = --frames (90: 3 s).

Each sequence is encoded by splatcast.codec.rate.RateController at each target (the default
preset and gop 30; the controller scales its steps). Bytes are what goes on the wire:
len(encode_message(FrameMessage(...))) of each frame (msgpack + zstd level 3 + length prefix;
the header and end messages, a few hundred bytes once per stream, are left out). A 1 s window is
30 consecutive frames i..i+29, for every i from 0 to N-30 (splatcast.codec.rate.window_mbps: no
smoothing, each frame counted at its own time); the table gives the min and max over those
windows, as Mbit/s and as a deviation from the target; "keep" the fraction of the Gaussians sent
(min .. max over the frames after the first, the probe: below the codec's reach the controller
thins the frames, splatcast.codec.rate.thin). "buffer s" is the size a leaky bucket
drained at the target needs (splatcast.codec.rate .buffer_seconds): the sender buffer, and the
added delay, of a constant-rate channel of that bitrate. PSNR (dB) is
splatcast.codec.metrics.view_quality of the reconstruction against the input frame (--psnr-views
orbit views at --psnr-size px), every --psnr-every-th frame. Times are wall-clock on this
machine, trials included (encode s per frame). """

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from splatcast.codec import CodecConfig, read_ply
from splatcast.codec.metrics import view_quality
from splatcast.codec.rate import RateController, buffer_seconds, window_mbps
from splatcast.protocol import FrameMessage, encode_message

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_codec import OUT, generate  # noqa: E402


def sequences(frames: int) -> dict:
    """name -> (tool, args, what), bench_codec's layout, ``frames`` frames each."""
    n = str(frames)
    return {
        "D": ("loot_to_ply.py", [OUT, "--count", n], f"loot 0-{frames - 1}, untracked, 48.6k G"),
        "A": ("animate.py", ["data/scenes/tile_sh3_14k.ply", OUT, "--frames", n], f"tile_sh3_14k, {n} tracked"),
        "C": ("animate.py", ["data/scenes/biker_sh0_153k.ply", OUT, "--frames", n], f"biker_sh0_153k, {n} tracked"),
    }


def run(directory: Path, target: float, psnr_every: int, views: int, size: int, fps: float = 30.0) -> dict:
    index = 0

    def wire_size(enc) -> int:  # frame ``index``'s message
        return len(encode_message(FrameMessage(index, index / fps, enc.frame_type, enc.num_gaussians, enc.payload)))

    rc = RateController(CodecConfig(target_mbps=target), fps, wire_size)
    types, psnrs, t_enc = [], [], 0.0
    for index, path in enumerate(sorted(directory.glob("*.ply"))):
        frame = read_ply(path)
        t0 = time.perf_counter()
        enc = rc.encode(frame)
        t_enc += time.perf_counter() - t0
        types.append({"keyframe": "K", "intra": "I", "interframe": "P"}[enc.frame_type])
        if psnr_every and index % psnr_every == 0:
            psnrs.append((index, view_quality(frame, enc.reconstruction, views, size)["psnr"]))
    sizes = rc.stats.sizes
    return dict(target=target, sizes=sizes, windows=window_mbps(sizes, fps),
                mbps=sum(sizes) * 8 * fps / len(sizes) / 1e6, buffer=buffer_seconds(sizes, fps, target),
                scales=rc.stats.scales, keeps=rc.stats.keeps, trials=rc.stats.trials, missed=rc.stats.missed,
                psnr=psnrs,
                types="".join(types), enc_s=t_enc / len(sizes))


def line(name: str, r: dict) -> str:
    w, t = r["windows"], r["target"]
    p = [v for _, v in r["psnr"]]
    keeps = r["keeps"][1:] or r["keeps"]  # after the first frame's probe
    return (f"| {name} | {t:g} | {r['mbps']:.2f} | {w.min():.2f} .. {w.max():.2f} | {100 * (w.min() / t - 1):+.1f} .. "
            f"{100 * (w.max() / t - 1):+.1f} | {r['buffer']:.2f} | {min(r['scales']):.3g} .. {max(r['scales']):.3g} "
            f"| {min(keeps):.3g} .. {max(keeps):.3g} | {r['missed']} "
            f"| {np.mean(p) if p else float('nan'):.2f} ({min(p) if p else float('nan'):.2f}) "
            f"| {r['trials']} | {r['enc_s']:.2f} |")


def plot(results: dict, path: Path, fps: float = 30.0) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        top, bottom = axes[0][col], axes[1][col]
        for r in results[name]:
            t = (np.arange(len(r["windows"])) + round(fps)) / fps  # the window's end, s
            (ln,) = top.plot(t, r["windows"], label=f"target {r['target']:g}")
            top.axhspan(0.9 * r["target"], 1.1 * r["target"], color=ln.get_color(), alpha=0.12)
            top.axhline(r["target"], color=ln.get_color(), ls="--", lw=0.8)
            if r["psnr"]:
                i, p = zip(*r["psnr"])
                bottom.plot(np.array(i) / fps, p, "o-", color=ln.get_color(), label=f"{r['mbps']:.1f} Mbit/s")
        top.set_title(f"{name}: bitrate of each 1 s window (band: target +-10 %)", fontsize=9)
        top.set_xlabel("window end (s)")
        top.set_ylabel("Mbit/s")
        top.legend(fontsize=8)
        bottom.set_title(f"{name}: rendered PSNR", fontsize=9)
        bottom.set_xlabel("frame time (s)")
        bottom.set_ylabel("dB")
        bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="D,A,C")
    ap.add_argument("--targets", default="5,15,30", help="Mbit/s, comma-separated")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--workdir", type=Path, help="where generated frames live (kept); default: temp")
    ap.add_argument("--psnr-every", type=int, default=10, help="PSNR of every N-th frame (0: none)")
    ap.add_argument("--psnr-views", type=int, default=2)
    ap.add_argument("--psnr-size", type=int, default=256)
    ap.add_argument("--plot", type=Path, help="write the figure here (e.g. docs/rate.png)")
    a = ap.parse_args()
    print(f"load average at the start (1, 5, 15 min): {os.getloadavg()}")
    specs = sequences(a.frames)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.seq.split(","):
            directory = generate(f"{name}{a.frames}", a.workdir or Path(tmp), {f"{name}{a.frames}": specs[name]})
            print(f"{name}: {specs[name][2]}", flush=True)
            for target in map(float, a.targets.split(",")):
                r = run(directory, target, a.psnr_every, a.psnr_views, a.psnr_size)
                results.setdefault(name, []).append(r)
                print(f"  target {target:g}: types {r['types']} (K key, I intra, P inter)\n  {line(name, r)}",
                      flush=True)
    print("\n| seq | target Mbit/s | mean Mbit/s | 1 s windows min .. max | vs target % | buffer s | step_scale "
          "| keep | missed GOPs | PSNR dB mean (min) | trials | encode s/frame |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        for r in rs:
            print(line(name, r))
    print(f"\nload average at the end (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    if a.plot:
        plot(results, a.plot)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
