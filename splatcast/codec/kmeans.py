"""Vector quantisation: seeded k-means on a sample, then one chunked assignment pass.

k-means++ seeding (Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding",
SODA 2007) followed by a bounded number of Lloyd iterations (Lloyd, "Least squares quantization
in PCM", 1982) on at most ``sample`` rows; every row is then assigned to its nearest centroid in
chunks so memory stays bounded (about ``chunk x k`` floats). Runs on whatever device the input
tensor is on; on one device, the same input and seed give the same centroids.
"""

from __future__ import annotations

import torch

SAMPLE = 32768
"""Rows used to fit the centroids."""
SEED_SAMPLE = 8192
"""Rows of the sample that k-means++ seeding draws from (it costs k passes over them)."""
ITERATIONS = 12
"""Lloyd iterations after seeding."""
CHUNK = 32768
"""Rows per distance block in ``assign``."""


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid (squared Euclidean) of each row.

    x: [N, D] float32, centroids: [K, D] float32 on the same device -> [N] int64 ids.
    """
    c2 = (centroids * centroids).sum(1)  # [K]
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], CHUNK):
        xs = x[s:s + CHUNK]  # [B, D]
        d = torch.addmm(c2.unsqueeze(0), xs, centroids.T, alpha=-2.0)  # [B, K] = |c|^2 - 2 x.c
        out[s:s + CHUNK] = d.argmin(1)
    return out


def fit(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Centroids [min(k, N), D] float32 of the rows of ``x`` [N, D] float32 (N >= 1)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    n = x.shape[0]
    x = x[torch.randperm(n, generator=gen, device=x.device)[:SAMPLE]]  # random rows first
    n = x.shape[0]
    k = min(k, n, SEED_SAMPLE)
    centroids = _seed(x[:SEED_SAMPLE], k, gen)
    for _ in range(ITERATIONS):
        ids = assign(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, ids, x)
        counts = torch.bincount(ids, minlength=k).to(x.dtype).unsqueeze(1)  # [K, 1]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def _seed(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
    first = torch.randint(x.shape[0], (1,), generator=gen, device=x.device)
    centroids = [x[first]]
    d2 = ((x - centroids[0]) ** 2).sum(1)  # [N]
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct rows than k: repeat the first centre
            centroids.append(centroids[0])
            continue
        nxt = torch.multinomial(d2 / total, 1, generator=gen)
        centroids.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return torch.cat(centroids, 0)
