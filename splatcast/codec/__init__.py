"""Pure computation: GaussianFrame, PLY I/O and the inter-frame codec (no sockets, no asyncio)."""

from splatcast.codec.config import (
    CODEC_NAME,
    CODEC_VERSION,
    FRAME_TYPES,
    QUALITIES,
    CodecConfig,
    CodecError,
    check_codec,
)
from splatcast.codec.decoder import FrameDecoder
from splatcast.codec.encoder import EncodedFrame, FrameEncoder
from splatcast.codec.frame import C0, SH_COEFFS, GaussianFrame
from splatcast.codec.ply import PlyError, natural_key, ply_bytes, ply_files, read_ply, write_ply

__all__ = ["C0", "SH_COEFFS", "GaussianFrame",
           "CODEC_NAME", "CODEC_VERSION", "FRAME_TYPES", "QUALITIES", "CodecConfig", "CodecError",
           "check_codec", "FrameDecoder",
           "EncodedFrame", "FrameEncoder", "PlyError", "natural_key", "ply_bytes", "ply_files",
           "read_ply", "write_ply"]
