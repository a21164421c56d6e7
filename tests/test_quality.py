"""Rendered-view quality of the codec's presets on small real data (CompressAI-style bands).

Each preset encodes the first 10 frames of the animated tile scene (tracked, SH 3, 14k
Gaussians) and 3 loot frames (untracked, 48k); PSNR is ``view_quality`` (4 orbit views at
128 px) of the keyframe and of the last frame. Bands are a few dB around the values measured
when they were set (docs/CODEC.md section 11), so that a regression or an accidental
improvement of the rate-distortion trade-off is seen.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splatcast.codec import QUALITIES, CodecConfig, FrameDecoder, FrameEncoder, GaussianFrame, read_ply
from splatcast.codec.metrics import view_quality
from splatcast.codec.render import orbit_cameras
from splatcast.protocol import FrameMessage, encode_message

FIELDS = ("means", "scales", "quats", "opacities", "sh0", "shN")

TILE_BANDS = {  # preset -> (low, high) dB of the tile's keyframe and last interframe
    "preview": (33, 41),
    "standard": (37, 45),
    "medium": (41, 49),
    "high": (47, 55),
    "near-lossless": (52, 62),
}
LOOT_BANDS = {"preview": (48, 62), "standard": (53, 63), "medium": (53, 63), "high": (60, 71),
              "near-lossless": (65, 78)}
FLAT_DB = {"preview": 0.5, "standard": 0.3, "medium": 0.3, "high": 0.3, "near-lossless": 0.3}
"""How much the 10th frame may lose against its keyframe: 0.3 dB, and 0.5 dB for "preview",
whose coarse steps make the PSNR of single frames noisier (measured: -0.30 dB; "standard", the
default, measured +0.24 dB: key 40.81, last 41.05 dB at 2.81 B/G; loot 57.95 dB at 0.995 B/G)."""


def _encode(frames: list[GaussianFrame], preset: str) -> tuple[list, float]:
    """Encoded frames (each decoded and checked bit-exact against the encoder) and B/G."""
    encoder, decoder = FrameEncoder(CodecConfig(quality=preset, device="cpu")), FrameDecoder()
    out, size = [], 0
    for i, frame in enumerate(frames):
        enc = encoder.encode(frame)
        dec = decoder.decode(enc.frame_type, enc.num_gaussians, enc.payload)
        assert all(torch.equal(getattr(dec, k), getattr(enc.reconstruction, k)) for k in FIELDS)
        size += len(encode_message(FrameMessage(i, i / 30, enc.frame_type, enc.num_gaussians, enc.payload)))
        out.append(enc)
    return out, size / sum(f.num_gaussians for f in frames)


def _psnr(frame: GaussianFrame, enc, cams) -> float:
    return view_quality(frame, enc.reconstruction, cameras=cams)["psnr"]


@pytest.fixture(scope="module")
def tile_results(tile_dir):
    frames = [read_ply(p) for p in sorted(tile_dir.glob("*.ply"))[:10]]
    cams = orbit_cameras(frames[0], 4, 128)
    out = {}
    for preset in QUALITIES:
        encoded, bpg = _encode(frames, preset)
        out[preset] = dict(bpg=bpg, types=[e.frame_type for e in encoded],
                           key=_psnr(frames[0], encoded[0], cams), last=_psnr(frames[-1], encoded[-1], cams))
    return out


@pytest.fixture(scope="module")
def loot_results(loot_dir):
    frames = [read_ply(p) for p in sorted(loot_dir.glob("*.ply"))[:3]]
    cams = orbit_cameras(frames[0], 4, 128)
    out = {}
    for preset in QUALITIES:
        encoded, bpg = _encode(frames, preset)
        out[preset] = dict(bpg=bpg, psnr=float(np.mean([_psnr(f, e, cams) for f, e in zip(frames, encoded)])))
    return out


@pytest.mark.parametrize("preset", list(QUALITIES))
def test_tile_psnr_band(tile_results, preset):
    r = tile_results[preset]
    low, high = TILE_BANDS[preset]
    assert r["types"] == ["keyframe"] + ["interframe"] * 9
    assert low < r["key"] < high and low < r["last"] < high, r


@pytest.mark.parametrize("preset", list(QUALITIES))
def test_loot_psnr_band(loot_results, preset):
    low, high = LOOT_BANDS[preset]
    assert low < loot_results[preset]["psnr"] < high, loot_results[preset]


def test_report(tile_results, loot_results):
    """The measured figures, for the log (pytest -s)."""
    for preset in QUALITIES:
        t, lo = tile_results[preset], loot_results[preset]
        print(f"{preset}: tile {t['bpg']:.2f} B/G key {t['key']:.2f} dB last {t['last']:.2f} dB; "
              f"loot {lo['bpg']:.2f} B/G {lo['psnr']:.2f} dB")


def test_presets_are_monotonic(tile_results, loot_results):
    """Finer presets: more bytes and a higher PSNR on the tracked tile; on the loot capture
    never fewer bytes (beyond 0.1 %) nor a lower PSNR (its colours are vector-quantised at
    "preview", "standard" and "medium", where k-means matches their scalar error: the same
    frames then, but for the quantisers of its constant rotations and scales)."""
    for key in ("key", "last"):
        values = [tile_results[p] for p in QUALITIES]
        assert all(a["bpg"] < b["bpg"] for a, b in zip(values, values[1:])), values
        assert all(a[key] + 2 < b[key] for a, b in zip(values, values[1:])), values
    values = [loot_results[p] for p in QUALITIES]
    assert all(a["bpg"] <= 1.001 * b["bpg"] and a["psnr"] <= b["psnr"] for a, b in zip(values, values[1:])), values
    assert values[-1]["psnr"] > values[0]["psnr"] + 10, values


LOOT_PREDICTED_BPG = (0.80, 1.00)
"""B/G band of the 30 loot frames at the default (measured 0.89: a keyframe, then predicted
interframes; issue 12's target <= 1.0; 1.15 when every frame was an intra frame)."""


def test_loot_predicted_interframes_rate_and_psnr(loot_dir):
    """Issue 12 item 4: the real loot capture, frames 0-29, at the default preset (the same
    frames at "preview", "standard" and "medium", see test_presets_are_monotonic): predicted
    interframes (docs/CODEC.md section 6b) bring it under 1.0 B/G, with the PSNR of the intra
    frames they replace (their ids and positions are the same: measured 57.2 dB at 256 px)."""
    frames = [read_ply(p) for p in sorted(loot_dir.glob("*.ply"))]
    assert len(frames) == 30
    default = CodecConfig().quality
    encoded, bpg = _encode(frames, default)
    assert [e.frame_type for e in encoded] == ["keyframe"] + ["interframe"] * 29
    low, high = LOOT_PREDICTED_BPG
    assert low < bpg < high, bpg
    cams = orbit_cameras(frames[0], 4, 128)
    psnr = [_psnr(frames[i], encoded[i], cams) for i in (0, 15, 29)]
    assert all(LOOT_BANDS[default][0] < v < LOOT_BANDS[default][1] for v in psnr), psnr
    # as intra frames: a little below the keyframe (measured at 128 px: 58.5, 57.3, 57.3 dB)
    assert min(psnr[1:]) > psnr[0] - 1.5, psnr


def test_gop_is_flat(tile_results):
    """Interframes keep the keyframe's error bounds: the 10th frame of the tracked tile is
    within FLAT_DB of its keyframe (or better) at every preset."""
    for preset, r in tile_results.items():
        assert r["last"] > r["key"] - FLAT_DB[preset], (preset, r)
