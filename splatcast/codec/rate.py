"""Rate control: a FrameEncoder wrapper that holds a target bitrate (docs/CODEC.md, "Rate control").

Pure computation (sans-I/O): the caller supplies ``wire_size``, the size in bytes its transport
gives an encoded frame (the protocol's msgpack + zstd message), so that the controller counts the
bytes that are actually sent without this package importing the protocol.

The knob is ``CodecConfig.step_scale`` (every quantisation step of the preset times one factor).
The encoder fixes its quantisers at keyframes, so the controller decides once per GOP: at every
keyframe it trial-encodes the frame on copies of the encoder at a few scales (a bracketed secant
search on ln(GOP bytes) against ln(step_scale)) and keeps the copy whose predicted GOP bytes are
nearest the GOP's budget; when even SCALE_MIN of the configured preset stays under the budget
(its vector-quantised SH bands cap its bytes), the GOP searches FINEST's scales the same way.
A trial's GOP prediction is its keyframe's bytes plus (gop - 1) times
the bytes of the *previous* input frame encoded right after that keyframe (the same motion, or
the same intra content, as the GOP's next frames will bring). The sequence's first keyframe has
no previous frame: it is a probe sized as if every frame cost as much as it; when frame 1 shows
that the GOP would miss its budget by more than RESTART, the GOP restarts at frame 1 with a
keyframe sized by the full prediction. On untracked content (intra frames, which cost about
what a keyframe costs) the controller may also start a GOP early: where the bytes jump between
two neighbouring scales, it alternates between the scales on either side of the target
(``RateController._dither``). Within a GOP of interframes the knob is the interframe unit
(``FrameEncoder.unit``: positions and scalar values change in multiples of it): GOPs are sized
at UNITS[NOMINAL], and after each interframe the unit goes one level up when the GOP's
interframes are over their share of the budget by more than UNIT_GAIN of a frame's share, one
level down when under (finer, down to 1), so that tracked content whose motion speeds up or
slows down within a GOP stays near the budget; and on tracked content each GOP's prediction is
corrected by how far the earlier GOPs' other frames were from theirs. Below the codec's reach
(every trial over the budget, up to SCALE_MAX) the GOP sends fewer Gaussians: ``thin`` keeps a
fraction of them, the same ones from frame to frame, found by a second search at the cheapest
scale; an untracked thinned GOP that drifts off its budget is re-planned at the frame where it
does (docs/CODEC.md, "Rate control").

Cost: each GOP runs up to MAX_TRIALS trials (2 x MAX_TRIALS when thinned) of two encodes (the
keyframe and the predicted next frame) and deep copies of the encoder, i.e. up to about ten
keyframe encodes per GOP.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from splatcast.codec.config import QUALITIES, CodecConfig
from splatcast.codec.encoder import EncodedFrame, FrameEncoder
from splatcast.codec.frame import GaussianFrame

SCALE_MIN, SCALE_MAX = 0.01, 2.0
"""Bounds of ``step_scale`` the controller uses. Below SCALE_MAX's bytes it sends fewer Gaussians
(``thin``) rather than coarser steps, which cost more quality: biker at 5 Mbit/s (bench_rate)
averages 29.0 dB with SCALE_MAX 1, 28.6 with 2, 27.8 with 4, 21.5 with 16 and 100 (CodecConfig's
bound), and with 1 a window ends 11 % over (a keyframe's bytes vary less with keep)."""
TOLERANCE = 0.02
"""The search stops when a trial's predicted GOP bytes are within this fraction of the budget."""
MAX_TRIALS = 5
"""Trial keyframe encodes per GOP at most."""
MAX_JUMP = math.log(8.0)
"""Largest change of ln(step_scale) from one trial to the next (the bytes model is local)."""
SLOPE = -0.5
"""Initial d ln(bytes) / d ln(step_scale), refined by every pair of trials (measured about -0.2
to -0.7 on tile and biker at medium) within SLOPES."""
SLOPES = (-2.0, -0.1)
"""Bounds of that slope: the bytes are flat over some ranges and jump at others."""
FEEDBACK = 0.25
"""Fraction of the accumulated surplus (bytes sent minus the budget so far) taken off the next
GOP's budget, at most CORRECTION of that budget: the long-run rate converges to the target."""
CORRECTION = 0.04
RESTART = 0.05
"""The probe GOP restarts at its second frame when its predicted size misses the budget by more."""
DITHER = 0.5
"""Surplus (bytes sent minus the budget so far), in frames' budgets, at which intra content
switches to a step_scale beyond the jump in bytes (``RateController._dither``)."""
JUMP_MARGIN = 1.05
"""How far beyond the scales found on either side of a jump the dithering goes (the jump moves
a little from frame to frame)."""
FINEST = list(QUALITIES)[-1]
"""The preset a GOP switches to when the configured one, at SCALE_MIN, stays under the budget
(its SH rest bands are scalar-quantised: the configured preset's codebooks cap its bytes)."""
KEEP_MIN = 0.01
"""Smallest fraction of a frame's Gaussians a GOP keeps below the codec's reach (``thin``)."""
KEEP_SLOPES = (0.2, 2.0)
"""Bounds of d ln(bytes) / d ln(keep) in ``_thin_search`` (measured about 0.6 on loot)."""
UNITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
"""Interframe units the controller steps through (``FrameEncoder.unit``)."""
NOMINAL = 2
"""Index in UNITS of the unit a GOP is sized at (3: room to go finer when motion slows down)."""
UNIT_GAIN = 0.5
"""The unit changes when a GOP's interframes are more than this many frames' shares over (under)
their share of the GOP's budget, and the last one too."""
BIAS_LIMITS = (0.5, 2.0)
"""Bounds of the correction of a GOP's predicted other-frame bytes on tracked content: the
geometric mean of the ratios (actual mean / predicted) of the tracked GOPs so far (one frame
predicts a GOP's motion only roughly; the unit steps absorb part of the error, this the rest)."""


Trial = tuple[float, float, FrameEncoder, EncodedFrame, int, float, float]
"""A trial keyframe: (ln predicted GOP bytes, ln step_scale, encoder copy after it, the keyframe,
its wire bytes, each other frame's predicted bytes, the fraction of Gaussians kept)."""


@dataclass
class RateStats:
    """What the controller did so far.

    - ``sizes``: wire bytes of every frame sent, in order (``wire_size`` of each).
    - ``scales``: step_scale of each frame's GOP.
    - ``qualities``: quality preset of each frame's GOP (``config.quality``, or FINEST above its
      reach).
    - ``keeps``: fraction of each frame's Gaussians sent (1, or less below the codec's reach:
      ``thin``).
    - ``trials``: trials run (each a keyframe encode and, but for the first frame's probe and
      the dithering, the encode of one more frame).
    - ``missed``: GOPs whose nearest trial predicted bytes more than 10 % off the budget: the
      target is outside what the codec reaches between the preset at SCALE_MAX and FINEST at
      SCALE_MIN, or below it with KEEP_MIN of the Gaussians (or, on tracked content, inside a jump
      of its bytes), and the GOP is sent at the nearest rate found. The first frame's probe
      keyframe is not counted.
    """

    sizes: list[int]
    scales: list[float]
    qualities: list[str]
    keeps: list[float]
    trials: int = 0
    missed: int = 0


class RateController:
    """``encode(frame) -> EncodedFrame`` like FrameEncoder, at ``config.target_mbps`` megabits
    per second for a sequence of ``fps`` frames per second.

    ``wire_size(encoded)`` must return the bytes the frame will take on the wire (e.g. the
    protocol's message size); it is called for every trial and every frame sent. Raises
    ``ValueError`` when ``config.target_mbps`` is None or ``fps`` is not a positive finite number,
    ``CodecError`` as FrameEncoder does. One controller per sequence, one thread at a time.
    """

    def __init__(self, config: CodecConfig, fps: float, wire_size: Callable[[EncodedFrame], int]) -> None:
        if config.target_mbps is None:
            raise ValueError("RateController needs CodecConfig.target_mbps")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
            raise ValueError(f"fps must be a positive finite number, got {fps!r}")
        self.config, self.fps, self.wire_size = config, float(fps), wire_size
        self.frame_budget = config.target_mbps * 1e6 / 8 / self.fps  # bytes per frame
        self.encoder = FrameEncoder(replace(config, step_scale=_clamp(config.step_scale)))
        self.stats = RateStats([], [], [], [])
        self._sent = 0  # bytes of the frames sent
        self._gop_pos = 0  # frames since the last keyframe (the encoder's rule: a keyframe at gop)
        self._prev: GaussianFrame | None = None  # the previous input frame
        self._untracked = False  # whether it was coded as untracked content (``_untracked``)
        self._by_position = False  # whether any frame was: ``thin`` then keeps rows by position
        self._cell: float | None = None  # the last keyframe's position step (``thin``'s cell)
        self._keep = 1.0  # fraction of the Gaussians the GOP sends (``thin``)
        self._sides: tuple[float, float] | None = None  # step_scales over / under the budget (_keyframe)
        self._slope = SLOPE
        self._level = NOMINAL  # index in UNITS of the next interframe's unit
        self._share = 0.0  # bytes per interframe of the GOP's budget, after its keyframe
        self._surplus = 0.0  # bytes of the GOP's interframes so far minus their shares
        self._predicted = 0.0  # the GOP's predicted bytes per other frame (its keyframe's trial)
        self._others: list[int] | None = []  # bytes of the GOP's other frames (None: some untracked)
        self._ratios: list[float] = []  # ln(actual / predicted) of each GOP's other frames

    @property
    def step_scale(self) -> float:
        """The step_scale of the current GOP (of the last frame encoded)."""
        return self.encoder.config.step_scale

    @property
    def keep(self) -> float:
        """The fraction of the input's Gaussians the current GOP sends (``thin``; 1: all)."""
        return self._keep

    def encode(self, frame: GaussianFrame) -> EncodedFrame:
        """Encode the next frame; a keyframe's step_scale is chosen for the GOP's budget."""
        index = len(self.stats.sizes)
        if index == 0 or self._gop_pos >= self.config.gop:
            enc, size = self._keyframe(frame, index)
        else:
            # a copy to come back to: at frame 1 (the probe), and after untracked content (the
            # next frame is likely untracked too, and a keyframe in its place costs a little more)
            saved = copy.deepcopy(self.encoder) if index == 1 or self._untracked else None
            self.encoder.unit = UNITS[self._level]
            enc = self._encode(self.encoder, frame, self._keep)
            size = self.wire_size(enc)
            if saved is not None and index == 1 and enc.frame_type != "keyframe":  # end the probe GOP if off
                predicted = self.stats.sizes[0] + size * (self.config.gop - 1)
                if abs(predicted / (self.frame_budget * self.config.gop) - 1) > RESTART:
                    self.encoder = saved
                    self._by_position |= _untracked(enc)
                    enc, size = self._keyframe(frame, index)
            elif saved is not None and _untracked(enc) and (self._sides is not None or self._keep < 1):
                enc, size = self._dither(frame, index, saved, enc, size)
        self._untracked = _untracked(enc)
        self._by_position |= self._untracked
        if enc.frame_type == "keyframe":
            self._cell = float(enc.payload["step"])
            self._gop_pos = 1
            self._level, self._surplus, self._others = NOMINAL, 0.0, []
            self._share = max(self._budget(index) - size, 0.0) / max(self.config.gop - 1, 1)
        else:
            self._gop_pos += 1
            if self._untracked:
                self._others = None  # (its bytes do not correct tracked GOPs' predictions)
            elif self._others is not None:
                self._others.append(size)
            if enc.frame_type == "interframe" and not self._untracked:
                self._step_unit(size)
        self.stats.sizes.append(size)
        self.stats.scales.append(self.step_scale)
        self.stats.qualities.append(self.encoder.config.quality)
        self.stats.keeps.append(self._keep)
        self._sent += size
        self._prev = frame  # (a reference: frames are not modified)
        return enc

    def _encode(self, encoder: FrameEncoder, frame: GaussianFrame, keep: float) -> EncodedFrame:
        """``encoder.encode`` of ``thin(frame, keep, ...)``; source_rows index ``frame``."""
        thinned, rows = thin(frame, keep, self._cell if self._by_position else None)
        enc = encoder.encode(thinned)
        return enc if rows is None else replace(enc, source_rows=rows[enc.source_rows])

    def _ln_gop_bytes(self, size: int, other: float) -> float:
        """ln of a trial's predicted GOP bytes: its keyframe's plus gop - 1 other frames'
        (corrected by ``_bias``)."""
        return math.log(size + (self.config.gop - 1) * other * self._bias())

    def _bias(self) -> float:
        """Correction of a trial's predicted other-frame bytes (BIAS_LIMITS)."""
        return float(np.clip(math.exp(np.mean(self._ratios)), *BIAS_LIMITS)) if self._ratios else 1.0

    def _step_unit(self, size: int) -> None:
        """After a tracked interframe of ``size`` bytes: one UNITS level up (coarser) when the
        GOP's interframes are over their shares by more than UNIT_GAIN shares and this one was
        over its share, one level down when under likewise."""
        self._surplus += size - self._share
        if self._surplus > UNIT_GAIN * self._share and size > self._share:
            self._level = min(self._level + 1, len(UNITS) - 1)
        elif self._surplus < -UNIT_GAIN * self._share and size < self._share:
            self._level = max(self._level - 1, 0)

    def _dither(self, frame: GaussianFrame, index: int, saved: FrameEncoder, enc: EncodedFrame, size: int
                ) -> tuple[EncodedFrame, int]:
        """Untracked content (intra frames, predicted interframes) whose GOP cannot be held by
        its keyframe's plan: when the surplus so far passes DITHER frames' budget in the
        direction this frame pushes it, send this frame as a keyframe (from ``saved``, the
        encoder before it). Where the bytes jump between two neighbouring step_scales (a group
        switching between a codebook and scalar values, or uint8 and uint16 values, at a scale
        that moves a little from frame to frame), on the other side of the jump: at the last
        search's nearest scale over the budget / JUMP_MARGIN when more bytes are wanted, at its
        nearest scale under the budget x JUMP_MARGIN when fewer (``_sides``), kept if it moves
        the size the right way; the windows then average the two sides. In a thinned GOP (keep
        < 1: how many voxels persist from frame to frame drives the bytes, and one frame of
        change predicts a GOP only roughly), a new GOP planned from this frame's change."""
        b, current = self.frame_budget, self.encoder
        surplus = self._sent + size - b * (index + 1)
        if not (surplus > DITHER * b and size > b or surplus < -DITHER * b and size < b):
            return enc, size
        self.encoder = saved
        if self._sides is None:
            return self._keyframe(frame, index)
        sides = self._sides
        scale = _clamp(sides[1] * JUMP_MARGIN if size > b else sides[0] / JUMP_MARGIN)
        trial, other, other_size, _ = self._trial(frame, self.encoder.config.quality, scale, self._keep,
                                                  predict=False)
        if (other_size < size) != (size > b):
            self.encoder = current
            return enc, size
        self.encoder = trial
        return other, other_size

    def _budget(self, index: int) -> float:
        """Bytes for the GOP starting at frame ``index``: gop frames' worth, less a share of the
        surplus so far (bounded)."""
        gop_budget = self.frame_budget * self.config.gop
        surplus = self._sent - self.frame_budget * index
        return gop_budget - float(np.clip(FEEDBACK * surplus, -CORRECTION * gop_budget, CORRECTION * gop_budget))

    def _trial(self, frame: GaussianFrame, quality: str, scale: float, keep: float, predict: bool = True
               ) -> tuple[FrameEncoder, EncodedFrame, int, float]:
        """``frame`` (a ``keep`` fraction of it) as a keyframe on a copy of the encoder at preset
        ``quality`` and ``scale``: (the copy, the frame, its wire bytes, predicted wire bytes of
        each other frame of the GOP). The prediction is
        the previous input frame encoded next on a second copy at unit UNITS[NOMINAL] (the same
        motion backwards: an interframe or intra frame like the GOP's next ones); with no
        previous frame (the sequence's first) or unless ``predict``, the keyframe's bytes."""
        trial = copy.deepcopy(self.encoder)
        trial.config = replace(self.config, quality=quality, step_scale=scale, gop=1)  # gop=1: a keyframe now
        enc = self._encode(trial, frame, keep)
        trial.config = replace(self.config, quality=quality, step_scale=scale)
        size = self.wire_size(enc)
        other = float(size)
        if self._prev is not None and predict:
            after = copy.deepcopy(trial)
            after.unit = UNITS[NOMINAL]  # as the GOP's interframes start
            other = float(self.wire_size(self._encode(after, self._prev, keep)))
        self.stats.trials += 1
        return trial, enc, size, other

    def _keyframe(self, frame: GaussianFrame, index: int) -> tuple[EncodedFrame, int]:
        """Trial-encode ``frame`` as a keyframe at a few scales of the configured preset (and,
        when even SCALE_MIN stays under the budget, of FINEST); keep the encoder copy whose
        predicted GOP bytes are nearest the budget (in ratio); when every trial, up to SCALE_MAX,
        is over the budget by more than TOLERANCE, of the trials of ``_thin_search`` instead.
        After a thinned GOP the search on keep comes first, from that GOP's keep and scale; the
        scales are searched only when every Gaussian fits again with room to spare. The GOP
        that ends here corrects later predictions."""
        if self._others and self._predicted > 0:  # a GOP of tracked content ended
            self._ratios.append(math.log(float(np.mean(self._others)) / self._predicted))
        target = math.log(self._budget(index))
        current = self.encoder.config
        last_keep = self._keep

        def start(quality: str) -> float:  # ln step_scale: the last GOP's in that preset, else the preset's own
            if current.quality == quality:
                return math.log(current.step_scale)
            return math.log(SCALE_MIN) if quality == self.config.quality else 0.0

        tried = None
        if last_keep < 1:
            tried = self._thin_search(frame, target, current.quality, math.log(current.step_scale),
                                      math.log(last_keep))
            if any(t[6] >= 1 and t[0] < target - TOLERANCE for t in tried):
                tried = None
        if tried is None:
            tried = self._search(frame, target, self.config.quality, start(self.config.quality))
            y, x = min(((t[0], t[1]) for t in tried), key=lambda t: abs(t[0] - target))
            if self.config.quality != FINEST and y < target - TOLERANCE and x <= math.log(SCALE_MIN) + 1e-6:
                self._slope = SLOPE  # (another preset's curve)
                finer = self._search(frame, target, FINEST, start(FINEST))
                if min(abs(t[0] - target) for t in finer) < abs(y - target):
                    tried = finer
            if all(t[0] > target + TOLERANCE for t in tried) and max(t[1] for t in tried) >= math.log(SCALE_MAX) - 1e-6:
                y = min(t[0] for t in tried)  # from the finest scale as cheap as the cheapest (within 1 %)
                x, quality = min((t[1], t[2].config.quality) for t in tried if t[0] <= y + 0.01)
                tried = self._thin_search(frame, target, quality, x, 0.0, y)
        miss = min(abs(t[0] - target) for t in tried)
        # the nearest, and of trials as near (within 1 %: flat stretches of bytes), the finest
        y, x, self.encoder, enc, size, self._predicted, self._keep = min(
            (t for t in tried if abs(t[0] - target) <= miss + 0.01), key=lambda t: t[1])
        more = [t[1] for t in tried if t[0] > target]  # ln(scale) of trials over the budget
        less = [t[1] for t in tried if t[0] <= target]
        self._sides = (math.exp(max(more)), math.exp(min(less))) if more and less and self._keep == 1 else None
        if miss > 0.1 and self._prev is not None:  # (not the first frame's probe)
            self.stats.missed += 1
        return enc, size

    def _search(self, frame: GaussianFrame, target: float, quality: str, x: float) -> list[Trial]:
        """Trials of all of ``frame`` as a keyframe at preset ``quality`` from ln step_scale ``x`` on: a
        secant search on ln GOP bytes against ln step_scale, bracketed, of up to MAX_TRIALS."""
        lo, hi = math.log(SCALE_MIN), math.log(SCALE_MAX)
        tried: list[Trial] = []
        for _ in range(MAX_TRIALS):
            trial, enc, size, other = self._trial(frame, quality, _clamp(math.exp(x)), 1.0)
            y = self._ln_gop_bytes(size, other)
            if tried and abs(x - tried[-1][1]) > 1e-6:  # secant slope from the previous trial, bounded
                self._slope = float(np.clip((y - tried[-1][0]) / (x - tried[-1][1]), *SLOPES))
            tried.append((y, x, trial, enc, size, other, 1.0))
            if abs(y - target) <= TOLERANCE:
                break
            if y > target:
                lo = x  # too many bytes: coarser
            else:
                hi = x
            nxt = float(np.clip(x + np.clip((target - y) / self._slope, -MAX_JUMP, MAX_JUMP), lo, hi))
            if any(abs(nxt - t[1]) < 1e-3 for t in tried):  # the secant points at a tried scale
                if nxt <= math.log(SCALE_MIN) + 1e-6 or nxt >= math.log(SCALE_MAX) - 1e-6:
                    break  # at a bound of step_scale: the target is out of reach
                nxt = (lo + hi) / 2
            x = nxt
        return tried

    def _thin_search(self, frame: GaussianFrame, target: float, quality: str, x: float, lk: float,
                     y: float | None = None) -> list[Trial]:
        """Trials of ``frame`` as a keyframe at preset ``quality`` and ln step_scale ``x`` on
        ``thin``s of it: a secant search on ln GOP bytes against ln keep from ln keep ``lk``
        (whose ln GOP bytes ``y`` are known, else its trial comes first), slope bounded to
        KEEP_SLOPES (fewer Gaussians cost more bytes each), keep in KEEP_MIN..1, up to
        MAX_TRIALS."""
        slope = 1.0  # d ln(bytes) / d ln(keep)
        out: list[Trial] = []
        for _ in range(MAX_TRIALS):
            nxt = lk if y is None else min(max(lk + (target - y) / slope, math.log(KEEP_MIN)), 0.0)
            if out and abs(nxt - lk) < 1e-3:  # at KEEP_MIN or at 1: the search is at its bound
                break
            trial, enc, size, other = self._trial(frame, quality, _clamp(math.exp(x)), math.exp(nxt))
            y_next = self._ln_gop_bytes(size, other)
            if y is not None and nxt != lk:
                slope = float(np.clip((y_next - y) / (nxt - lk), *KEEP_SLOPES))
            lk, y = nxt, y_next
            out.append((y, x, trial, enc, size, other, math.exp(nxt)))
            if abs(y - target) <= TOLERANCE:
                break
        return out


def thin(frame: GaussianFrame, keep: float, cell: float | None) -> tuple[GaussianFrame, np.ndarray | None]:
    """A fraction ``keep`` (0..1] of ``frame``'s Gaussians, to send fewer below a codec's reach:
    (the thinned frame, the kept rows [M] int64 ascending), or (``frame``, None) when ``keep``
    >= 1. A row is kept when a 64-bit hash (splitmix64's finaliser, Steele, Lea and Flood,
    "Fast splittable pseudorandom number generators", OOPSLA 2014) of its key falls below
    ``keep`` x 2**64: the key is the row's index for tracked content (``cell`` None: a Gaussian
    keeps its row), its mean rounded to a grid of ``cell`` (> 0, scene units) for untracked
    captures (a voxel keeps its place on the capture's lattice, whatever sub-cell offset a frame
    has), so that the same Gaussians stay from frame to frame and the interframes stay small.
    Each kept Gaussian's log-scales grow by ln(1 / keep) / 3 to cover the gaps (the rendered
    PSNR's best of the exponents 0, 1/5, 1/3, 1/2 on loot and biker at keep 0.5 and 0.1: loot
    at 0.25 31.6, 36.0, 38.1, 33.9 dB; 1/2, a surface's area, overshoots where the Gaussians
    overlap)."""
    if keep >= 1:
        return frame, None
    n = frame.num_gaussians
    key = (np.rint(frame.means.cpu().numpy() / np.float64(cell)).astype(np.int64).view(np.uint64)  # [N, 3]
           if cell is not None else np.arange(n, dtype=np.uint64)[:, None])  # [N, 1]
    h = np.zeros(n, np.uint64)
    for column in key.T:
        h = _splitmix(h ^ column)
    rows = np.flatnonzero((h >> np.uint64(11)).astype(np.float64) < keep * 2.0**53)
    index = torch.from_numpy(rows).to(frame.device)
    parts = {f.name: getattr(frame, f.name)[index] for f in fields(frame)}
    parts["scales"] = parts["scales"] + math.log(1 / keep) / 3
    return GaussianFrame(**parts), rows


def _splitmix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of uint64 [N] (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _untracked(enc: EncodedFrame) -> bool:
    """Whether a frame is coded as untracked content: an intra frame, or a predicted interframe
    (its payload has ``kept``, docs/CODEC.md section 6b), each of which costs about what a
    keyframe at the same steps costs, so that the dithering below can swap one for the other."""
    return enc.frame_type == "intra" or (enc.frame_type == "interframe" and "kept" in enc.payload)


def make_encoder(config: CodecConfig, fps: float, wire_size: Callable[[EncodedFrame], int]
                 ) -> FrameEncoder | RateController:
    """A RateController when ``config.target_mbps`` is set, else a plain FrameEncoder."""
    return FrameEncoder(config) if config.target_mbps is None else RateController(config, fps, wire_size)


def window_mbps(sizes: list[int] | np.ndarray, fps: float, seconds: float = 1.0) -> np.ndarray:
    """Bitrate of every window of ``seconds`` of a sequence, megabits per second, float64 [W].

    Frame i is sent at i / fps; a window holds the k = round(seconds x fps) consecutive frames
    i..i+k-1 (each window starting at a frame, i = 0 .. n - k) and its bitrate is
    8 x (their bytes) / (k / fps). Empty when the sequence is shorter than one window (k > n).
    ``sizes``: bytes of each frame. ``ValueError`` for fps or seconds not positive."""
    if not fps > 0 or not seconds > 0:
        raise ValueError(f"fps and seconds must be positive, got {fps!r}, {seconds!r}")
    k = max(1, round(seconds * fps))
    s = np.asarray(sizes, np.float64)
    if len(s) < k:
        return np.zeros(0)
    sums = np.convolve(s, np.ones(k), "valid")
    return sums * 8 / (k / fps) / 1e6


def buffer_seconds(sizes: list[int] | np.ndarray, fps: float, mbps: float) -> float:
    """Largest fullness, in seconds at ``mbps``, of a leaky bucket drained at ``mbps`` into which
    each frame's bytes drop at its time: F_i = max(0, F_(i-1) - R / fps) + size_i. The sender's
    buffer (and the extra delay) a constant-rate channel of ``mbps`` needs for this stream."""
    if not fps > 0 or not mbps > 0:
        raise ValueError(f"fps and mbps must be positive, got {fps!r}, {mbps!r}")
    drain, full, top = mbps * 1e6 / 8 / fps, 0.0, 0.0
    for s in sizes:
        full = max(0.0, full - drain) + float(s)
        top = max(top, full)
    return top * 8 / (mbps * 1e6)


def _clamp(scale: float) -> float:
    return min(max(scale, SCALE_MIN), SCALE_MAX)
