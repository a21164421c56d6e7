// splatcast codec decoder in JavaScript (spec: docs/CODEC.md; Python twin:
// splatcast/codec/decoder.py). Bit-identical to the Python decoder: integer work is exact and
// every float operation is one float32 rounding in the same order (means = origin + q * step).
//
// Payloads come from protocol.mjs (arrays are WireArrays). A frame decodes to float32 arrays:
// means [N*3], scales [N*3] (log), quats [N*4] (wxyz), opacities [N] (logit), sh0 [N*3],
// shN [N*K*3] with K = (sh_degree + 1)^2 - 1, in the codec's order.
import { WireArray } from "./protocol.mjs";

export class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = "CodecError";
  }
}

/** Codebook groups -> vector length D; shN_b is SH band b, coefficient-major. */
export const GROUP_DIMS = { rotation: 4, scale: 3, opacity: 1, sh0: 3, shN_1: 9, shN_2: 15, shN_3: 21 };
const MAX_Q = 2 ** 24;
const UINT = ["|u1", "<u2", "<u4", "<u8"];
const INT = ["|i1", "<i2", "<i4"];

export function groupNames(shDegree) {
  const names = ["rotation", "scale", "opacity", "sh0"];
  for (let b = 1; b <= shDegree; b++) names.push(`shN_${b}`);
  return names;
}

function need(cond, msg) {
  if (!cond) throw new CodecError(msg);
}

function keys(p, want, what) {
  const got = Object.keys(p).sort();
  need(got.join() === [...want].sort().join(), `${what}: expected keys ${[...want].sort()}, got ${got}`);
}

function dict(p, key, names) {
  const d = p[key];
  need(d !== null && typeof d === "object" && !(d instanceof WireArray), `${key} must be a dict`);
  keys(d, names, key);
  return d;
}

function intField(p, key, lo, hi) {
  const v = p[key];
  need(Number.isSafeInteger(v) && v >= lo && v <= hi, `${key} must be an int in ${lo}..${hi}, got ${v}`);
  return v;
}

/** Check a WireArray's dtype and shape (null = any length); returns it. */
function array(p, key, dtypes, shape, what) {
  const a = p[key];
  need(a instanceof WireArray && dtypes.includes(a.dtype),
    `${what}: expected an array of ${dtypes}, got ${a instanceof WireArray ? a.dtype : typeof a}`);
  need(a.shape.length === shape.length && shape.every((s, i) => s === null || s === a.shape[i]),
    `${what}: shape [${a.shape}], expected [${shape.map((s) => s ?? "any")}]`);
  return a;
}

function checkIds(ids, k, what) {
  let max = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] > max) max = ids[i];
  need(ids.length === 0 || max < k, `${what}: id ${max} out of range for a codebook of ${k}`);
}

function mask(p, key, n, what) {
  const packed = array(p, key, ["|u1"], [(n + 7) >> 3], what).data;
  const bits = new Uint8Array(n);
  for (let i = 0; i < n; i++) bits[i] = (packed[i >> 3] >> (i & 7)) & 1;
  if (n & 7) need((packed[packed.length - 1] >> (n & 7)) === 0, `${what}: padding bits beyond ${n} must be zero`);
  return bits;
}

// Morton decode tables: byte k of a 64-bit code holds bits 8k..8k+7; bit 3b+a of the code is
// bit b of axis a. TABLES[k][a][byte] = that byte's contribution to axis a.
const TABLES = Array.from({ length: 8 }, (_, k) => [0, 1, 2].map((a) => {
  const t = new Int32Array(256);
  for (let v = 0; v < 256; v++) {
    for (let j = 0; j < 8; j++) {
      const pos = 8 * k + j;
      if ((v >> j) & 1 && pos % 3 === a) t[v] |= 1 << ((pos - a) / 3);
    }
  }
  return t;
}));

/** Morton deltas (uint8..uint64 WireArray [N]) -> int32 grid coordinates [N*3]. */
function mortonPositions(deltas, n) {
  const q = new Int32Array(n * 3);
  const wide = deltas.dtype === "<u8";
  const words = wide ? new Uint32Array(deltas.data.buffer, deltas.data.byteOffset, 2 * n) : null;
  const narrow = wide ? null : deltas.data;
  let lo = 0, hi = 0; // running code as two uint32 halves (codes < 2^63)
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES;
  for (let i = 0; i < n; i++) {
    const dlo = wide ? words[2 * i] : narrow[i];
    const dhi = wide ? words[2 * i + 1] : 0;
    need(dhi < 0x80000000, "morton deltas overflow 63-bit codes");
    const s = lo + dlo;
    lo = s >>> 0;
    hi = hi + dhi + (s > 0xffffffff ? 1 : 0);
    need(hi < 0x80000000, "morton deltas overflow 63-bit codes");
    const b0 = lo & 255, b1 = (lo >>> 8) & 255, b2 = (lo >>> 16) & 255, b3 = lo >>> 24;
    const b4 = hi & 255, b5 = (hi >>> 8) & 255, b6 = (hi >>> 16) & 255, b7 = hi >>> 24;
    for (let a = 0; a < 3; a++) {
      q[3 * i + a] = t0[a][b0] | t1[a][b1] | t2[a][b2] | t3[a][b3]
        | t4[a][b4] | t5[a][b5] | t6[a][b6] | t7[a][b7];
    }
  }
  return q;
}

function positions(n, p) {
  const origin = array(p, "origin", ["<f4"], [3], "origin").data;
  need(origin.every(Number.isFinite), "origin must be finite");
  const deltas = array(p, "morton", UINT, [n], "morton");
  return { origin, q: mortonPositions(deltas, n) };
}

function idArrays(n, p, codebooks) {
  const groups = dict(p, "ids", Object.keys(codebooks));
  const out = {};
  for (const [name, cb] of Object.entries(codebooks)) {
    const want = cb.rows <= 256 ? "|u1" : "<u2";
    const ids = array(groups, name, [want], [n], `ids.${name}`).data;
    checkIds(ids, cb.rows, `ids.${name}`);
    out[name] = ids;
  }
  return out;
}

function keyframe(n, p) {
  keys(p, ["sh_degree", "step", "codebooks", "origin", "morton", "ids"], "keyframe payload");
  const shDegree = intField(p, "sh_degree", 0, 3);
  const step = p.step;
  need(typeof step === "number" && step > 0 && step < 1e30 && Math.fround(step) === step,
    `step must be a positive finite float32 value, got ${step}`);
  const names = groupNames(shDegree);
  const books = dict(p, "codebooks", names);
  const codebooks = {};
  for (const name of names) {
    const cb = array(books, name, ["<f2"], [null, GROUP_DIMS[name]], `codebooks.${name}`);
    need(cb.shape[0] >= 1 && cb.shape[0] <= 65536 && cb.data.every(Number.isFinite),
      `codebooks.${name}: 1..65536 finite rows expected`);
    codebooks[name] = { rows: cb.shape[0], dim: GROUP_DIMS[name], data: cb.data };
  }
  const { origin, q } = positions(n, p);
  return { shDegree, step, codebooks, origin, q, ids: idArrays(n, p, codebooks), n };
}

function intra(state, n, p) {
  keys(p, ["origin", "morton", "ids"], "intra payload");
  const { origin, q } = positions(n, p);
  return { ...state, origin, q, ids: idArrays(n, p, state.codebooks), n };
}

function interframe(state, n, p) {
  keys(p, ["unit", "pos_mask", "pos_delta", "id_masks", "id_values"], "interframe payload");
  need(n === state.n, `interframe for ${n} Gaussians, reference frame has ${state.n}`);
  const unit = intField(p, "unit", 1, 2 ** 21);
  const m = mask(p, "pos_mask", n, "pos_mask");
  let moved = 0;
  for (let i = 0; i < n; i++) moved += m[i];
  const delta = array(p, "pos_delta", INT, [moved, 3], "pos_delta").data;
  const q = state.q.slice();
  for (let i = 0, j = 0; i < n; i++) {
    if (!m[i]) continue;
    for (let a = 0; a < 3; a++) {
      const v = q[3 * i + a] + delta[3 * j + a] * unit; // exact: |v| < 2^53
      need(Math.abs(v) < MAX_Q, `pos_delta moves a coordinate beyond +-${MAX_Q} steps`);
      q[3 * i + a] = v;
    }
    j++;
  }
  const names = Object.keys(state.codebooks);
  const masks = dict(p, "id_masks", names);
  const values = dict(p, "id_values", names);
  const ids = {};
  for (const name of names) {
    const mk = mask(masks, name, n, `id_masks.${name}`);
    let count = 0;
    for (let i = 0; i < n; i++) count += mk[i];
    const old = state.ids[name];
    const want = old instanceof Uint8Array ? "|u1" : "<u2";
    const v = array(values, name, [want], [count], `id_values.${name}`).data;
    checkIds(v, state.codebooks[name].rows, `id_values.${name}`);
    const next = old.slice();
    for (let i = 0, j = 0; i < n; i++) if (mk[i]) next[i] = v[j++];
    ids[name] = next;
  }
  return { ...state, q, ids };
}

function gather(cb, ids, n) {
  const { dim, data } = cb;
  const out = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    const src = ids[i] * dim;
    for (let d = 0; d < dim; d++) out[i * dim + d] = data[src + d];
  }
  return out;
}

/** The frame a decoder state stands for (see the header comment for the arrays). */
export function reconstruct(state) {
  const { n, codebooks: cb, ids, origin, q, step, shDegree } = state;
  const means = new Float32Array(n * 3);
  const s = Math.fround(step);
  for (let i = 0; i < n * 3; i++) {
    // float32(q) * float32(step), then + origin, each rounded to float32 as numpy does.
    means[i] = origin[i % 3] + Math.fround(q[i] * s);
  }
  const k = (shDegree + 1) ** 2 - 1;
  const shN = new Float32Array(n * k * 3);
  let offset = 0;
  for (let b = 1; b <= shDegree; b++) {
    const band = gather(cb[`shN_${b}`], ids[`shN_${b}`], n);
    const width = (2 * b + 1) * 3;
    for (let i = 0; i < n; i++) shN.set(band.subarray(i * width, (i + 1) * width), i * k * 3 + offset);
    offset += width;
  }
  return {
    numGaussians: n,
    shDegree,
    means,
    scales: gather(cb.scale, ids.scale, n),
    quats: gather(cb.rotation, ids.rotation, n),
    opacities: gather(cb.opacity, ids.opacity, n),
    sh0: gather(cb.sh0, ids.sh0, n),
    shN,
  };
}

/**
 * Stateful decoder, one per stream; may start at any keyframe.
 * decode(frameType, numGaussians, payload) -> frame arrays (see the header comment).
 * Throws CodecError for an intra or interframe before a keyframe or any inconsistent payload;
 * the state is left unchanged then.
 */
export class FrameDecoder {
  constructor() {
    this.state = null;
  }

  decode(frameType, numGaussians, payload) {
    need(Number.isSafeInteger(numGaussians) && numGaussians >= 0, `num_gaussians must be a non-negative int`);
    need(payload !== null && typeof payload === "object", "payload must be a dict");
    let next;
    if (frameType === "keyframe") {
      next = keyframe(numGaussians, payload);
    } else {
      need(this.state !== null, `'${frameType}' frame before any keyframe: start decoding at a keyframe`);
      if (frameType === "intra") next = intra(this.state, numGaussians, payload);
      else if (frameType === "interframe") next = interframe(this.state, numGaussians, payload);
      else throw new CodecError(`unknown frame type '${frameType}'`);
    }
    this.state = next;
    return reconstruct(next);
  }
}
