"""Vector quantisation: seeded k-means on a sample, then one chunked assignment pass.

k-means++ seeding (Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding",
SODA 2007) followed by a bounded number of Lloyd iterations (Lloyd, "Least squares quantization
in PCM", 1982) on at most ``sample`` rows; every row is then assigned to its nearest centroid in
chunks so memory stays bounded (about ``chunk x k`` floats). Runs on whatever device the input
tensor is on; on one device, the same input and seed give the same centroids.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

KDTREE_DIMS = 4
"""Up to this many dimensions, CPU assignment uses a k-d tree (faster than all distances)."""
SAMPLE = 16384
"""Rows used to fit the centroids."""
SEED_SAMPLE = 4096
"""Rows of the sample that k-means++ seeding draws from, at least 2 k (it costs k passes)."""
ITERATIONS = 8
"""Lloyd iterations after seeding."""
CHUNK = 2048
"""Rows per distance block in ``assign`` (a [CHUNK, K] block: 2048 x 512 floats stay in cache;
8192 rows took 25 % longer on B's 512-entry keyframe codebooks)."""


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid (squared Euclidean) of each row.

    x: [N, D] float32, centroids: [K, D] float32 on the same device -> [N] int64 ids. On the
    CPU with D <= KDTREE_DIMS a k-d tree (scipy cKDTree) answers; otherwise blocks of distances.
    A single centroid and D == 1 (a sorted search) are answered directly.
    """
    if centroids.shape[0] == 1:
        return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    if x.shape[1] == 1:
        return _assign_1d(x[:, 0], centroids[:, 0])
    if x.device.type == "cpu" and x.shape[1] <= KDTREE_DIMS and len(x):
        _, ids = cKDTree(centroids.numpy()).query(x.numpy(), workers=-1)
        return torch.from_numpy(ids.astype(np.int64))
    c2 = (centroids * centroids).sum(1)  # [K]
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], CHUNK):
        xs = x[s:s + CHUNK]  # [B, D]
        d = torch.addmm(c2.unsqueeze(0), xs, centroids.T, alpha=-2.0)  # [B, K] = |c|^2 - 2 x.c
        out[s:s + CHUNK] = d.min(1).indices  # (the first minimum, as argmin, and faster on the CPU)
    return out


def _assign_1d(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest of the values ``c`` [K] to each of ``x`` [N] -> [N] int64 ids: a sorted search
    and a comparison with the next value below, distances in float64 as the k-d tree's (of equal
    values and of equal distances, the lowest id wins, as with ``argmin``)."""
    values, ids = torch.sort(c.double(), stable=True)  # equal values keep increasing ids
    x = x.double()
    hi = torch.searchsorted(values, x).clamp(max=len(c) - 1)  # first of the values >= x, or the last
    lo = torch.searchsorted(values, values[(hi - 1).clamp(min=0)])  # first of the next lower value
    d_lo, d_hi = (x - values[lo]).abs(), (values[hi] - x).abs()
    pick_lo = (d_lo < d_hi) | ((d_lo == d_hi) & (ids[lo] < ids[hi]))
    return ids[torch.where(pick_lo, lo, hi)]


def neighbours(centroids: torch.Tensor, count: int) -> torch.Tensor:
    """For each centroid [K, D], the ids of its ``count`` nearest centroids (itself first):
    [K, min(count, K)] int64. Computed in blocks of rows to bound memory."""
    k = centroids.shape[0]
    block = max(1, 2**22 // k)
    return torch.cat([torch.cdist(centroids[s:s + block], centroids)
                      .topk(min(count, k), dim=1, largest=False).indices for s in range(0, k, block)])


def assign_local(x: torch.Tensor, centroids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Nearest among each row's candidate centroids: x [N, D], centroids [K, D], candidates
    [N, L] int64 ids -> [N] int64 ids."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], CHUNK):
        cand = candidates[s:s + CHUNK]  # [B, L]
        diff = centroids.index_select(0, cand.reshape(-1)).view(*cand.shape, -1)  # [B, L, D]
        torch.sub(x[s:s + CHUNK, None, :], diff, out=diff)  # in place: half the time of c[cand]
        d = diff.pow_(2).sum(2)  # [B, L]
        out[s:s + CHUNK] = cand.gather(1, d.argmin(1, keepdim=True))[:, 0]
    return out


def fit(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Centroids [min(k, N, SAMPLE), D] float32 of the rows of ``x`` [N, D] float32 (N >= 1)."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(x.shape[0])[:SAMPLE]  # a random sample, in random order
    x = x[torch.from_numpy(rows).to(x.device)]
    k = min(k, x.shape[0])  # at most SAMPLE centroids
    pool = x[:max(SEED_SAMPLE, 2 * k)].cpu().numpy()
    centroids = torch.from_numpy(_seed(pool, k, rng)).to(x.device)
    for _ in range(ITERATIONS):
        ids = assign(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, ids, x)
        counts = torch.bincount(ids, minlength=k).to(x.dtype).unsqueeze(1)  # [K, 1]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def _seed(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on the CPU ([N, D] -> [k, D] float32): each next centre is drawn with
    probability proportional to its squared distance to the nearest centre so far."""
    xt = np.ascontiguousarray(x.T)  # [D, N]: sums over D rows, 2.5x faster than over D columns

    def sqdist(row: int) -> np.ndarray:  # [N] float64: float32 squares summed in float64
        d = xt - xt[:, row:row + 1]
        d *= d
        return d.astype(np.float64).sum(0)

    chosen = [0]  # the rows are in random order already
    d2 = sqdist(0)
    for u in rng.random(k - 1):
        cum = np.cumsum(d2)
        nxt = int(np.searchsorted(cum, u * cum[-1], side="right")) if cum[-1] > 0 else 0
        nxt = min(nxt, len(x) - 1)
        chosen.append(nxt)
        np.minimum(d2, sqdist(nxt), out=d2)
    return x[chosen]
