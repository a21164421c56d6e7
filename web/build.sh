#!/usr/bin/env bash
# Rebuild the viewer's vendored ES modules into splatcast/server/static/vendor/ from the
# versions pinned in package-lock.json. Node is needed only here: the Python package ships
# the result, so `pip install` + `splatcast serve` serve the viewer without Node.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
out=../splatcast/server/static/vendor
rm -rf "$out"
mkdir -p "$out/three/addons/controls" "$out/three/addons/postprocessing" "$out/licenses"
nm=node_modules
cp "$nm/three/build/three.module.min.js" "$nm/three/build/three.core.min.js" "$out/three/"
cp "$nm/three/examples/jsm/controls/OrbitControls.js" "$out/three/addons/controls/"
cp "$nm/three/examples/jsm/postprocessing/Pass.js" "$out/three/addons/postprocessing/"
cp "$nm/@sparkjsdev/spark/dist/spark.module.min.js" "$out/spark.module.min.js"
cp "$nm/fzstd/esm/index.mjs" "$out/fzstd.mjs"
cp "$nm/xxhash-wasm/esm/xxhash-wasm.js" "$out/xxhash-wasm.mjs"
npx esbuild "$nm/@msgpack/msgpack/dist.esm/index.mjs" --bundle --format=esm --minify \
  --log-level=warning --outfile="$out/msgpack.mjs"
cp "$nm/three/LICENSE" "$out/licenses/three.LICENSE"
cp "$nm/@sparkjsdev/spark/LICENSE" "$out/licenses/spark.LICENSE" 2>/dev/null \
  || echo "MIT, see https://github.com/sparkjs-dev/spark" > "$out/licenses/spark.LICENSE"
cp "$nm/fzstd/LICENSE" "$out/licenses/fzstd.LICENSE"
cp "$nm/@msgpack/msgpack/LICENSE" "$out/licenses/msgpack.LICENSE"
cp "$nm/xxhash-wasm/LICENSE.md" "$out/licenses/xxhash-wasm.LICENSE"
{
  echo "Vendored by web/build.sh from web/package-lock.json:"
  for p in three @sparkjsdev/spark fzstd @msgpack/msgpack xxhash-wasm; do
    node -e "const p=require('./$nm/$p/package.json');console.log(p.name+'@'+p.version)"
  done
} > "$out/VERSIONS.txt"
du -sh "$out"
