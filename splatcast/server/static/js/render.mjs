// three.js + Spark scene that shows one packed frame at a time (main thread).
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { PackedSplats, SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

/**
 * Create the renderer on `canvas`. Returns {show(frame), fit(bounds), flip(), draw()}:
 * async `show` replaces the splats with a worker frame ({numGaussians, packed: Uint32Array
 * [N*4], sh: Spark's SH band arrays, null where unchanged}); `fit` aims the camera at {center, radius}; `flip` turns the scene upside down;
 * async `draw` updates Spark's sort for the current camera and renders.
 */
export function createRenderer(canvas) {
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x15171c);
  const camera = new THREE.PerspectiveCamera(50, 1, 0.01, 1000);
  camera.position.set(0, 0, 3);
  // autoUpdate off + explicit `await spark.update()`: the screen shows exactly the data we set
  // (the default lags one frame behind).
  const spark = new SparkRenderer({ renderer, autoUpdate: false });
  scene.add(spark);
  const controls = new OrbitControls(camera, canvas);
  controls.enableDamping = true;
  const holder = new THREE.Group(); // flipped as a whole for scenes whose y axis points down
  scene.add(holder);
  let packed = null;
  let mesh = null;
  let shownCount = -1;

  function resize() {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.floor(w * renderer.getPixelRatio())
        || canvas.height !== Math.floor(h * renderer.getPixelRatio())) {
      renderer.setSize(w, h, false);
      camera.aspect = w / Math.max(1, h);
      camera.updateProjectionMatrix();
    }
  }

  async function show(frame) {
    const n = frame.numGaussians;
    const created = !packed;
    if (created) packed = new PackedSplats({ maxSplats: Math.max(1, n) });
    const arr = packed.ensureSplats(n); // grows (and reallocates) for a larger frame
    arr.set(frame.packed);
    packed.numSplats = n;
    packed.needsUpdate = true;
    frame.sh.forEach((words, k) => { // SH bands 1..3: Spark's extra arrays and their textures
      if (!words) return; // unchanged since the previous frame
      const level = k + 1;
      const data = packed.ensureSplatsSh(level, n);
      data.set(words);
      const tex = packed.extra[`sh${level}Texture`];
      if (tex && tex.value.image.data !== data) { // reallocated: Spark makes a new texture
        tex.value.dispose();
        delete packed.extra[`sh${level}Texture`];
      } else if (tex) {
        tex.value.needsUpdate = true;
      }
    });
    if (created) { // after the SH arrays exist, so the mesh's shader includes them
      mesh = new SplatMesh({ packedSplats: packed });
      await mesh.initialized;
      holder.add(mesh);
    } else if (n !== shownCount) {
      mesh.updateMappingVersion();
    } else {
      mesh.updateVersion();
    }
    shownCount = n;
  }

  function fit({ center, radius }) {
    const c = new THREE.Vector3(...center).applyMatrix4(holder.matrixWorld);
    controls.target.copy(c);
    camera.near = radius / 100;
    camera.far = radius * 100;
    camera.position.set(c.x, c.y + 0.25 * radius, c.z + 2.4 * radius);
    camera.updateProjectionMatrix();
    controls.update();
  }

  function flip() {
    holder.rotateX(Math.PI);
    holder.updateMatrixWorld(true);
  }

  async function draw() {
    resize();
    controls.update();
    await spark.update({ scene, camera });
    renderer.render(scene, camera);
  }

  return { show, fit, flip, draw };
}
