"""Pure computation: GaussianFrame, PLY I/O and the inter-frame codec (no sockets, no asyncio)."""

from splatcast.codec.frame import C0, SH_COEFFS, GaussianFrame
from splatcast.codec.ply import PlyError, ply_bytes, read_ply, write_ply

__all__ = ["C0", "SH_COEFFS", "GaussianFrame", "PlyError", "ply_bytes", "read_ply", "write_ply"]
