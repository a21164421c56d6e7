"""Rate-distortion of the quality presets on the shared sequences: PSNR vs bytes per Gaussian.

usage: python bench/bench_rd.py [--seq A,B,C,D] [--frames 10] [--psnr-every 3] [--workdir DIR]
                                [--presets preview,medium,high,near-lossless] [--json OUT.json]
                                [--plot docs/rd.png] [--from-json IN.json ...] [--peers bench/peers.json]

For every sequence of bench/bench_codec.py (A tile SH3 tracked, B playbot 250k tracked + jitter,
C biker tracked, D loot untracked) and every preset of ``splatcast.codec.QUALITIES``: the first
--frames frames are encoded and decoded (``bench_codec.run``), B/G = wire bytes of all frames /
Gaussians of all frames, PSNR = mean over every --psnr-every-th frame (frame 0 included) of
``view_quality`` (4 orbit views, 256 px). The figure (matplotlib, one panel per sequence) draws
the presets' curve, the version-1 codec's point (its measured keyframe and interframe
figures over the same 10 frames, docs/CODEC.md sections 9-10) and the peers' measured points
(B/G and mean PSNR by the same metric) read from --peers, which ``bench/bench_peers.py`` writes
(the peers are not run here; a missing file leaves them out).
--from-json redraws a figure from a previous --json without encoding anything.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from bench_codec import SEQUENCES, generate, run  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from splatcast.codec import CODEC_VERSION, QUALITIES, CodecConfig  # noqa: E402

V1 = {  # splatcast-vq version 1 (all attributes VQ) over the first 10 frames, from its bench_codec
    # figures (docs/CODEC.md sections 9-10): B/G = (keyframes + other frames) / 10, PSNR = mean
    # over frames (A: keyframe 7.93 B/G 28.80 dB + 9 interframes 0.78 B/G 27.36 dB; B: 8.22 / 42.25
    # + 9 x 1.14 / 39.45; C: 2 keyframes 6.96 + 8 x 0.93, all frames 40.77 dB; D: 1.20 + 9 x 1.15,
    # all frames 57.04 dB)
    "A": (1.50, 27.50),
    "B": (1.85, 39.73),
    "C": (2.14, 40.77),
    "D": (1.16, 57.04),
}


def measure(seqs: list[str], presets: list[str], frames: int, psnr_every: int, workdir: Path) -> list[dict]:
    """One row per (sequence, preset): bpg, psnr (mean), psnr_min, key/other B/G, frame types."""
    out = []
    for name in seqs:
        directory = generate(name, workdir)
        sub = workdir / f"{name}_first{frames}"
        if not sub.is_dir():  # the first frames only, as symbolic links
            sub.mkdir()
            for path in sorted(directory.glob("*.ply"))[:frames]:
                (sub / path.name).symlink_to(path.resolve())
        for preset in presets:
            res = run(name, sub, CodecConfig(quality=preset), 3, psnr_every=psnr_every)
            rows = res["rows"]
            psnrs = [r["psnr"] for r in rows if r["psnr"] == r["psnr"]]
            key = [r for r in rows if r["type"] == "keyframe"]
            other = [r for r in rows if r["type"] != "keyframe"]
            out.append(dict(seq=name, preset=preset,
                            bpg=sum(r["bytes"] for r in rows) / sum(r["n"] for r in rows),
                            key_bpg=sum(r["bytes"] for r in key) / sum(r["n"] for r in key),
                            other_bpg=sum(r["bytes"] for r in other) / max(sum(r["n"] for r in other), 1),
                            psnr=sum(psnrs) / len(psnrs), psnr_min=min(psnrs),
                            types="".join(r["type"][0].upper() for r in rows)))
            print(json.dumps(out[-1]), flush=True)
    return out


PEER_STYLE = {"gsvvcompressor": ("D", "C1"), "splats4d": ("^", "C2")}  # peer -> marker, colour


def plot(rows: list[dict], path: Path, peers: list[dict]) -> None:
    """One panel per sequence of ``rows`` (bench_rd rows); ``peers``: bench_peers.py rows."""
    seqs = sorted({r["seq"] for r in rows})
    fig, axes = plt.subplots(1, len(seqs), figsize=(4.2 * len(seqs), 4.0), squeeze=False)
    for ax, name in zip(axes[0], seqs):
        mine = [r for r in rows if r["seq"] == name]
        ax.plot([r["bpg"] for r in mine], [r["psnr"] for r in mine], "o-", color="C0",
                label=f"splatcast v{CODEC_VERSION} presets")
        labels: dict[tuple, list[str]] = {}  # presets giving the same point share one label
        for r in mine:
            labels.setdefault((round(r["bpg"], 2), round(r["psnr"], 2)), []).append(r["preset"])
        for (bpg, psnr), names in labels.items():
            ax.annotate(" = ".join(names), (bpg, psnr), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.plot(*V1[name], "s", color="C3", label="splatcast v1 (default)")
        for p in peers:
            if p["seq"] == name and p["peer"] in PEER_STYLE:
                marker, colour = PEER_STYLE[p["peer"]]
                ax.plot(p["bpg"], p["psnr"], marker, color=colour, label=f"{p['peer']} (default settings)")
                ax.annotate(f"{p['frames']} fr, {p['mode']}", (p["bpg"], p["psnr"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=6, color=colour)
        ax.set_xscale("log")
        ax.margins(x=0.15)  # room for the labels of the outermost points
        ax.xaxis.set_major_locator(FixedLocator([1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bytes per Gaussian (all frames; log)")
        ax.set_ylabel("PSNR dB (4 views, 256 px)")
        ax.set_title(f"{name}: {SEQUENCES[name][2]}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    legend = {}  # label -> handle, over all panels (a peer may be missing from some)
    for ax in axes[0]:
        legend.update({lab: h for h, lab in zip(*ax.get_legend_handles_labels())})
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="A,B,C,D")
    ap.add_argument("--presets", default=",".join(QUALITIES))
    ap.add_argument("--frames", type=int, default=10, help="first N frames of each sequence")
    ap.add_argument("--psnr-every", type=int, default=3)
    ap.add_argument("--workdir", type=Path, help="where generated frames live (kept); default: temp")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    ap.add_argument("--from-json", type=Path, action="append",
                    help="plot the rows of a previous --json run (repeat: later files replace earlier rows)")
    ap.add_argument("--peers", type=Path, default=Path(__file__).with_name("peers.json"),
                    help="the peers' measured points (bench/bench_peers.py --json)")
    a = ap.parse_args()
    if a.from_json:
        merged = {(r["seq"], r["preset"]): r for path in a.from_json for r in json.loads(path.read_text())}
        rows = sorted(merged.values(), key=lambda r: (r["seq"], list(QUALITIES).index(r["preset"])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = measure(a.seq.split(","), a.presets.split(","), a.frames, max(a.psnr_every, 1),
                           a.workdir or Path(tmp))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("| seq | preset | B/G all | key B/G | other B/G | PSNR dB mean (min) | types |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seq']} | {r['preset']} | {r['bpg']:.2f} | {r['key_bpg']:.2f} | {r['other_bpg']:.2f} "
              f"| {r['psnr']:.2f} ({r['psnr_min']:.2f}) | {r['types']} |")
    if a.plot:
        plot(rows, a.plot, json.loads(a.peers.read_text()) if a.peers.exists() else [])


if __name__ == "__main__":
    main()
