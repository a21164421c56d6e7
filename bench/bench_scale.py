"""Scale-out benchmark on loopback: backbone latency, fan-out with two replicas, takeover after kill -9.

Starts its own redis-server (AOF fsynced on every write) and S3 server (moto) on free ports, and
``splatcast serve`` subprocesses, then:

1. latency: loot uploaded live at 30 fps with one subscriber decoding every frame on arrival;
   upload-to-decode p50/p99 (from the start of a frame's upload to the end of its decode) for a
   single node (SQLite + files), and two replicas on Redis + S3 with the upload on replica A and
   the subscriber on A, then on B (the backbone's added latency);
2. live fan-out: loot uploaded at 30 fps to N raw subscribers on a single node, and to N per
   replica on two replicas (2N in all); a subscriber keeps up when it gets every frame, none more
   than ``--late-ms`` after the first subscriber got it;
3. takeover: ``kill -9`` of the replica holding a sequence's encoder lease mid-upload; the time
   from the kill to the 201 of the next frame uploaded through the other replica (lease
   ``--lease-s``), repeated ``--takeovers`` times.

Everything (servers, Redis, moto, clients) shares this machine's cores: the figures say what one
box does, not what separate machines would.

    .venv/bin/python bench/bench_scale.py [--loot-frames 60] [--subscribers 25,50] [--takeovers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from splatcast.client.api import SplatcastClient, ply_files

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from bench_server import SHARED, latency_ms, make_data, percentile, watched_upload  # noqa: E402
from bench_server import start_server as serve  # noqa: E402
from services import RedisServer, S3Server, aws_env  # noqa: E402


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


async def cross_latency(up_url: str, watch_url: str, plys: list[bytes], fps: float) -> list[float]:
    """Upload-to-decode latencies (ms) of a live upload through up_url watched through watch_url."""
    _, ups, received = await watched_upload(up_url, f"lat-{uuid.uuid4().hex[:6]}", plys, fps, watch_url)
    sent = {u.index: u for u in ups}
    assert [f.index for f in received] == list(range(len(plys))), "frames missing"
    return [latency_ms(sent[f.index], f) for f in received]


async def fanout(up_url: str, watch_urls: list[str], n: int, plys: list[bytes], fps: float,
                 late_ms: float) -> tuple[int, list[int], float, list[int]]:
    """n raw subscribers on each of watch_urls during a live upload; (subscribers, kept up per URL,
    spread p99 ms, the frames some subscriber got over late_ms after the first)."""
    async with SplatcastClient(up_url) as client:
        sid = (await client.create(f"fan-{n}", fps)).id

        async def one(url: str) -> list[float]:
            ws = url.replace("http", "ws") + f"/v1/sequences/{sid}/stream"
            async with connect(ws, compression=None, max_size=None) as conn:
                return [time.perf_counter() async for _ in conn][1:-1]

        subs = [asyncio.create_task(one(u)) for u in watch_urls for _ in range(n)]
        where = [u for u in watch_urls for _ in range(n)]
        async with httpx.AsyncClient() as http:
            for url in watch_urls:
                while (await http.get(f"{url}/v1/sequences/{sid}")).json()["subscribers"] < n:
                    await asyncio.sleep(0.1)
        await client.upload_frames(sid, plys, fps=fps)
        await client.finish(sid)
        results = await asyncio.gather(*subs, return_exceptions=True)
    complete = [(u, a) for u, a in zip(where, results) if isinstance(a, list) and len(a) == len(plys)]
    if not complete:
        return len(subs), [0] * len(watch_urls), float("inf"), []
    first = [min(a[i] for _, a in complete) for i in range(len(plys))]
    worst = [(u, max((t - first[i]) * 1000 for i, t in enumerate(a))) for u, a in complete]
    spreads = [(t - first[i]) * 1000 for _, a in complete for i, t in enumerate(a)]
    kept = [sum(w <= late_ms for v, w in worst if v == u) for u in watch_urls]
    late = sorted({i for _, a in complete for i, t in enumerate(a) if (t - first[i]) * 1000 > late_ms})
    return len(subs), kept, percentile(spreads, 0.99), late


def takeover(env: dict[str, str], plys: list[bytes]) -> float:
    """Seconds from kill -9 of the lease holder to the next frame's 201 through the other replica."""
    (pa, a), (pb, b) = serve(env), serve(env)
    try:
        sid = httpx.post(f"{a}/v1/sequences", json={"name": "takeover", "fps": 30}).json()["id"]
        for i in range(3):
            httpx.put(f"{a}/v1/sequences/{sid}/frames/{i}", content=plys[i], timeout=60).raise_for_status()
        t0 = time.monotonic()
        pa.send_signal(signal.SIGKILL)
        pa.wait()
        r = httpx.put(f"{b}/v1/sequences/{sid}/frames/3", content=plys[3], timeout=60)
        took = time.monotonic() - t0
        assert r.status_code == 201 and r.json()["frame_type"] == "keyframe", r.text
        return took
    finally:
        stop(pa, pb)


def summary(lat: list[float]) -> str:
    return (f"p50 {statistics.median(lat):6.0f} ms, p99 {percentile(lat, 0.99):6.0f} ms, "
            f"max {max(lat):6.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loot-frames", type=int, default=60)
    ap.add_argument("--subscribers", default="25,50", help="subscribers per replica in the fan-out")
    ap.add_argument("--late-ms", type=float, default=100.0)
    ap.add_argument("--takeovers", type=int, default=3)
    ap.add_argument("--lease-s", type=float, default=3.0)
    ap.add_argument("--fanout-only", action="store_true", help="skip the latency runs and the single node")
    args = ap.parse_args()
    if not (SHARED / "data/loot_depth7.npz").exists():
        sys.exit(f"shared data missing: {SHARED} (set SPLATCAST_SHARED)")
    os.environ.update({k: v for k, v in aws_env().items() if k not in os.environ})
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        plys = [p.read_bytes() for p in ply_files(make_data(tmp, args.loot_frames, 0)["loot"])]
        rds, s3 = RedisServer(tmp / "redis"), S3Server()
        scale_env = {"SPLATCAST_REDIS_URL": rds.url, "SPLATCAST_S3_URL": s3.url, "SPLATCAST_S3_BUCKET": "bench",
                     "SPLATCAST_LEASE_S": str(args.lease_s), "SPLATCAST_DATA_DIR": str(tmp / "unused")}
        try:
            print(f"{os.cpu_count()} CPUs; redis-server {rds.url}, moto S3 {s3.url}; loot {len(plys)} frames")
            single, url = serve({"SPLATCAST_DATA_DIR": str(tmp / "single")})
            try:
                print("\n== upload-to-decode latency, loot live at 30 fps, one decoding subscriber")
                counts = list(map(int, args.subscribers.split(",")))
                fan_single = {}
                if not args.fanout_only:
                    lat = asyncio.run(cross_latency(url, url, plys, 30))
                    print(f"single node (SQLite + files)          : {summary(lat)}")
                    fan_single = {n: asyncio.run(fanout(url, [url], 2 * n, plys, 30, args.late_ms)) for n in counts}
            finally:
                stop(single)
            (pa, a), (pb, b) = serve(scale_env), serve(scale_env)
            try:
                asyncio.run(cross_latency(a, b, plys[:5], 30))  # warm-up: bucket, connections, first encodes
                if not args.fanout_only:
                    print(f"two replicas, upload A, subscriber A  : "
                          f"{summary(asyncio.run(cross_latency(a, a, plys, 30)))}")
                    print(f"two replicas, upload A, subscriber B  : "
                          f"{summary(asyncio.run(cross_latency(a, b, plys, 30)))}")
                print(f"\n== live fan-out, loot at 30 fps: kept up = every frame, <= {args.late_ms:g} ms after the "
                      "first subscriber")
                for n in counts:
                    if n in fan_single:
                        total, kept, p99, late = fan_single[n]
                        print(f"single node, {total:>3} subscribers          : {sum(kept):>3} kept up, spread p99 "
                              f"{p99:.0f} ms; late frames {late}")
                    total, kept, p99, late = asyncio.run(fanout(a, [a, b], n, plys, 30, args.late_ms))
                    print(f"two replicas, {n:>3} + {n:>3} subscribers : {sum(kept):>3} kept up ({kept[0]} on A, "
                          f"{kept[1]} on B), spread p99 {p99:.0f} ms; late frames {late}", flush=True)
            finally:
                stop(pa, pb)
            print(f"\n== takeover after kill -9 of the encoding replica (lease {args.lease_s:g} s)")
            times = [takeover(scale_env, plys) for _ in range(args.takeovers)]
            print("kill -9 to the next frame stored through the other replica: "
                  + ", ".join(f"{t:.2f} s" for t in times))
        finally:
            rds.stop()
            s3.stop()


if __name__ == "__main__":
    main()
