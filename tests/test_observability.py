"""Operator view: ``/metrics`` scraped and parsed with prometheus-client's parser after a real upload
and subscription, and the server's structured logs (JSON lines) from a real ``splatcast serve``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from splatcast.client import SplatcastClient
from splatcast.codec import ply_files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_and_json_logs_after_a_real_upload_and_subscription(tmp_path, loot_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    env = {**os.environ, "SPLATCAST_SUBSCRIBER_QUEUE": "64"}
    with open(log_path, "w") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "splatcast.cli", "serve", "--port", str(port), "--data-dir",
                                   str(tmp_path / "data"), "--log-format", "json"], stdout=subprocess.DEVNULL,
                                  stderr=log_file, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        plys = [p.read_bytes() for p in ply_files(loot_dir)[:4]]

        async def scenario() -> list[int]:
            async with SplatcastClient(url) as client:
                sid = (await client.create("obs", 30, {"gop": 3, "codebook_size": 16})).id
                received: list[int] = []

                async def watch() -> None:
                    async for f in client.subscribe(sid, from_start=True):
                        received.append(f.index)

                watcher = asyncio.create_task(watch())
                for i, ply in enumerate(plys):
                    await client.upload_frame(sid, i, ply)
                await client.upload_frame(sid, 1, plys[1])  # a safe retry
                await client.finish(sid)
                await asyncio.wait_for(watcher, 60)
                return received

        assert asyncio.run(scenario()) == [0, 1, 2, 3]
        assert httpx.get(f"{url}/v1/sequences/nope").status_code == 404
        while True:  # the server's handler ends just after the client saw the close
            scrape = httpx.get(f"{url}/metrics")
            assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
            m = samples(scrape.text)
            if m[("splatcast_subscribers", ())] == 0 or time.monotonic() > deadline + 30:
                break
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert m[("splatcast_frames_encoded_total", (("frame_type", "keyframe"),))] == 2  # gop 3: frames 0 and 3
    # frames 1 and 2: predicted interframes (loot voxels persist, docs/CODEC.md section 6b)
    assert m[("splatcast_frames_encoded_total", (("frame_type", "interframe"),))] == 2
    assert m[("splatcast_frame_uploads_total", (("outcome", "stored"),))] == 4
    assert m[("splatcast_frame_uploads_total", (("outcome", "retry"),))] == 1
    assert m[("splatcast_encode_seconds_count", (("frame_type", "keyframe"),))] == 2
    assert m[("splatcast_ply_parse_seconds_count", ())] == 4
    assert m[("splatcast_encode_pending", ())] == 0
    put = (("method", "PUT"), ("route", "/v1/sequences/{seq_id}/frames/{index}"), ("status", "201"))
    assert m[("splatcast_http_requests_total", put)] == 4
    assert m[("splatcast_http_requests_total", (("method", "GET"), ("route", "/v1/sequences/{seq_id}"),
                                                 ("status", "404")))] == 1

    assert m[("splatcast_subscriber_events_total", (("event", "joined"),))] == 1
    assert m[("splatcast_subscriber_events_total", (("event", "finished"),))] == 1
    assert m[("splatcast_subscribers", ())] == 0 and m[("splatcast_subscriber_queued_frames", ())] == 0
    assert m[("splatcast_websocket_sent_messages_total", ())] == 6  # header, 4 frames, end
    assert m[("splatcast_websocket_sent_bytes_total", ())] > 4 * 10_000
    assert m[("splatcast_upload_to_send_seconds_count", ())] >= 1  # frames that reached it live

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    subscriber = [r for r in lines if r.get("event") == "subscriber"]
    assert [r["outcome"] for r in subscriber] == ["joined", "finished"], subscriber
    assert subscriber[-1]["messages"] == 6 and subscriber[-1]["skipped"] == 0
    requests = [r for r in lines if r.get("event") == "request"]
    assert all({"time", "level", "logger", "method", "path", "route", "status", "ms"} <= r.keys() for r in requests)
    assert sum(r["method"] == "PUT" and r["status"] == 201 for r in requests) == 4
    assert any(r["status"] == 404 and r["path"] == "/v1/sequences/nope" for r in requests)
