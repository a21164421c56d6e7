// packSplats (our fast loop) must produce the bytes Spark's own setPackedSplat produces.
import test from "node:test";
import assert from "node:assert/strict";
import { packSplats, SH_C0 } from "../../splatcast/server/static/js/pack.mjs";

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
