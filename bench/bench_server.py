"""Server benchmark on loopback: upload-to-decode latency, encode/decode time, subscriber fan-out.

Runs ``splatcast serve`` in a subprocess (so the benchmark's clients do not share its GIL) and:

1. uploads real sequences paced at their fps, with one subscriber decoding every frame on
   arrival, and prints per frame: type, size, server encode ms, the PUT's answer time, when the
   frame's message arrived at the subscriber and its decode ms (both from the start of the
   upload), and the latency from the start of the upload to the end of the decode (targets: <= 100 ms for loot
   interframes, about 48k Gaussians; <= 400 ms for the 250k playbot sequence), and how fast
   ``/healthz`` answers meanwhile (encoding runs off the event loop);
2. replays the stored loot sequence to N concurrent subscribers paced by the server at 30 fps
   (``?from=start&pace=realtime``) and counts the subscribers that keep up: every frame
   received, none later than ``--late-ms`` behind the 30 fps schedule (target: >= 50);
3. uploads loot live (at up to 30 fps: the encoder may be slower) to N subscribers that joined
   first, and counts those that got every frame, with how much later than the first one;
4. uploads loot live to ``--concurrent`` sequences at once (each at up to 30 fps, one frame in
   flight per uploader, each with one subscriber decoding on arrival: the server's encode
   threads are shared) and prints, per sequence, the upload-to-decode latency (median, p90,
   max) and the frames per second it got from the first upload to the last decode.

With ``--encode`` the latency runs (1.) use producer-side encoding: the benchmark encodes every
frame first, as a producer would on its own machine (``FrameProducer``, ``--device``; the encode
time of each frame is printed apart), then uploads the encoded frames live to a sequence created
with ``encoding="producer"``; the server checks each by decoding it, stores and relays it. The
upload-to-decode latency then runs from the start of the encoded frame's PUT to the end of the
subscriber's decode (target: median <= 100 ms for the 250k playbot sequence). Encoding first keeps
the producer's encoder off the two cores the server and the subscriber share here.
``--latency-only`` skips 2.-4.

Data comes from ``../shared`` (or ``$SPLATCAST_SHARED``) through its tools, into a temporary
directory. Figures taken while other work runs on the machine are noisy.

    .venv/bin/python bench/bench_server.py [--loot-frames 60] [--playbot-frames 8]
                                           [--subscribers 10,25,50,100] [--concurrent 4]
                                           [--encode [--device auto]] [--latency-only]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from splatcast.client.api import FrameProducer, Sequence, SplatcastClient, Uploaded, ply_files
from splatcast.codec import FrameDecoder
from splatcast.protocol import FrameMessage, read_stream_sized

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPLATCAST_SHARED", REPO.parent / "shared"))


def make_data(tmp: Path, loot_frames: int, playbot_frames: int) -> dict[str, Path]:
    tool = lambda name, *a: subprocess.run([sys.executable, str(SHARED / "tools" / name), *map(str, a)],  # noqa: E731
                                           check=True, stdout=subprocess.DEVNULL)
    tool("loot_to_ply.py", tmp / "loot", "--count", loot_frames)
    data = {"loot": tmp / "loot"}
    if playbot_frames:
        tool("animate.py", SHARED / "data/scenes/playbot_sh2_250k.ply", tmp / "playbot", "--frames", playbot_frames)
        data["playbot"] = tmp / "playbot"
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``splatcast serve`` in a subprocess on a free loopback port, with ``env`` added to this
    process's environment (e.g. SPLATCAST_DATA_DIR); (process, URL) once /healthz answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "splatcast", "serve", "--port", str(port)],
                            env={**os.environ, "SPLATCAST_MAX_SUBSCRIBERS": "500", "SPLATCAST_LOG_LEVEL": "warning",
                                 **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start") from None
            time.sleep(0.3)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values: the sorted value at index q x (n - 1), rounded down."""
    return sorted(values)[int(q * (len(values) - 1))]


def encode_all(seq: Sequence, plys: list[bytes], device: str) -> list[tuple[bytes, float]]:
    """Producer-side encoding of every frame: (upload body, encode ms) each."""
    producer, out = FrameProducer(seq, device), []
    for i, ply in enumerate(plys):
        t0 = time.perf_counter()
        body, _ = producer.encode(i, ply)
        out.append((body, (time.perf_counter() - t0) * 1000))
    return out


async def upload_encoded(client: SplatcastClient, sid: str, encoded: list[tuple[bytes, float]],
                         fps: float) -> list[Uploaded]:
    """Upload encoded frames live at up to fps, one at a time (as ``upload_frames`` does PLYs)."""
    ups, t0 = [], time.perf_counter()
    for i, (body, encode_ms) in enumerate(encoded):
        await asyncio.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
        ups.append(await client.upload_encoded(sid, i, body))
        ups[-1].producer_encode_ms = encode_ms
    return ups


async def watched_upload(url: str, name: str, plys: list[bytes], fps: float,
                         watch_url: str | None = None, encode_device: str | None = None) -> tuple[str, list, list]:
    """Create a sequence with one subscriber (through ``watch_url``, default ``url``) decoding every
    frame on arrival, upload the PLYs live at up to fps, finish; return (id, the client's Uploaded
    list, its ReceivedFrame list). With ``encode_device``: encode every frame first on that device
    (a producer-encoded sequence), then upload the encoded frames live."""
    async with SplatcastClient(url) as client, SplatcastClient(watch_url or url) as watcher:
        if encode_device is None:
            sid = (await client.create(name, fps)).id
        else:
            seq = await client.create(name, fps, encoding="producer")
            sid, encoded = seq.id, await asyncio.to_thread(encode_all, seq, plys, encode_device)
        received = []

        async def watch():
            async for f in watcher.subscribe(sid, from_start=True):
                received.append(f)

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        if encode_device is None:
            ups = await client.upload_frames(sid, plys, fps=fps)
        else:
            ups = await upload_encoded(client, sid, encoded, fps)
        await client.finish(sid)
        await asyncio.wait_for(watching, 300)
    return sid, ups, received


def latency_ms(upload, frame) -> float:
    """Upload-to-decode latency of a frame: from the start of its upload to the end of its decode."""
    return (frame.decoded_at - upload.sent_at) * 1000


async def latency_run(url: str, name: str, directory: Path, fps: float, encode_device: str | None = None) -> str:
    """Upload live at fps with one decoding subscriber (``encode_device``: producer-side encoding,
    see ``watched_upload``); print the per-frame table; return the id."""
    plys = [p.read_bytes() for p in ply_files(directory)]

    async def probe():  # is the server responsive while it encodes?
        async with httpx.AsyncClient(base_url=url) as http:
            while True:
                t0 = time.perf_counter()
                (await http.get("/healthz")).raise_for_status()
                health_ms.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.05)

    health_ms: list[float] = []
    prober = asyncio.create_task(probe())
    sid, ups, received = await watched_upload(url, name, plys, fps, encode_device=encode_device)
    prober.cancel()
    sent = {u.index: u for u in ups}
    how = f"encoded by the producer ({encode_device}) and " if encode_device else ""
    print(f"\n== {name}: {len(plys)} frames {how}uploaded at up to {fps:g} fps, one subscriber decoding on arrival")
    print(f"{'frame':>5} {'type':<10} {'gaussians':>9} {'kbytes':>7} {'prod. enc ms':>12} "
          f"{'server ' + ('check' if encode_device else 'encode') + ' ms':>17} {'answer ms':>9} "
          f"{'arrived ms':>10} {'decode ms':>9} {'upload->decode ms':>17}")
    rows = []
    for f in received:
        u = sent[f.index]
        lat = latency_ms(u, f)
        producer_ms = u.producer_encode_ms or 0.0
        rows.append((f.frame_type, u.frame.encode_ms, f.decode_ms, lat, producer_ms))
        print(f"{f.index:>5} {f.frame_type:<10} {f.num_gaussians:>9} {f.nbytes / 1024:>7.1f} {producer_ms:>12.1f} "
              f"{u.frame.encode_ms:>17.1f} {(u.answered_at - u.sent_at) * 1000:>9.1f} "
              f"{(f.arrived_at - u.sent_at) * 1000:>10.1f} {f.decode_ms:>9.1f} {lat:>17.1f}")
    for kind in ("keyframe", "non-keyframe", "all frame"):
        sel = [r for r in rows if kind == "all frame" or (r[0] == "keyframe") == (kind == "keyframe")]
        if sel:
            producer = f"producer encode median {statistics.median(r[4] for r in sel):.0f} ms, " if encode_device \
                else ""
            print(f"{name} {kind}s ({len(sel)}): {producer}server {'check' if encode_device else 'encode'} median "
                  f"{statistics.median(r[1] for r in sel):.0f} ms, decode median "
                  f"{statistics.median(r[2] for r in sel):.1f} ms, upload->decode median "
                  f"{statistics.median(r[3] for r in sel):.0f} ms, max {max(r[3] for r in sel):.0f} ms")
    print(f"{name}: GET /healthz during the uploads ({len(health_ms)} probes): median "
          f"{statistics.median(health_ms):.1f} ms, max {max(health_ms):.1f} ms")
    async with SplatcastClient(url) as client:
        cpu = decode_cpu_ms(await client.download(sid))
    for kind in ("keyframe", "non-keyframe"):
        sel = [ms for t, ms in cpu if (t == "keyframe") == (kind == "keyframe")]
        if sel:
            print(f"{name} {kind}s: CPU time to parse and decode one (a subscriber's decode; with --encode also "
                  f"the server's check), median {statistics.median(sel):.1f} ms")
    return sid


def decode_cpu_ms(stream: bytes) -> list[tuple[str, float]]:
    """(frame type, CPU ms) of parsing and decoding each frame of a stream in this process:
    ``time.process_time``, which other processes on a busy machine do not inflate."""
    decoder, out, messages = FrameDecoder(), [], read_stream_sized(io.BytesIO(stream))
    while True:
        t0 = time.process_time()
        msg, _ = next(messages, (None, 0))
        if msg is None:
            return out
        if isinstance(msg, FrameMessage):
            decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
            out.append((msg.frame_type, (time.process_time() - t0) * 1000))


async def fanout(url: str, sid: str, n: int, frames: int, fps: float, late_ms: float) -> tuple[int, float]:
    """N subscribers replaying at fps; returns (how many kept up, worst lateness in ms)."""
    ws_url = url.replace("http", "ws") + f"/v1/sequences/{sid}/stream?from=start&pace=realtime"

    async def one() -> tuple[bool, float]:
        async with connect(ws_url, compression=None, max_size=None) as ws:
            arrivals = [time.perf_counter() async for _ in ws]  # header, frames, end
        times = arrivals[1:-1]
        if len(times) != frames:
            return False, float("inf")
        late = max((t - times[0] - i / fps) * 1000 for i, t in enumerate(times))
        return late <= late_ms, late

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    return sum(k for k, _ in ok), max((late for _, late in ok), default=float("inf"))


async def live_fanout(url: str, directory: Path, n: int, fps: float) -> tuple[int, float, float]:
    """N raw subscribers on a live upload (paced at up to fps); returns (kept all frames, spread p99, max ms).

    The spread of a frame is how much later a subscriber got it than the first subscriber did.
    """
    plys = [p.read_bytes() for p in ply_files(directory)]
    async with SplatcastClient(url) as client:
        sid = (await client.create(f"live-{n}", fps)).id
        ws_url = url.replace("http", "ws") + f"/v1/sequences/{sid}/stream"

        async def one() -> list[float]:
            async with connect(ws_url, compression=None, max_size=None) as ws:
                return [time.perf_counter() async for _ in ws][1:-1]  # frames only

        subs = [asyncio.create_task(one()) for _ in range(n)]
        while (await client.get(sid)).subscribers < n:
            await asyncio.sleep(0.1)
        await client.upload_frames(sid, plys, fps=fps)
        await client.finish(sid)
        arrivals = [a for a in await asyncio.gather(*subs, return_exceptions=True) if isinstance(a, list)]
    complete = [a for a in arrivals if len(a) == len(plys)]
    spreads = [t - min(a[i] for a in complete) for a in complete for i, t in enumerate(a)]
    p99 = percentile(spreads, 0.99) * 1000 if spreads else float("inf")
    return len(complete), p99, (max(spreads) * 1000 if spreads else float("inf"))


async def concurrent_uploads(url: str, directory: Path, n: int, fps: float) -> None:
    """N sequences uploaded live at once (the same frames), each with one decoding subscriber;
    print per sequence the frames decoded, frames per second and upload-to-decode latencies."""
    plys = [p.read_bytes() for p in ply_files(directory)]
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(watched_upload(url, f"concurrent-{k}", plys, fps) for k in range(n)))
    wall = time.perf_counter() - t0
    print(f"\n== concurrent uploads: {n} loot sequences ({len(plys)} frames each) uploaded live at once at up to "
          f"{fps:g} fps, one subscriber decoding each ({wall:.1f} s, {n * len(plys) / wall:.1f} frames/s in all)")
    for k, (_, ups, received) in enumerate(runs):
        sent = {u.index: u for u in ups}
        lat = [latency_ms(sent[f.index], f) for f in received]
        inter = [x for x, f in zip(lat, received) if f.frame_type != "keyframe"]
        rate = len(received) / (received[-1].decoded_at - ups[0].sent_at)
        print(f"sequence {k}: {len(received)}/{len(plys)} frames decoded, {rate:.1f} fps; upload->decode "
              f"median {statistics.median(lat):.0f} ms, p90 {percentile(lat, 0.9):.0f} ms, max {max(lat):.0f} ms; "
              f"non-keyframes median {statistics.median(inter) if inter else float('nan'):.0f} ms; server encode "
              f"median {statistics.median(u.frame.encode_ms for u in ups):.0f} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loot-frames", type=int, default=60)
    ap.add_argument("--playbot-frames", type=int, default=8, help="0 to skip the 250k sequence")
    ap.add_argument("--subscribers", default="10,25,50,100")
    ap.add_argument("--live-subscribers", default="50,100", help="subscriber counts for the live fan-out")
    ap.add_argument("--late-ms", type=float, default=100.0, help="lateness that counts as not keeping up")
    ap.add_argument("--concurrent", type=int, default=4, help="sequences uploaded at once (0 to skip)")
    ap.add_argument("--encode", action="store_true", help="latency runs with producer-side encoding")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="the producer's encoder device")
    ap.add_argument("--latency-only", action="store_true", help="only the latency runs (1.)")
    args = ap.parse_args()
    if not (SHARED / "data/loot_depth7.npz").exists():
        sys.exit(f"shared data missing: {SHARED} (set SPLATCAST_SHARED)")
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        tmp = Path(tmp)
        data = make_data(tmp, args.loot_frames, args.playbot_frames)
        proc, url = start_server({"SPLATCAST_DATA_DIR": str(tmp / "server-data")})
        try:
            print(f"server {url} (subprocess), {os.cpu_count()} CPUs; figures are noisy while other work runs")
            device = args.device if args.encode else None
            loot = asyncio.run(latency_run(url, "loot", data["loot"], 30.0, device))
            if "playbot" in data:
                asyncio.run(latency_run(url, "playbot", data["playbot"], 30.0, device))
            if args.latency_only:
                return
            print(f"\n== fan-out: stored loot ({args.loot_frames} frames) replayed to N subscribers at 30 fps")
            for n in map(int, args.subscribers.split(",")):
                kept, worst = asyncio.run(fanout(url, loot, n, args.loot_frames, 30.0, args.late_ms))
                print(f"{n:>4} subscribers: {kept:>4} kept up (all frames, <= {args.late_ms:g} ms late), "
                      f"worst lateness {worst:.0f} ms", flush=True)
            print("\n== live fan-out: loot uploaded at up to 30 fps to N subscribers joined before frame 0")
            for n in map(int, args.live_subscribers.split(",")):
                kept, p99, worst = asyncio.run(live_fanout(url, data["loot"], n, 30.0))
                print(f"{n:>4} subscribers: {kept:>4} got every frame; a frame reached the last subscriber "
                      f"p99 {p99:.0f} ms, max {worst:.0f} ms after the first", flush=True)
            if args.concurrent:
                asyncio.run(concurrent_uploads(url, data["loot"], args.concurrent, 30.0))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
