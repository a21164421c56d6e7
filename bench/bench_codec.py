"""Codec benchmark on the shared sequences, side by side with the peers' figures (issue 2).

usage: python bench/bench_codec.py [--seq A,B,C,D] [--workdir DIR] [--gop 30] [--codebook-size 256]
                                   [--quality medium] [--device auto|cpu|cuda] [--zstd-level 3]
                                   [--psnr-views 4] [--psnr-size 256] [--psnr-every 1]

Sequences (generated with ../shared/tools into WORKDIR, a temp dir unless given, and reused):
A = tile_sh3_14k animated 30 frames; B = playbot_sh2_250k 10 frames with --jitter 0.0005;
C = biker_sh0_153k 10 frames; D = the real loot capture, frames 0-29 (untracked);
E = B's frames tiled 2 x 2 side by side (1,000,000 Gaussians, built in memory: the 1 M scene
of issue 12).

Bytes are what goes on the wire: len(encode_message(FrameMessage(...))) (msgpack + zstd +
length prefix). Errors come from splatcast.codec.metrics.frame_errors against the input frame
(rows matched with EncodedFrame.source_rows). Times are wall-clock on this machine: encode is
FrameEncoder.encode of a frame already on --device (the PLY is parsed and moved there before the
clock starts), decode is FrameDecoder.decode on the CPU (after the protocol has parsed the
message). "fps" is 1000 / the mean encode time over all frames, keyframes included.
PSNR (dB) is splatcast.codec.metrics.view_quality: the input frame and the decoded frame
rendered by splatcast.codec.render from the same --psnr-views orbit cameras at --psnr-size px
(placed from the input frame), mean over views; every --psnr-every-th frame (0 views: off).
Rendering is not counted in the encode/decode times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from splatcast.codec import CodecConfig, FrameDecoder, FrameEncoder, GaussianFrame, read_ply
from splatcast.codec.config import QUALITIES
from splatcast.codec.metrics import frame_errors, view_quality
from splatcast.protocol import FrameMessage, StreamDecoder, encode_message

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPLATCAST_SHARED", REPO.parent / "shared"))

OUT = "{out}"  # stands for the output directory in a tool's arguments
SEQUENCES = {  # name -> (tool, args, what)
    "A": ("animate.py", ["data/scenes/tile_sh3_14k.ply", OUT, "--frames", "30"], "tile_sh3_14k, 30 tracked"),
    "B": ("animate.py", ["data/scenes/playbot_sh2_250k.ply", OUT, "--frames", "10", "--jitter", "0.0005"],
          "playbot_sh2_250k, 10 tracked + jitter"),
    "C": ("animate.py", ["data/scenes/biker_sh0_153k.ply", OUT, "--frames", "10"], "biker_sh0_153k, 10 tracked"),
    "D": ("loot_to_ply.py", [OUT, "--count", "30"], "loot 0-29, untracked"),
    "E": ("B", [], "playbot_sh2_250k tiled 2 x 2 (1 M), 10 tracked + jitter"),
}
TILED = {"E": 2}  # sequence -> tiles per side (its frames: the tool sequence's, tiled in memory)
PEERS = {  # issue 2's table: gsvvcompressor key / inter, splats4d key / inter (B/G)
    "A": ("12.8 / 6.9", "21.6 / 2.35"),
    "B": ("16.8 / 6.4", "19.5 / 2.33"),
    "C": ("12.3 / 8.5", "19.4 / 2.46"),
    "D": ("3.0 per frame", "3.0 per frame"),
    "E": ("-", "-"),
}


def generate(name: str, workdir: Path, sequences: dict = SEQUENCES) -> Path:
    """WORKDIR/NAME holding sequence NAME of ``sequences`` (made by its tool unless already there)."""
    if name in TILED:
        return generate(SEQUENCES[name][0], workdir, sequences)
    out = workdir / name
    if not (out.is_dir() and any(out.glob("*.ply"))):
        tool, args, _ = sequences[name]
        args = [str(out) if a == OUT else str(SHARED / a) if a.startswith("data/") else a for a in args]
        subprocess.run([sys.executable, str(SHARED / "tools" / tool), *args], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def tiled(frame: GaussianFrame, k: int) -> GaussianFrame:
    """k x k copies of ``frame`` side by side in x and z, one scene extent (plus 10 %) apart."""
    extent = (frame.means.max(0).values - frame.means.min(0).values) * 1.1  # [3]
    offsets = [torch.tensor([i * extent[0], 0.0, j * extent[2]]) for i in range(k) for j in range(k)]
    return GaussianFrame(means=torch.cat([frame.means + o for o in offsets]),
                         **{a: getattr(frame, a).repeat(k * k, *[1] * (getattr(frame, a).dim() - 1))
                            for a in ("scales", "quats", "opacities", "sh0", "shN")})


def run(name: str, directory: Path, config: CodecConfig, level: int, psnr_views: int = 4, psnr_size: int = 256,
        psnr_every: int = 1) -> dict:
    paths = sorted(directory.glob("*.ply"))
    encoder, decoder, parser = FrameEncoder(config), FrameDecoder(), StreamDecoder()
    rows = []
    for i, path in enumerate(paths):
        frame = read_ply(path)
        if name in TILED:
            frame = tiled(frame, TILED[name])
        on_device = frame.to(encoder.device)
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        enc = encoder.encode(on_device)
        t_enc = time.perf_counter() - t0
        data = encode_message(FrameMessage(i, i / 30, enc.frame_type, enc.num_gaussians, enc.payload),
                              level=level)
        (msg,) = parser.feed(data)
        t0 = time.perf_counter()
        dec = decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
        t_dec = time.perf_counter() - t0
        idx = torch.from_numpy(enc.source_rows)
        ref = GaussianFrame(**{k: getattr(frame, k)[idx] for k in
                               ("means", "scales", "quats", "opacities", "sh0", "shN")})
        err = frame_errors(ref, dec)
        psnr = float("nan")
        if psnr_views > 0 and i % psnr_every == 0:
            psnr = view_quality(frame, dec, psnr_views, psnr_size)["psnr"]
        rows.append(dict(frame=i, type=enc.frame_type, n=enc.num_gaussians, bytes=len(data),
                         ply=path.stat().st_size * (TILED.get(name, 1) ** 2), enc_ms=1e3 * t_enc, dec_ms=1e3 * t_dec,
                         step=enc.payload.get("step", float("nan")), psnr=psnr, **err))
        print(f"  {name} {i:3d} {enc.frame_type:10s} {len(data) / enc.num_gaussians:6.2f} B/G "
              f"enc {1e3 * t_enc:7.0f} ms dec {1e3 * t_dec:5.1f} ms pos_max {err['position_max_abs']:.2e} "
              f"col {err['color_rmse_255']:.2f}/255 PSNR {psnr:.2f} dB", flush=True)
    return dict(name=name, rows=rows)


def summarise(res: dict) -> dict:
    rows = res["rows"]

    def pick(kind):
        return [r for r in rows if r["type"] == kind]

    def bpg(rs):
        return sum(r["bytes"] for r in rs) / sum(r["n"] for r in rs) if rs else float("nan")

    def mean(rs, key):
        return float(np.mean([r[key] for r in rs])) if rs else float("nan")

    def psnr(rs):  # mean over the evaluated frames (NaN: not evaluated)
        vals = [r["psnr"] for r in rs if not np.isnan(r["psnr"])]
        return float(np.mean(vals)) if vals else float("nan")

    key, inter, intra = pick("keyframe"), pick("interframe"), pick("intra")
    return dict(
        name=res["name"], key=bpg(key), inter=bpg(inter), intra=bpg(intra),
        ratio=sum(r["ply"] for r in rows) / sum(r["bytes"] for r in rows),
        pos_max=max(r["position_max_abs"] for r in rows),
        pos_max_key=max(r["position_max_abs"] for r in key),
        step=rows[0]["step"], color=mean(rows, "color_rmse_255"),
        color_key=mean(key, "color_rmse_255"), opacity=mean(rows, "opacity_rmse"),
        scale=mean(rows, "scale_rel_mean"), rot=mean(rows, "rotation_deg_mean"),
        shN=mean(rows, "shN_rmse"), enc_key=mean(key, "enc_ms"),
        enc_other=mean(inter + intra, "enc_ms"), dec=mean(rows, "dec_ms"),
        fps=1e3 / mean(rows, "enc_ms"), n=rows[0]["n"],
        types="".join({"keyframe": "K", "intra": "I", "interframe": "P"}[r["type"]] for r in rows),
        psnr_key=psnr(key), psnr_inter=psnr(inter), psnr_intra=psnr(intra), psnr_all=psnr(rows),
        psnr_min=min((r["psnr"] for r in rows if not np.isnan(r["psnr"])), default=float("nan")),
    )


def table(summaries: list[dict]) -> str:
    head = ("| seq | key B/G | inter B/G | intra B/G | ratio vs PLY | pos max key / all (step) "
            "| colour RMSE /255 | opacity RMSE | scale rel | rot deg | shN RMSE | enc key / other ms (fps) "
            "| dec ms | PSNR dB key / inter / intra (all, min) | gsvv key/inter | splats4d key/inter |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summaries:
        gsvv, s4d = PEERS[s["name"]]
        lines.append(
            f"| {s['name']} | {s['key']:.2f} | {s['inter']:.2f} | {s['intra']:.2f} | {s['ratio']:.0f} "
            f"| {s['pos_max_key']:.2e} / {s['pos_max']:.2e} ({s['step']:.2e}) | {s['color']:.2f} "
            f"| {s['opacity']:.4f} | {s['scale']:.3f} | {s['rot']:.2f} | {s['shN']:.4f} "
            f"| {s['enc_key']:.0f} / {s['enc_other']:.0f} ({s['fps']:.1f}) | {s['dec']:.1f} "
            f"| {s['psnr_key']:.2f} / {s['psnr_inter']:.2f} / {s['psnr_intra']:.2f} "
            f"({s['psnr_all']:.2f}, {s['psnr_min']:.2f}) | {gsvv} | {s4d} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="A,B,C,D")
    ap.add_argument("--workdir", type=Path, help="where generated frames live (kept); default: temp")
    ap.add_argument("--gop", type=int, default=CodecConfig.gop)
    ap.add_argument("--codebook-size", type=int, default=CodecConfig.codebook_size)
    ap.add_argument("--quality", default=CodecConfig.quality, choices=list(QUALITIES))
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="encode device (auto: CUDA when available)")
    ap.add_argument("--zstd-level", type=int, default=3)
    ap.add_argument("--psnr-views", type=int, default=4, help="orbit views per frame for PSNR (0: no PSNR)")
    ap.add_argument("--psnr-size", type=int, default=256, help="rendered image size in px")
    ap.add_argument("--psnr-every", type=int, default=1, help="PSNR of every N-th frame only")
    a = ap.parse_args()
    config = CodecConfig(gop=a.gop, codebook_size=a.codebook_size, quality=a.quality, device=a.device)
    print(f"load average at the start (1, 5, 15 min): {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = a.workdir or Path(tmp)
        summaries = []
        for name in a.seq.split(","):
            print(f"{name}: {SEQUENCES[name][2]}", flush=True)
            summaries.append(summarise(run(name, generate(name, workdir), config, a.zstd_level,
                                           a.psnr_views, a.psnr_size, max(a.psnr_every, 1))))
            print(f"  types {summaries[-1]['types']}")
    print()
    print(table(summaries))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"\nload average at the end (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}; encode device {config.device} (GPU: {gpu}); "
          f"quality {config.quality}")


if __name__ == "__main__":
    main()
