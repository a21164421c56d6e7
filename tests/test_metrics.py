"""frame_errors on the real tile_sh3_14k scene with known perturbations."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import pytest
import torch
from conftest import shared_path

from splatcast.codec import C0, GaussianFrame, read_ply
from splatcast.codec.metrics import frame_errors


@pytest.fixture(scope="module")
def tile():
    return read_ply(shared_path("data/scenes/tile_sh3_14k.ply"))


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, 4] wxyz (Hamilton)
    w1, x1, y1, z1 = a.unbind(1)
    w2, x2, y2, z2 = b.unbind(1)
    return torch.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], 1)


def test_identical_frames_give_zeros(tile):
    errors = frame_errors(tile, tile.to("cpu"))
    assert len(errors) == 10 and all(v == 0.0 for v in errors.values()), errors
    flipped = frame_errors(tile, replace(tile, quats=-tile.quats * 2))  # sign and norm invariant
    assert flipped["rotation_deg_max"] < 1e-3


def test_known_perturbations(tile):
    n = tile.num_gaussians
    half_angle = math.radians(10.0) / 2  # rotate every Gaussian by 10 degrees about z
    r = torch.tensor([math.cos(half_angle), 0.0, 0.0, math.sin(half_angle)]).expand(n, 4)
    opacities = torch.zeros(n)
    decoded = replace(
        tile,
        means=tile.means + torch.tensor([0.01, 0.0, 0.0]),
        scales=tile.scales + math.log(1.02),
        quats=quat_mul(tile.quats, r),
        opacities=torch.full((n,), math.log(0.6 / 0.4)),  # alpha 0.5 -> 0.6
        sh0=tile.sh0 + 0.1 / C0,
        shN=tile.shN - 0.05,
    )
    e = frame_errors(replace(tile, opacities=opacities), decoded)

    def approx(x):
        return pytest.approx(x, rel=2e-3)

    assert e["position_max_abs"] == approx(0.01)
    assert e["position_rmse"] == approx(0.01 / math.sqrt(3))
    assert e["scale_rel_mean"] == approx(0.02) and e["scale_rel_max"] == approx(0.02)
    assert e["rotation_deg_mean"] == approx(10.0) and e["rotation_deg_max"] == approx(10.0)
    assert e["opacity_rmse"] == approx(0.1)
    assert e["color_rmse"] == approx(0.1) and e["color_rmse_255"] == approx(25.5)
    assert e["shN_rmse"] == approx(0.05)


def test_mismatched_frames_raise(tile):
    with pytest.raises(ValueError, match="Gaussian counts differ: 14051 vs 100"):
        frame_errors(tile, GaussianFrame(**{f.name: getattr(tile, f.name)[:100] for f in fields(tile)}))
    with pytest.raises(ValueError, match="SH degrees differ: 3 vs 1"):
        frame_errors(tile, replace(tile, shN=tile.shN[:, :3].contiguous()))
