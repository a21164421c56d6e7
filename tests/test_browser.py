"""End to end in a real browser: server, live upload of real frames, the viewer in headless Chromium.

Debian's chromium driven by Playwright (``executable_path``; never ``playwright install``),
software WebGL through ANGLE on Mesa llvmpipe (flags from ../shared/NOTES.md). Skips with a
reason when chromium or playwright is missing. The viewer decodes in a Web Worker; software
WebGL draws fewer frames than arrive, so the test checks that every frame was *decoded*.
"""

from __future__ import annotations

import base64
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from splatcast.client import FrameProducer, Sequence
from splatcast.codec import ply_files
from splatcast.protocol import MEDIA_TYPE
from splatcast.server.runner import BackgroundServer, make_server
from splatcast.server.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--use-gl=angle", "--use-angle=gl-egl", "--ignore-gpu-blocklist",  # llvmpipe, 4-5x SwiftShader
]
FRAMES = 12  # real loot frames, about 48.6k Gaussians each
BACKGROUND = "#15171c"  # the player's clear colour (static/css, render.mjs)


def launch_chromium(playwright):
    """Headless Debian chromium with the flags that work on these machines."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


@pytest.fixture(scope="module")
def sync_playwright():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/install.sh does it as root)")
    api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with api.sync_playwright() as p:
        yield p


# Share of the screenshot's pixels that differ from the background, measured in the page
# from the PNG bytes (no image library needed on the Python side).
COVERAGE_JS = """async ([png, bg]) => {
  const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
  const img = await createImageBitmap(new Blob([bytes], {type: "image/png"}));
  const ctx = new OffscreenCanvas(img.width, img.height).getContext("2d");
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, img.width, img.height).data;
  let differ = 0;
  for (let i = 0; i < px.length; i += 4) {
    if (Math.abs(px[i] - bg[0]) + Math.abs(px[i + 1] - bg[1]) + Math.abs(px[i + 2] - bg[2]) > 24) differ++;
  }
  return differ / (px.length / 4);
}"""


def wait_for(page, condition: str, timeout_ms: int, console: list[str]) -> None:
    """Wait until the JS `condition` holds; on timeout fail with the viewer state and console."""
    try:
        page.wait_for_function(condition, timeout=timeout_ms)
    except Exception as e:  # playwright's TimeoutError: show what the page was doing
        state = page.evaluate("window.splatcastViewer && {...window.splatcastViewer, decodeLog: undefined}")
        raise AssertionError(f"{condition} did not hold: {state}\nconsole: {console[-20:]}") from e


def coverage(page, png: bytes) -> float:
    bg = [int(BACKGROUND[i:i + 2], 16) for i in (1, 3, 5)]
    return page.evaluate(COVERAGE_JS, [base64.b64encode(png).decode(), bg])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("encoding", ["server", "producer"])
def test_viewer_decodes_every_frame_of_a_live_upload(sync_playwright, loot_dir, tmp_path, encoding):
    """Live PLY uploads encoded by the server, or frames encoded by the producer (``FrameProducer``)."""
    plys = [p.read_bytes() for p in ply_files(loot_dir)[:FRAMES]]
    with BackgroundServer(Settings(data_dir=tmp_path / "data")) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        # rate-controlled (20 Mbit/s; loot costs about 10 at the default steps): a stream whose
        # steps change from GOP to GOP, and the probe keyframe then a keyframe again at frame 1
        seq = http.post("/v1/sequences", json={"name": "loot live", "fps": 30, "encoding": encoding,
                                               "codec": {"target_mbps": 20}}).json()
        if encoding == "producer":  # encoded here, before the page subscribes
            producer = FrameProducer(Sequence(**seq), device="cpu")
            bodies = [(producer.encode(i, ply)[0], MEDIA_TYPE) for i, ply in enumerate(plys)]
        else:
            bodies = [(ply, "application/octet-stream") for ply in plys]
        browser = launch_chromium(sync_playwright)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 640})
            console = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))

            index = page.goto(f"{server.url}/")
            assert index.ok
            page.wait_for_selector(f"a[href='/view/{seq['id']}']", timeout=10_000)

            page.goto(f"{server.url}/view/{seq['id']}")
            wait_for(page, "window.splatcastViewer?.status === 'live'", 20_000, console)
            counts = []
            for i, (body, media_type) in enumerate(bodies):  # live: the page is subscribed before frame 0 exists
                r = http.put(f"/v1/sequences/{seq['id']}/frames/{i}", content=body,
                             headers={"Content-Type": media_type})
                assert r.status_code == 201, r.text
                counts.append(r.json()["num_gaussians"])
            finished = http.post(f"/v1/sequences/{seq['id']}/finish").json()
            assert finished["codec"]["target_mbps"] == 20 and finished["bitrate_mbps"] > 0

            wait_for(page, f"window.splatcastViewer.framesDecoded >= {FRAMES}", 60_000, console)
            wait_for(page, "window.splatcastViewer.status === 'ended'", 20_000, console)
            wait_for(page, "window.splatcastViewer.framesShown > 0", 30_000, console)
            page.wait_for_timeout(500)  # a few more draws with the final camera
            state = page.evaluate("window.splatcastViewer")
            assert state["errors"] == [], (state["errors"], console)
            assert state["framesDecoded"] == FRAMES
            assert state["framesSkipped"] == 0
            assert state["lastFrameIndex"] == FRAMES - 1
            assert state["numGaussians"] == counts[-1]
            assert state["header"]["frame_count"] in (None, FRAMES)
            assert [f["index"] for f in state["decodeLog"]] == list(range(FRAMES))
            assert all(f["decodeMs"] > 0 for f in state["decodeLog"])

            # Visible reconnect: rejoin live, which starts at the latest keyframe.
            types = [f["frame_type"] for f in http.get(f"/v1/sequences/{seq['id']}/frames").json()]
            resumed = FRAMES - max(i for i, t in enumerate(types) if t == "keyframe")
            page.click("#reconnect")
            wait_for(page, f"window.splatcastViewer.framesDecoded >= {FRAMES + resumed}", 30_000, console)
            wait_for(page, "window.splatcastViewer.status === 'ended'", 20_000, console)
            again = page.evaluate("window.splatcastViewer")
            assert again["reconnects"] == 1 and again["errors"] == []
            assert again["decodeLog"][FRAMES]["frameType"] == "keyframe"
            assert [f["index"] for f in again["decodeLog"][FRAMES:]] == list(range(FRAMES - resumed, FRAMES))

            page.screenshot(path=tmp_path / "viewer.png")
            canvas = page.locator("#canvas")
            png = canvas.screenshot(mask=[page.locator("#stats"), page.locator("#errors")], mask_color=BACKGROUND)
            (tmp_path / "canvas.png").write_bytes(png)
            # The person covers about a tenth of the view; a blank or one-colour canvas gives 0.
            assert 0.02 < coverage(page, png) < 0.9
        finally:
            browser.close()


@contextmanager
def server_on_port(settings: Settings, port: int):
    """A real server on 127.0.0.1:port (0: a free one) in a thread; yields its URL. Unlike
    BackgroundServer it can come back on the port of one that was stopped."""
    server, sock = make_server(settings.model_copy(update={"host": "127.0.0.1", "port": port, "log_level": "warning"}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.mark.timeout(120)
def test_viewer_reconnects_after_a_server_restart_and_resumes_at_a_keyframe(sync_playwright, loot_dir, tmp_path):
    plys = [p.read_bytes() for p in ply_files(loot_dir)[:3]]
    settings = Settings(data_dir=tmp_path / "data")
    browser = launch_chromium(sync_playwright)
    try:
        page = browser.new_page(viewport={"width": 640, "height": 480})
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        with server_on_port(settings, 0) as url:
            port = int(url.rsplit(":", 1)[1])
            with httpx.Client(base_url=url, timeout=60) as http:
                seq_id = http.post("/v1/sequences", json={"name": "restart"}).json()["id"]
                for i in range(2):
                    assert http.put(f"/v1/sequences/{seq_id}/frames/{i}", content=plys[i]).status_code == 201
            page.goto(f"{url}/view/{seq_id}")
            wait_for(page, "window.splatcastViewer.framesDecoded >= 2", 30_000, console)
        # The server is gone: the page shows that it is reconnecting and keeps trying.
        wait_for(page, "window.splatcastViewer.status === 'reconnecting'", 10_000, console)
        assert page.locator("#status").inner_text().startswith("reconnecting")
        with server_on_port(settings, port) as url, httpx.Client(base_url=url, timeout=60) as http:
            wait_for(page, "window.splatcastViewer.reconnects >= 1 && "
                           "window.splatcastViewer.framesDecoded >= 4", 30_000, console)
            assert http.put(f"/v1/sequences/{seq_id}/frames/2", content=plys[2]).status_code == 201
            assert http.post(f"/v1/sequences/{seq_id}/finish").status_code == 200
            wait_for(page, "window.splatcastViewer.status === 'ended'", 30_000, console)
        state = page.evaluate("window.splatcastViewer")
        assert state["errors"] == [] and state["framesSkipped"] == 0
        log = state["decodeLog"]
        # Before the restart: frames 0, 1. After: the stream again from its latest keyframe
        # (frame 0), then the live frame 2 (a keyframe: a restarted server starts a new GOP).
        assert [f["index"] for f in log] == [0, 1, 0, 1, 2]
        assert log[2]["frameType"] == "keyframe" and log[4]["frameType"] == "keyframe"
    finally:
        browser.close()
