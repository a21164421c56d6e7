"""3-D Morton (Z-order) codes with 21 bits per axis, as uint64.

Bit ``3*b + a`` of a code is bit ``b`` of coordinate ``a`` (a = 0 for x, 1 for y, 2 for z), the
interleaving of G. M. Morton, "A computer oriented geodetic data base and a new technique in file
sequencing" (IBM, 1966); spreads use the usual magic-number bit tricks.
"""

from __future__ import annotations

import numpy as np

BITS = 21
"""Bits per axis: coordinates must lie in [0, 2**21)."""

_MASKS = [(32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
          (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)]


def _spread(v: np.ndarray) -> np.ndarray:  # [N] uint64 -> [N] uint64
    v = v & np.uint64(0x1FFFFF)
    for shift, mask in _MASKS:
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _compact(v: np.ndarray) -> np.ndarray:  # [N] uint64 -> [N] uint64
    v = v & np.uint64(0x1249249249249249)
    masks = [0x1FFFFF] + [mask for _, mask in _MASKS[:-1]]  # undo the spreads in reverse
    for (shift, _), mask in zip(reversed(_MASKS), reversed(masks)):
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v


def encode(q: np.ndarray) -> np.ndarray:
    """Integer coordinates [N, 3] in [0, 2**21) -> Morton codes [N] uint64."""
    q = q.astype(np.uint64)
    return _spread(q[:, 0]) | (_spread(q[:, 1]) << np.uint64(1)) | (_spread(q[:, 2]) << np.uint64(2))


def decode(codes: np.ndarray) -> np.ndarray:
    """Morton codes [N] uint64 (< 2**63) -> integer coordinates [N, 3] int32."""
    codes = codes.astype(np.uint64, copy=False)
    return np.stack([_compact(codes >> np.uint64(a)) for a in range(3)], axis=1).astype(np.int32)


AXIS_MASKS = [np.uint64(sum(1 << (3 * b + a) for b in range(BITS))) for a in range(3)]
"""The code bits of each axis (bit ``3*b + a`` for axis ``a``)."""


def step(codes: np.ndarray, axis: int, delta: int) -> np.ndarray:
    """Codes [N] uint64 of the points one step away (``delta`` +1 or -1) along ``axis``,
    computed on the codes (the carry or borrow runs through that axis's bits only); the
    coordinates must stay in [0, 2**21)."""
    m = AXIS_MASKS[axis]
    moved = (codes | ~m) + np.uint64(1) if delta > 0 else (codes & m) - np.uint64(1)
    return (moved & m) | (codes & ~m)
