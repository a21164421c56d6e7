"""FrameDecoder: payload dicts -> GaussianFrame, validating everything (layout: docs/CODEC.md).

Decoding is plain numpy on the CPU with a fixed float32 operation order, so the encoder (which
reconstructs by running this same code on its own payloads) and any other decoder that follows
docs/CODEC.md get bit-identical frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from splatcast.codec import morton
from splatcast.codec.config import CodecError
from splatcast.codec.frame import GaussianFrame

GROUP_DIMS = {"rotation": 4, "scale": 3, "opacity": 1, "sh0": 3,
              "shN_1": 9, "shN_2": 15, "shN_3": 21}
"""Attribute groups and their vector length D. shN_b holds SH band b (2b+1 coefficients x 3
channels, coefficient-major), i.e. shN[:, b*b-1 : (b+1)*(b+1)-1, :] flattened."""

SCALAR_LIMIT = 1e30
"""Scalar quantisers: |offset| < SCALAR_LIMIT and 0 < step < SCALAR_LIMIT / 2**16 (finite values)."""
SCALAR_DTYPES = (np.uint8, np.uint16)
"""Integer types of scalar-quantised values (one per group, set by the keyframe)."""

MAX_Q = 2**24
"""Decoded integer coordinates stay in (-MAX_Q, MAX_Q) so they are exact in float32."""
PREDICTED_BITS = 17
"""Predicted interframes (docs/CODEC.md section 6b) hold grid coordinates in [0, 2**17): their
Morton codes (< 2**51) are exact in a float64, as JavaScript numbers."""
MAX_BLOCK = 2**16
"""Largest ``pos_block`` (rows per block of an interframe's block-median moves, section 6)."""
RANK_ROWS = 1024
"""Codebooks of at most this many rows code a predicted interframe's ids as ranks (section 6b)."""

_INT = (np.int8, np.int16, np.int32)
ESCAPE = 255
"""A code of a small-rows array (``unpack_small``) that takes its row from the escaped rows."""
SMALL_DIMS = 5
"""Rows of at most this many values (3**5 = 243 codes < ESCAPE) may be coded as small rows."""


def group_names(sh_degree: int) -> list[str]:
    """Codebook groups used at an SH degree, in payload order."""
    return ["rotation", "scale", "opacity", "sh0"] + [f"shN_{b}" for b in range(1, sh_degree + 1)]


def id_dtype(codebook_rows: int) -> type:
    """The id type of a codebook: uint8 up to 256 entries, uint16 above."""
    return np.uint8 if codebook_rows <= 256 else np.uint16


@dataclass
class DecoderState:
    """What a decoder keeps between frames (the previous reconstructed frame, in codec order).

    Each attribute group is either vector-quantised (a ``codebooks`` entry; its ``ids`` are
    [N] codebook rows) or scalar-quantised (a ``scalar`` entry, [2, D] float32 rows offset and
    step; its ``ids`` are [D, N] integers q, value = offset + q * step)."""

    sh_degree: int
    step: np.float32
    codebooks: dict[str, np.ndarray]  # name -> [K, D] float32 (vector-quantised groups)
    scalar: dict[str, np.ndarray]  # name -> [2, D] float32 offset, step (scalar-quantised groups)
    origin: np.ndarray  # [3] float32
    q: np.ndarray  # [N, 3] int32 grid coordinates
    ids: dict[str, np.ndarray]  # name -> [N] uint8/uint16 (VQ) or [D, N] uint8/uint16 (scalar)
    tables: dict[str, np.ndarray] = field(default_factory=dict)  # name -> rank_table, made when
    # first needed and shared by the states of a GOP (same codebooks)
    grids: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    # shift -> previous_grid(self, shift), made when first needed (an encoder builds a predicted
    # interframe, then decodes it against the same state: the grid is computed once)

    @property
    def num_gaussians(self) -> int:
        return int(self.q.shape[0])


def decode_payload(state: DecoderState | None, frame_type: str, num_gaussians: int,
                   payload: dict) -> DecoderState:
    """The decoder state after one frame; ``state`` is not modified. Raises ``CodecError``."""
    if not isinstance(payload, dict):
        raise CodecError(f"payload must be a dict, got {type(payload).__name__}")
    if not isinstance(num_gaussians, int) or isinstance(num_gaussians, bool) or num_gaussians < 0:
        raise CodecError(f"num_gaussians must be a non-negative int, got {num_gaussians!r}")
    if frame_type == "keyframe":
        return _keyframe(num_gaussians, payload)
    if state is None:
        raise CodecError(f"{frame_type!r} frame before any keyframe: start decoding at a keyframe")
    if frame_type == "intra":
        return _intra(state, num_gaussians, payload)
    if frame_type == "interframe":
        if "kept" in payload:
            return _predicted(state, num_gaussians, payload)
        return _interframe(state, num_gaussians, payload)
    raise CodecError(f"unknown frame type {frame_type!r}")


def reconstruct(state: DecoderState, previous: tuple[DecoderState, GaussianFrame] | None = None
                ) -> GaussianFrame:
    """The frame a state stands for (float32 CPU tensors). With ``previous`` (the state and
    frame before), tensors whose inputs are the very same arrays are reused, not rebuilt."""
    n, d = state.num_gaussians, state.sh_degree
    cb, ids = state.codebooks, state.ids
    # the previous state and frame when they share this state's codebooks (and so its size)
    reuse = (previous if previous is not None and previous[0].codebooks is cb
             and previous[0].scalar is state.scalar and previous[0].num_gaussians == n else None)

    def unchanged(*names: str) -> bool:
        return reuse is not None and all(ids[name] is reuse[0].ids[name] for name in names)

    def lookup(name: str) -> torch.Tensor:  # [N, D] values (rotation: quaternions); ids validated
        if name in cb:  # codebook rows
            v = np.take(cb[name], ids[name], axis=0, mode="clip")
        else:  # float32 offset + float32(q * step), in place, in the [D, N] layout (faster)
            offset, step = state.scalar[name][:, :, None]  # [D, 1] each
            v = ids[name].astype(np.float32)  # [D, N]
            np.multiply(v, step, out=v)
            np.add(v, offset, out=v)
            v = v.T  # [N, D] view; columns contiguous
        return torch.from_numpy(quaternions(v) if name == "rotation" else np.ascontiguousarray(v))

    def take(name: str) -> torch.Tensor:
        if reuse is not None and unchanged(name):
            tensor: torch.Tensor = getattr(reuse[1], _FIELDS[name])
            return tensor
        return lookup(name)

    if reuse is not None and state.q is reuse[0].q and state.origin is reuse[0].origin:
        means = reuse[1].means
    else:
        m = state.q.astype(np.float32)  # [N, 3]; then float32 q * step + origin, in place
        np.multiply(m, state.step, out=m)
        for column, o in zip(m.T, state.origin):  # (a column at a time: 10x faster than broadcasting)
            column += o
        means = torch.from_numpy(m)
    bands = [f"shN_{b}" for b in range(1, d + 1)]
    if reuse is not None and unchanged(*bands):
        shN = reuse[1].shN
    else:
        shN = torch.cat([lookup(name).view(n, 2 * b + 1, 3) for b, name in enumerate(bands, 1)],
                        1) if bands else torch.zeros((n, 0, 3))
    return GaussianFrame(means=means, scales=take("scale"), quats=take("rotation"),
                         opacities=take("opacity").view(n), sh0=take("sh0"), shN=shN)


_FIELDS = {"scale": "scales", "rotation": "quats", "opacity": "opacities", "sh0": "sh0"}


def quaternions(v: np.ndarray) -> np.ndarray:
    """Quaternions wxyz [N, 4] float32 from the rotation group's values ``v`` [N, 4] float32:
    (k, a, b, c), the "smallest three" of a unit quaternion (e.g. Glenn Fiedler, "Snapshot
    Compression", 2015): k (rounded, clipped to 0..3) is the index of its largest component,
    which is positive and is sqrt(max(0, 1 - (a*a + b*b) - c*c)) in float32, and a, b, c are
    the other three in order. Works on codebook rows as on decoded values."""
    k = np.rint(v[:, 0])  # [N]; at or below 0 counts as 0, at or above 3 as 3
    a, b, c = v[:, 1], v[:, 2], v[:, 3]
    s = a * a
    s += b * b
    s += c * c
    np.subtract(np.float32(1), s, out=s)
    np.maximum(s, np.float32(0), out=s)
    largest = np.sqrt(s, out=s)
    k0, k1, k2, k3 = k <= 0, k == 1, k == 2, k >= 3  # (masks and where: 3x faster than a gather)
    return np.stack([np.where(k0, largest, a), np.where(k0, a, np.where(k1, largest, b)),
                     np.where(k2, largest, np.where(k3, c, b)), np.where(k3, largest, c)], 1)


class FrameDecoder:
    """Stateful decoder, one per subscriber; may start at any keyframe.

    ``decode(frame_type, num_gaussians, payload) -> GaussianFrame`` (tensors on ``device``, in
    the codec's order: Morton order of the last keyframe or intra frame); ``update`` (same
    arguments) checks a frame and advances the state without building it. Both raise
    ``CodecError`` for an intra or interframe before a keyframe and for any payload
    inconsistent with itself or with ``num_gaussians``; the state is left unchanged then.
    Tensors that an interframe does not change are shared with the previous decoded frame:
    treat decoded frames as read-only.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.state: DecoderState | None = None
        self._last: tuple[DecoderState, GaussianFrame] | None = None  # last decoded state and frame (CPU)

    def update(self, frame_type: str, num_gaussians: int, payload: dict) -> DecoderState:
        """The state after this frame (validated; the frame is not reconstructed)."""
        self.state = decode_payload(self.state, frame_type, num_gaussians, payload)
        return self.state

    def decode(self, frame_type: str, num_gaussians: int, payload: dict) -> GaussianFrame:
        previous = self._last if self._last is not None and self._last[0] is self.state else None
        state = self.update(frame_type, num_gaussians, payload)
        self._last = state, reconstruct(state, previous)
        return self._last[1].to(self.device)


# --- frame types -------------------------------------------------------------------------------

def _keyframe(n: int, p: dict) -> DecoderState:
    _keys(p, {"sh_degree", "step", "codebooks", "scalar", "origin", "morton", "ids", "ids_delta"},
          "keyframe payload")
    sh_degree = _int(p, "sh_degree", 0, 3)
    step = p["step"]
    if not isinstance(step, float) or not (0.0 < step < 1e30) or np.float32(step) != step:
        raise CodecError(f"step must be a positive finite float32 value, got {step!r}")
    names = group_names(sh_degree)
    books, scalars = p["codebooks"], p["scalar"]
    if not isinstance(books, dict) or not isinstance(scalars, dict):
        raise CodecError("codebooks and scalar must be dicts")
    if set(books) & set(scalars) or set(books) | set(scalars) != set(names):
        raise CodecError(f"codebooks and scalar: each of the groups {names} in exactly one, got "
                         f"{sorted(map(str, books))} and {sorted(map(str, scalars))}")
    codebooks, scalar = {}, {}
    for name in books:
        cb = _array(books, name, (np.float16,), (None, GROUP_DIMS[name]), f"codebooks.{name}")
        if not 1 <= cb.shape[0] <= 65536 or not np.isfinite(cb).all():
            raise CodecError(f"codebooks.{name}: 1..65536 finite rows expected")
        codebooks[name] = cb.astype(np.float32)
    for name in scalars:
        sq = _array(scalars, name, (np.float32,), (2, GROUP_DIMS[name]), f"scalar.{name}")
        if not (np.all(np.abs(sq[0]) < SCALAR_LIMIT) and np.all(sq[1] > 0)
                and np.all(sq[1] < SCALAR_LIMIT / 2**16)):
            raise CodecError(f"scalar.{name}: offsets within +-1e30 and steps in (0, 1e30 / 2**16) expected")
        scalar[name] = sq
    origin, q = _positions(n, p)
    ids = _ids(n, p, codebooks, {name: SCALAR_DTYPES for name in scalar})
    return DecoderState(sh_degree, np.float32(step), codebooks, scalar, origin, q, ids)


def _intra(state: DecoderState, n: int, p: dict) -> DecoderState:
    _keys(p, {"origin", "morton", "ids", "ids_delta"}, "intra payload")
    origin, q = _positions(n, p)
    ids = _ids(n, p, state.codebooks, {name: (state.ids[name].dtype.type,) for name in state.scalar})
    return DecoderState(state.sh_degree, state.step, state.codebooks, state.scalar, origin, q, ids, state.tables)


def _interframe(state: DecoderState, n: int, p: dict) -> DecoderState:
    _keys(p, {"unit", "pos_mask", "pos_block", "pos_base", "pos_small", "pos_delta", "id_masks", "id_small",
              "id_values"}, "interframe payload")
    if n != state.num_gaussians:
        raise CodecError(f"interframe for {n} Gaussians, reference frame has {state.num_gaussians}")
    unit = _int(p, "unit", 1, 2**21)
    rows = np.flatnonzero(_mask(p, "pos_mask", n, "pos_mask"))
    block = _int(p, "pos_block", 0, MAX_BLOCK)
    base = _array(p, "pos_base", _INT, (3, -(-len(rows) // block) if block else 0), "pos_base")
    small = _array(p, "pos_small", (np.uint8,), (len(rows),), "pos_small")
    moves = unpack_small(small, _array(p, "pos_delta", _INT, (3, None), "pos_delta"), "pos_small")  # [3, M]
    if block:  # each block's median move (differences along the blocks) plus each row's residual
        moves += np.repeat(np.cumsum(base, axis=1, dtype=np.int64), block, axis=1)[:, :len(rows)]
    else:  # differences along the order
        moves = np.cumsum(moves, axis=1, dtype=np.int64)
    if moves.size and max(moves.max(), -moves.min()) >= 2 * MAX_Q:
        raise CodecError(f"pos_delta moves a coordinate beyond +-{MAX_Q} steps")
    if unit > 1:
        moves *= unit  # [3, M] int64, in steps
    q = state.q.copy() if len(rows) else state.q  # state arrays are never written in place
    for column, move in zip(q.T, moves):  # (one axis at a time: 1.5x faster than q[rows])
        column[rows] += move
    if len(rows) and max(q.max(), -q.min()) >= MAX_Q:
        raise CodecError(f"pos_delta moves a coordinate beyond +-{MAX_Q} steps")
    names = list(state.ids)
    masks, values = _dict(p, "id_masks", names), _dict(p, "id_values", names)
    smalls = p["id_small"]
    if not isinstance(smalls, dict) or not set(smalls) <= set(names):
        raise CodecError(f"id_small must be a dict with keys among {names}")
    ids = {}
    for name in names:
        rows = np.flatnonzero(_mask(masks, name, n, f"id_masks.{name}"))
        old = state.ids[name]  # [N] codebook ids or [D, N] scalar values
        what = f"id_values.{name}"
        if name in smalls:  # small rows (-1, 0, +1 per value) coded, the others escaped
            if old.ndim == 1 or old.shape[0] > SMALL_DIMS:
                raise CodecError(f"id_small.{name}: only scalar groups of at most {SMALL_DIMS} values")
            small = _array(smalls, name, (np.uint8,), (len(rows),), f"id_small.{name}")
            v = unpack_small(small, _array(values, name, (old.dtype.type,), (old.shape[0], None), what)
                             .view(np.int8 if old.dtype == np.uint8 else np.int16), f"id_small.{name}")
            v = v.astype(old.dtype)  # modulo 2**8 or 2**16
        else:
            v = _array(values, name, (old.dtype.type,), old.shape[:-1] + (len(rows),), what)
        if not len(rows):
            ids[name] = old  # state arrays are never written in place
            continue
        if unit > 1 and name in state.scalar:  # scalar values change in units, modulo 2**8 or 2**16
            v = v * old.dtype.type(unit % (1 << 8 * old.itemsize))
        new = old.copy()
        for row, change in zip(new.reshape(-1, n), v.reshape(-1, len(rows))):  # (a row at a time: 2-3x
            row[rows] += change  # faster) the differences, modulo 2**8 or 2**16
        if name in state.codebooks:
            _check_ids(new, state.codebooks[name].shape[0], f"id_values.{name}")
        ids[name] = new
    return DecoderState(state.sh_degree, state.step, state.codebooks, state.scalar, state.origin, q, ids,
                        state.tables)


def _predicted(state: DecoderState, n: int, p: dict) -> DecoderState:
    """A predicted interframe (docs/CODEC.md section 6b): the previous frame's voxels that are
    kept, new voxels in the shell around them, other new Morton codes, and each row's values
    against a prediction."""
    _keys(p, {"origin", "shift", "kept", "shell", "morton", "values"}, "predicted interframe payload")
    origin = _array(p, "origin", (np.float32,), (3,), "origin")
    if not np.isfinite(origin).all():
        raise CodecError("origin must be finite")
    shift = _array(p, "shift", (np.int32,), (3,), "shift").astype(np.int64)
    prev_codes, prev_rows, shell = previous_grid(state, shift)
    kept = _mask(p, "kept", len(prev_rows), "kept")
    in_shell = _mask(p, "shell", len(shell), "shell")
    planes = _array(p, "morton", (np.uint8,), (None, None), "morton")
    if planes.shape[0] not in (1, 2, 4, 8):
        raise CodecError(f"morton: {planes.shape[0]} byte planes, expected 1, 2, 4 or 8")
    counts = (int(kept.sum()), int(in_shell.sum()), planes.shape[1])
    if sum(counts) != n:
        raise CodecError(f"kept rows, shell voxels and other new codes {counts} do not add up to {n} Gaussians")
    deltas = np.ascontiguousarray(planes.T).view(f"<u{planes.shape[0]}").reshape(-1).astype(np.uint64)
    other = np.cumsum(deltas, dtype=np.uint64)
    if len(deltas) and (int(deltas.max()) >= 2 ** (3 * PREDICTED_BITS) or np.any(other[1:] < other[:-1])
                        or int(other[-1]) >= 2 ** (3 * PREDICTED_BITS)):
        raise CodecError(f"morton: new codes beyond {PREDICTED_BITS} bits per axis")
    new_codes = np.sort(np.concatenate([shell[in_shell], other]))
    codes = np.concatenate([prev_codes[kept], new_codes])
    order = np.argsort(codes, kind="stable")  # kept rows first among equal codes
    source = np.concatenate([prev_rows[kept], np.full(len(new_codes), -1)])[order]  # previous row or -1
    names = list(state.ids)
    values = _dict(p, "values", names)
    ids = {}
    for name in names:
        old = state.ids[name]
        v = _array(values, name, (old.dtype.type,), old.shape[:-1] + (n,), f"values.{name}")
        ids[name] = predict_values(state, name, source, v)
    return DecoderState(state.sh_degree, state.step, state.codebooks, state.scalar, origin,
                        morton.decode(codes[order]), ids, state.tables)


def previous_grid(state: DecoderState, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a predicted interframe (docs/CODEC.md section 6b): the previous frame's Morton codes
    [M] uint64 on the new grid (its q + ``shift``), sorted (ties by row), the previous row of
    each [M] int64, and the shell: the distinct codes [S] uint64, sorted, of the previous
    voxels' face neighbours within [0, 2**PREDICTED_BITS) that are no previous voxel. Raises
    ``CodecError`` when a shifted coordinate leaves [0, 2**PREDICTED_BITS). Kept in
    ``state.grids`` (read-only arrays)."""
    key = tuple(int(v) for v in shift)
    if key not in state.grids:
        grid = _previous_grid(state, shift)
        for a in grid:
            a.flags.writeable = False
        state.grids[key] = grid
    return state.grids[key]


def _previous_grid(state: DecoderState, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = state.q.astype(np.int64) + shift
    if q.size and (int(q.min()) < 0 or int(q.max()) >= 2**PREDICTED_BITS):
        raise CodecError(f"shift moves the previous frame beyond [0, 2**{PREDICTED_BITS}) steps")
    codes = morton.encode(q)
    rows = np.argsort(codes, kind="stable")
    codes = codes[rows]
    near = np.sort(np.concatenate([morton.step(codes[inside], a, d) for a in range(3) for d in (1, -1)
                                   for inside in [q[rows, a] < 2**PREDICTED_BITS - 1 if d > 0 else q[rows, a] > 0]]))
    near = near[np.r_[True, near[1:] != near[:-1]]] if len(near) else near  # distinct (np.unique is slower)
    found = np.searchsorted(codes, near)
    shell = near[codes[np.minimum(found, len(codes) - 1)] != near] if len(codes) else near
    return codes, rows, shell


def rank_table(codebook: np.ndarray) -> np.ndarray:
    """[K, K] uint16: row a lists the codebook's ids by squared distance to entry a (float64
    (c[a, d] - c[b, d])**2 summed over d in order from 0), ties by id (docs/CODEC.md 6b)."""
    c = codebook.astype(np.float64)
    dist = np.zeros((len(c), len(c)))
    for d in range(c.shape[1]):
        dist += (c[:, None, d] - c[None, :, d]) ** 2
    return np.argsort(dist, axis=1, kind="stable").astype(np.uint16)


def ranked(state: DecoderState, name: str) -> np.ndarray | None:
    """The ``rank_table`` of a group whose codebook has at most RANK_ROWS rows (made once per
    GOP, kept in ``state.tables``), else None (a scalar group or a larger codebook)."""
    if name not in state.codebooks or state.codebooks[name].shape[0] > RANK_ROWS:
        return None
    if name not in state.tables:
        state.tables[name] = rank_table(state.codebooks[name])
    return state.tables[name]


def predict_values(state: DecoderState, name: str, source: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Values of one group of a predicted interframe (docs/CODEC.md section 6b) from its coded
    ``v`` ([N] or [D, N]) and ``source`` [N] (each row's previous row, -1 for a new voxel).

    A kept row is predicted by its previous value, a new row by the row before it (0 for row 0);
    codebooks of at most RANK_ROWS rows code the rank of the id in the predictor's row of
    ``rank_table``, other groups the difference from the predictor modulo 2**8 or 2**16."""
    old, n = state.ids[name], len(source)
    kept = source >= 0
    table = ranked(state, name)
    constant = _constant(old) if table is None else None
    if constant is not None and n and not v.any() and (kept[0] or not constant.any()):
        # fast path (voxel captures: one scale, rotation, opacity for all): every previous value
        # is the same and nothing changes, so every row has it (what the general path gives)
        return np.repeat(constant[..., None], n, axis=-1)
    pred_kept = old[..., source[kept]]
    if table is not None:
        if v.size and int(v.max()) >= table.shape[0]:
            raise CodecError(f"values.{name}: rank {int(v.max())} out of range for a codebook of {table.shape[0]}")
        out = np.zeros(n, old.dtype)
        out[kept] = table[pred_kept, v[kept]]
        # new rows follow the row before them: in runs, one step of every run at a time
        new = np.flatnonzero(~kept)
        depth = new - np.maximum.accumulate(np.where(kept, np.arange(n), -1))[new] - 1
        by_depth = new[np.argsort(depth, kind="stable")]
        bounds = np.searchsorted(np.sort(depth), np.arange(int(depth.max()) + 2 if len(new) else 0))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rows = by_depth[lo:hi]
            before = out[np.maximum(rows - 1, 0)]
            before[rows == 0] = 0
            out[rows] = table[before, v[rows]]
        return out
    # differences modulo the type: a kept row adds to its previous value, a run of new rows
    # adds up from the row before the run (0 before row 0)
    last = np.maximum.accumulate(np.where(kept, np.arange(n), -1))  # [N] last kept row <= i
    base = np.zeros(old.shape[:-1] + (n,), old.dtype)
    base[..., kept] = pred_kept + v[..., kept]
    steps = np.where(kept, 0, v).astype(old.dtype)
    run = np.cumsum(steps, axis=-1, dtype=old.dtype)
    start = np.where(last >= 0, last, 0)
    out = np.where(last >= 0, base[..., start] + run - run[..., start], run)
    out = out.astype(old.dtype)
    if name in state.codebooks:
        _check_ids(out, state.codebooks[name].shape[0], f"values.{name}")
    return out


def _constant(values: np.ndarray) -> np.ndarray | None:
    """The value [D] of a scalar group whose rows ([D, N], N > 0) all have the same, else None."""
    if not values.shape[-1]:
        return None
    first = values[..., :1]
    return first[..., 0] if (values == first).all() else None


def unpack_small(codes: np.ndarray, escaped: np.ndarray, what: str) -> np.ndarray:
    """Rows [D, M] int64 of an array coded as small rows (docs/CODEC.md section 6): ``codes``
    [M] uint8, each either sum over j of (v[j] + 1) * 3**j for a row whose D values are all in
    -1..1, or ESCAPE: the next column of ``escaped`` [D, E] (as many columns as ESCAPE codes)."""
    d = escaped.shape[0]
    esc = codes == ESCAPE
    if len(codes) and (int(codes[~esc].max(initial=0)) >= 3**d or d > SMALL_DIMS):
        raise CodecError(f"{what}: codes must be below 3**{d} or {ESCAPE}")
    if int(esc.sum()) != escaped.shape[1]:
        raise CodecError(f"{what}: {int(esc.sum())} escape codes for {escaped.shape[1]} escaped rows")
    if escaped.shape[1] == len(codes):  # every row escaped
        return escaped.astype(np.int64)
    out = _SMALL_ROWS[:d].take(codes, axis=1)  # [D, M]
    for row, values in zip(out, escaped):  # (one dimension at a time: 1.7x faster than out[:, esc])
        row[esc] = values
    return out


_SMALL_ROWS = (np.arange(256)[None] // 3 ** np.arange(SMALL_DIMS)[:, None] % 3 - 1).astype(np.int64)
"""[SMALL_DIMS, 256] int64: the values of each small-rows code (``unpack_small``; codes at or
above 3**D are refused before they are looked up)."""


# --- fields ------------------------------------------------------------------------------------

def _positions(n: int, p: dict) -> tuple[np.ndarray, np.ndarray]:
    origin = _array(p, "origin", (np.float32,), (3,), "origin")
    if not np.isfinite(origin).all():
        raise CodecError("origin must be finite")
    planes = _array(p, "morton", (np.uint8,), (None, n), "morton")
    if planes.shape[0] not in (1, 2, 4, 8):
        raise CodecError(f"morton: {planes.shape[0]} byte planes, expected 1, 2, 4 or 8")
    deltas = np.ascontiguousarray(planes.T).view(f"<u{planes.shape[0]}").reshape(n)
    codes = np.cumsum(deltas, dtype=np.uint64)
    if n and (int(deltas.max()) >= 2**63 or np.any(codes[1:] < codes[:-1]) or int(codes[-1]) >= 2**63):
        raise CodecError("morton deltas overflow 63-bit codes")
    return origin, morton.decode(codes)


def _ids(n: int, p: dict, codebooks: dict[str, np.ndarray], scalar: dict[str, tuple]
         ) -> dict[str, np.ndarray]:
    """Codebook ids ([N], group's id dtype) and scalar values ([D, N], one of the dtypes in
    ``scalar[name]``) of every group, group order as in ``group_names``."""
    names = [name for name in GROUP_DIMS if name in codebooks or name in scalar]
    groups, coded = _dict(p, "ids", names), _dict(p, "ids_delta", names)
    out = {}
    for name in names:
        if name in codebooks:
            ids = _array(groups, name, (id_dtype(codebooks[name].shape[0]),), (n,), f"ids.{name}")
        else:
            ids = _array(groups, name, scalar[name], (GROUP_DIMS[name], n), f"ids.{name}")
        if not isinstance(coded[name], bool):
            raise CodecError(f"ids_delta.{name} must be a bool")
        if coded[name]:  # differences from the previous row, modulo 2**8 or 2**16
            ids = np.cumsum(ids, axis=-1, dtype=ids.dtype)
        if name in codebooks:
            _check_ids(ids, codebooks[name].shape[0], f"ids.{name}")
        out[name] = ids
    return out


def _check_ids(ids: np.ndarray, k: int, what: str) -> None:
    if ids.size and int(ids.max()) >= k:
        raise CodecError(f"{what}: id {int(ids.max())} out of range for a codebook of {k}")


def _mask(p: dict, key: str, n: int, what: str) -> np.ndarray:
    packed = _array(p, key, (np.uint8,), ((n + 7) // 8,), what)
    bits = np.unpackbits(packed, bitorder="little")
    if bits[n:].any():
        raise CodecError(f"{what}: padding bits beyond {n} must be zero")
    return bits[:n].astype(bool)


def _keys(p: dict, keys: set[str], what: str) -> None:
    if set(p) != keys:
        raise CodecError(f"{what}: expected keys {sorted(keys)}, got {sorted(map(str, p))}")


def _dict(p: dict, key: str, names: list[str]) -> dict:
    d = p[key]
    if not isinstance(d, dict):
        raise CodecError(f"{key} must be a dict")
    _keys(d, set(names), key)
    return d


def _int(p: dict, key: str, lo: int, hi: int) -> int:
    v = p[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CodecError(f"{key} must be an int in {lo}..{hi}, got {v!r}")
    return v


def _array(p: dict, key: str, dtypes: tuple, shape: tuple, what: str) -> np.ndarray:
    a = p[key]
    if not isinstance(a, np.ndarray) or a.dtype.type not in dtypes:
        got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise CodecError(f"{what}: expected an array of {[d.__name__ for d in dtypes]}, got {got}")
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        raise CodecError(f"{what}: shape {a.shape}, expected {shape}")
    return a

