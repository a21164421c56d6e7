"""Pure computation: GaussianFrame, PLY I/O and the inter-frame codec (no sockets, no asyncio)."""

from splatcast.codec.frame import C0, SH_COEFFS, GaussianFrame

__all__ = ["C0", "SH_COEFFS", "GaussianFrame"]
