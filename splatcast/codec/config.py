"""Codec identity, configuration and error type (see docs/CODEC.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

CODEC_NAME = "splatcast-vq"
"""Name of this codec in stream headers."""

CODEC_VERSION = 5
"""Version of the payload layout described in docs/CODEC.md; bump on any change. Versions 1
(every attribute vector-quantised), 2 (no predicted interframes), 3 (rotation as four
quaternion components) and 4 (interframe moves only as differences along the order) are not
decoded any more: see ``check_codec``."""

FRAME_TYPES = ("keyframe", "intra", "interframe")
"""keyframe: new codebooks and step, all data; intra: all data with the current codebooks;
interframe: only what changed since the previous reconstructed frame (same count and order), or a
predicted interframe (kept voxels of the previous frame, new ones, values against predictions)."""


class CodecError(ValueError):
    """A frame or payload the codec cannot encode or decode (inconsistent, out of range...)."""


def check_codec(codec: str, version: int) -> None:
    """Raise ``CodecError`` unless a stream header's ``codec`` / ``codec_version`` is this
    codec's: a stream of versions 1-4 (docs/CODEC.md sections 11, 6b, 14, 15) is refused with a message
    saying to re-encode it."""
    if codec != CODEC_NAME:
        raise CodecError(f"codec {codec!r} is not {CODEC_NAME!r}")
    if version != CODEC_VERSION:
        hint = " (re-encode the source frames with this version)" if version < CODEC_VERSION else ""
        raise CodecError(f"{CODEC_NAME} stream version {version} is not supported: this decoder reads "
                         f"version {CODEC_VERSION} only{hint}")


@dataclass(frozen=True)
class Quality:
    """Quantisation steps of one quality preset (docs/CODEC.md section 7).

    - ``alpha``: position step = alpha x the 5 % quantile of nearest-neighbour distances.
    - ``colour``: step of the degree-0 colour 0.5 + C0 sh0, in 1/255 (sh0 step = colour / 255 / C0).
    - ``scale``: step of the log scales (natural log: 0.02 = about 2 % relative).
    - ``rotation``: step of the three smallest components of the unit quaternion.
    - ``opacity``: step of the opacity logit.
    - ``sh_rest``: step of the higher-order SH coefficients, or 0: vector-quantised instead
      (``CodecConfig.codebook_size`` entries per band).
    """

    alpha: float
    colour: float
    scale: float
    rotation: float
    opacity: float
    sh_rest: float


QUALITIES = {
    "preview": Quality(alpha=0.6, colour=16.0, scale=0.3, rotation=1 / 18, opacity=0.6, sh_rest=0.0),
    "standard": Quality(alpha=0.6, colour=12.0, scale=0.2, rotation=1 / 28, opacity=0.4, sh_rest=0.0),
    "medium": Quality(alpha=0.3, colour=6.0, scale=0.1, rotation=1 / 56, opacity=0.2, sh_rest=0.0),
    "high": Quality(alpha=0.15, colour=3.0, scale=0.04, rotation=1 / 150, opacity=0.08, sh_rest=0.03),
    "near-lossless": Quality(alpha=0.08, colour=1.5, scale=0.015, rotation=1 / 450, opacity=0.04,
                             sh_rest=0.01),
}
"""Quality presets, coarsest first (each one's steps at most the previous one's). "standard"
(the default) is "medium" with every step doubled."""


LARGE_SCENE = 131072
"""Scenes of at least this many Gaussians get 512-entry codebooks by default (``CodecConfig``)."""


@dataclass(frozen=True)
class CodecConfig:
    """Encoder settings; the decoder needs none of them (everything it needs is in the payloads).

    - ``gop``: a keyframe at least every ``gop`` frames (default 30, 1 s at 30 fps).
    - ``quality``: a preset of ``QUALITIES`` ("preview", "standard", "medium", "high",
      "near-lossless"): the quantisation steps of every attribute (default "standard": on the
      shared sequences at least the best peer's rendered-view PSNR at at most 0.7x splats4d's
      bytes, docs/CODEC.md section 11; "medium" gives 4-6 dB more for 25-33 % more bytes).
    - ``codebook_size``: entries per vector-quantisation codebook (the SH rest bands of the
      presets that vector-quantise them), 2..65536 (uint8 ids up to 256, uint16 above; k-means
      fits at most 16,384 entries), or None (default): ``auto_codebook_size`` of each keyframe.
    - ``alpha``: position step = ``alpha`` x the 5 % quantile of nearest-neighbour distances
      (the rule of gsvvcompressor), used when ``step`` is None; None: the preset's.
    - ``step``: explicit position step in scene units, or None to derive it per keyframe.
    - ``tolerance``: interframe dead zone in steps: a Gaussian's position (a scalar value) is
      resent when its error would exceed ``(tolerance + 0.5) * step``, in moves (changes) of
      ``2 * tolerance + 1`` steps. None (default): 0, the keyframe's bound step/2 (a flat GOP).
    - ``step_scale``: multiplies every step of the preset (the position ``alpha`` included;
      an explicit ``step`` is not scaled), 0.01..100, default 1; >1 coarser: fewer bytes,
      lower quality. A continuous knob between and beyond the presets (rate control turns it).
    - ``target_mbps``: None (default: constant quality), or a bitrate in megabits per second,
      0.01..100000, that ``splatcast.codec.rate.RateController`` holds by turning ``step_scale``
      (then the starting value) at each keyframe and, below what the steps reach, by sending a
      fraction of the Gaussians; FrameEncoder alone does not read it.
    - ``seed``: k-means seed (same seed, same input, same device -> same bytes).
    - ``device``: "auto" (CUDA when available), "cpu" or "cuda" for k-means and assignment.
    """

    gop: int = 30
    quality: str = "standard"
    codebook_size: int | None = None
    alpha: float | None = None
    step: float | None = None
    tolerance: int | None = None
    step_scale: float = 1.0
    target_mbps: float | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"invalid CodecConfig: {msg}")

        if not _is_int(self.gop) or self.gop < 1:
            bad(f"gop must be an int >= 1, got {self.gop!r}")
        if self.codebook_size is not None and (not _is_int(self.codebook_size)
                                               or not 2 <= self.codebook_size <= 65536):
            bad(f"codebook_size must be None or an int in 2..65536, got {self.codebook_size!r}")
        if self.quality not in QUALITIES:
            bad(f"quality must be one of {list(QUALITIES)}, got {self.quality!r}")
        if self.alpha is not None and (not _is_number(self.alpha) or not 0 < self.alpha <= 100):
            bad(f"alpha must be None or a number in (0, 100], got {self.alpha!r}")
        if self.step is not None and (not _is_number(self.step) or not 0 < self.step < 1e30):
            bad(f"step must be None or a positive finite number, got {self.step!r}")
        if self.tolerance is not None and (not _is_int(self.tolerance)
                                           or not 0 <= self.tolerance <= 1000):
            bad(f"tolerance must be None or an int in 0..1000, got {self.tolerance!r}")
        if not _is_number(self.step_scale) or not 0.01 <= self.step_scale <= 100:
            bad(f"step_scale must be a number in 0.01..100, got {self.step_scale!r}")
        if self.target_mbps is not None and (not _is_number(self.target_mbps)
                                             or not 0.01 <= self.target_mbps <= 100000):
            bad(f"target_mbps must be None or a number in 0.01..100000, got {self.target_mbps!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            bad(f"seed must be a non-negative int, got {self.seed!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    @property
    def steps(self) -> Quality:
        """The preset's steps, with ``alpha`` overridden when set, times ``step_scale``."""
        q = QUALITIES[self.quality]
        q = q if self.alpha is None else replace(q, alpha=self.alpha)
        if self.step_scale == 1:
            return q
        return Quality(**{f.name: getattr(q, f.name) * self.step_scale for f in fields(Quality)})

    def codebook_rows(self, num_gaussians: int) -> int:
        """``codebook_size``, or when None: 256 entries, 512 from LARGE_SCENE Gaussians on. On B
        (250k, SH degree 2, ``standard``) 512 entries per SH band give +0.9 dB rendered PSNR for
        +2.7 % bytes (the ids become uint16; docs/CODEC.md section 14); on small scenes the
        codebooks themselves would cost more than they buy."""
        if self.codebook_size is not None:
            return self.codebook_size
        return 512 if num_gaussians >= LARGE_SCENE else 256

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
