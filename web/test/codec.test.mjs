// The JS codec decoder against the Python FrameDecoder, bit for bit, on real-codec vectors
// (tests/vectors/codec_*.json, written by scripts/make_codec_vectors.py).
import test from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { decodeStream } from "../../splatcast/server/static/js/protocol.mjs";
import { CodecError, FrameDecoder } from "../../splatcast/server/static/js/codec.mjs";

const VECTORS = fileURLToPath(new URL("../../tests/vectors/", import.meta.url));
const FIELDS = ["means", "scales", "quats", "opacities", "sh0", "shN"];
const sha256 = (a) => createHash("sha256").update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).digest("hex");

function load(name) {
  const doc = JSON.parse(readFileSync(`${VECTORS}${name}.json`, "utf8"));
  const msgs = decodeStream(new Uint8Array(readFileSync(VECTORS + doc.file)));
  return { doc, frames: msgs.filter((m) => m.t === "frame") };
}

for (const name of ["codec_tracked", "codec_untracked"]) {
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
