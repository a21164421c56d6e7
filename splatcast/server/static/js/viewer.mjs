// The player page (/view/{id}): owns the UI, the decode worker and the renderer.
//
// The worker decodes every frame as it arrives; the render loop draws the newest decoded frame
// (software WebGL may draw fewer frames than arrive). Live mode joins at the latest keyframe;
// replay asks the server for frame 0 onwards at the stream's own pace. When the connection
// drops before the end, the page reconnects to the live stream with a growing delay and
// resumes at the keyframe the server sends first. State for tests: window.splatcastViewer.
import { createRenderer } from "./render.mjs";

const RETRY_MS = [500, 1000, 2000, 4000, 8000];
const seqId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const token = new URLSearchParams(location.search).get("token");

const state = window.splatcastViewer = {
  sequenceId: seqId,
  status: "connecting", // connecting | live | replay | reconnecting | ended | failed
  mode: "live", // live | replay
  playing: true,
  header: null,
  framesDecoded: 0, // every frame decoded since the page loaded, across reconnects
  framesShown: 0,
  framesSkipped: 0, // frames before the first keyframe of a connection
  lastFrameIndex: -1, // index of the newest decoded frame
  shownFrameIndex: -1,
  numGaussians: 0,
  frameType: "",
  // Per decoded frame, newest last (at most 1000): {index, frameType, numGaussians, bytes, at
  // (arrival, ms since page load), decodeMs (worker: zstd + msgpack + decode + packing),
  // unpackMs, reconstructMs, packMs}.
  decodeLog: [],
  bitrateMbps: 0,
  fps: 0, // frames drawn per second
  reconnects: 0,
  errors: [],
};

const $ = (id) => document.getElementById(id);
const renderer = createRenderer($("canvas"));
const worker = new Worker(new URL("./worker.mjs", import.meta.url), { type: "module" });
let workerReady = false;
let queued = null; // a command sent before the worker said "ready"
let pending = null; // newest decoded frame not drawn yet
let fitted = false;
let retry = 0;
let retryTimer = null;
let ended = false;
const received = []; // [time ms, bytes] over the last second
const drawn = []; // times of drawn frames over the last second

function streamUrl(mode) {
  const q = new URLSearchParams();
  if (mode === "replay") { q.set("from", "start"); q.set("pace", "realtime"); }
  if (token) q.set("token", token);
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const qs = q.toString();
  return `${proto}://${location.host}/v1/sequences/${encodeURIComponent(seqId)}/stream${qs ? `?${qs}` : ""}`;
}

function connect(mode) {
  clearTimeout(retryTimer);
  state.mode = mode;
  state.status = "connecting";
  ended = false;
  const cmd = { cmd: "connect", url: streamUrl(mode) };
  if (workerReady) worker.postMessage(cmd);
  else queued = cmd;
  updateUi();
}

function scheduleReconnect() {
  const delay = RETRY_MS[Math.min(retry, RETRY_MS.length - 1)];
  retry += 1;
  state.status = "reconnecting";
  state.reconnectAt = performance.now() + delay;
  retryTimer = setTimeout(() => {
    state.reconnects += 1;
    connect("live"); // the server starts a live subscriber at a keyframe
  }, delay);
}

function addError(message) {
  state.errors.push(message);
  console.error("splatcast:", message);
}

worker.onmessage = ({ data: m }) => {
  const now = performance.now();
  if (m.kind === "ready") {
    workerReady = true;
    if (queued) worker.postMessage(queued);
    queued = null;
  } else if (m.kind === "open") {
    state.status = state.mode;
  } else if (m.kind === "header") {
    state.header = m.header;
    document.title = `${m.header.name || seqId} - splatcast`;
  } else if (m.kind === "frame") {
    retry = 0;
    state.framesDecoded += 1;
    state.lastFrameIndex = m.index;
    state.numGaussians = m.numGaussians;
    state.frameType = m.frameType;
    state.decodeLog.push({ index: m.index, frameType: m.frameType, numGaussians: m.numGaussians,
      bytes: m.bytes, at: now, decodeMs: m.decodeMs, ...m.timings });
    if (state.decodeLog.length > 1000) state.decodeLog.shift();
    received.push([now, m.bytes]);
    if (m.bounds && !fitted) { renderer.fit(m.bounds); fitted = true; }
    if (pending) { // never drawn: recycle it, but keep its SH bands where this frame has none
      const dropped = { packed: pending.packed, sh: pending.sh.map((words, k) => (m.sh[k] ? words : null)) };
      m.sh = m.sh.map((words, k) => words ?? pending.sh[k]);
      recycle(dropped);
    }
    pending = m;
  } else if (m.kind === "skipped") {
    state.framesSkipped += 1;
  } else if (m.kind === "end") {
    ended = true;
    state.status = "ended";
  } else if (m.kind === "error") {
    addError(m.message);
  } else if (m.kind === "closed") {
    if (ended) state.status = "ended";
    else if (state.status !== "failed") scheduleReconnect();
  }
  updateUi();
};
worker.onerror = (e) => addError(`worker: ${e.message}`);

// Give a frame's buffers back to the worker, which packs later frames into them.
function recycle(frame) {
  const buffers = [frame.packed, ...frame.sh].filter(Boolean).map((a) => a.buffer);
  worker.postMessage({ cmd: "recycle", buffers }, buffers);
}

function rate(list, now, value) {
  while (list.length && now - (Array.isArray(list[0]) ? list[0][0] : list[0]) > 1000) list.shift();
  return list.reduce((sum, x) => sum + value(x), 0);
}

function mean(a) {
  return a.length ? a.reduce((s, x) => s + x, 0) / a.length : 0;
}

function updateUi() {
  const now = performance.now();
  state.bitrateMbps = (rate(received, now, (x) => x[1]) * 8) / 1e6;
  state.fps = rate(drawn, now, () => 1);
  const h = state.header;
  const total = h?.frame_count ?? null;
  const recent = state.decodeLog.slice(-30).map((f) => f.decodeMs);
  $("title").textContent = h?.name || seqId;
  let status = state.status;
  if (status === "reconnecting") {
    status = `reconnecting in ${Math.max(0, (state.reconnectAt - now) / 1000).toFixed(1)} s`;
  }
  $("status").textContent = status;
  $("status").className = `pill ${state.status}`;
  $("frame").textContent = state.shownFrameIndex < 0 ? "-"
    : `${state.shownFrameIndex}${total !== null ? ` / ${total - 1}` : ""}`;
  $("ftype").textContent = state.frameType || "-";
  $("gaussians").textContent = state.numGaussians.toLocaleString("en-US");
  $("fps").textContent = state.fps.toFixed(1);
  $("bitrate").textContent = `${state.bitrateMbps.toFixed(2)} Mbit/s`;
  $("decode").textContent = recent.length ? `${mean(recent).toFixed(1)} ms` : "-";
  $("decoded").textContent = String(state.framesDecoded);
  $("play").textContent = state.playing ? "Pause" : "Play";
  $("live").classList.toggle("active", state.mode === "live");
  $("replay").classList.toggle("active", state.mode === "replay");
  $("errors").textContent = state.errors.slice(-3).join("\n");
}

async function loop() {
  for (;;) {
    await new Promise(requestAnimationFrame);
    try {
      if (pending && state.playing) {
        const frame = pending;
        pending = null;
        await renderer.show(frame); // copies the words into Spark's arrays
        recycle(frame);
        state.framesShown += 1;
        state.shownFrameIndex = frame.index;
        drawn.push(performance.now());
      }
      await renderer.draw();
    } catch (e) {
      addError(`render: ${e.message || e}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

$("play").onclick = () => { state.playing = !state.playing; updateUi(); };
$("live").onclick = () => connect("live");
$("replay").onclick = () => connect("replay");
$("reconnect").onclick = () => { retry = 0; state.reconnects += 1; connect("live"); };
$("flip").onclick = () => renderer.flip();
setInterval(updateUi, 250);

async function start() {
  const q = token ? `?token=${encodeURIComponent(token)}` : "";
  const res = await fetch(`/v1/sequences/${encodeURIComponent(seqId)}${q}`);
  if (!res.ok) {
    state.status = "failed";
    addError(`sequence ${seqId}: HTTP ${res.status}`);
    updateUi();
    return;
  }
  const info = await res.json();
  $("title").textContent = info.name || seqId;
  connect("live");
}

start();
loop();
