// packSplats (our fast loop) must produce the bytes Spark's own setPackedSplat produces.
import test from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { packShBands, packSplats, SH_C0, StatePacker } from "../../splatcast/server/static/js/pack.mjs";
import { decodeStream } from "../../splatcast/server/static/js/protocol.mjs";
import { FrameDecoder, reconstruct } from "../../splatcast/server/static/js/codec.mjs";

const VECTORS = fileURLToPath(new URL("../../tests/vectors/", import.meta.url));

let spark = null;
try {
  spark = await import("@sparkjsdev/spark");
} catch {
  // web/node_modules missing (no `npm ci`): this comparison is skipped.
}

function randomFrame(n, seed) {
  let s = seed;
  const rnd = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
  const f = (k, lo, hi) => Float32Array.from({ length: n * k }, () => lo + (hi - lo) * rnd());
  return {
    numGaussians: n, means: f(3, -5, 5), scales: f(3, -9, 1), quats: f(4, -1.5, 1.5),
    opacities: f(1, -6, 6), sh0: f(3, -2.5, 2.5),
  };
}

test("packSplats matches Spark setPackedSplat", { skip: spark ? false : "web/node_modules missing" }, () => {
  const n = 5000;
  const fr = randomFrame(n, 7);
  const ours = packSplats(fr);
  const ref = new Uint32Array(n * 4);
  for (let i = 0; i < n; i++) {
    const [w, x, y, z] = fr.quats.subarray(i * 4, i * 4 + 4);
    const col = (c) => 0.5 + SH_C0 * fr.sh0[i * 3 + c];
    spark.setPackedSplat(ref, i, fr.means[i * 3], fr.means[i * 3 + 1], fr.means[i * 3 + 2],
      Math.exp(fr.scales[i * 3]), Math.exp(fr.scales[i * 3 + 1]), Math.exp(fr.scales[i * 3 + 2]),
      x, y, z, w, 1 / (1 + Math.exp(-fr.opacities[i])), col(0), col(1), col(2));
  }
  assert.deepEqual(ours, ref);
});

test("packShBands matches Spark's encodeSh1Rgb / encodeSh2Rgb / encodeSh3Rgb", { skip: spark ? false : "web/node_modules missing" }, () => {
  const n = 3000;
  let s = 11;
  const rnd = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
  const shN = Float32Array.from({ length: n * 15 * 3 }, () => 2.4 * rnd() - 1.2); // some beyond +-1
  const ours = packShBands(shN, 3);
  const words = [2, 4, 4];
  [spark.utils.encodeSh1Rgb, spark.utils.encodeSh2Rgb, spark.utils.encodeSh3Rgb].forEach((encode, k) => {
    const b = k + 1, per = 3 * (2 * b + 1), offset = 3 * (b * b - 1);
    const ref = new Uint32Array(n * words[k]);
    for (let i = 0; i < n; i++) encode(ref, i, shN.subarray(i * 45 + offset, i * 45 + offset + per));
    assert.deepEqual(ours[k], ref, `band ${b}`);
  });
});

for (const name of ["codec_tracked", "codec_tracked_high", "codec_untracked"]) {
  test(`StatePacker (codebook tables, reused buffers) packs ${name} like the float path`,
    { skip: !existsSync(`${VECTORS}${name}.splatcast`) }, () => {
      const decoder = new FrameDecoder();
      const packer = new StatePacker();
      const out = new Uint32Array(5000 * 4).fill(0xdeadbeef); // stale words from "another frame"
      for (const m of decodeStream(new Uint8Array(readFileSync(`${VECTORS}${name}.splatcast`)))) {
        if (m.t !== "frame") continue;
        const state = decoder.update(m.frame_type, m.num_gaussians, m.payload);
        const frame = reconstruct(state);
        assert.deepEqual(packer.pack(state, out.subarray(0, 4 * state.n)), packSplats(frame));
        const bands = packShBands(frame.shN, frame.shDegree);
        bands.forEach((want, k) => {
          assert.deepEqual(packer.packSh(state, k + 1, out.subarray(0, want.length)), want);
          assert.deepEqual(packer.packSh(state, k + 1), want);
        });
      }
    });
}
