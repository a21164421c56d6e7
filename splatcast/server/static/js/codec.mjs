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

export const CODEC_NAME = "splatcast-vq";
export const CODEC_VERSION = 5; // the payload layout this decoder reads (Python: codec/config.py)

/** Throws CodecError unless a stream header's codec and codec_version are this decoder's. */
export function checkCodec(codec, version) {
  need(codec === CODEC_NAME, `codec ${JSON.stringify(codec)} is not ${CODEC_NAME}`);
  need(version === CODEC_VERSION, `${CODEC_NAME} stream version ${version} is not supported: this decoder reads version ${CODEC_VERSION} only`);
}

/** Attribute groups -> vector length D; shN_b is SH band b, coefficient-major. */
export const GROUP_DIMS = { rotation: 4, scale: 3, opacity: 1, sh0: 3, shN_1: 9, shN_2: 15, shN_3: 21 };
const MAX_Q = 2 ** 24;
const PREDICTED_BITS = 17; // predicted interframes: coordinates in [0, 2^17), codes < 2^51 (exact numbers)
const MAX_BLOCK = 2 ** 16; // largest pos_block (rows per block of block-median moves)
const RANK_ROWS = 1024; // codebooks up to this size code a predicted interframe's ids as ranks
const SCALAR_LIMIT = 1e30;
const SCALAR_DTYPES = ["|u1", "<u2"];
const INT = ["|i1", "<i2", "<i4"];
const ESCAPE = 255; // a small-rows code that takes its row from the escaped rows
const SMALL_DIMS = 5; // rows of at most this many values may be coded as small rows

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
  if (k > (ids.BYTES_PER_ELEMENT === 1 ? 0xff : 0xffff)) return; // every value of the dtype is an id
  let max = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] > max) max = ids[i];
  need(ids.length === 0 || max < k, `${what}: id ${max} out of range for a codebook of ${k}`);
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => b.toString(2).split("1").length - 1);

/** A packed bit mask (uint8 [ceil(n/8)], little bit order: row i is bit i % 8 of byte i >> 3),
 * checked: {bits, count} with count = number of set bits. */
function bitMask(p, key, n, what) {
  const bits = array(p, key, ["|u1"], [(n + 7) >> 3], what).data;
  if (n & 7) need((bits[bits.length - 1] >> (n & 7)) === 0, `${what}: padding bits beyond ${n} must be zero`);
  let count = 0;
  for (let k = 0; k < bits.length; k++) count += POPCOUNT[bits[k]];
  return { bits, count };
}

// Morton decoding on 32-bit halves: bit 3b+a of a code is bit b of axis a. compact11 keeps
// bits 0, 3, ..., 30 of a word and packs them into bits 0..10 (the usual magic-number steps).
function compact11(x) {
  x &= 0x49249249;
  x = (x ^ (x >>> 2)) & 0xc30c30c3;
  x = (x ^ (x >>> 4)) & 0x0f00f00f;
  x = (x ^ (x >>> 8)) & 0xff0000ff;
  return (x ^ (x >>> 16)) & 0x7ff;
}

/** Morton code deltas as little-endian byte planes (uint8 [P, N], P in 1, 2, 4, 8: plane p
 * holds byte p of every delta) -> int32 grid coordinates [N*3]. */
function mortonPositions(planes, n) {
  const q = new Int32Array(n * 3);
  const p = planes.shape[0];
  const b = planes.data;
  // The running code as two 32-bit halves, kept as int32 bit patterns (int32 arithmetic keeps
  // V8 from boxing them as doubles); codes < 2^63, so hi and dhi are never negative.
  let lo = 0, hi = 0;
  for (let i = 0; i < n; i++) {
    let dlo = b[i], dhi = 0;
    if (p > 1) dlo |= b[n + i] << 8;
    if (p > 2) dlo |= (b[2 * n + i] << 16) | (b[3 * n + i] << 24);
    if (p > 4) dhi = b[4 * n + i] | (b[5 * n + i] << 8) | (b[6 * n + i] << 16) | (b[7 * n + i] << 24);
    const carry = (lo >>> 0) + (dlo >>> 0) > 0xffffffff ? 1 : 0;
    lo = (lo + dlo) | 0;
    hi = (hi + dhi + carry) | 0; // hi, dhi < 2^31: the sum is < 2^32 and negative here iff >= 2^31
    if (dhi < 0 || hi < 0) throw new CodecError("morton deltas overflow 63-bit codes");
    setCoords(q, i, lo, hi);
  }
  return q;
}

/** Row i of q [N*3] from a Morton code's 32-bit halves: lo holds code bits 0..31, hi bits
 * 32..62; axis a starts at lo bit a and hi bit (a+1)%3. */
function setCoords(q, i, lo, hi) {
  q[3 * i] = compact11(lo) | (compact11(hi >>> 1) << 11);
  q[3 * i + 1] = compact11(lo >>> 1) | (compact11(hi >>> 2) << 11);
  q[3 * i + 2] = compact11(lo >>> 2) | (compact11(hi) << 10);
}

/** Morton code of coordinates in [0, 2^17) as a number (< 2^51, exact). */
function morton17(x, y, z) {
  let code = 0;
  for (let b = PREDICTED_BITS - 1; b >= 0; b--) code = code * 8 + ((z >> b) & 1) * 4 + ((y >> b) & 1) * 2 + ((x >> b) & 1);
  return code;
}

function positions(n, p) {
  const origin = array(p, "origin", ["<f4"], [3], "origin").data.slice(); // not a view of the message
  need(origin.every(Number.isFinite), "origin must be finite");
  const planes = array(p, "morton", ["|u1"], [null, n], "morton");
  need([1, 2, 4, 8].includes(planes.shape[0]), `morton: ${planes.shape[0]} byte planes, expected 1, 2, 4 or 8`);
  return { origin, q: mortonPositions(planes, n) };
}

/** Ids of every group: codebook ids [N] (vector-quantised groups) or scalar values [D, N]
 * (scalar-quantised groups, dtype one of `scalarDtypes[name]`), as typed arrays. */
function idArrays(n, p, codebooks, scalarDtypes) {
  const names = Object.keys(GROUP_DIMS).filter((g) => g in codebooks || g in scalarDtypes);
  const groups = dict(p, "ids", names);
  const coded = dict(p, "ids_delta", names);
  const out = {};
  for (const name of names) {
    const cb = codebooks[name];
    const a = cb
      ? array(groups, name, [cb.rows <= 256 ? "|u1" : "<u2"], [n], `ids.${name}`)
      : array(groups, name, scalarDtypes[name], [GROUP_DIMS[name], n], `ids.${name}`);
    const ids = a.data.slice(); // interframes change it
    need(typeof coded[name] === "boolean", `ids_delta.${name} must be a bool`);
    if (coded[name]) { // differences from the previous row, modulo 2^8 or 2^16 (typed array wrap)
      for (let r = 0; r < ids.length; r += n) for (let i = r + 1; i < r + n; i++) ids[i] += ids[i - 1];
    }
    if (cb) checkIds(ids, cb.rows, `ids.${name}`);
    out[name] = ids;
  }
  return out;
}

function keyframe(n, p) {
  keys(p, ["sh_degree", "step", "codebooks", "scalar", "origin", "morton", "ids", "ids_delta"], "keyframe payload");
  const shDegree = intField(p, "sh_degree", 0, 3);
  const step = p.step;
  need(typeof step === "number" && step > 0 && step < 1e30 && Math.fround(step) === step,
    `step must be a positive finite float32 value, got ${step}`);
  const names = groupNames(shDegree);
  const isDict = (d) => d !== null && typeof d === "object" && !(d instanceof WireArray);
  const books = p.codebooks, scalars = p.scalar;
  need(isDict(books) && isDict(scalars), "codebooks and scalar must be dicts");
  const listed = [...Object.keys(books), ...Object.keys(scalars)];
  need(listed.length === names.length && names.every((g) => listed.includes(g)),
    `codebooks and scalar: each of the groups ${names} in exactly one, got ${Object.keys(books)} and ${Object.keys(scalars)}`);
  const codebooks = {}, scalar = {}, scalarDtypes = {};
  for (const name of Object.keys(books)) {
    const cb = array(books, name, ["<f2"], [null, GROUP_DIMS[name]], `codebooks.${name}`);
    need(cb.shape[0] >= 1 && cb.shape[0] <= 65536 && cb.data.every(Number.isFinite),
      `codebooks.${name}: 1..65536 finite rows expected`);
    codebooks[name] = { rows: cb.shape[0], dim: GROUP_DIMS[name], data: cb.data };
  }
  for (const name of Object.keys(scalars)) {
    const d = GROUP_DIMS[name];
    const sq = array(scalars, name, ["<f4"], [2, d], `scalar.${name}`).data.slice();
    for (let j = 0; j < d; j++) {
      need(Math.abs(sq[j]) < SCALAR_LIMIT && sq[d + j] > 0 && sq[d + j] < SCALAR_LIMIT / 2 ** 16,
        `scalar.${name}: offsets within +-1e30 and steps in (0, 1e30 / 2**16) expected`);
    }
    scalar[name] = { dim: d, offset: sq.subarray(0, d), step: sq.subarray(d) };
    scalarDtypes[name] = SCALAR_DTYPES;
  }
  const { origin, q } = positions(n, p);
  return { shDegree, step, books: codebooks, scalar, origin, q, codes: idArrays(n, p, codebooks, scalarDtypes), n, changed: null };
}

function intra(state, n, p) {
  keys(p, ["origin", "morton", "ids", "ids_delta"], "intra payload");
  const { origin, q } = positions(n, p);
  const scalarDtypes = {};
  for (const name of Object.keys(state.scalar)) scalarDtypes[name] = [state.codes[name] instanceof Uint8Array ? "|u1" : "<u2"];
  return { ...state, origin, q, codes: idArrays(n, p, state.books, scalarDtypes), n, changed: null };
}

// Interframe changes are applied in place (no per-frame copies) so that a bad payload leaves
// the state unchanged: ids are checked in a first pass and written in a second (their changes
// are sparse); positions are checked as they are written, and moved back if one fails.

/** Moves the first `limit` set rows of the position mask in place, the k-th one (row i) by unit *
 * its move: with moves.block 0 the running sum of residual[:, 0..k], else residual[:, k] plus
 * the running sum of base[:, 0..floor(k / block)] (its block's median); stops before a row whose
 * |q| would reach 2^24 and returns the number of rows moved. The spec's bound on the moves,
 * |move| < 2^25, follows from |q| < 2^24 before and after (unit >= 1), so the sums stay exact in
 * float64 (a running sum grows by at most 2^31 per row or block before it is checked). */
function movePositions(q, mask, moves, unit, limit) {
  const bits = mask.bits, m = mask.count, { residual: r, block, base, blocks } = moves;
  let k = 0, x = 0, y = 0, z = 0, bx = 0, by = 0, bz = 0;
  for (let byte = 0; byte < bits.length; byte++) {
    for (let b = bits[byte]; b; b &= b - 1, k++) {
      const i = 3 * (8 * byte + 31 - Math.clz32(b & -b));
      if (block === 0) {
        x += r[k]; y += r[m + k]; z += r[2 * m + k];
      } else {
        if (k % block === 0) {
          const j = k / block;
          bx += base[j]; by += base[blocks + j]; bz += base[2 * blocks + j];
        }
        x = bx + r[k]; y = by + r[m + k]; z = bz + r[2 * m + k];
      }
      const qx = q[i] + x * unit, qy = q[i + 1] + y * unit, qz = q[i + 2] + z * unit;
      if (k === limit || !(Math.abs(qx) < MAX_Q && Math.abs(qy) < MAX_Q && Math.abs(qz) < MAX_Q)) return k;
      q[i] = qx; q[i + 1] = qy; q[i + 2] = qz;
    }
  }
  return k;
}

/** The k-th set row i of an id mask takes id (ids[i] + values[k]) mod 2^8 or 2^16; for scalar
 * values ([D, N] ids, [D, M] values, n = N) each of the D rows likewise, values[k] times `unit`.
 * `rows` = codebook size, or 0 for scalar values (every value is valid: nothing to check). */
function changeIds(ids, mask, values, rows, what, write, n, unit) {
  const bits = mask.bits, wrap = ids.BYTES_PER_ELEMENT === 1 ? 0xff : 0xffff, m = mask.count;
  const dims = ids.length / Math.max(n, 1);
  if (!write && rows === 0) return;
  for (let byte = 0, k = 0; byte < bits.length; byte++) {
    for (let b = bits[byte]; b; b &= b - 1, k++) {
      const i = 8 * byte + 31 - Math.clz32(b & -b);
      for (let d = 0; d < dims; d++) {
        const id = (ids[d * n + i] + values[d * m + k] * unit) & wrap; // exact below 2^53, then mod 2^32
        if (write) ids[d * n + i] = id;
        else if (id >= rows) throw new CodecError(`${what}: id ${id} out of range for a codebook of ${rows}`);
      }
    }
  }
}

/** Rows [D*M] (into `out`, row-major [D, M]) of an array coded as small rows: codes [M]
 * uint8, each sum over j of (v[j] + 1) * 3^j for a row of values in -1..1, or ESCAPE: the next
 * column of `escaped` (a WireArray [D, E]). Values are written as `out`'s type wraps them. */
function unpackSmall(codes, escaped, out, what) {
  const d = escaped.shape[0], e = escaped.shape[1], m = codes.length, x = escaped.data;
  const limit = 3 ** d;
  need(d <= SMALL_DIMS, `${what}: rows of ${d} values cannot be small rows`);
  let k = 0;
  for (let i = 0; i < m; i++) {
    const c = codes[i];
    if (c === ESCAPE) {
      need(k < e, `${what}: more escape codes than the ${e} escaped rows`);
      for (let j = 0; j < d; j++) out[j * m + i] = x[j * e + k];
      k++;
    } else {
      need(c < limit, `${what}: codes must be below 3**${d} or ${ESCAPE}`);
      for (let j = 0, r = c; j < d; j++, r = (r - (r % 3)) / 3) out[j * m + i] = (r % 3) - 1;
    }
  }
  need(k === e, `${what}: ${k} escape codes for ${e} escaped rows`);
  return out;
}

function interframe(state, n, p) {
  keys(p, ["unit", "pos_mask", "pos_block", "pos_base", "pos_small", "pos_delta", "id_masks", "id_small", "id_values"],
    "interframe payload");
  need(n === state.n, `interframe for ${n} Gaussians, reference frame has ${state.n}`);
  const unit = intField(p, "unit", 1, 2 ** 21);
  const moved = bitMask(p, "pos_mask", n, "pos_mask");
  // pos_small [M] + pos_delta [3, E]: per axis, the moved rows' residuals (small rows coded in
  // one byte): differences along the mask order (pos_block 0), or differences from the median
  // of each block of pos_block rows, the medians given as differences along the blocks by
  // pos_base [3, ceil(M / pos_block)].
  const block = intField(p, "pos_block", 0, MAX_BLOCK);
  const base = array(p, "pos_base", INT, [3, block ? Math.ceil(moved.count / block) : 0], "pos_base");
  const posSmall = array(p, "pos_small", ["|u1"], [moved.count], "pos_small").data;
  const residual = unpackSmall(posSmall, array(p, "pos_delta", INT, [3, null], "pos_delta"),
    new Int32Array(3 * moved.count), "pos_small");
  const moves = { residual, block, base: base.data, blocks: base.shape[1] };
  const names = Object.keys(state.codes);
  const masks = dict(p, "id_masks", names);
  const smalls = p.id_small;
  need(smalls !== null && typeof smalls === "object" && !(smalls instanceof WireArray)
    && Object.keys(smalls).every((g) => names.includes(g)), `id_small must be a dict with keys among ${names}`);
  const values = dict(p, "id_values", names);
  const rowsOf = (name) => (name in state.books ? state.books[name].rows : 0);
  const changes = names.map((name) => {
    const mask = bitMask(masks, name, n, `id_masks.${name}`);
    const ids = state.codes[name];
    const want = ids instanceof Uint8Array ? "|u1" : "<u2";
    const dims = name in state.scalar ? GROUP_DIMS[name] : 0;
    if (Object.hasOwn(smalls, name)) {
      need(dims > 0 && dims <= SMALL_DIMS, `id_small.${name}: only scalar groups of at most ${SMALL_DIMS} values`);
      const small = array(smalls, name, ["|u1"], [mask.count], `id_small.${name}`).data;
      const escaped = array(values, name, [want], [dims, null], `id_values.${name}`);
      return { name, mask, values: unpackSmall(small, escaped, new ids.constructor(dims * mask.count), `id_small.${name}`) };
    }
    const shape = dims ? [dims, mask.count] : [mask.count];
    return { name, mask, values: array(values, name, [want], shape, `id_values.${name}`).data };
  });
  const unitOf = (name) => (name in state.scalar ? unit : 1); // VQ ids change by their difference
  for (const { name, mask, values: v } of changes) {
    changeIds(state.codes[name], mask, v, rowsOf(name), `id_values.${name}`, false, n, unitOf(name));
  }
  const done = movePositions(state.q, moved, moves, unit, moved.count);
  if (done < moved.count) {
    movePositions(state.q, moved, moves, -unit, done); // back to the previous positions, exactly
    throw new CodecError(`pos_delta moves a coordinate beyond +-${MAX_Q} steps`);
  }
  for (const { name, mask, values: v } of changes) {
    changeIds(state.codes[name], mask, v, rowsOf(name), `id_values.${name}`, true, n, unitOf(name));
  }
  const changedIds = {};
  for (const { name, mask } of changes) changedIds[name] = mask.count ? mask.bits : null;
  return { ...state, changed: { moved: moved.count ? moved.bits : null, ids: changedIds } };
}

/** Row a of a codebook's rank table (K*K, cached on the codebook) lists its ids by squared
 * distance to entry a (float64, summed over the dimensions in order), ties by id. */
function rankTable(book) {
  if (book.table) return book.table;
  const { rows: k, dim, data } = book;
  const table = new Uint16Array(k * k), dist = new Float64Array(k);
  const ids = Array.from({ length: k }, (_, b) => b);
  for (let a = 0; a < k; a++) {
    for (let b = 0; b < k; b++) {
      let acc = 0;
      for (let d = 0; d < dim; d++) {
        const diff = data[a * dim + d] - data[b * dim + d];
        acc += diff * diff;
      }
      dist[b] = acc;
    }
    const sorted = ids.slice().sort((x, y) => dist[x] - dist[y] || x - y);
    table.set(sorted, a * k);
  }
  book.table = table;
  return table;
}

/** Previous frame's rows sorted by their Morton codes on the new grid (q + shift), ties by row,
 * and the shell: the distinct sorted codes of their face neighbours within [0, 2^17) that are no
 * previous voxel. {codes: Float64Array [M], rows: Int32Array [M], shell: Float64Array [S]}. */
function previousGrid(state, shift) {
  const m = state.n, q = state.q, lim = 2 ** PREDICTED_BITS;
  const codes = new Float64Array(m), moved = new Int32Array(3 * m);
  for (let i = 0; i < 3 * m; i++) {
    moved[i] = q[i] + shift[i % 3];
    need(moved[i] >= 0 && moved[i] < lim, `shift moves the previous frame beyond [0, 2**${PREDICTED_BITS}) steps`);
  }
  for (let i = 0; i < m; i++) codes[i] = morton17(moved[3 * i], moved[3 * i + 1], moved[3 * i + 2]);
  const rows = Int32Array.from({ length: m }, (_, i) => i).sort((a, b) => codes[a] - codes[b] || a - b);
  const sorted = Float64Array.from(rows, (r) => codes[r]);
  const near = new Float64Array(6 * m);
  let k = 0;
  for (let i = 0; i < m; i++) {
    for (let a = 0; a < 3; a++) {
      for (const d of [1, -1]) {
        const c = [moved[3 * i], moved[3 * i + 1], moved[3 * i + 2]];
        c[a] += d;
        if (c[a] >= 0 && c[a] < lim) near[k++] = morton17(c[0], c[1], c[2]);
      }
    }
  }
  const all = near.subarray(0, k).sort();
  const shell = [];
  for (let i = 0, j = 0; i < all.length; i++) {
    if (i && all[i] === all[i - 1]) continue;
    while (j < m && sorted[j] < all[i]) j++;
    if (j === m || sorted[j] !== all[i]) shell.push(all[i]);
  }
  return { codes: sorted, rows, shell: Float64Array.from(shell) };
}

/** Values of one group of a predicted interframe: a kept row is predicted by its previous value,
 * a new row by the row before it (0 for row 0); ranks in the predictor's rank table row for
 * codebooks up to RANK_ROWS rows, else differences modulo 2^8 or 2^16. */
function predictValues(state, name, source, v, n, what) {
  const old = state.codes[name], book = state.books[name];
  const out = new old.constructor(old.length / Math.max(state.n, 1) * n);
  if (book && book.rows <= RANK_ROWS) {
    const table = rankTable(book), k = book.rows;
    for (let i = 0; i < n; i++) {
      need(v[i] < k, `${what}: rank ${v[i]} out of range for a codebook of ${k}`);
      const pred = source[i] >= 0 ? old[source[i]] : i ? out[i - 1] : 0;
      out[i] = table[pred * k + v[i]];
    }
    return out;
  }
  const wrap = old.BYTES_PER_ELEMENT === 1 ? 0xff : 0xffff, m = state.n;
  for (let r = 0; r < out.length / Math.max(n, 1); r++) {
    for (let i = 0; i < n; i++) {
      const pred = source[i] >= 0 ? old[r * m + source[i]] : i ? out[r * n + i - 1] : 0;
      out[r * n + i] = (pred + v[r * n + i]) & wrap;
    }
  }
  if (book) checkIds(out, book.rows, what);
  return out;
}

function predicted(state, n, p) {
  keys(p, ["origin", "shift", "kept", "shell", "morton", "values"], "predicted interframe payload");
  const origin = array(p, "origin", ["<f4"], [3], "origin").data.slice();
  need(origin.every(Number.isFinite), "origin must be finite");
  const shift = array(p, "shift", ["<i4"], [3], "shift").data;
  const prev = previousGrid(state, shift);
  const kept = bitMask(p, "kept", state.n, "kept");
  const inShell = bitMask(p, "shell", prev.shell.length, "shell");
  const planes = array(p, "morton", ["|u1"], [null, null], "morton");
  const w = planes.shape[0], others = planes.shape[1], b = planes.data;
  need([1, 2, 4, 8].includes(w), `morton: ${w} byte planes, expected 1, 2, 4 or 8`);
  need(kept.count + inShell.count + others === n,
    `kept rows, shell voxels and other new codes ${kept.count},${inShell.count},${others} do not add up to ${n} Gaussians`);
  const limit = 2 ** (3 * PREDICTED_BITS);
  const other = new Float64Array(others);
  for (let i = 0, code = 0; i < others; i++) {
    let delta = 0;
    for (let k = w - 1; k >= 0; k--) delta = delta * 256 + b[k * others + i];
    code += delta; // exact: both < 2^51
    need(delta < limit && code < limit, `morton: new codes beyond ${PREDICTED_BITS} bits per axis`);
    other[i] = code;
  }
  // the new codes, sorted: the shell's marked codes merged with the others
  const fresh = inShell.count + others;
  const newCodes = new Float64Array(fresh);
  for (let i = 0, s = 0, o = 0; i < fresh; i++) {
    while (s < prev.shell.length && !((inShell.bits[s >> 3] >> (s & 7)) & 1)) s++;
    newCodes[i] = s < prev.shell.length && (o >= others || prev.shell[s] <= other[o]) ? prev.shell[s++] : other[o++];
  }
  // merge the kept previous rows (sorted) and the new codes, kept rows first among equal codes
  const q = new Int32Array(n * 3), source = new Int32Array(n);
  let a = 0, c = 0;
  const nextKept = () => { while (a < state.n && !((kept.bits[a >> 3] >> (a & 7)) & 1)) a++; };
  nextKept();
  for (let i = 0; i < n; i++) {
    let code;
    if (a < state.n && (c >= fresh || prev.codes[a] <= newCodes[c])) {
      code = prev.codes[a];
      source[i] = prev.rows[a++];
      nextKept();
    } else {
      code = newCodes[c++];
      source[i] = -1;
    }
    setCoords(q, i, code % 4294967296, Math.floor(code / 4294967296));
  }
  const names = Object.keys(state.codes);
  const values = dict(p, "values", names);
  const codes = {};
  for (const name of names) {
    const old = state.codes[name];
    const want = old instanceof Uint8Array ? "|u1" : "<u2";
    const shape = name in state.scalar ? [GROUP_DIMS[name], n] : [n];
    const v = array(values, name, [want], shape, `values.${name}`).data;
    codes[name] = predictValues(state, name, source, v, n, `values.${name}`);
  }
  return { ...state, origin, q, codes, n, changed: null };
}

/** Values [N*D] of a group of a decoder state: codebook rows, or for a scalar-quantised group
 * offset + float32(q * step) with float32 roundings as numpy's (as for means); the rotation
 * group's values become quaternions (see quaternions). */
function gather(state, name) {
  const n = state.n, ids = state.codes[name];
  const sq = state.scalar[name];
  let out;
  if (sq) {
    const { dim, offset, step } = sq;
    out = new Float32Array(n * dim);
    for (let d = 0; d < dim; d++) {
      const o = offset[d], s = step[d];
      for (let i = 0; i < n; i++) out[i * dim + d] = o + Math.fround(ids[d * n + i] * s);
    }
  } else {
    const { dim, data } = state.books[name];
    out = new Float32Array(n * dim);
    for (let i = 0; i < n; i++) {
      const src = ids[i] * dim;
      for (let d = 0; d < dim; d++) out[i * dim + d] = data[src + d];
    }
  }
  return name === "rotation" ? quaternions(out) : out;
}

/** Quaternions wxyz [N*4] from the rotation group's values (k, a, b, c) [N*4], in place: the
 * "smallest three" (Python twin: decoder.quaternions). k, rounded half to even and clipped to
 * 0..3, is the slot of the largest component, sqrt(max(0, 1 - (a*a + b*b) - c*c)) in float32;
 * a, b, c fill the other slots in order. */
function quaternions(v) {
  const f = Math.fround;
  for (let i = 0; i < v.length; i += 4) {
    const r = Math.round(v[i]);
    const half = Math.abs(v[i] % 1) === 0.5; // numpy's rint rounds halves to even
    const k = Math.min(3, Math.max(0, half ? 2 * Math.round(v[i] / 2) : r));
    const a = v[i + 1], b = v[i + 2], c = v[i + 3];
    const s = f(f(f(a * a) + f(b * b)) + f(c * c));
    const largest = f(Math.sqrt(Math.max(f(1 - s), 0)));
    v[i] = k === 0 ? largest : a; // (no array per row: 250k rows a frame)
    v[i + 1] = k === 0 ? a : k === 1 ? largest : b;
    v[i + 2] = k <= 1 ? b : k === 2 ? largest : c;
    v[i + 3] = k === 3 ? largest : c;
  }
  return v;
}

/** Means of a decoder state: Float32Array [N*3] = origin + float32(q) * step, each operation
 * rounded to float32 as numpy does (products of float32s are exact in float64, and a float64
 * sum of two float32s rounds to the same float32 as a float32 sum); written into `means`. */
export function stateMeans(state, means = new Float32Array(state.n * 3)) {
  const { n, origin, q } = state;
  const s = Math.fround(state.step);
  for (let i = 0; i < n; i++) {
    means[3 * i] = origin[0] + Math.fround(q[3 * i] * s);
    means[3 * i + 1] = origin[1] + Math.fround(q[3 * i + 1] * s);
    means[3 * i + 2] = origin[2] + Math.fround(q[3 * i + 2] * s);
  }
  return means;
}

/** The packing view of a decoder state (pack.mjs' StatePacker reads it): `codebooks` {group:
 * {rows, dim, data}} and `ids` {group: [N] row of each Gaussian}. Vector-quantised groups show
 * their codebook and ids (the state's own arrays, changed in place by interframes); a
 * scalar-quantised group, and the rotation group, show their decoded values as an N-row table
 * with ids 0..N-1 (a new table each frame). Reuses `previous`'s identity ids when N is the same. */
function withView(state, previous) {
  const codebooks = {}, ids = {};
  let identity = previous && previous.n === state.n ? previous.identity : null;
  for (const name of Object.keys(state.codes)) {
    if (name in state.books && name !== "rotation") { // rotation: its quaternions (gather)
      codebooks[name] = state.books[name];
      ids[name] = state.codes[name];
    } else {
      codebooks[name] = { rows: state.n, dim: GROUP_DIMS[name], data: gather(state, name) };
      identity ??= Uint32Array.from({ length: state.n }, (_, i) => i);
      ids[name] = identity;
    }
  }
  return { ...state, codebooks, ids, identity };
}

/** The frame a decoder state stands for (see the header comment for the arrays). */
export function reconstruct(state) {
  const { n, shDegree } = state;
  const k = (shDegree + 1) ** 2 - 1;
  const shN = new Float32Array(n * k * 3);
  let offset = 0;
  for (let b = 1; b <= shDegree; b++) {
    const band = gather(state, `shN_${b}`);
    const width = (2 * b + 1) * 3;
    for (let i = 0; i < n; i++) shN.set(band.subarray(i * width, (i + 1) * width), i * k * 3 + offset);
    offset += width;
  }
  return {
    numGaussians: n,
    shDegree,
    means: stateMeans(state),
    scales: gather(state, "scale"),
    quats: gather(state, "rotation"),
    opacities: gather(state, "opacity"),
    sh0: gather(state, "sh0"),
    shN,
  };
}

/**
 * Stateful decoder, one per stream; may start at any keyframe.
 * update(frameType, numGaussians, payload) -> the new decoder state {n, shDegree, step, books,
 * scalar, origin, q, codes, changed} (books: codebooks of the vector-quantised groups, scalar:
 * {offset, step} of the others, codes: ids [N] or scalar values [D, N] per group) with its
 * packing view {codebooks, ids} (see withView) for pack.mjs and stateMeans; decode(...) -> frame arrays
 * (see the header comment). Both throw CodecError for an intra or interframe before a keyframe
 * or any inconsistent payload; the state is left unchanged then.
 *
 * An interframe changes the previous state's q and ids arrays in place (no per-frame copies), so
 * a state's arrays hold its frame only until the next update. `changed` tells what an
 * interframe changed: {moved: packed bit mask (Uint8Array [ceil(N/8)], little bit order) of the
 * rows whose q changed, ids: {group: such a mask of the rows whose id changed}}, null for "no
 * row"; `changed` is null after a keyframe or intra frame (every row is new).
 */
export class FrameDecoder {
  constructor() {
    this.state = null;
  }

  update(frameType, numGaussians, payload) {
    need(Number.isSafeInteger(numGaussians) && numGaussians >= 0, `num_gaussians must be a non-negative int`);
    need(payload !== null && typeof payload === "object", "payload must be a dict");
    let next;
    if (frameType === "keyframe") {
      next = keyframe(numGaussians, payload);
    } else {
      need(this.state !== null, `'${frameType}' frame before any keyframe: start decoding at a keyframe`);
      if (frameType === "intra") next = intra(this.state, numGaussians, payload);
      else if (frameType === "interframe") {
        next = "kept" in payload ? predicted(this.state, numGaussians, payload) : interframe(this.state, numGaussians, payload);
      }
      else throw new CodecError(`unknown frame type '${frameType}'`);
    }
    this.state = withView(next, this.state);
    return this.state;
  }

  decode(frameType, numGaussians, payload) {
    return reconstruct(this.update(frameType, numGaussians, payload));
  }
}
