"""deploy/nginx.conf for real: nginx (Debian package) in front of two replicas on Redis + S3.

The compose file's nginx configuration is run with only the replica addresses and the listening
port changed: uploads, finish, the WebSocket stream and ranged GOP requests all go through it,
and `hash $sequence_id consistent` sends every request of a sequence to the same replica.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from services import free_port
from test_scaleout import collect, frames_of, scale_settings, ws_url

from splatcast.server import BackgroundServer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


def _metric(text: str, outcome: str) -> float:
    m = re.search(rf'splatcast_frame_uploads_total{{outcome="{outcome}"}} ([0-9.]+)', text)
    return float(m.group(1)) if m else 0.0


def test_nginx_config_fronts_two_replicas(redis_server, s3_server, loot_dir, tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx not installed (apt-get install -y nginx-light; scripts/install.sh)")
    settings = scale_settings(redis_server, s3_server, f"t{uuid.uuid4().hex[:12]}", tmp_path)
    plys = frames_of(loot_dir, 5)
    with BackgroundServer(settings) as a, BackgroundServer(settings) as b:
        port = free_port()
        conf = (REPO / "deploy/nginx.conf").read_text()
        conf = conf.replace("server replica1:8000", f"server {a.url[7:]}").replace("server replica2:8000",
                                                                                 f"server {b.url[7:]}")
        conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
        assert f"server {a.url[7:]}" in conf and f"listen 127.0.0.1:{port};" in conf
        (tmp_path / "nginx.conf").write_text(conf)
        log = tmp_path / "error.log"
        proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(log),
                                 "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            front = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"{front}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
            sid = httpx.post(f"{front}/v1/sequences", json={"name": "n", "fps": 30, "codec": {"gop": 3}}).json()["id"]

            async def scenario() -> list[bytes]:
                got: list[bytes] = []
                ready = asyncio.Event()
                sub = asyncio.create_task(collect(ws_url(front, sid, "from=start"), got, ready))
                await ready.wait()
                async with httpx.AsyncClient(timeout=60) as http:
                    for i, body in enumerate(plys):
                        r = await http.put(f"{front}/v1/sequences/{sid}/frames/{i}", content=body)
                        assert r.status_code == 201, r.text
                    assert (await http.post(f"{front}/v1/sequences/{sid}/finish")).status_code == 200
                await asyncio.wait_for(sub, 60)
                return got

            got = asyncio.run(scenario())
            stream = httpx.get(f"{front}/v1/sequences/{sid}/stream.splatcast").content
            assert b"".join(got) == stream  # through nginx's WebSocket proxying, bit-exact
            gop = httpx.get(f"{front}/v1/sequences/{sid}/gops/1", headers={"Range": "bytes=0-99"})
            assert gop.status_code == 206 and len(gop.content) == 100 and "immutable" in gop.headers["cache-control"]
            stored = [_metric(httpx.get(f"{u}/metrics").text, "stored") for u in (a.url, b.url)]
            forwarded = [_metric(httpx.get(f"{u}/metrics").text, "forwarded") for u in (a.url, b.url)]
            assert sorted(stored) == [0, 5] and forwarded == [0, 0]  # one replica got every upload: the hash
        finally:
            proc.terminate()
            proc.wait(10)
