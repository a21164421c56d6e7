// The JS codec decoder against the Python FrameDecoder, bit for bit, on real-codec vectors
// (tests/vectors/codec_*.json, written by scripts/make_codec_vectors.py).
import test from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { decodeStream, WireArray } from "../../splatcast/server/static/js/protocol.mjs";
import { CODEC_NAME, CODEC_VERSION, CodecError, FrameDecoder, checkCodec, reconstruct } from "../../splatcast/server/static/js/codec.mjs";

const VECTORS = fileURLToPath(new URL("../../tests/vectors/", import.meta.url));
const FIELDS = ["means", "scales", "quats", "opacities", "sh0", "shN"];
const sha256 = (a) => createHash("sha256").update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).digest("hex");

function load(name) {
  const doc = JSON.parse(readFileSync(`${VECTORS}${name}.json`, "utf8"));
  const msgs = decodeStream(new Uint8Array(readFileSync(VECTORS + doc.file)));
  return { doc, frames: msgs.filter((m) => m.t === "frame") };
}

for (const name of ["codec_tracked", "codec_tracked_high", "codec_jittered", "codec_untracked", "codec_predicted", "codec_predicted_scalar"]) {
  test(`${name}: JS decoder output is bit-identical to Python's`, { skip: !existsSync(`${VECTORS}${name}.json`) }, () => {
    const { doc, frames } = load(name);
    assert.equal(frames.length, doc.frames.length);
    const decoder = new FrameDecoder();
    frames.forEach((m, i) => {
      const want = doc.frames[i];
      assert.equal(m.frame_type, want.frame_type);
      const got = decoder.decode(m.frame_type, m.num_gaussians, m.payload);
      assert.equal(got.numGaussians, want.num_gaussians);
      assert.equal(got.shDegree, want.sh_degree);
      for (const f of FIELDS) {
        const w = want.fields[f];
        assert.equal(got[f].length, w.shape.reduce((p, d) => p * d, 1), `frame ${i} ${f} length`);
        assert.deepEqual(Array.from(got[f].subarray(0, w.first.length)), w.first, `frame ${i} ${f} first values`);
        assert.equal(sha256(got[f]), w.sha256, `frame ${i} ${f} bytes`);
      }
    });
  });
}

test("decoding starts at a keyframe only, and rejects inconsistent payloads", { skip: !existsSync(`${VECTORS}codec_tracked.json`) }, () => {
  const { frames } = load("codec_tracked");
  const [key, inter] = frames;
  assert.throws(() => new FrameDecoder().decode(inter.frame_type, inter.num_gaussians, inter.payload), CodecError);
  const decoder = new FrameDecoder();
  assert.throws(() => decoder.decode("keyframe", key.num_gaussians + 1, key.payload), CodecError);
  assert.equal(decoder.state, null); // a failed frame leaves the state unchanged
  decoder.decode(key.frame_type, key.num_gaussians, key.payload);
  assert.throws(() => decoder.decode("interframe", inter.num_gaussians - 1, inter.payload), CodecError);
  const { ids, ...noIds } = key.payload;
  assert.throws(() => decoder.decode("keyframe", key.num_gaussians, noIds), CodecError);
});

test("a bad interframe leaves the decoder state unchanged (interframes change it in place)", { skip: !existsSync(`${VECTORS}codec_tracked.json`) }, () => {
  const { frames } = load("codec_tracked");
  const [key, inter] = frames;
  assert.equal(inter.frame_type, "interframe");
  const decoder = new FrameDecoder();
  const before = decoder.decode(key.frame_type, key.num_gaussians, key.payload);
  // Row 0's shN_1 id leads out of its codebook (a single row: the tile's SH rest is zero) while
  // the scalar-quantised groups' changes are valid.
  assert.equal(decoder.state.books.shN_1.rows, 1);
  const mask = new Uint8Array(inter.payload.id_masks.shN_1.data.length);
  mask[0] = 1;
  const one = Uint8Array.of(1);
  const badIds = { ...inter.payload,
    id_masks: { ...inter.payload.id_masks, shN_1: new WireArray("|u1", [mask.length], mask, mask) },
    id_values: { ...inter.payload.id_values, shN_1: new WireArray("|u1", [1], one, one) } };
  assert.throws(() => decoder.update("interframe", inter.num_gaussians, badIds), /id 1 out of range/);
  // The last moved row leaves the grid (the rows before it have moved by then, and move back).
  const delta = Int32Array.from(inter.payload.pos_delta.data);
  delta[delta.length / 3 - 1] += 2 ** 24 / inter.payload.unit;
  const badMove = { ...inter.payload, pos_delta: new WireArray("<i4", [3, delta.length / 3], delta, delta) };
  assert.throws(() => decoder.update("interframe", inter.num_gaussians, badMove), /beyond/);
  assert.deepEqual(reconstruct(decoder.state), before);
  // and the good interframe still decodes after the failures
  decoder.update(inter.frame_type, inter.num_gaussians, inter.payload);
  assert.notDeepEqual(reconstruct(decoder.state).means, before.means);
});

test("morton codes of 2^63 or more are errors", { skip: !existsSync(`${VECTORS}codec_tracked.json`) }, () => {
  const { frames: [key] } = load("codec_tracked");
  const { shape: [w, n], data } = key.payload.morton;
  const overflow = (edit) => {
    const planes = new Uint8Array(8 * n);
    planes.set(data); // planes w..7 of every delta are 0
    edit(planes);
    const payload = { ...key.payload, morton: new WireArray("|u1", [8, n], planes, planes) };
    assert.throws(() => new FrameDecoder().decode("keyframe", n, payload), /overflow/);
  };
  assert.ok(w <= 8);
  overflow((p) => { p[7 * n] = 0x80; }); // one delta >= 2^63
  overflow((p) => { p[7 * n] = 0x40; p[7 * n + 1] = 0x40; }); // two deltas >= 2^62: the code reaches 2^63
});

test("checkCodec accepts this codec version only", () => {
  checkCodec(CODEC_NAME, CODEC_VERSION);
  assert.throws(() => checkCodec(CODEC_NAME, CODEC_VERSION - 1), new RegExp(`version ${CODEC_VERSION - 1} is not supported`));
  assert.throws(() => checkCodec("other", CODEC_VERSION), CodecError);
});
