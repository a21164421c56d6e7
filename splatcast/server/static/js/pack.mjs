// Activate decoded Gaussians and pack them into Spark's 16-byte PackedSplats layout.
//
// Layout (Spark 2.x `PackedSplats`, default encoding; see `setPackedSplat` in
// @sparkjsdev/spark/dist/spark.module.js), four uint32 words per splat:
//   w0 = R | G << 8 | B << 16 | A << 24          (uint8 colour and opacity)
//   w1 = half(x) | half(y) << 16                  (float16 centre)
//   w2 = half(z) | octU << 16 | octV << 24        (quaternion axis, octahedral 8+8 bits)
//   w3 = sx | sy << 8 | sz << 16 | angle << 24    (log-scale uint8s, rotation angle 8 bits)
// Activations follow the INRIA 3DGS convention: colour = 0.5 + C0 * sh0 (C0 = 0.28209479),
// opacity = sigmoid(logit), scale = exp(log scale); quaternions are wxyz, not necessarily unit.
//
// SH bands 1..3 go to Spark's extra arrays (`PackedSplats.extra.sh1/sh2/sh3`, `encodeSh1Rgb`
// etc.): band b's 3(2b+1) coefficients (coefficient-major, channel-minor, as in the codec) as
// signed 7-, 8- or 6-bit integers scaled by 63, 127 or 31 (Spark's default shMax of 1), packed
// little-end first into 2, 4 or 4 words per splat.
//
// Every attribute but the centre is a function of one codebook row in the splatcast codec, so
// `StatePacker` encodes each codebook row once (per keyframe) and packs a frame with
// table look-ups; `packSplats` packs arbitrary float arrays the same way (bit-identical to
// Spark's own `setPackedSplat`, checked in web/test/pack.test.mjs).

import { stateMeans } from "./codec.mjs";

export const SH_C0 = 0.28209479177387814;
const LN_SCALE_MIN = -12;
const LN_SCALE_MAX = 9;
const LN_SCALE_ZERO = -30;
const LN_SCALE_STEP = 254 / (LN_SCALE_MAX - LN_SCALE_MIN);

function toUint8(v) {
  const u = Math.round(v * 255);
  return u > 0 ? (u < 255 ? u : 255) : 0; // also NaN -> 0
}

function logScaleToUint8(ls) {
  if (!(ls >= LN_SCALE_ZERO)) return 0; // also NaN
  const u = Math.round((ls - LN_SCALE_MIN) * LN_SCALE_STEP) + 1;
  return u < 1 ? 1 : u > 255 ? 255 : u;
}

// --- per-attribute encoders: arrays of N rows -> Uint32Array [N] of bits in their words ---

/** sh0 [N*3] -> R | G << 8 | B << 16. */
function encodeColors(sh0) {
  const out = new Uint32Array(sh0.length / 3);
  for (let i = 0; i < out.length; i++) {
    out[i] = toUint8(0.5 + SH_C0 * sh0[3 * i]) | (toUint8(0.5 + SH_C0 * sh0[3 * i + 1]) << 8)
      | (toUint8(0.5 + SH_C0 * sh0[3 * i + 2]) << 16);
  }
  return out;
}

/** opacity logits [N] -> A << 24. */
function encodeAlphas(opacities) {
  return Uint32Array.from(opacities, (o) => (toUint8(1 / (1 + Math.exp(-o))) << 24) >>> 0);
}

/** log scales [N*3] -> sx | sy << 8 | sz << 16. */
function encodeScales(scales) {
  const out = new Uint32Array(scales.length / 3);
  for (let i = 0; i < out.length; i++) {
    out[i] = logScaleToUint8(scales[3 * i]) | (logScaleToUint8(scales[3 * i + 1]) << 8)
      | (logScaleToUint8(scales[3 * i + 2]) << 16);
  }
  return out;
}

/** quats wxyz [N*4] -> {axis: octU << 16 | octV << 24, angle: angle << 24} (Spark's OctXy88R8:
 * normalise, w >= 0, rotation angle, octahedral map of the axis). */
function encodeQuats(quats) {
  const n = quats.length / 4;
  const axis = new Uint32Array(n);
  const angle = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    let w = quats[4 * i], x = quats[4 * i + 1], y = quats[4 * i + 2], z = quats[4 * i + 3];
    const qn = Math.sqrt(w * w + x * x + y * y + z * z);
    let u = 128, v = 128, a = 0;
    if (qn > 0) {
      const s = w < 0 ? -1 / qn : 1 / qn;
      w *= s; x *= s; y *= s; z *= s;
      a = Math.round(2 * Math.acos(Math.min(1, w)) * (255 / Math.PI));
      const xyz = Math.sqrt(x * x + y * y + z * z);
      let ax = 1, ay = 0, az = 0;
      if (xyz >= 1e-6) { ax = x / xyz; ay = y / xyz; az = z / xyz; }
      const sum = Math.abs(ax) + Math.abs(ay) + Math.abs(az);
      let px = ax / sum, py = ay / sum;
      if (az < 0) {
        const t = px;
        px = (1 - Math.abs(py)) * (px >= 0 ? 1 : -1);
        py = (1 - Math.abs(t)) * (py >= 0 ? 1 : -1);
      }
      u = Math.round((px * 0.5 + 0.5) * 255);
      v = Math.round((py * 0.5 + 0.5) * 255);
    }
    axis[i] = ((u << 16) | (v << 24)) >>> 0;
    angle[i] = (a << 24) >>> 0;
  }
  return { axis, angle };
}

// float32 -> float16 bits: native Float16Array (round to nearest even) when the engine has it,
// else Spark's own truncating fallback (`toHalfJS`), so we match Spark on either engine.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function toHalfBits(f) {
  f32[0] = f;
  const bits = u32[0];
  const sign = (bits >> 16) & 0x8000;
  const exp = (bits >> 23) & 255;
  const frac = bits & 0x7fffff;
  if (exp === 255) return sign | (frac ? 0x7fff : 0x7c00);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) return e < -10 ? sign : sign | ((frac | 0x800000) >> (1 - e + 13));
  return sign | (e << 10) | (frac >> 13);
}

/** float32 values -> float16 bits (Uint16Array, written into `out`, a new array by default). */
function halves(values, out = new Uint16Array(values.length)) {
  if (typeof Float16Array !== "undefined") { // native conversion, without a temporary array
    new Float16Array(out.buffer, out.byteOffset, values.length).set(values);
  } else {
    for (let i = 0; i < values.length; i++) out[i] = toHalfBits(values[i]);
  }
  return out;
}

// Pack N splats from float16 means [N*3] and per-attribute row encodings into out [N*4]; splat
// i takes row ids.<group>[i] of each encoding.
function combine(n, h, enc, ids, out) {
  const { color, alpha, scale, axis, angle } = enc;
  const { sh0, opacity, scale: scaleIds, rotation } = ids;
  for (let i = 0; i < n; i++) {
    const i3 = 3 * i, i4 = 4 * i, r = rotation[i];
    out[i4] = color[sh0[i]] | alpha[opacity[i]];
    out[i4 + 1] = h[i3] | (h[i3 + 1] << 16);
    out[i4 + 2] = h[i3 + 2] | axis[r];
    out[i4 + 3] = scale[scaleIds[i]] | angle[r];
  }
  return out;
}

/**
 * Pack float arrays: means [N*3], scales [N*3] (log), quats [N*4] (wxyz), opacities [N]
 * (logit), sh0 [N*3]. Returns Uint32Array [N*4].
 */
export function packSplats(frame) {
  const enc = { color: encodeColors(frame.sh0), alpha: encodeAlphas(frame.opacities),
    scale: encodeScales(frame.scales), ...encodeQuats(frame.quats) };
  const n = frame.numGaussians;
  const rows = Uint32Array.from({ length: n }, (_, i) => i);
  return combine(n, halves(frame.means), enc, { sh0: rows, opacity: rows, scale: rows, rotation: rows },
    new Uint32Array(n * 4));
}

const SH_BITS = [7, 8, 6]; // per band 1..3
export const SH_WORDS = [2, 4, 4]; // Uint32 words per splat of SH band 1..3

/** Band b's coefficients [R * 3(2b+1)] -> Spark's words [R * words]. */
function encodeShBand(coeffs, b) {
  const bits = SH_BITS[b - 1], words = SH_WORDS[b - 1];
  const max = (1 << (bits - 1)) - 1;
  const mask = (1 << bits) - 1;
  const per = 3 * (2 * b + 1);
  const rows = coeffs.length / per;
  const out = new Uint32Array(rows * words);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < per; i++) {
      const v = Math.round(Math.max(-max, Math.min(max, coeffs[r * per + i] * max))) & mask; // NaN -> 0
      const bit = i * bits, w = r * words + (bit >>> 5), off = bit & 31;
      out[w] |= v << off;
      if (off + bits > 32) out[w + 1] |= v >>> (32 - off);
    }
  }
  return out;
}

/** `length` elements of a typed array of `Ctor`: a view of `old` when it is large enough. */
function reuse(old, Ctor, length) {
  return old && old.buffer.byteLength >= length * Ctor.BYTES_PER_ELEMENT ? new Ctor(old.buffer, 0, length) : new Ctor(length);
}

/**
 * Packs codec decoder states (codec.mjs) for Spark without expanding their codebooks: each
 * codebook row is encoded once per keyframe (the tables are kept until the codebooks change)
 * and a frame is packed with table look-ups, giving the same words as packSplats and
 * packShBands of `reconstruct(state)`. Scratch arrays are kept from frame to frame.
 */
export class StatePacker {
  constructor() {
    this.codebooks = null; // the codebooks that the tables below encode
    this.rows = null; // per-attribute row encodings
    this.bands = null; // per SH band 1..degree: Spark's words of every codebook row
    this.means = null; // scratch: float32 means, their float16 bits
    this.halves = null;
  }

  tables(state) {
    const cb = state.codebooks;
    if (cb !== this.codebooks) {
      this.rows = { color: encodeColors(cb.sh0.data), alpha: encodeAlphas(cb.opacity.data),
        scale: encodeScales(cb.scale.data), ...encodeQuats(cb.rotation.data) };
      this.bands = [];
      for (let b = 1; b <= state.shDegree; b++) this.bands.push(encodeShBand(cb[`shN_${b}`].data, b));
      this.codebooks = cb;
    }
  }

  /** Spark's PackedSplats words of a state: Uint32Array [N*4], written into `out`. */
  pack(state, out = new Uint32Array(state.n * 4)) {
    this.tables(state);
    const n = state.n;
    this.means = stateMeans(state, reuse(this.means, Float32Array, 3 * n));
    this.halves = halves(this.means, reuse(this.halves, Uint16Array, 3 * n));
    return combine(n, this.halves, this.rows, state.ids, out);
  }

  /** Spark's extra array for SH band b (1..sh_degree) of a state: Uint32Array [N * 2] for
   * band 1, [N * 4] for bands 2 and 3, written into `out`. */
  packSh(state, b, out = new Uint32Array(state.n * SH_WORDS[b - 1])) {
    this.tables(state);
    const words = SH_WORDS[b - 1], lut = this.bands[b - 1], ids = state.ids[`shN_${b}`];
    for (let i = 0; i < state.n; i++) {
      for (let w = 0; w < words; w++) out[i * words + w] = lut[ids[i] * words + w];
    }
    return out;
  }
}

/** Spark's extra SH arrays for float coefficients shN [N * K * 3] at an SH degree (tests). */
export function packShBands(shN, shDegree) {
  const n = shDegree ? shN.length / (3 * ((shDegree + 1) ** 2 - 1)) : 0;
  const k = (shDegree + 1) ** 2 - 1;
  const out = [];
  for (let b = 1, offset = 0; b <= shDegree; offset += 3 * (2 * b + 1), b++) {
    const per = 3 * (2 * b + 1);
    const band = new Float32Array(n * per);
    for (let i = 0; i < n; i++) band.set(shN.subarray(i * 3 * k + offset, i * 3 * k + offset + per), i * per);
    out.push(encodeShBand(band, b));
  }
  return out;
}

/**
 * Robust bounds of the means (2nd and 98th percentile per axis, from a sample), so a few
 * stray Gaussians do not push the camera away.
 * @param {Float32Array} means [N*3]
 * @returns {{center: number[], radius: number}} world units.
 */
export function robustBounds(means) {
  const n = means.length / 3;
  if (n === 0) return { center: [0, 0, 0], radius: 1 };
  const step = Math.max(1, Math.floor(n / 20000));
  const lo = [], hi = [];
  for (let axis = 0; axis < 3; axis++) {
    const vals = [];
    for (let i = 0; i < n; i += step) {
      const v = means[i * 3 + axis];
      if (Number.isFinite(v)) vals.push(v);
    }
    if (vals.length === 0) { lo.push(0); hi.push(0); continue; }
    vals.sort((p, q) => p - q);
    lo.push(vals[Math.floor(0.02 * (vals.length - 1))]);
    hi.push(vals[Math.ceil(0.98 * (vals.length - 1))]);
  }
  const center = lo.map((l, k) => (l + hi[k]) / 2);
  const radius = Math.max(1e-6, 0.5 * Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]));
  return { center, radius };
}
