"""FrameEncoder: GaussianFrame sequence -> keyframe / intra / interframe payloads (docs/CODEC.md).

Uniform scalar quantisation of positions and of the low-dimensional attributes (rotation, log
scale, opacity logit, sh0) with per-attribute steps from the quality preset, vector
quantisation (k-means codebooks, after gsvvcompressor) of the SH rest bands in the coarser
presets; keyframes, intra frames and interframes against the previous *reconstructed* frame.
See docs/CODEC.md for the layout and the measurements behind the choices.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import zstandard
from scipy.spatial import cKDTree

from splatcast.codec import kmeans, morton
from splatcast.codec.config import CodecConfig, CodecError, Quality
from splatcast.codec.decoder import (
    ESCAPE,
    MAX_Q,
    PREDICTED_BITS,
    SCALAR_LIMIT,
    SMALL_DIMS,
    DecoderState,
    FrameDecoder,
    id_dtype,
    previous_grid,
    ranked,
    reconstruct,
)
from splatcast.codec.frame import C0, GaussianFrame

NN_SAMPLE = 10000
"""Gaussians whose nearest-neighbour distance estimates the position step."""
NN_QUANTILE = 0.05
"""Quantile of those distances that ``alpha`` multiplies (gsvvcompressor's default)."""
INTRA_TRIAL = 0.5
"""An intra frame is tried when the interframe exceeds this fraction of the last intra size."""
DRIFT = 4.0
"""A keyframe is forced when a group's mean squared VQ distortion exceeds DRIFT x its value at
the keyframe (RMSE doubled), e.g. when colours leave the range the codebook was fitted on."""
HYSTERESIS = 3.0
"""Slack of the interframe id hysteresis, in units of L (see FrameEncoder._assign): larger
keeps more ids (fewer bytes) at a larger attribute error; the DRIFT rule bounds the drift."""
NEIGHBOURS = 16
"""Centroids searched first when an id must change in an interframe (those nearest the old)."""
VQ_CANDIDATES = ("sh0",)
"""Groups that a keyframe of a voxelised capture (positions on a lattice) vector-quantises
instead when k-means matches the preset's scalar error (``FrameEncoder._vq_if_it_pays``)."""
LOGIT_MAX = 16.0
"""Opacity logits are clipped to [-LOGIT_MAX, LOGIT_MAX] (alpha within 1.1e-7 of 0 or 1;
+Inf opacities of real files become finite)."""
ROTATION_KEEP = 0.9
"""A row keeps its previous frame's largest-component index while that component's magnitude
is at least this fraction of the largest (``_smallest_three``); the other three then stay
within 0.75 (1 / sqrt(1 + 0.9**2)), inside the keyframe's range widened by SCALAR_MARGIN."""
POS_BLOCK = 32
"""Rows per block of an interframe's block-median position moves (``_position_moves``): on
the jittered 250k sequence (bench B) 16 to 64 rows are within 1 % of each other, 8 or 128
lose 3-4 %; the block medians cost about 2 % of the moves' bits at 32."""
SCALAR_MARGIN = 1 / 8
"""A scalar quantiser takes uint8 values only when its keyframe's range widened by this
fraction on each side fits 255 steps, so that later frames of the GOP moving a little beyond
the range still fit (the range is centred in the type's levels)."""


_Candidate = tuple[int, str, dict, np.ndarray, DecoderState | None]
"""A frame the encoder may send: (estimated size, frame type, payload, order, the decoder state
after it when the encoder knows it without decoding the payload, else None)."""


@dataclass
class EncodedFrame:
    """One encoded frame: what goes on the wire plus what a decoder will reconstruct.

    - ``frame_type``: one of FRAME_TYPES; ``num_gaussians``: N.
    - ``payload``: dict of numpy arrays / int / float / str / bool / nested dicts (docs/CODEC.md).
    - ``state``: the decoder state after this frame (what every decoder holds then).
    - ``source_rows``: [N] int64, the input row of each decoded Gaussian (decoded Gaussians come
      out in the codec's Morton order; ``input[source_rows]`` lines up with the reconstruction).
    """

    frame_type: str
    num_gaussians: int
    payload: dict
    state: DecoderState
    source_rows: np.ndarray

    @property
    def reconstruction(self) -> GaussianFrame:
        """Exactly what ``FrameDecoder("cpu")`` returns for this frame (built on each access:
        the encoder itself does not need it)."""
        return reconstruct(self.state)


class FrameEncoder:
    """Stateful encoder, one per sequence: ``encode(frame) -> EncodedFrame``.

    The first frame, every ``gop``-th frame and any frame whose positions or scalar-quantised
    attributes no longer fit the GOP's ranges are keyframes (steps, scalar ranges, k-means
    codebooks). A frame with another Gaussian count is an intra frame (all data, current
    quantisers). Otherwise the smaller of an intra frame and
    an interframe (changes against the previous reconstruction, rows matched by input index)
    is sent. Raises ``CodecError`` for a change of SH degree or non-finite values.

    ``unit`` (an int >= 1, set to ``2 * tolerance + 1`` by every keyframe, 1 by default) is the
    step of the next interframes' changes: positions and scalar-quantised values change in
    multiples of ``unit`` steps, when their error would exceed unit / 2 steps (docs/CODEC.md
    section 6); a rate controller may set it before any frame (``splatcast.codec.rate``).

    One encoder serves one thread at a time; encoders of different sequences may run in
    parallel threads (they share no mutable state). The encoder keeps a reference to the last
    frame and compares the next one's attributes with it (an unchanged attribute is not derived
    again): a frame's tensors must not be modified in place once it was encoded.
    """

    def __init__(self, config: CodecConfig = CodecConfig()) -> None:
        self.config = config
        if config.device == "cuda" and not torch.cuda.is_available():
            raise CodecError("CodecConfig.device is 'cuda' but CUDA is not available")
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(auto if config.device == "auto" else config.device)
        self._decoder = FrameDecoder("cpu")  # its state is the reference for the next frame
        self._sh_degree: int | None = None
        self._gop_pos = 0  # frames since the last keyframe
        self._order = np.zeros(0, np.int64)  # [N] input row of each codec row
        self._books: dict[str, torch.Tensor] = {}  # name -> [K, D] centroids (VQ groups)
        self._scalar: dict[str, tuple[torch.Tensor, torch.Tensor, type]] = {}  # name -> offset [D],
        # step [D] (float64, the float32 values sent) and value dtype (scalar-quantised groups)
        self._near: dict[str, torch.Tensor] = {}  # name -> [K, L] nearest centroids of each
        self._lattice = False  # whether the keyframe's positions lie on a lattice
        self._inverse: dict[str, np.ndarray] = {}  # name -> [K, K] rank of id b in row a of rank_table
        self._intra_bpg = 0.0  # zstd bytes per Gaussian of the last keyframe/intra positions + ids
        self.unit = 1  # interframe unit of positions and scalar values (dead zone unit / 2), in steps
        self._limits: dict[str, float] = {}  # name -> L, see _limit
        self._feats: dict[str, torch.Tensor] = {}  # previous input's features, input order
        self._frame: GaussianFrame | None = None  # the previous input frame (a reference)
        self._ids: dict[str, torch.Tensor] = {}  # previous input's ids [N] / scalar values [N, D]
        self._dist: dict[str, torch.Tensor] = {}  # squared distance to the id's centroid when chosen

    def __deepcopy__(self, memo: dict) -> FrameEncoder:
        """A copy that shares the last input frame (frames are not modified once encoded; a rate
        controller's trials copy the encoder several times per keyframe)."""
        memo[id(self._frame)] = self._frame
        clone = object.__new__(FrameEncoder)
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def encode(self, frame: GaussianFrame) -> EncodedFrame:
        """Encode the next frame of the sequence (any device; float32 tensors)."""
        if self._sh_degree is None:
            self._sh_degree = frame.sh_degree
        elif frame.sh_degree != self._sh_degree:
            raise CodecError(f"SH degree changed from {self._sh_degree} to {frame.sh_degree}")
        same = _unchanged(frame, self._frame)
        _check_finite(frame, same)
        means = frame.means.detach().cpu().numpy().astype(np.float64)  # [N, 3]
        previous = self._feats.get("rotation")
        feats = _features(frame.to(self.device), previous[:, 0] if previous is not None
                          and len(previous) == frame.num_gaussians else None,
                          {name: x for name, x in self._feats.items() if _SOURCE[name.split("_")[0]] in same})
        state, n = self._decoder.state, frame.num_gaussians
        candidates: list[_Candidate] = []
        if state is not None and self._gop_pos < self.config.gop:
            ids = self._assign(feats)
            if not self._drifted() and self._fits(ids):
                inter = self._interframe(state, means, ids) if n == state.num_gaussians else None
                # an intra frame is only tried when an interframe is not clearly smaller (its raw
                # bytes bound its zstd size: compressed only when that does not settle it)
                bound = INTRA_TRIAL * self._intra_bpg * n
                if inter is not None and inter[0] > bound:
                    inter = (_size(inter[2]), *inter[1:])
                try_intra = inter is None or inter[0] > bound
                # voxelised captures: a predicted interframe (kept voxels, new ones), and an intra
                # frame only when it is not smaller than the last keyframe or intra frame
                pred = self._predicted(state, means, ids) if try_intra and self._lattice else None
                try_intra = try_intra and (pred is None or pred[0] > self._intra_bpg * n)
                intra = self._intra(state, means, ids) if try_intra else None
                candidates = [c for c in (inter, intra, pred) if c is not None]
        after = None
        if candidates:
            _, kind, payload, order, after = min(candidates, key=lambda c: c[0])  # (ties: the first)
            self._gop_pos += 1
        else:
            kind, payload, order, ids = self._keyframe(means, feats)
            self._gop_pos = 1
        if kind != "interframe":
            positions_and_ids = {k: payload[k] for k in ("morton", "ids")}
            self._intra_bpg = _size(positions_and_ids) / max(n, 1)
        if after is None:
            state = self._decoder.update(kind, n, payload)
        else:  # what the decoder's update would give (tests/test_codec.py's round trips check it)
            state = self._decoder.state = after
        self._order, self._feats, self._ids, self._dist = order, feats, ids, self._new_dist
        self._frame = frame
        return EncodedFrame(kind, frame.num_gaussians, payload, state, order)

    # --- frame types ---------------------------------------------------------------------------

    def _keyframe(self, means: np.ndarray, feats: dict[str, torch.Tensor]):
        step, self.unit, lattice = _step_and_unit(means, self.config)
        self._lattice, self._inverse = lattice, {}
        origin, order, planes = _positions(means, step)
        codebooks, scalar, self._scalar = {}, {}, {}
        steps = _group_steps(self.config.steps, feats)
        for i, (name, x) in enumerate(feats.items()):
            fitted = None
            if steps[name].min() > 0:
                sq, dtype = _scalar_quantiser(x, steps[name])
                fitted = self._vq_if_it_pays(name, x, sq, i) if lattice else None
                if fitted is None:
                    scalar[name] = sq
                    offset, step_ = (torch.from_numpy(r.astype(np.float64)).to(self.device) for r in sq)
                    self._scalar[name] = (offset, step_, dtype)
                    continue
            if fitted is None:
                fitted = kmeans.fit(x, self.config.codebook_rows(len(x)), self.config.seed + i) if len(x) else \
                    torch.zeros((1, x.shape[1]), device=x.device)
            codebooks[name] = _sorted_codebook(np.clip(fitted.cpu().numpy(), -65504, 65504).astype(np.float16))
        self._books = {name: torch.from_numpy(cb.astype(np.float32)).to(self.device)
                       for name, cb in codebooks.items()}
        self._near = {name: kmeans.neighbours(c, NEIGHBOURS) for name, c in self._books.items()}
        ids = self._assign(feats, full=True)
        self._limits = {name: _limit(feats[name], d) for name, d in self._new_dist.items()}
        payload = dict(sh_degree=self._sh_degree, step=step, codebooks=codebooks, scalar=scalar,
                       origin=origin, morton=planes, **self._id_payload(ids, order))
        return "keyframe", payload, order, ids

    def _vq_if_it_pays(self, name: str, x: torch.Tensor, sq: np.ndarray, i: int) -> torch.Tensor | None:
        """For a group of VQ_CANDIDATES: k-means centroids [K, D] when their mean squared error
        on the rows ``x`` [N, D] is at most the scalar quantiser ``sq``'s (sum of step^2 / 12),
        else None. One id then costs less than D scalars at no larger error: the few colours of
        a voxel capture (loot at preview/medium: 1.52 -> 1.16 B/G at the same PSNR). Only for
        lattice positions: on tracked content whose colours change (biker at preview) the
        codebook drifts and costs more than it saves (docs/CODEC.md section 11)."""
        rows = self.config.codebook_rows(len(x))
        if name not in VQ_CANDIDATES or len(x) <= 4 * rows:
            return None
        fitted = kmeans.fit(x, rows, self.config.seed + i)
        mse = float(_sqdist(x, fitted, kmeans.assign(x, fitted)).mean())
        return fitted if mse <= float((sq[1].astype(np.float64) ** 2).sum() / 12) else None

    def _intra(self, state: DecoderState, means: np.ndarray, ids: dict[str, torch.Tensor]) -> _Candidate | None:
        """An intra frame against ``state`` (the decoder's), or None if the positions left its grid."""
        try:
            origin, order, planes = _positions(means, float(state.step))
        except _GridOverflow:
            return None  # the frame left the GOP's grid: a keyframe picks a new step
        payload = dict(origin=origin, morton=planes, **self._id_payload(ids, order))
        return _size(payload), "intra", payload, order, None

    def _predicted(self, state: DecoderState, means: np.ndarray, ids: dict[str, torch.Tensor]
                   ) -> _Candidate | None:
        """A predicted interframe against ``state`` (docs/CODEC.md section 6b), or None when the
        positions do not fit PREDICTED_BITS per axis on the new grid.

        The grid keeps this frame's own offset (origin = the positions' minimum, lowered by whole
        steps so that the previous frame, shifted by the nearest whole number of steps, stays at
        coordinates >= 0). Previous voxels are matched to this frame's by equal Morton codes (as
        multisets); new voxels are bits of the shell (the previous voxels' face neighbours) or,
        the few others, Morton code differences; values are coded against ``predict_values``'
        predictions."""
        step, n = float(state.step), len(means)
        if not n or not state.num_gaussians:
            return None
        low = np.array([c.min() for c in means.T])  # per column: faster than min(0)
        shift = np.rint((state.origin.astype(np.float64) - low) / step)
        pad = np.maximum(0.0, -(shift + state.q.min(0)))
        origin = (low - pad * step).astype(np.float32)
        q = np.maximum(np.rint((means - origin.astype(np.float64)) / step), 0)
        if q.max() >= 2**PREDICTED_BITS or (shift + pad + state.q.max(0)).max() >= 2**PREDICTED_BITS:
            return None
        codes = morton.encode(q.astype(np.int64))
        order = np.argsort(codes, kind="stable")
        codes = codes[order]
        prev_codes, prev_rows, shell = previous_grid(state, (shift + pad).astype(np.int64))
        # multiset matching: the first min(count before, count now) rows of each code are kept
        occurrence, run = _runs(codes)
        first_prev = np.searchsorted(prev_codes, codes, "left")
        in_prev = np.searchsorted(prev_codes, codes, "right") - first_prev
        is_kept = occurrence < in_prev  # [N] codec rows
        at = np.minimum(np.searchsorted(codes, prev_codes, "left"), n - 1)
        in_now = np.where(codes[at] == prev_codes, run[at], 0)  # [M] rows of each previous code now
        kept = _runs(prev_codes)[0] < in_now
        source = np.where(is_kept, prev_rows[np.minimum(first_prev + occurrence, len(prev_rows) - 1)], -1)
        values, ordered, kept_source = {}, self._ids_in_order(ids, order), source[is_kept]
        for name, cur in ordered.items():
            pred = np.concatenate([np.zeros(cur.shape[:-1] + (1,), cur.dtype), cur[..., :-1]], -1)
            pred[..., is_kept] = state.ids[name][..., kept_source]
            table = ranked(state, name)
            if table is None:
                values[name] = cur - pred  # modulo the type
                continue
            if name not in self._inverse:
                inverse = np.empty_like(table)
                np.put_along_axis(inverse, table.astype(np.int64),
                                  np.broadcast_to(np.arange(len(table), dtype=table.dtype), table.shape), 1)
                self._inverse[name] = inverse
            values[name] = self._inverse[name][pred, cur].astype(cur.dtype)
        new = codes[~is_kept]
        # a new voxel in the shell is a bit of the shell mask (once per code), others are listed
        once = _sorted_in(new, shell) & np.r_[True, new[1:] != new[:-1]]
        other = new[~once]
        payload = dict(origin=origin, shift=(shift + pad).astype(np.int32), kept=_pack(kept),
                       shell=_pack(_sorted_in(shell, new[once])),
                       morton=_planes(np.diff(other, prepend=np.uint64(0))), values=values)
        # the decoder sorts the kept rows and the new ones by code, kept first among equal codes
        # (as ``is_kept`` marks them here), and predicts each row's values back exactly
        after = DecoderState(state.sh_degree, state.step, state.codebooks, state.scalar, origin,
                             q.take(order, axis=0).astype(np.int32), ordered, state.tables)
        return _size(payload), "interframe", payload, order, after

    def _interframe(self, state: DecoderState, means: np.ndarray, ids: dict[str, torch.Tensor]
                    ) -> _Candidate | None:
        """An interframe against ``state`` (the decoder's), or None if a move leaves the grid;
        its size is the payload arrays' raw bytes (``encode`` compresses it when needed)."""
        order = self._order
        unit = self.unit
        with ThreadPoolExecutor(1) as pool:  # the ids' changes beside the positions: two cores
            id_changes = pool.submit(self._id_changes, state, ids, order, unit)
            err = means.take(order, axis=0)  # [N, 3]; then (means - origin) / step - q, in place
            err -= state.origin.astype(np.float64)
            err /= float(state.step)
            # grid coordinates within MAX_Q - unit/2: every new q (within unit/2 of them) stays
            # within MAX_Q, and the moves (below 2 MAX_Q + unit) fit an int32
            if len(err) and max(err.max(), -err.min()) + unit / 2 >= MAX_Q:
                return None
            err -= state.q
            over = np.abs(err) > unit / 2  # [N, 3] errors that would exceed unit/2 steps
            mask = over[:, 0] | over[:, 1] | over[:, 2]  # [N] rows to move (numpy's any(1) is ~10x slower)
            rows = np.flatnonzero(mask)
            moves = np.rint(err.take(rows, axis=0) / unit).astype(np.int32)  # [M, 3]
            block, base, residual = _position_moves(moves)
            pos_small, escaped = _small_rows(residual)
            id_masks, id_small, id_values = id_changes.result()
        payload = dict(unit=unit, pos_mask=_pack(mask), pos_block=block, pos_base=_narrow_int(base),
                       pos_small=pos_small, pos_delta=_narrow_int(escaped),
                       id_masks=id_masks, id_small=id_small, id_values=id_values)
        return sum(a.nbytes for a in _arrays(payload)), "interframe", payload, order, None

    def _id_changes(self, state: DecoderState, ids: dict[str, torch.Tensor], order: np.ndarray, unit: int
                    ) -> tuple[dict, dict, dict]:
        """The interframe's ``id_masks``, ``id_small`` and ``id_values`` (docs/CODEC.md section 6)."""
        id_masks, id_small, id_values = {}, {}, {}
        # groups whose ids are the previous frame's very tensor (``_assign``) change no row
        changes = self._ids_in_order({name: v for name, v in ids.items() if v is not self._ids.get(name)}, order)
        for name in ids:
            prev = state.ids[name]  # [N] ids or [D, N] scalar values
            if name not in changes:
                id_masks[name], id_values[name] = _pack(np.zeros(len(order), bool)), np.ascontiguousarray(prev[..., :0])
                continue
            cur = changes[name]
            changed = cur != prev if cur.ndim == 1 else (cur != prev).any(0)
            id_masks[name] = _pack(changed)
            changed_rows = np.flatnonzero(changed)  # (take is faster than a boolean index)
            new, old = cur.take(changed_rows, axis=-1), prev.take(changed_rows, axis=-1)
            v = new - old  # wraps
            if unit > 1 and name in self._scalar:  # in units (exact: ``_quantise``), then wrapped
                v = ((new.astype(np.int64) - old) // unit).astype(cur.dtype)
            id_values[name] = v
            if v.ndim == 2 and v.shape[0] <= SMALL_DIMS and v.shape[1]:
                codes, rest = _small_rows(v.view(np.int8 if v.dtype == np.uint8 else np.int16))
                id_small[name], id_values[name] = codes, np.ascontiguousarray(rest.astype(v.dtype))
        return id_masks, id_small, id_values

    # --- attributes ----------------------------------------------------------------------------

    def _drifted(self) -> bool:
        """Whether some group's mean squared VQ distortion (after ``_assign``) exceeds DRIFT
        times its keyframe value: the codebooks no longer fit the content."""
        return any(float(d.mean()) > DRIFT * max(self._limits[name], 1e-12)
                   for name, d in self._new_dist.items() if len(d))

    def _fits(self, ids: dict[str, torch.Tensor]) -> bool:
        """Whether every scalar-quantised value fits its group's integer type (else the content
        left the keyframe's ranges: a keyframe sets new ones); the previous frame's values, kept
        unchanged (``_assign``), fitted already."""
        return all(not len(v) or (int(v.min()) >= 0 and int(v.max()) <= np.iinfo(self._scalar[name][2]).max)
                   for name, v in ids.items() if name in self._scalar and v is not self._ids.get(name))

    def _assign(self, feats: dict[str, torch.Tensor], full: bool = False) -> dict[str, torch.Tensor]:
        """Scalar values q [N, D] int64 of the scalar-quantised groups (``_quantise``; may fall
        outside the group's type: see ``_fits``), and codebook ids [N] int64 of
        the vector-quantised ones, input order. Ids: unless ``full`` or the count changed,
        a row keeps its previous id while its squared distance to that centroid stays within
        max(L, d0) + HYSTERESIS * L (L: ``_limit``; d0: the row's distance when the id was
        chosen): fewer id changes, less time. Sets ``self._new_dist``."""
        out, self._new_dist = {}, {}
        for name, x in feats.items():
            prev = self._feats.get(name)
            if name in self._scalar and not full and prev is not None and prev.shape == x.shape:
                # the previous values when no row changed
                out[name] = self._ids[name] if x is prev or torch.equal(x, prev) \
                    else self._quantise(name, x, self._ids[name])
                continue
            if name in self._scalar:
                out[name] = self._quantise(name, x)
                continue
            books = self._books[name]
            if full or prev is None or prev.shape != x.shape:
                ids = kmeans.assign(x, books)
                out[name], self._new_dist[name] = ids, _sqdist(x, books, ids)
                continue
            if x is prev or torch.equal(x, prev):  # no row changed: the same ids and distances
                out[name], self._new_dist[name] = self._ids[name], self._dist[name]
                continue
            ids, dist = self._ids[name].clone(), self._dist[name].clone()
            rows = (x != prev).any(1).nonzero()[:, 0]
            limit = self._limits[name]
            allowed = dist[rows].clamp(min=limit) + HYSTERESIS * limit
            far = _sqdist(x.index_select(0, rows), books, ids[rows]) > allowed
            rows, allowed = rows[far], allowed[far]
            # first the centroids nearest to the old one, then (rarely) the whole codebook
            xr = x.index_select(0, rows)  # [M, D]
            ids[rows] = kmeans.assign_local(xr, books, self._near[name].index_select(0, ids[rows]))
            dist[rows] = _sqdist(xr, books, ids[rows])
            rows = rows[dist[rows] > allowed]
            xr = x.index_select(0, rows)
            ids[rows] = kmeans.assign(xr, books)
            dist[rows] = _sqdist(xr, books, ids[rows])
            out[name], self._new_dist[name] = ids, dist
        return out

    def _quantise(self, name: str, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar values [N, D] int64 of a scalar-quantised group's rows ``x`` [N, D]: per
        dimension q = round(u) with u = (x - offset) / step, in every frame type (so an
        interframe's error is bounded like the keyframe's, step / 2); with ``previous`` [N, D]
        (the rows' values in the previous frame) and ``unit`` > 1, previous + round((u -
        previous) / unit) * unit: an interframe changes values in multiples of ``unit``
        (errors within unit * step / 2)."""
        offset, step, _ = self._scalar[name]
        u = (x.double() - offset) / step
        if previous is None or self.unit == 1:
            return torch.round(u).long()
        return previous + torch.round((u - previous) / self.unit).long() * self.unit

    def _ids_in_order(self, ids: dict[str, torch.Tensor], order: np.ndarray) -> dict[str, np.ndarray]:
        """Codec order: ids [N] as uint8 (codebooks <= 256 entries) or uint16, scalar values
        [D, N] in their group's type (after ``_fits``)."""
        out: dict[str, np.ndarray] = {}
        for name, v in ids.items():
            if name in self._scalar:
                out[name] = np.ascontiguousarray(v.cpu().numpy().astype(self._scalar[name][2]).T.take(order, 1))
            else:
                out[name] = v.cpu().numpy().astype(id_dtype(self._books[name].shape[0])).take(order)
        return out

    def _id_payload(self, ids: dict[str, torch.Tensor], order: np.ndarray) -> dict[str, dict]:
        """``ids`` and ``ids_delta`` fields: per group, the raw ids or their differences from the
        previous row (modulo the id type), whichever compresses smaller."""
        values, coded = {}, {}
        for name, raw in self._ids_in_order(ids, order).items():
            diff = np.diff(raw, axis=-1, prepend=np.zeros(raw.shape[:-1] + (1,), raw.dtype))  # wraps
            coded[name] = bool(_size({"d": diff}) < _size({"r": raw}))
            values[name] = diff if coded[name] else raw
        return dict(ids=values, ids_delta=coded)


class _GridOverflow(Exception):
    """Positions span more than 2**21 steps on some axis."""


def _features(frame: GaussianFrame, index: torch.Tensor | None = None,
              keep: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per group, the [N, D] float32 vectors that are quantised (docs/CODEC.md): the unit
    quaternion's smallest three (``_smallest_three``, ``index`` the previous frame's [N]),
    log scales, the opacity logit clipped to +-LOGIT_MAX, sh0, and the SH rest bands
    (coefficient-major). Groups in ``keep`` (the previous frame's, whose attributes did not
    change) are taken from it, not derived again."""
    keep = keep or {}
    names = ["rotation", "scale", "opacity", "sh0"] + [f"shN_{b}" for b in range(1, frame.sh_degree + 1)]
    return {name: keep[name] if name in keep else _feature(frame, name, index).contiguous() for name in names}


def _feature(frame: GaussianFrame, name: str, index: torch.Tensor | None) -> torch.Tensor:
    """One group's vectors [N, D] (``_features``)."""
    if name == "rotation":
        return _smallest_three(_normalised(frame.quats), index)
    if name == "opacity":
        return frame.opacities.clamp(-LOGIT_MAX, LOGIT_MAX).unsqueeze(1)
    if name in ("scale", "sh0"):
        return frame.scales if name == "scale" else frame.sh0
    b = int(name.removeprefix("shN_"))
    return frame.shN[:, b * b - 1:(b + 1) ** 2 - 1, :].reshape(frame.num_gaussians, 3 * (2 * b + 1))


_SOURCE = {"rotation": "quats", "scale": "scales", "opacity": "opacities", "sh0": "sh0", "shN": "shN"}
"""The GaussianFrame attribute each feature group (``shN_b``: by its prefix) derives from."""


def _unchanged(frame: GaussianFrame, previous: GaussianFrame | None) -> set[str]:
    """The attributes of ``frame`` equal to ``previous``'s (same shape, device and values):
    tracked sequences often change only some (the bench's B: means, quats and sh0), and an
    unchanged attribute needs no finiteness check, no features and no new ids (one comparison
    instead of three passes over it: about 10 ms of a 250k SH 2 interframe)."""
    if previous is None or previous.num_gaussians != frame.num_gaussians or previous.sh_degree != frame.sh_degree:
        return set()
    return {name for name in _SOURCE.values()
            if (a := getattr(frame, name)).device == (b := getattr(previous, name)).device and torch.equal(a, b)}


def _smallest_three(unit: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Unit quaternions [N, 4] (wxyz) -> [N, 4] (k, a, b, c): k (0..3, as a float) the index of
    the largest component by magnitude, a, b, c the other three in order after the sign that
    makes that one positive (q and -q are the same rotation); ``decoder.quaternions`` inverts it.
    The three lie in [-1/sqrt(2), 1/sqrt(2)]: 3 values at a step instead of 4 (17 % fewer
    keyframe rotation bytes on the shared sequences, docs/CODEC.md section 14). With ``index``
    ([N] float, the previous frame's k), a row keeps its k while that component is at least
    ROTATION_KEEP of the largest (a changed k changes every value: an escaped interframe row)."""
    magnitude = unit.abs()
    k = magnitude.argmax(1)  # [N]
    if index is not None:
        previous = index.long()
        keep = magnitude.gather(1, previous[:, None])[:, 0] >= ROTATION_KEEP * magnitude.gather(1, k[:, None])[:, 0]
        k = torch.where(keep, previous, k)
    sign = torch.where(unit.gather(1, k[:, None]) < 0, -1.0, 1.0)  # [N, 1]
    others = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]], device=unit.device)
    return torch.cat([k[:, None].to(unit.dtype), unit.gather(1, others[k]) * sign], 1)


def _normalised(q: torch.Tensor) -> torch.Tensor:  # [N, 4] -> [N, 4], zero rows -> (1, 0, 0, 0)
    norm = q.norm(dim=1, keepdim=True)
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=q.device)
    return torch.where(norm > 0, q / norm.clamp(min=1e-30), identity)


def _group_steps(quality: Quality, feats: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Scalar quantisation steps [D] of each group in its feature's units, 0 for vector
    quantisation (rotation: 1 for the index k, the preset's step for the three components)."""
    shared = {"rotation": [1.0] + [quality.rotation] * 3, "scale": quality.scale, "opacity": quality.opacity,
              "sh0": quality.colour / 255 / C0}
    return {name: np.broadcast_to(np.asarray(shared.get(name, quality.sh_rest), np.float64), x.shape[1:])
            for name, x in feats.items()}


def _scalar_quantiser(x: torch.Tensor, step: np.ndarray) -> tuple[np.ndarray, type]:
    """Offset and step of a group's uniform quantiser, [2, D] float32 (payload ``scalar``), and
    the values' type: uint8 when 255 steps cover the rows' range widened by SCALAR_MARGIN of it
    on each side, else uint16.

    Per dimension of ``x`` [N, D]: the step is ``step`` [D], or larger where the type's 255 or
    65,535 steps would not cover the range widened by SCALAR_MARGIN on each side; a uint8 range
    is centred in the 256 levels, a uint16 one starts SCALAR_MARGIN of it above the offset (the
    spare levels are the room later frames of the GOP have before a keyframe is needed: without
    them at the finest steps every frame left the range, and near-lossless below step_scale
    0.02 sent only keyframes)."""
    if len(x):
        lo, hi = (v.double().cpu().numpy() for v in x.aminmax(dim=0))
    else:
        lo = hi = np.zeros(x.shape[1])
    widened = float(np.max((hi - lo) * (1 + 2 * SCALAR_MARGIN) / step)) if x.shape[1] else 0.0
    dtype = np.uint8 if widened <= 255 else np.uint16
    top = np.iinfo(dtype).max
    steps = (np.maximum(step, (hi - lo) * (1 + 2 * SCALAR_MARGIN) / top) * (1 + 1e-6)).astype(np.float32)
    # (1e-6: float32 rounding)
    # whole steps below the range, so that its low end is a level (a constant attribute is kept
    # exactly): uint8 centred; uint16 SCALAR_MARGIN of the range (values near 0, not near 2**15
    # where the high byte would alternate between 127 and 128: 6 % more bytes after zstd)
    span = (hi - lo) / steps
    below = (top - np.ceil(span)) // 2 if dtype is np.uint8 else np.ceil(SCALAR_MARGIN * span)
    offset = np.clip(lo - below * steps.astype(np.float64), -SCALAR_LIMIT / 2, SCALAR_LIMIT / 2)
    return np.stack([offset.astype(np.float32), steps]), dtype


def _sorted_codebook(cb: np.ndarray) -> np.ndarray:
    """Distinct rows, sorted along the codebook's first principal axis so that similar entries
    get nearby ids (differences of neighbouring ids then compress better)."""
    cb = np.unique(cb, axis=0)
    x = cb.astype(np.float64)
    x -= x.mean(0)
    axis = np.linalg.svd(x, full_matrices=False)[2][0] if len(x) > 1 else np.ones(x.shape[1])
    return np.ascontiguousarray(cb[np.argsort(x @ axis, kind="stable")])


def _step_and_unit(means: np.ndarray, config: CodecConfig) -> tuple[float, int, bool]:
    """Position step (a float32 value), interframe unit (in steps) and whether the positions lie
    on a lattice (a voxelised capture) for a keyframe.

    Step: explicit, or alpha x the 5 % NN-distance quantile; if the positions lie on a lattice
    of that spacing (voxelised captures), the lattice spacing; grown if needed so that every
    axis spans fewer than 2**21 steps. Unit: ``2 * tolerance + 1``, by default 1 (interframe
    positions within step/2, as the keyframe's: a flat GOP).
    """
    span = float((means.max(0) - means.min(0)).max()) if len(means) else 0.0
    step, lattice = (config.step, False) if config.step is not None else _nn_step(means, config)
    unit = 2 * config.tolerance + 1 if config.tolerance is not None else 1
    return float(np.float32(max(step, span / (2**morton.BITS - 2), 1e-30))), unit, lattice


def _nn_step(means: np.ndarray, config: CodecConfig) -> tuple[float, bool]:
    """alpha x the 5 % NN-distance quantile, or a lattice spacing (docs/CODEC.md section 7),
    and whether it is the latter."""
    if len(means) < 2:
        return 1.0, False
    rng = np.random.default_rng(config.seed)
    sample = means[rng.choice(len(means), min(NN_SAMPLE, len(means)), replace=False)]
    # (an unbalanced tree is built 30 % faster; the distances are exact either way)
    dist, _ = cKDTree(means, balanced_tree=False, compact_nodes=False).query(sample, k=2)
    nn = dist[:, 1][dist[:, 1] > 0]
    if not len(nn):
        return 1.0, False
    d = float(np.quantile(nn, NN_QUANTILE))
    lattice = _lattice_spacing(means, sample, d)
    return (lattice, True) if lattice is not None else (config.steps.alpha * d, False)


def _lattice_spacing(means: np.ndarray, sample: np.ndarray, d: float) -> float | None:
    """The spacing of a uniform lattice all positions lie on, when ``d`` is (nearly) it."""
    lo = means.min(0)
    axis = int(np.argmax(means.max(0) - lo))
    cells = np.rint((means[:, axis].max() - lo[axis]) / d)
    if cells < 1:
        return None
    spacing = (means[:, axis].max() - lo[axis]) / cells  # refined over the whole span
    k = (sample - lo) / spacing
    return spacing if np.abs(k - np.rint(k)).max() <= 1e-3 else None


def _positions(means: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid origin (float32 [3]), Morton order [N] and the sorted codes' differences as
    little-endian byte planes (uint8 [W, N], W = 1, 2, 4 or 8 bytes)."""
    # per column: numpy's min(0) over [N, 3] is ~10x slower
    origin = np.array([c.min() if len(c) else 0.0 for c in means.T], np.float32)
    q = np.maximum(np.rint((means - origin.astype(np.float64)) / step), 0)
    if q.size and q.max() >= 2**morton.BITS:
        raise _GridOverflow
    codes = morton.encode(q.astype(np.int64))
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    return origin, order, _planes(np.diff(codes, prepend=np.uint64(0)))


def _planes(deltas: np.ndarray) -> np.ndarray:
    """Morton code differences [N] uint64 as little-endian byte planes (uint8 [W, N], W = 1, 2,
    4 or 8 bytes: the narrowest type that holds them all)."""
    deltas = _narrow_uint(deltas)
    planes = deltas.astype(deltas.dtype.newbyteorder("<")).view(np.uint8).reshape(len(deltas), deltas.itemsize)
    return np.ascontiguousarray(planes.T)


def _narrow_uint(a: np.ndarray) -> np.ndarray:
    top = int(a.max()) if a.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return np.ascontiguousarray(a.astype(dt))
    return np.ascontiguousarray(a.astype(np.uint64))  # (an unsigned 64-bit value always fits)


def _small_rows(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns of ``v`` [D, M] (signed ints, D <= SMALL_DIMS) as small-rows codes [M] uint8 and
    the escaped columns [D, E] (``decoder.unpack_small``): a column whose values are all in
    -1..1 is one byte, the sum of (v[j] + 1) * 3**j; zstd codes these bytes by their frequency
    (interframe residuals are mostly -1, 0, 1: docs/CODEC.md section 12). Every column is
    escaped instead when that costs fewer bits by ``_literal_bits`` (few small columns: each
    ESCAPE code costs zstd at least 1 bit)."""
    # v + 1 as uint8 (clipped first): 0..2 for a small value, 3 or 255 for another. Row by row
    # (D <= 5 rows of M) in uint8: at most 2 x (1 + 3 + ... + 3**4) = 242 for a small column;
    # the others wrap, and are replaced by ESCAPE
    u = np.clip(v, -2, 2).astype(np.uint8)  # [D, M]; -2 and -1 wrap to 254 and 255
    u += 1
    small = np.ones(v.shape[1], bool)
    codes = np.zeros(v.shape[1], np.uint8)
    for j, row in enumerate(u):
        small &= row <= 2
        codes += row * np.uint8(3**j)
    codes[~small] = ESCAPE
    # every 4th column: about the same estimate in a quarter of the time
    some, small4 = v[:, ::4], small[::4]
    escaped_bits = _literal_bits(_narrow_int(some[:, ~small4]))
    if _literal_bits(codes[None, ::4]) + escaped_bits >= _literal_bits(_narrow_int(some)):
        return np.full(v.shape[1], ESCAPE, np.uint8), v
    return codes, v.take(np.flatnonzero(~small), axis=1)


def _position_moves(moves: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The interframe's moves [M, 3] (int32, in units, codec order) as (``pos_block``,
    ``pos_base`` [3, B], residuals [3, M]) (docs/CODEC.md section 6): either differences along
    the order (block 0, no base; neighbours that move alike cost little: articulated motion), or
    the median move of each block of POS_BLOCK rows (differences along the blocks) and each
    row's difference from its block's (neighbours that move alike but each with its own jitter:
    re-optimised frames), whichever costs fewer bits by ``_literal_bits``."""
    v = np.ascontiguousarray(moves.T)  # [3, M]
    delta = np.diff(v, axis=1, prepend=0)
    m, b = len(moves), POS_BLOCK
    blocks = -(-m // b)
    none = np.zeros((3, 0), np.int32)
    if blocks < 2:
        return 0, none, delta
    padded = np.pad(v, ((0, 0), (0, blocks * b - m)), mode="edge")  # [3, B * b]
    medians = np.partition(padded.reshape(3, blocks, b), b // 2, axis=2)[:, :, b // 2]  # [3, B]
    residual = v - np.repeat(medians, b, axis=1)[:, :m]
    base = np.diff(medians, axis=1, prepend=0)
    # every 4th column of the residuals: the same choice on the shared sequences, in a quarter of the time
    if 4 * _literal_bits(_narrow_int(residual[:, ::4])) + _literal_bits(_narrow_int(base)) \
            < 4 * _literal_bits(_narrow_int(delta[:, ::4])):
        return b, base, residual
    return 0, none, delta


def _literal_bits(a: np.ndarray) -> float:
    """About the bits zstd's Huffman-coded literals spend on the bytes of each row of ``a``
    [D, K] (ints, as stored): the order-0 code length of each byte, at least 1 bit."""
    bits = 0.0
    for row in np.ascontiguousarray(a).view(np.uint8).reshape(len(a), -1):
        counts = np.bincount(row, minlength=256)
        counts = counts[counts > 0]
        bits += float(counts @ np.maximum(1.0, -np.log2(counts / len(row))))
    return bits


def _narrow_int(a: np.ndarray) -> np.ndarray:
    top = max(int(a.max()), -int(a.min())) if a.size else 0  # (no |a| array: faster)
    for dt in (np.int8, np.int16, np.int32):
        if top <= np.iinfo(dt).max:
            return np.ascontiguousarray(a.astype(dt))
    raise CodecError("interframe delta beyond int32")


def _sorted_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a)] bool: whether each element of ``a`` is in ``b`` (both sorted: np.isin sorts again)."""
    if not len(b):
        return np.zeros(len(a), bool)
    return b[np.minimum(np.searchsorted(b, a), len(b) - 1)] == a


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(mask, bitorder="little")


def _arrays(payload: dict):
    for v in payload.values():
        if isinstance(v, dict):
            yield from _arrays(v)
        elif isinstance(v, np.ndarray):
            yield v


def _size(payload: dict) -> int:
    """Estimated wire size: zstd level 1 of all arrays' bytes. The protocol compresses at level
    3 (and, for large bodies, also without short matches); level 1 is 3x faster and, on the
    shared sequences, within 3 % of the wire size and leads to the same frame choices (B's
    interframe: 3.5 ms against 11.7 at level 3, 504 kB against 552 kB; the wire's 504 kB).

    A compressor per call (about 20 us): zstandard objects must not be shared between threads,
    and encoders of different sequences run in parallel threads (docs/NOTES.md, "Thread safety
    of the encode path")."""
    return len(zstandard.ZstdCompressor(level=1).compress(b"".join(a.tobytes() for a in _arrays(payload))))


def _runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of sorted ``codes`` [N]: each row's occurrence among the rows of its code (0 for the
    first) and its code's row count, both [N] int64 (a pass over runs, not a sorted search)."""
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, len(codes)])
    return np.arange(len(codes)) - np.repeat(starts, lengths), np.repeat(lengths, lengths)


def _limit(x: torch.Tensor, dist: torch.Tensor) -> float:
    """L of a group: the keyframe's mean squared VQ distortion, at least 1e-4 x the features'
    total variance (an RMSE of 1 % of their spread), so that tiny or lossless codebooks do not
    turn every small change into an id change or a keyframe."""
    if not len(x):
        return 0.0
    return max(float(dist.mean()), 1e-4 * float(x.var(0, unbiased=False).sum()))


def _sqdist(x: torch.Tensor, books: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Squared distance of each row of x [N, D] to its centroid books[ids] ([K, D], [N]) -> [N]
    (index_select and in-place arithmetic: a third of the time of books[ids])."""
    diff = books.index_select(0, ids)
    torch.sub(x, diff, out=diff)
    return diff.pow_(2).sum(1)


def _check_finite(frame: GaussianFrame, checked: set[str]) -> None:
    """CodecError for a non-finite value (a NaN opacity; +-Inf opacities are allowed), except in
    the attributes ``checked`` already."""
    for name in ("means", "scales", "quats", "sh0", "shN"):
        if name not in checked and not np.isfinite(getattr(frame, name).detach().cpu().numpy()).all():
            raise CodecError(f"{name} has non-finite values")
    if "opacities" not in checked and np.isnan(frame.opacities.detach().cpu().numpy()).any():
        raise CodecError("opacities have NaN values")
