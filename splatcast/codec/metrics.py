"""Errors between a reference frame and its decoded version: per attribute (`frame_errors`) and
in rendered views (`view_quality`: PSNR and SSIM of images from `splatcast.codec.render`)."""

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


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of image ``test`` against ``reference``.

    Images: float tensors of the same shape (e.g. [H, W, 3] or [V, H, W, 3]), linear RGB with
    1.0 = white; both are clamped to [0, 1] first (what a display shows). Computed in float64:
    ``10 log10(1 / MSE)``, MSE over all elements; ``inf`` when they are equal.
    """
    if reference.shape != test.shape:
        raise ValueError(f"image shapes differ: {tuple(reference.shape)} vs {tuple(test.shape)}")
    a, b = (t.detach().to("cpu", torch.float64).clamp(0.0, 1.0) for t in (reference, test))
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Structural similarity of two [H, W, C] images (clamped to [0, 1]), mean over pixels and channels.

    Wang et al. 2004 ("Image quality assessment: from error visibility to structural
    similarity"): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1,
    per channel, over the window positions fully inside the image (no padding); float32
    convolutions. 1.0 for equal images. Images smaller than 11 px on a side raise ``ValueError``.
    """
    if reference.shape != test.shape or reference.ndim != 3:
        raise ValueError(f"need two [H, W, C] images of one shape, got {tuple(reference.shape)} "
                         f"and {tuple(test.shape)}")
    if min(reference.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11 x 11 px, got {tuple(reference.shape[:2])}")
    x, y = (t.detach().to("cpu", torch.float32).clamp(0.0, 1.0).permute(2, 0, 1)[:, None]
            for t in (reference, test))  # [C, 1, H, W]
    g = torch.exp(-0.5 * ((torch.arange(11, dtype=torch.float32) - 5) / 1.5) ** 2)
    g = g / g.sum()  # [11]

    def blur(img: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region
        img = torch.nn.functional.conv2d(img, g.view(1, 1, 1, 11))
        return torch.nn.functional.conv2d(img, g.view(1, 1, 11, 1))

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def view_quality(reference: GaussianFrame, decoded: GaussianFrame, views: int = 4, size: int = 256,
                 cameras: list | None = None) -> dict:
    """Rendered-view quality of ``decoded`` against ``reference`` (any Gaussian counts and order).

    Both frames are rendered by ``splatcast.codec.render.render`` (black background) through
    the same cameras: ``cameras`` if given, else ``orbit_cameras(reference, views, size)``
    (deterministic, from the reference's robust bounds). Returns ``psnr`` (dB, mean over
    views of the per-view PSNR; ``inf`` if a view is identical), ``psnr_views``, ``ssim``
    (mean over views), ``ssim_views`` (SSIM is left out, as None, for views under 11 px).
    """
    from splatcast.codec.render import orbit_cameras, render

    cams = cameras if cameras is not None else orbit_cameras(reference, views, size)
    psnrs: list[float] = []
    ssims: list[float | None] = []
    for cam in cams:
        a, b = render(reference, cam), render(decoded, cam)  # [H, W, 3] each
        psnrs.append(psnr(a, b))
        ssims.append(ssim(a, b) if min(a.shape[:2]) >= 11 else None)
    known = [s for s in ssims if s is not None]
    return dict(psnr=sum(psnrs) / len(psnrs), psnr_views=psnrs,
                ssim=sum(known) / len(known) if len(known) == len(ssims) else None, ssim_views=ssims)
