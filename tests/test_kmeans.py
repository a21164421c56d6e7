"""Vector quantisation: the shortcut assignment paths agree with an exhaustive search."""

from __future__ import annotations

import torch

from splatcast.codec import kmeans


def exhaustive(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # [N, D], [K, D] -> [N]
    return ((x.double()[:, None, :] - c.double()[None]) ** 2).sum(2).argmin(1)


def test_one_dimensional_assignment_is_the_nearest_value_lowest_id_on_ties():
    g = torch.Generator().manual_seed(0)
    for k in (2, 7, 256):
        c = torch.randn(k, 1, generator=g)
        c[k // 2] = c[0]  # equal values: the lower id wins
        mid = (c[:-1] + c[1:]) / 2  # (near-)ties between neighbours
        x = torch.cat([3 * torch.randn(20000, 1, generator=g), c, mid, c.min(0, keepdim=True).values - 1])
        assert torch.equal(kmeans.assign(x, c), exhaustive(x, c))


def test_single_centroid_and_empty_input():
    x = torch.randn(100, 3)
    assert torch.equal(kmeans.assign(x, torch.zeros(1, 3)), torch.zeros(100, dtype=torch.int64))
    assert kmeans.assign(torch.zeros(0, 1), torch.randn(5, 1)).shape == (0,)
