"""Rate control (splatcast.codec.rate) on real frames: 1 s windows within +-10 % of the target."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import _run_tool, shared_path

from splatcast.codec import CodecConfig, FrameDecoder, ply_files, read_ply
from splatcast.codec.rate import (
    KEEP_MIN,
    SCALE_MAX,
    RateController,
    buffer_seconds,
    make_encoder,
    thin,
    window_mbps,
)
from splatcast.protocol import FrameMessage, StreamDecoder, encode_message, frame_size

FPS = 30


@pytest.fixture(scope="module")
def loot60(tmp_path_factory):
    """60 frames (2 s) of the real loot capture: 31 one-second windows."""
    shared_path("data/loot_depth7.npz")
    out = tmp_path_factory.mktemp("loot60")
    _run_tool("loot_to_ply.py", str(out), "--count", "60")
    return [read_ply(p) for p in ply_files(out)]


wire_size = frame_size


def decoded(rc: RateController, frames):
    """(input frame, encoded frame, what a decoder makes of it) for each frame ``rc`` encodes."""
    decoder = FrameDecoder()
    for frame in frames:
        enc = rc.encode(frame)
        yield frame, enc, decoder.decode(enc.frame_type, enc.num_gaussians, enc.payload)


@pytest.mark.timeout(120)
def test_every_window_of_loot_within_10_percent_of_20_mbps(loot60):
    """The acceptance figure: each 30-frame window of 2 s of loot at 20 Mbit/s, as sent (the
    protocol's messages), and a decoder fed those messages reconstructs what the encoder says."""
    rc = RateController(CodecConfig(target_mbps=20, device="cpu"), FPS, wire_size)
    parser, decoder, sizes = StreamDecoder(), FrameDecoder(), []
    for i, frame in enumerate(loot60):
        enc = rc.encode(frame)
        data = encode_message(FrameMessage(i, i / FPS, enc.frame_type, enc.num_gaussians, enc.payload))
        sizes.append(len(data))
        (msg,) = parser.feed(data)
        dec = decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
        assert np.array_equal(dec.means.numpy(), enc.reconstruction.means.numpy())
        assert np.array_equal(dec.sh0.numpy(), enc.reconstruction.sh0.numpy())
    sent, counted = np.array(sizes), np.array(rc.stats.sizes)  # counted as frame 0's message
    assert (np.abs(sent - counted) / sent).max() < 0.005  # the index and pts fields, zstd-compressed
    windows = window_mbps(sizes, FPS)
    assert len(windows) == 31
    assert 0.9 * 20 <= windows.min() and windows.max() <= 1.1 * 20, windows
    assert abs(sum(sizes) * 8 * FPS / len(sizes) / 1e6 / 20 - 1) < 0.05  # the budget is used, not wasted
    # finer than the preset (about 10 Mbit/s at step_scale 1 on loot, version 3): quality bought with the budget
    assert max(rc.stats.scales) < 0.9 and rc.stats.missed == 0
    assert buffer_seconds(sizes, FPS, 20) < 0.25


@pytest.mark.timeout(120)
def test_below_the_floor_fewer_gaussians_hold_the_rate(loot60):
    """Loot's positions lie on the capture's voxel lattice (kept exactly) and its colours take a
    256-entry codebook: about 11 Mbit/s whatever the steps. At 5 Mbit/s the controller sends a
    fraction of the voxels (``thin``), the same ones from frame to frame, and every 1 s window is
    within +-10 %; the decoder reconstructs what the encoder says, at the input's positions."""
    rc = RateController(CodecConfig(target_mbps=5, device="cpu"), FPS, wire_size)
    for frame, enc, dec in decoded(rc, loot60):
        assert np.array_equal(dec.means.numpy(), enc.reconstruction.means.numpy())
        assert np.array_equal(dec.means.numpy(), frame.means.numpy()[enc.source_rows])  # rows of the input
    windows = window_mbps(rc.stats.sizes, FPS)
    assert 0.9 * 5 <= windows.min() and windows.max() <= 1.1 * 5, windows
    assert rc.stats.missed == 0 and 0.1 < min(rc.stats.keeps[1:]) <= max(rc.stats.keeps[1:]) < 0.5
    assert max(rc.stats.scales) <= SCALE_MAX


def test_unreachable_target_is_reported(loot60):
    """0.05 Mbit/s is 208 bytes a frame: beyond KEEP_MIN of loot's Gaussians, so the GOPs are
    counted as missed and sent at the nearest rate found."""
    rc = RateController(CodecConfig(target_mbps=0.05, device="cpu"), FPS, wire_size)
    for frame in loot60[:3]:
        rc.encode(frame)
    assert rc.stats.missed >= 1 and rc.stats.keeps[-1] == pytest.approx(KEEP_MIN)
    assert min(rc.stats.sizes) > 208


def test_thin_keeps_the_same_gaussians_from_frame_to_frame(loot60):
    """``thin``: about ``keep`` of the rows, chosen by place on a lattice (a voxel present in two
    frames is kept in both or in neither, whatever their sub-voxel offsets) or by row index, with
    log-scales grown by ln(1 / keep) / 3."""
    a, b, cell = loot60[0], loot60[1], 2.0**-7  # loot's voxels (about 0.4 of one in z between frames)
    assert thin(a, 1.0, cell)[0] is a and thin(a, 1.0, cell)[1] is None
    ta, rows_a = thin(a, 0.3, cell)
    tb, _ = thin(b, 0.3, cell)
    assert abs(len(rows_a) / a.num_gaussians - 0.3) < 0.02
    assert np.array_equal(ta.means.numpy(), a.means.numpy()[rows_a])
    assert np.allclose(ta.scales.numpy(), a.scales.numpy()[rows_a] + math.log(1 / 0.3) / 3)

    def voxels(f):
        return {tuple(v) for v in np.rint(f.means.numpy() / cell).astype(int).tolist()}

    both = voxels(a) & voxels(b)
    assert len(both) > 0.6 * a.num_gaussians and voxels(ta) & both == voxels(tb) & both
    _, by_row = thin(a, 0.3, None)
    assert np.array_equal(thin(b, 0.3, None)[1], by_row[by_row < b.num_gaussians])


def test_settings_are_validated():
    for bad in (0, -1, 0.001, 1e6, math.nan, math.inf, "5", True):
        with pytest.raises(ValueError, match="target_mbps"):
            CodecConfig(target_mbps=bad)
    with pytest.raises(ValueError, match="target_mbps"):
        CodecConfig.from_dict({"target_mbps": -3})
    assert CodecConfig.from_dict({"target_mbps": 15}).target_mbps == 15
    with pytest.raises(ValueError, match="needs CodecConfig.target_mbps"):
        RateController(CodecConfig(), FPS, wire_size)
    for fps in (0, -30, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="fps"):
            RateController(CodecConfig(target_mbps=5), fps, wire_size)
    assert type(make_encoder(CodecConfig(), FPS, wire_size)).__name__ == "FrameEncoder"
    assert isinstance(make_encoder(CodecConfig(target_mbps=5), FPS, wire_size), RateController)


def test_window_and_buffer_arithmetic():
    sizes = [125_000] * 30 + [250_000] * 30  # 30 Mbit/s for 1 s, then 60
    w = window_mbps(sizes, FPS)
    assert len(w) == 31 and w[0] == pytest.approx(30) and w[-1] == pytest.approx(60)
    assert w[15] == pytest.approx(45)
    assert window_mbps(sizes, 15, seconds=2).tolist() == pytest.approx([15 + 15 * i / 30 for i in range(31)])
    assert window_mbps(sizes[:29], FPS).size == 0
    assert buffer_seconds([125_000] * 30, FPS, 30) == pytest.approx(1 / 30)  # one frame's drain
    assert buffer_seconds([3_750_000] + [0] * 29, FPS, 30) == pytest.approx(1.0)  # 1 s of bytes at once
    with pytest.raises(ValueError):
        window_mbps(sizes, 0)
    with pytest.raises(ValueError):
        buffer_seconds(sizes, FPS, 0)


@pytest.fixture(scope="module")
def tile60(tmp_path_factory):
    """The tile scene (14k Gaussians, SH 3) animated over 60 frames: tracked, its motion speeds
    up and slows down within each second."""
    out = tmp_path_factory.mktemp("tile60")
    _run_tool("animate.py", str(shared_path("data/scenes/tile_sh3_14k.ply")), str(out), "--frames", "60")
    return [read_ply(p) for p in ply_files(out)]


@pytest.mark.timeout(180)
def test_tracked_content_follows_its_motion_with_the_interframe_unit(tile60):
    """Tracked interframes whose sizes swing with the motion: the controller turns the interframe
    unit (coarser while the GOP is over its share, finer while under) and every 1 s window stays
    within +-10 % of 15 Mbit/s (without the unit knob: -16 .. +13 %, docs/CODEC.md section 13);
    a decoder still reconstructs what the encoder says."""
    rc = RateController(CodecConfig(target_mbps=15, device="cpu"), FPS, wire_size)
    units = set()
    for _, enc, dec in decoded(rc, tile60):
        assert np.array_equal(dec.means.numpy(), enc.reconstruction.means.numpy())
        assert np.array_equal(dec.sh0.numpy(), enc.reconstruction.sh0.numpy())
        if enc.frame_type == "interframe":
            units.add(enc.payload["unit"])
    windows = window_mbps(rc.stats.sizes, FPS)
    assert 0.9 * 15 <= windows.min() and windows.max() <= 1.1 * 15, windows
    assert min(units) == 1 and max(units) > 3, units  # finer and coarser than the GOPs' nominal 3


@pytest.mark.timeout(180)
def test_above_the_presets_reach_the_finest_preset_takes_over(tile60):
    """The tile at `standard` (SH 3 rest bands vector-quantised) tops out at about 22 Mbit/s
    whatever its step_scale; at 30 Mbit/s the controller switches its GOPs to `near-lossless`
    (scalar SH bands) and every 1 s window is within +-10 %, a decoder following the switch.
    (Before the scalar ranges kept their margin at the finest steps, near-lossless topped out
    near 30 Mbit/s: its next frames left the ranges and became keyframes; the first GOP came
    out 12 % under, docs/CODEC.md section 13.)"""
    rc = RateController(CodecConfig(target_mbps=30, device="cpu"), FPS, wire_size)
    for _, enc, dec in decoded(rc, tile60):
        assert np.array_equal(dec.shN.numpy(), enc.reconstruction.shN.numpy())
    windows = window_mbps(rc.stats.sizes, FPS)
    assert 0.9 * 30 <= windows.min() and windows.max() <= 1.1 * 30, windows
    assert set(rc.stats.qualities[1:]) == {"near-lossless"}
