"""The peers' rendered-view quality and bytes on the shared sequences (issue 9 item 4).

usage: python bench/bench_peers.py [--seq A,D] [--frames 10] [--psnr-every 1] [--per-frame D]
                                   [--peers gsvvcompressor,splats4d] [--workdir DIR]
                                   [--gsvv-venv DIR] [--gsvv-src DIR] [--splats4d-venv DIR]
                                   [--json bench/peers.json]

Runs each peer as a subprocess of its own virtual environment on the first --frames frames of
the sequences of bench/bench_codec.py (``SEQUENCES``, made by ``generate`` into --workdir), and
measures what bench_codec and bench_rd measure for splatcast: B/G = the peer's output bytes
(its compressed file) / Gaussians of all input frames, and PSNR = mean over every
--psnr-every-th frame (frame 0 included) of ``splatcast.codec.metrics.view_quality(input frame,
decoded frame, views=4, size=256)``, the input frame being the sequence's PLY as read by
``read_ply``. Times are the peer's command-line wall times divided by the frames, process
start-up and file I/O included (measured on whatever load the machine has). Sequences named in
--per-frame (untracked: no correspondence between frames) are encoded one frame at a time,
each frame its own one-frame stream, as both peers need a fixed Gaussian count and order.

Rows are merged into --json by (sequence, peer): a run of some sequences keeps the others.
``bench/bench_rd.py`` plots them beside the presets. Nothing here is imported by splatcast or
its tests; a peer that is not installed is skipped with a message.

Peers (install: docs/PEERS.md):
- gsvvcompressor 1.2.0 (PyPI; ../shared/peers/gsvvcompressor/REPRO.sh installs it on a CPU-only
  box): its own CLI ``run_cli.py encode|decode vqxyzzstd`` with its default configuration
  (256 clusters per attribute, xyz alpha 0.2, zstd 7). Data goes in and out as INRIA PLY files
  only (it unpickles its input: never imported here). It loads SH degree 3: frames of a lower
  degree are written with zero higher-order coefficients. --gsvv-venv (env PEER_VENV, default
  /tmp/peer-venv) holds its Python; --gsvv-src (env PEER_DL + /whl/unz, default
  /tmp/peer-dl/whl/unz) the unpacked wheel; ../shared/peers/gsvvcompressor the CUDA stub.
- splats4d 0.1.0 (PyPI, Rust CLI ``splat4d``): ``splat4d encode --no-verify`` at its default
  error bounds (2 mm position, 4/255 colour and opacity, 2 % scale, GOP 30, zstd 3) on
  antimatter15 ``.splat`` frames written here (``splat_bytes``: SH degree 0 only, colour and
  opacity as 8-bit, quaternion as 8-bit), ``splat4d decode --frame i`` per frame, read back by
  ``read_splat``. --splats4d-venv (env SPLATS4D_VENV, default /tmp/splats4d-venv).
  The row "splat input" is the ``.splat`` round trip alone (32 B/G, no peer): the part of
  splats4d's loss that its input format makes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_codec import SEQUENCES, SHARED, generate

from splatcast.codec import GaussianFrame, read_ply
from splatcast.codec.frame import C0, SH_COEFFS
from splatcast.codec.metrics import view_quality
from splatcast.codec.ply import ply_files, write_ply

GSVV_DIR = SHARED / "peers" / "gsvvcompressor"  # run_cli.py and cuda_stub.py
GSVV_CODEC = "vqxyzzstd"
HYDRA = ["hydra.run.dir=.", "hydra.output_subdir=null"]  # no hydra output folders


def splat_bytes(frame: GaussianFrame) -> bytes:
    """``frame`` as an antimatter15 ``.splat`` file: 32 bytes per Gaussian, in frame order.

    Layout (antimatter15/splat ``convert.py``; ../shared/tools/splat_to_ply.py reads it):
    position float32 x 3, linear scale exp(log scale) float32 x 3, RGBA uint8 x 4 with
    RGB = 255 (0.5 + C0 sh0) and A = 255 sigmoid(opacity), quaternion uint8 x 4 (w first) =
    128 q/|q| + 128; 8-bit values rounded and clipped to 0..255 (convert.py truncates). Higher SH
    bands are dropped (the format has none).
    """
    n = frame.num_gaussians
    rgba = torch.cat([0.5 + C0 * frame.sh0, torch.sigmoid(frame.opacities)[:, None]], dim=1)
    q = frame.quats / frame.quats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = np.empty((n, 32), np.uint8)
    out[:, :24] = torch.cat([frame.means, frame.scales.exp()], dim=1).numpy().astype("<f4").view(np.uint8)
    out[:, 24:28] = (rgba * 255).round().clamp(0, 255).numpy().astype(np.uint8)
    out[:, 28:32] = (q * 128 + 128).round().clamp(0, 255).numpy().astype(np.uint8)
    return out.tobytes()


def read_splat(data: bytes) -> GaussianFrame:
    """An antimatter15 ``.splat`` file -> SH degree 0 frame, as ../shared/tools/splat_to_ply.py
    converts it (alpha clipped to [1e-4, 1 - 1e-4] before the logit). Raises ``ValueError`` when
    the size is not a multiple of 32 bytes."""
    if len(data) % 32:
        raise ValueError(f".splat size {len(data)} is not a multiple of 32 bytes")
    raw = np.frombuffer(data, np.uint8).reshape(-1, 32)
    f = torch.from_numpy(raw[:, :24].copy().view("<f4"))  # [N, 6]
    rgba = torch.from_numpy(raw[:, 24:28].astype(np.float32)) / 255
    q = (torch.from_numpy(raw[:, 28:32].astype(np.float32)) - 128) / 128
    alpha = rgba[:, 3].clamp(1e-4, 1 - 1e-4)
    return GaussianFrame(means=f[:, :3].contiguous(), scales=f[:, 3:].clamp_min(1e-12).log(),
                         quats=q / q.norm(dim=1, keepdim=True).clamp_min(1e-8),
                         opacities=torch.log(alpha / (1 - alpha)), sh0=(rgba[:, :3] - 0.5) / C0,
                         shN=torch.zeros(len(raw), 0, 3))


def _sh3(frame: GaussianFrame) -> GaussianFrame:  # gsvvcompressor loads SH degree 3 only
    k = SH_COEFFS[3] - frame.shN.shape[1]
    return GaussianFrame(means=frame.means, scales=frame.scales, quats=frame.quats,
                         opacities=frame.opacities, sh0=frame.sh0,
                         shN=torch.cat([frame.shN, torch.zeros(frame.num_gaussians, k, 3)], dim=1))


def _run(cmd: list, **kw) -> float:
    """Run ``cmd`` (check=True, output captured: shown only on failure); its wall time in s."""
    t0 = time.perf_counter()
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if res.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


Coder = Callable[[list[GaussianFrame], Path], tuple[int, list[GaussianFrame], float, float]]
"""(frames of one stream, scratch dir) -> (bytes, decoded frames, encode s, decode s)."""


def gsvv_coder(venv: Path, src: Path) -> Coder | None:
    python = venv / "bin" / "python"
    if not (python.exists() and (src / "gsvvcompressor").is_dir() and (GSVV_DIR / "run_cli.py").exists()):
        print(f"gsvvcompressor: not installed ({python}, {src}/gsvvcompressor); skipped")
        return None
    env = dict(os.environ, PYTHONPATH=f"{src}:{GSVV_DIR}")

    def code(frames: list[GaussianFrame], tmp: Path) -> tuple[int, list[GaussianFrame], float, float]:
        (tmp / "in").mkdir()
        for i, frame in enumerate(frames, 1):  # its CLI numbers frames from 1
            write_ply(_sh3(frame), tmp / "in" / f"frame_{i}.ply")
        cli = [python, GSVV_DIR / "run_cli.py"]
        t_enc = _run([*cli, "encode", GSVV_CODEC, f"input.first_frame_path={tmp}/in/frame_1.ply",
                      f"input.subsequent_format='{tmp}/in/frame_{{:d}}.ply'", f"input.max_frames={len(frames)}",
                      f"output.path={tmp}/stream.bin", "output.overwrite=true", *HYDRA], cwd=tmp, env=env)
        t_dec = _run([*cli, "decode", GSVV_CODEC, f"input.path={tmp}/stream.bin",
                      f"output.first_frame_path={tmp}/out/frame_1.ply",
                      f"output.subsequent_format='{tmp}/out/frame_{{:d}}.ply'", "output.overwrite=true", *HYDRA],
                     cwd=tmp, env=env)
        decoded = [read_ply(tmp / "out" / f"frame_{i}.ply") for i in range(1, len(frames) + 1)]
        return (tmp / "stream.bin").stat().st_size, decoded, t_enc, t_dec

    return code


def splats4d_coder(venv: Path) -> Coder | None:
    exe = venv / "bin" / "splat4d"
    if not exe.exists():
        print(f"splats4d: not installed ({exe}); skipped")
        return None

    def code(frames: list[GaussianFrame], tmp: Path) -> tuple[int, list[GaussianFrame], float, float]:
        (tmp / "in").mkdir()
        for i, frame in enumerate(frames):
            (tmp / "in" / f"frame_{i:05d}.splat").write_bytes(splat_bytes(frame))
        t_enc = _run([exe, "encode", "-i", tmp / "in", "-o", tmp / "stream.splat4d", "--no-verify"])
        decoded, t_dec = [], 0.0
        for i in range(len(frames)):
            t_dec += _run([exe, "decode", tmp / "stream.splat4d", "--frame", i, "-o", tmp / "out.splat"])
            decoded.append(read_splat((tmp / "out.splat").read_bytes()))
        return (tmp / "stream.splat4d").stat().st_size, decoded, t_enc, t_dec

    return code


def splat_input(frames: list[GaussianFrame], tmp: Path) -> tuple[int, list[GaussianFrame], float, float]:
    """The ``.splat`` round trip alone (what splats4d is given): no peer, 32 B/G."""
    data = [splat_bytes(f) for f in frames]
    return sum(map(len, data)), [read_splat(d) for d in data], 0.0, 0.0


def measure(name: str, paths: list[Path], peer: str, code: Coder, per_frame: bool, psnr_every: int,
            views: int, size: int) -> dict:
    """One row: the peer over ``paths`` (one stream, or one stream per frame when ``per_frame``)."""
    frames = [read_ply(p) for p in paths]
    groups = [[i] for i in range(len(frames))] if per_frame else [list(range(len(frames)))]
    total, enc_s, dec_s, psnrs = 0, 0.0, 0.0, {}
    for group in groups:
        with tempfile.TemporaryDirectory(prefix=f"peer_{name}_") as tmp:
            size_b, decoded, t_enc, t_dec = code([frames[i] for i in group], Path(tmp))
        total, enc_s, dec_s = total + size_b, enc_s + t_enc, dec_s + t_dec
        for i, dec in zip(group, decoded):
            if i % psnr_every == 0:
                psnrs[i] = view_quality(frames[i], dec, views, size)["psnr"]
                print(f"  {name} {peer} frame {i}: {dec.num_gaussians} Gaussians decoded, "
                      f"PSNR {psnrs[i]:.2f} dB", flush=True)
    n = sum(f.num_gaussians for f in frames)
    row = dict(seq=name, peer=peer, frames=len(frames), gaussians=n, bytes=total, bpg=total / n,
               psnr=float(np.mean(list(psnrs.values()))), psnr_min=min(psnrs.values()),
               psnr_frames={str(i): round(v, 3) for i, v in sorted(psnrs.items())},
               enc_ms_per_frame=1e3 * enc_s / len(frames), dec_ms_per_frame=1e3 * dec_s / len(frames),
               mode="per frame" if per_frame else "one stream", views=views, size=size)
    print(json.dumps({k: v for k, v in row.items() if k != "psnr_frames"}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="A,D")
    ap.add_argument("--frames", type=int, default=10, help="first N frames of each sequence")
    ap.add_argument("--psnr-every", type=int, default=1, help="PSNR of every N-th frame (frame 0 included)")
    ap.add_argument("--psnr-views", type=int, default=4)
    ap.add_argument("--psnr-size", type=int, default=256)
    ap.add_argument("--per-frame", default="D", help="sequences encoded frame by frame (untracked)")
    ap.add_argument("--peers", default="gsvvcompressor,splats4d,splat input")
    ap.add_argument("--workdir", type=Path, help="where generated frames live (kept); default: temp")
    ap.add_argument("--gsvv-venv", type=Path, default=Path(os.environ.get("PEER_VENV", "/tmp/peer-venv")))
    ap.add_argument("--gsvv-src", type=Path,
                    default=Path(os.environ.get("PEER_DL", "/tmp/peer-dl")) / "whl" / "unz")
    ap.add_argument("--splats4d-venv", type=Path,
                    default=Path(os.environ.get("SPLATS4D_VENV", "/tmp/splats4d-venv")))
    ap.add_argument("--json", default=str(Path(__file__).with_name("peers.json")),
                    help="merge the rows into this file ('': do not write)")
    a = ap.parse_args()
    coders = {"gsvvcompressor": lambda: gsvv_coder(a.gsvv_venv, a.gsvv_src),
              "splats4d": lambda: splats4d_coder(a.splats4d_venv), "splat input": lambda: splat_input}
    peers = {p: c for p in a.peers.split(",") if (c := coders[p]()) is not None}
    if not peers:
        return
    print(f"load average at the start (1, 5, 15 min): {os.getloadavg()}")
    warnings.simplefilter("ignore", UserWarning)  # read_ply: the peers' extra PLY properties
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.seq.split(","):
            print(f"{name}: {SEQUENCES[name][2]}", flush=True)
            paths = ply_files(generate(name, a.workdir or Path(tmp)))[:a.frames]
            for peer, code in peers.items():
                rows.append(measure(name, paths, peer, code, name in a.per_frame.split(","),
                                    max(a.psnr_every, 1), a.psnr_views, a.psnr_size))
    if a.json:
        path = Path(a.json)
        old = json.loads(path.read_text()) if path.exists() else []
        merged = {(r["seq"], r["peer"]): r for r in old + rows}
        path.write_text(json.dumps(sorted(merged.values(), key=lambda r: (r["seq"], r["peer"])), indent=1) + "\n")
        print(f"wrote {path}")
    print("| seq | peer | frames | B/G | PSNR dB mean (min) | enc / dec ms per frame | mode |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seq']} | {r['peer']} | {r['frames']} | {r['bpg']:.2f} | {r['psnr']:.2f} ({r['psnr_min']:.2f}) "
              f"| {r['enc_ms_per_frame']:.0f} / {r['dec_ms_per_frame']:.0f} | {r['mode']} |")


if __name__ == "__main__":
    main()
