#!/usr/bin/env python3
"""Browser viewer benchmark: decode ms per frame in the Web Worker, end-to-end frames per second.

For each sequence (default: the 250k-Gaussian PLAYBOT scene animated by tools/animate.py, and
real loot frames at about 48.6k), it starts a real server, uploads the frames, then opens
/view/{id} in headless Chromium (software WebGL: Mesa llvmpipe through ANGLE), which receives
the finished stream as fast as the server sends it. It prints:

- worker decode ms per frame (zstd + msgpack + codec decode + packing for Spark), median and
  max, split by frame type and by stage;
- end-to-end decode rate: frames decoded per second, from the first frame's arrival to the last;
- drawn frames per second while the stream played (software WebGL: far below a real GPU).

Needs ../shared, chromium and playwright. Timings on a shared 2-core machine are noisy.
Usage: python bench/bench_browser.py [--frames 6] [--loot-frames 30] [--screenshot docs/viewer.png]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from splatcast.client.api import ply_files
from splatcast.server.runner import BackgroundServer
from splatcast.server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPLATCAST_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO / "tests"))
from test_browser import launch_chromium  # noqa: E402  (one set of Chromium flags)


def make_frames(kind: str, count: int, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if kind == "playbot":
        args = ["animate.py", str(SHARED / "data/scenes/playbot_sh2_250k.ply"), str(out), "--frames", str(count)]
    else:
        args = ["loot_to_ply.py", str(out), "--count", str(count)]
    subprocess.run([sys.executable, str(SHARED / "tools" / args[0]), *args[1:]], check=True, stdout=subprocess.DEVNULL)
    return ply_files(out)


def upload(http: httpx.Client, name: str, plys: list[Path]) -> str:
    seq = http.post("/v1/sequences", json={"name": name, "fps": 30}).json()
    t0 = time.perf_counter()
    for i, p in enumerate(plys):
        r = http.put(f"/v1/sequences/{seq['id']}/frames/{i}", content=p.read_bytes(),
                     headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
    http.post(f"/v1/sequences/{seq['id']}/finish").raise_for_status()
    print(f"  uploaded {len(plys)} frames in {time.perf_counter() - t0:.1f} s (server encode)")
    return seq["id"]


# Run the viewer's decode worker alone (no rendering) on a page of the server's origin; each
# pass reconnects and decodes the whole stream again (later passes run warm JIT code). Frame
# buffers go back to the worker at once, as the player gives them back once drawn.
WORKER_ONLY_JS = """async ([url, count, passes]) => {
  const worker = new Worker("/static/js/worker.mjs", {type: "module"});
  await new Promise((resolve) => { worker.onmessage = ({data: m}) => m.kind === "ready" && resolve(); });
  let log = [];
  for (let pass = 0; pass < passes; pass++) {
    log = await new Promise((resolve, reject) => {
      const frames = [];
      worker.onmessage = ({data: m}) => {
        if (m.kind === "frame") {
          frames.push({frameType: m.frameType, numGaussians: m.numGaussians, bytes: m.bytes,
                       at: performance.now(), decodeMs: m.decodeMs, ...m.timings});
          const buffers = [m.packed, ...m.sh].filter(Boolean).map((a) => a.buffer);
          worker.postMessage({cmd: "recycle", buffers}, buffers); // as the player does once drawn
          if (frames.length === count) resolve(frames);
        } else if (m.kind === "error") reject(new Error(m.message));
      };
      worker.postMessage({cmd: "connect", url});
    });
  }
  worker.terminate();
  return log;
}"""


def worker_only(browser, server_url: str, seq_id: str, count: int, passes: int = 3) -> dict:
    page = browser.new_page()
    page.goto(f"{server_url}/healthz")
    ws_url = server_url.replace("http://", "ws://") + f"/v1/sequences/{seq_id}/stream?from=start"
    log = page.evaluate(WORKER_ONLY_JS, [ws_url, count, passes])
    page.close()
    return {"decodeLog": log, "framesShown": 0}


def play(browser, url: str, count: int, total: int, screenshot: Path | None) -> dict:
    page = browser.new_page(viewport={"width": 960, "height": 600})
    page.goto(url)
    page.wait_for_function(f"window.splatcastViewer?.framesDecoded >= {count} || "
                           "window.splatcastViewer?.errors.length > 0", timeout=300_000)
    page.wait_for_function("window.splatcastViewer.framesShown > 0", timeout=60_000)
    state = page.evaluate("window.splatcastViewer")
    if screenshot is not None:  # mid-replay (30 fps, paced by the server), so the figures are live
        page.click("#replay")
        page.wait_for_function(f"window.splatcastViewer.framesDecoded >= {count + total // 2}", timeout=60_000)
        page.screenshot(path=screenshot)
        print(f"  screenshot: {screenshot} ({screenshot.stat().st_size} bytes)")
    page.close()
    if state["errors"]:
        raise SystemExit(f"viewer errors: {state['errors']}")
    return state


def report(state: dict, drawing: bool) -> None:
    log = state["decodeLog"]
    print(f"  {len(log)} frames decoded, {log[0]['numGaussians']:,} Gaussians in the first"
          + (f"; {state['framesShown']} drawn" if drawing else ""))
    for ftype in ("keyframe", "intra", "interframe"):
        rows = [f for f in log if f["frameType"] == ftype]
        if not rows:
            continue
        stages = {k: statistics.median(f[k] for f in rows) for k in ("unpackMs", "reconstructMs", "packMs")}
        kb = statistics.median(f["bytes"] for f in rows) / 1024
        decode_ms = statistics.median(f["decodeMs"] for f in rows)
        print(f"  worker decode, {ftype:10s} x{len(rows):3d}: median {decode_ms:6.1f} ms,"
              f" max {max(f['decodeMs'] for f in rows):6.1f} ms (zstd+msgpack {stages['unpackMs']:.1f},"
              f" codec {stages['reconstructMs']:.1f}, pack {stages['packMs']:.1f}); {kb:.0f} KiB/frame")
    span = (log[-1]["at"] - log[0]["at"]) / 1000
    if len(log) > 1 and span > 0:
        drawn = f"; drawn {state['framesShown'] / span:.1f} frames/s over the same span" if drawing else ""
        print(f"  end to end: {(len(log) - 1) / span:.1f} frames/s decoded from arrival of the first to the last"
              f" ({span:.2f} s){drawn}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=6, help="PLAYBOT frames (250k Gaussians each)")
    ap.add_argument("--loot-frames", type=int, default=30, help="loot frames (about 48.6k each)")
    ap.add_argument("--screenshot", type=Path, help="save the player showing the loot sequence here")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"shared data missing: {SHARED}")
    with tempfile.TemporaryDirectory() as tmp, \
            BackgroundServer(Settings(data_dir=Path(tmp) / "data")) as server, \
            httpx.Client(base_url=server.url, timeout=300) as http, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            for kind, count, shot in (("playbot", args.frames, None), ("loot", args.loot_frames, args.screenshot)):
                if count <= 0:
                    continue
                print(f"{kind}: {count} frames")
                plys = make_frames(kind, count, Path(tmp) / kind)
                seq_id = upload(http, f"{kind} ({count} frames)", plys)
                print(" decode worker alone (headless Chromium, no rendering, third pass):")
                report(worker_only(browser, server.url, seq_id, count), drawing=False)
                # The player joins a finished stream live: at its latest keyframe.
                types = [f["frame_type"] for f in http.get(f"/v1/sequences/{seq_id}/frames").json()]
                live = count - max(i for i, t in enumerate(types) if t == "keyframe")
                print(f" player page, {live} frames from the latest keyframe (worker decode competing"
                      " with software WebGL on the same 2 cores):")
                report(play(browser, f"{server.url}/view/{seq_id}", live, count, shot), drawing=True)
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
