"""Codec identity, configuration and error type (see docs/CODEC.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

CODEC_NAME = "splatcast-vq"
"""Name of this codec in stream headers."""

CODEC_VERSION = 1
"""Version of the payload layout described in docs/CODEC.md; bump on any change."""

FRAME_TYPES = ("keyframe", "intra", "interframe")
"""keyframe: new codebooks and step, all data; intra: all data with the current codebooks;
interframe: only what changed since the previous reconstructed frame."""


class CodecError(ValueError):
    """A frame or payload the codec cannot encode or decode (inconsistent, out of range...)."""


@dataclass(frozen=True)
class CodecConfig:
    """Encoder settings; the decoder needs none of them (everything it needs is in the payloads).

    - ``gop``: a keyframe at least every ``gop`` frames (default 30, 1 s at 30 fps).
    - ``codebook_size``: entries per vector-quantisation codebook, 2..65536 (uint8 ids up to
      256, uint16 above; rotation gets 4x; k-means fits at most 16,384 entries).
    - ``alpha``: position step = ``alpha`` x the 5 % quantile of nearest-neighbour distances
      (the rule of gsvvcompressor), used when ``step`` is None.
    - ``step``: explicit position step in scene units, or None to derive it per keyframe.
    - ``tolerance``: interframe dead zone in steps: a Gaussian's position is resent when its
      error would exceed ``(tolerance + 0.5) * step``, in moves of ``2 * tolerance + 1`` steps.
      None (default): the largest move ``unit`` with ``unit * step / 2`` within 0.05 % of the
      scene extent (docs/CODEC.md section 7).
    - ``seed``: k-means seed (same seed, same input, same device -> same bytes).
    - ``device``: "auto" (CUDA when available), "cpu" or "cuda" for k-means and assignment.
    """

    gop: int = 30
    codebook_size: int = 256
    alpha: float = 0.2
    step: float | None = None
    tolerance: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"invalid CodecConfig: {msg}")

        if not _is_int(self.gop) or self.gop < 1:
            bad(f"gop must be an int >= 1, got {self.gop!r}")
        if not _is_int(self.codebook_size) or not 2 <= self.codebook_size <= 65536:
            bad(f"codebook_size must be an int in 2..65536, got {self.codebook_size!r}")
        if not _is_number(self.alpha) or not 0 < self.alpha <= 100:
            bad(f"alpha must be a number in (0, 100], got {self.alpha!r}")
        if self.step is not None and (not _is_number(self.step) or not 0 < self.step < 1e30):
            bad(f"step must be None or a positive finite number, got {self.step!r}")
        if self.tolerance is not None and (not _is_int(self.tolerance)
                                           or not 0 <= self.tolerance <= 1000):
            bad(f"tolerance must be None or an int in 0..1000, got {self.tolerance!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            bad(f"seed must be a non-negative int, got {self.seed!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def to_dict(self) -> dict:
        """JSON/msgpack-safe dict of all fields (None where derived)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CodecConfig:
        """Build from a dict such as ``to_dict()``'s; unknown keys or bad values: ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"invalid CodecConfig: expected a dict, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"invalid CodecConfig: unknown keys {sorted(map(str, unknown))}")
        return cls(**d)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and v == v
