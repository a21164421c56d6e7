#!/usr/bin/env bash
# Rebuild the viewer's vendored ES modules into splatcast/server/static/vendor/ from the
# versions pinned in package-lock.json. Node is needed only here: the Python package ships
# the result, so `pip install` + `splatcast serve` serve the viewer without Node.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
out=../splatcast/server/static/vendor
rm -rf "$out"
mkdir -p "$out/three/addons/controls" "$out/three/addons/postprocessing" "$out/three/addons/libs" "$out/licenses"
nm=node_modules
cp "$nm/three/build/three.module.min.js" "$nm/three/build/three.core.min.js" "$out/three/"
cp "$nm/three/examples/jsm/controls/OrbitControls.js" "$out/three/addons/controls/"
cp "$nm/three/examples/jsm/postprocessing/Pass.js" "$out/three/addons/postprocessing/"
cp "$nm/three/examples/jsm/libs/zstddec.module.js" "$out/three/addons/libs/"
cp "$nm/@sparkjsdev/spark/dist/spark.module.min.js" "$out/spark.module.min.js"
npx esbuild "$nm/@msgpack/msgpack/dist.esm/index.mjs" --bundle --format=esm --minify \
  --log-level=warning --outfile="$out/msgpack.mjs"
cp "$nm/three/LICENSE" "$out/licenses/three.LICENSE"
cp "$nm/@sparkjsdev/spark/LICENSE" "$out/licenses/spark.LICENSE"
cp "$nm/@msgpack/msgpack/LICENSE" "$out/licenses/msgpack.LICENSE"
{
  echo "Vendored by web/build.sh from web/package-lock.json:"
  for p in three @sparkjsdev/spark @msgpack/msgpack; do
    node -e "const p=require('./$nm/$p/package.json');console.log(p.name+'@'+p.version)"
  done
} > "$out/VERSIONS.txt"
du -sh "$out"
