"""Per-attribute errors between a reference frame and its decoded version."""

from __future__ import annotations

import math

import torch

from splatcast.codec.frame import C0, GaussianFrame


def frame_errors(reference: GaussianFrame, decoded: GaussianFrame) -> dict[str, float]:
    """Errors of ``decoded`` against ``reference``, Gaussian i against Gaussian i.

    Both frames must hold the same Gaussians in the same order (same count and SH degree,
    else ``ValueError``); any devices. Computed in float64; an empty frame gives all zeros.
    Keys, with d = decoded - reference:

    - ``position_max_abs``: max over Gaussians and axes of |d means|, scene units.
    - ``position_rmse``: sqrt(mean over Gaussians and axes of d means^2), scene units.
    - ``color_rmse``: RMSE over Gaussians and RGB of d (0.5 + C0 * sh0), in [0, 1] units
      (the degree-0 colour, unclamped); ``color_rmse_255`` is the same x 255.
    - ``opacity_rmse``: RMSE of d sigmoid(opacities), alpha in [0, 1].
    - ``scale_rel_mean`` / ``scale_rel_max``: mean / max over Gaussians and axes of
      |exp(scales_dec) / exp(scales_ref) - 1| (0.02 = 2 %).
    - ``rotation_deg_mean`` / ``rotation_deg_max``: rotation angle in degrees between the
      normalised quaternions, sign-invariant: 4 * atan2(|a - s b|, |a + s b|), s = sign(a.b)
      (equal to 2 * acos(|a.b|), but accurate near 0).
    - ``shN_rmse``: RMSE over all higher-order SH coefficients (0.0 at SH degree 0).
    """
    if reference.num_gaussians != decoded.num_gaussians:
        raise ValueError(f"Gaussian counts differ: {reference.num_gaussians} vs "
                         f"{decoded.num_gaussians}")
    if reference.sh_degree != decoded.sh_degree:
        raise ValueError(f"SH degrees differ: {reference.sh_degree} vs {decoded.sh_degree}")
    keys = ("position_max_abs", "position_rmse", "color_rmse", "color_rmse_255", "opacity_rmse",
            "scale_rel_mean", "scale_rel_max", "rotation_deg_mean", "rotation_deg_max", "shN_rmse")
    if reference.num_gaussians == 0:
        return dict.fromkeys(keys, 0.0)

    def pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(getattr(f, name).detach().to("cpu", torch.float64) for f in (reference, decoded))

    def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
        return math.sqrt(float(((a - b) ** 2).mean())) if a.numel() else 0.0

    means_ref, means_dec = pair("means")
    sh0_ref, sh0_dec = pair("sh0")
    op_ref, op_dec = pair("opacities")
    sc_ref, sc_dec = pair("scales")
    scale_rel = torch.expm1(sc_dec - sc_ref).abs()
    q_ref, q_dec = (q / q.norm(dim=1, keepdim=True).clamp_min(1e-12) for q in pair("quats"))
    sign = torch.where((q_ref * q_dec).sum(1, keepdim=True) < 0, -1.0, 1.0)
    angle = 4 * torch.atan2((q_ref - sign * q_dec).norm(dim=1), (q_ref + sign * q_dec).norm(dim=1))
    angle = torch.rad2deg(angle)
    color = rmse(C0 * sh0_ref, C0 * sh0_dec)
    return dict(zip(keys, (
        float((means_dec - means_ref).abs().max()), rmse(means_ref, means_dec),
        color, color * 255, rmse(torch.sigmoid(op_ref), torch.sigmoid(op_dec)),
        float(scale_rel.mean()), float(scale_rel.max()),
        float(angle.mean()), float(angle.max()), rmse(*pair("shN")),
    )))
