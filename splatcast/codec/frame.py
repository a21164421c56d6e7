"""The in-memory representation of one 3DGS frame."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

C0 = 0.28209479177387814
"""Degree-0 real spherical-harmonics constant: colour = 0.5 + C0 * sh0 (INRIA 3DGS)."""

SH_COEFFS = {0: 0, 1: 3, 2: 8, 3: 15}
"""SH degree -> K, the number of higher-order coefficients per channel, (d+1)^2 - 1."""


@dataclass
class GaussianFrame:
    """One frame of 3D Gaussians, stored pre-activation as in the INRIA 3DGS PLY layout.

    All fields are float32 torch tensors on the same device, N Gaussians:

    - ``means``: [N, 3], positions in scene units.
    - ``scales``: [N, 3], log of the standard deviations.
    - ``quats``: [N, 4], rotation quaternions (w, x, y, z), not necessarily unit length.
    - ``opacities``: [N], logit of alpha.
    - ``sh0``: [N, 3], degree-0 SH coefficient per RGB channel.
    - ``shN``: [N, K, 3], higher-order SH coefficients, K = (d+1)^2 - 1 for SH degree d in 0..3.

    Source of the layout: Kerbl et al., "3D Gaussian Splatting for Real-Time Radiance Field
    Rendering" (SIGGRAPH 2023), graphdeco-inria/gaussian-splatting ``save_ply``.
    Raises ``ValueError`` from ``__post_init__`` when shapes, dtypes or devices disagree.
    """

    means: torch.Tensor  # [N, 3]
    scales: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4]
    opacities: torch.Tensor  # [N]
    sh0: torch.Tensor  # [N, 3]
    shN: torch.Tensor  # [N, K, 3]

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {
            "means": (n, 3),
            "scales": (n, 3),
            "quats": (n, 4),
            "opacities": (n,),
            "sh0": (n, 3),
        }
        for name, shape in expected.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise ValueError(f"shN has shape {tuple(self.shN.shape)}, expected ({n}, K, 3)")
        if self.shN.shape[1] not in SH_COEFFS.values():
            raise ValueError(f"shN has K={self.shN.shape[1]} coefficients; K must be 0, 3, 8 or 15")
        for f in fields(self):
            t = getattr(self, f.name)
            if t.dtype != torch.float32:
                raise ValueError(f"{f.name} has dtype {t.dtype}, expected torch.float32")
            if t.device != self.means.device:
                raise ValueError(f"{f.name} is on {t.device}, means on {self.means.device}")

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        k = int(self.shN.shape[1])
        return next(d for d, kk in SH_COEFFS.items() if kk == k)

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device: str | torch.device) -> GaussianFrame:
        """Return a copy of this frame on ``device`` (no copy if already there)."""
        return GaussianFrame(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})
