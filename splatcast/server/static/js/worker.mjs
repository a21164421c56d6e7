// Web Worker: WebSocket -> length-prefixed messages -> protocol + codec decode -> Spark packing.
// The worker posts {kind: "ready"} once loaded (messages sent before that would be lost: the
// modules await WebAssembly compilation); then the page (viewer.mjs) sends
// {cmd: "connect", url} / {cmd: "close"} / {cmd: "recycle", buffers} (the ArrayBuffers of frames
// it has copied or dropped, transferred back: later frames are packed into them instead of new
// allocations), and the worker posts
//   {kind: "open"} | {kind: "header", header} |
//   {kind: "frame", index, frameType, numGaussians, packed (Uint32Array [N*4]), sh (Spark's
//    arrays for SH bands 1..degree, null where unchanged since the last frame; packed and sh
//    are transferred), bounds (first frame after connect only), bytes, decodeMs, timings} |
//   {kind: "skipped", index, frameType} (waiting for a keyframe) | {kind: "end", frameCount} |
//   {kind: "error", message} | {kind: "closed", code, reason}.
import { MessageSplitter, decodeBody } from "./protocol.mjs";
import { FrameDecoder, checkCodec, stateMeans } from "./codec.mjs";
import { SH_WORDS, StatePacker, robustBounds } from "./pack.mjs";

let ws = null;
let splitter = null;
let decoder = null;
let needBounds = true;
const packer = new StatePacker();
const spare = []; // ArrayBuffers given back by the page (at most MAX_SPARE)
const MAX_SPARE = 8;

/** A Uint32Array [length] in a spare buffer that is large enough, else in a new one (with 1/8
 * headroom, so that frames of slowly varying sizes can reuse it). */
function words(length) {
  const k = spare.findIndex((b) => b.byteLength >= 4 * length);
  const buffer = k >= 0 ? spare.splice(k, 1)[0] : new ArrayBuffer(4 * (length + (length >> 3)));
  return new Uint32Array(buffer, 0, length);
}

function post(msg, transfer = []) {
  self.postMessage(msg, transfer);
}

function disconnect() {
  if (ws) {
    ws.onmessage = ws.onclose = ws.onerror = null;
    ws.close();
    ws = null;
  }
}

function connect(url) {
  disconnect();
  splitter = new MessageSplitter();
  decoder = new FrameDecoder();
  needBounds = true;
  const sock = new WebSocket(url);
  sock.binaryType = "arraybuffer";
  sock.onopen = () => post({ kind: "open" });
  sock.onmessage = (ev) => {
    let bodies;
    try {
      bodies = splitter.push(new Uint8Array(ev.data));
    } catch (e) { // a byte stream cannot be resynchronised: drop the connection
      post({ kind: "error", message: String(e.message || e) });
      sock.close(4000, "protocol error");
      return;
    }
    for (const body of bodies) handle(body);
  };
  sock.onclose = (ev) => {
    if (ws === sock) ws = null;
    post({ kind: "closed", code: ev.code, reason: ev.reason });
  };
  ws = sock;
}

function handle(body) {
  const t0 = performance.now();
  let msg;
  try {
    msg = decodeBody(body);
  } catch (e) {
    post({ kind: "error", message: String(e.message || e) });
    ws?.close(4000, "protocol error");
    return;
  }
  if (msg.t === "header") {
    const { t, ...header } = msg;
    try {
      checkCodec(header.codec, header.codec_version);
    } catch (e) { // a stream this page cannot decode (e.g. an older codec version)
      decoder = null; // frames already received are dropped
      post({ kind: "error", message: String(e.message || e) });
      ws?.close(4000, "unsupported codec");
      return;
    }
    decoder = new FrameDecoder();
    post({ kind: "header", header });
  } else if (msg.t === "frame" && decoder) {
    if (decoder.state === null && msg.frame_type !== "keyframe") {
      post({ kind: "skipped", index: msg.index, frameType: msg.frame_type });
      return;
    }
    try {
      const t1 = performance.now();
      const state = decoder.update(msg.frame_type, msg.num_gaussians, msg.payload);
      const t2 = performance.now();
      const packed = packer.pack(state, words(state.n * 4));
      const sh = [];
      for (let b = 1; b <= state.shDegree; b++) { // null for bands whose ids did not change
        const changed = !state.changed || state.changed.ids[`shN_${b}`];
        sh.push(changed ? packer.packSh(state, b, words(state.n * SH_WORDS[b - 1])) : null);
      }
      const t3 = performance.now();
      const bounds = needBounds ? robustBounds(stateMeans(state)) : null;
      needBounds = false;
      post({
        kind: "frame", index: msg.index, frameType: msg.frame_type,
        numGaussians: state.n, packed, sh, bounds, bytes: body.length + 4,
        decodeMs: t3 - t0, timings: { unpackMs: t1 - t0, reconstructMs: t2 - t1, packMs: t3 - t2 },
      }, [packed.buffer, ...sh.filter(Boolean).map((a) => a.buffer)]);
    } catch (e) { // bad payload: resume at the next keyframe
      decoder = new FrameDecoder();
      post({ kind: "error", message: `frame ${msg.index}: ${e.message || e}` });
    }
  } else if (msg.t === "end") {
    post({ kind: "end", frameCount: msg.frame_count });
  } else {
    post({ kind: "error", message: `server: ${msg.code}: ${msg.message}` });
  }
}

self.onmessage = (ev) => {
  if (ev.data.cmd === "connect") connect(ev.data.url);
  else if (ev.data.cmd === "close") disconnect();
  else if (ev.data.cmd === "recycle") spare.push(...ev.data.buffers.slice(0, MAX_SPARE - spare.length));
};
post({ kind: "ready" });
