"""Scale-out on real services: replicas sharing a real redis-server and an S3 server (moto), on loopback.

Two in-process replicas (BackgroundServer) for the fan-out, forwarding and S3-only replay; two
``splatcast serve`` subprocesses for ``kill -9`` of the encoding replica.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets

from splatcast.protocol import FrameMessage, StreamDecoder, StreamHeader
from splatcast.server import BackgroundServer, Settings
from splatcast.server.errors import StorageError

redis = pytest.importorskip("redis", reason="the scale extra is not installed (pip install -e '.[scale]')")
pytest.importorskip("boto3", reason="the scale extra is not installed (pip install -e '.[scale]')")
from splatcast.server.scale_storage import PREFIX  # noqa: E402

pytestmark = pytest.mark.timeout(240)
GOP = 4


def scale_settings(redis_server, s3_server, bucket: str, tmp_path: Path, **extra) -> Settings:
    return Settings(redis_url=redis_server.url, s3_url=s3_server.url, s3_bucket=bucket, data_dir=tmp_path / "unused",
                    device="cpu", lease_s=1.5, lease_wait_s=6, backbone_timeout_s=1.5, retry_after_s=1,
                    stream_block_ms=200, **extra)


def frames_of(loot_dir: Path, n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted(loot_dir.glob("*.ply"))[:n]]


def decode(messages: list[bytes]) -> list:
    dec = StreamDecoder()
    return [m for data in messages for m in dec.feed(data)]


async def collect(url: str, out: list[bytes], started: asyncio.Event | None = None) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        if started is not None:
            started.set()
        try:
            async for msg in ws:
                out.append(msg)
        except websockets.ConnectionClosed:
            pass


def ws_url(base: str, seq_id: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + f"/v1/sequences/{seq_id}/stream" + (f"?{query}" if query else "")


def test_scale_out_needs_both_redis_and_s3():
    with pytest.raises(ValueError, match="both"):
        Settings(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="both"):
        Settings(s3_url="http://127.0.0.1:1")
    assert not Settings().scale_out


@pytest.mark.parametrize("s3", ["s3_server", "weed_server"])  # moto, and SeaweedFS as in docker-compose.yml
def test_two_replicas_share_the_stream_forward_uploads_and_serve_from_s3_alone(redis_server, s3, loot_dir, tmp_path,
                                                                                 request):
    s3_server = request.getfixturevalue(s3)
    bucket = f"t{uuid.uuid4().hex[:12]}"
    plys = frames_of(loot_dir, 10)
    settings = scale_settings(redis_server, s3_server, bucket, tmp_path)
    with BackgroundServer(settings) as a, BackgroundServer(settings) as b:
        sid = httpx.post(f"{a.url}/v1/sequences", json={"name": "loot", "fps": 30, "codec": {"gop": GOP}}).json()["id"]

        async def scenario() -> tuple[list[bytes], list[bytes], list[bytes], list[int]]:
            on_a, on_b, late = [], [], []
            ready_a, ready_b = asyncio.Event(), asyncio.Event()
            subs = [asyncio.create_task(collect(ws_url(a.url, sid, "from=start"), on_a, ready_a)),
                    asyncio.create_task(collect(ws_url(b.url, sid, "from=start"), on_b, ready_b))]
            await ready_a.wait()
            await ready_b.wait()
            types = []
            async with httpx.AsyncClient(timeout=60) as http:
                for i, body in enumerate(plys):
                    via = a.url if i < 8 else b.url  # frames 8, 9 through B: forwarded to A, the lease holder
                    r = await http.put(f"{via}/v1/sequences/{sid}/frames/{i}", content=body)
                    assert r.status_code == 201, r.text
                    types.append(r.json()["frame_type"])
                    if i == 6:  # a late joiner on B starts at the latest keyframe (4)
                        subs.append(asyncio.create_task(collect(ws_url(b.url, sid), late)))
                        await asyncio.sleep(0.5)
                r = await http.post(f"{b.url}/v1/sequences/{sid}/finish")
                assert r.status_code == 200 and r.json()["status"] == "finished", r.text
            await asyncio.wait_for(asyncio.gather(*subs), 60)
            return on_a, on_b, late, types

        on_a, on_b, late, types = asyncio.run(scenario())
        assert types == ["keyframe" if i % GOP == 0 else types[i] for i in range(10)]
        assert types[9] != "keyframe"  # frame 9 went through B yet was encoded by A's encoder: no new GOP
        stream = httpx.get(f"{b.url}/v1/sequences/{sid}/stream.splatcast").content
        assert b"".join(on_a) == stream and b"".join(on_b) == stream  # every frame, bit-exact, both replicas
        late_msgs = decode(late)
        assert isinstance(late_msgs[0], StreamHeader)
        late_frames = [m for m in late_msgs if isinstance(m, FrameMessage)]
        assert late_frames[0].index == 4 and late_frames[0].frame_type == "keyframe"
        assert [f.index for f in late_frames] == list(range(4, 10))

        gop1 = httpx.get(f"{b.url}/v1/sequences/{sid}/gops/1")
        assert gop1.status_code == 200 and "immutable" in gop1.headers["cache-control"]
        assert gop1.headers["x-splatcast-first-frame"] == "4"
        offsets = [int(x) for x in gop1.headers["x-splatcast-frame-offsets"].split(",")]
        assert len(offsets) == GOP and offsets[0] == 0
        assert gop1.content in stream
        part = httpx.get(f"{a.url}/v1/sequences/{sid}/gops/1", headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == gop1.content[10:100]
        assert part.headers["content-range"] == f"bytes 10-99/{len(gop1.content)}"

        # S3 holds one immutable object per GOP and the manifest with the GOP table and frame index
        import json

        from splatcast.server.objects import Bucket
        store = Bucket(s3_server.url, bucket, "us-east-1", 2, 1)
        manifest = json.loads(store.get(f"{sid}/manifest.json") or b"{}")
        assert manifest["info"]["finished"] and len(manifest["frames"]) == 10
        assert [(g["first"], g["count"]) for g in manifest["gops"]] == [(0, 4), (4, 4), (8, 2)]
        assert store.get(f"{sid}/gops/000001") == gop1.content
        assert manifest["gops"][1]["offsets"] == offsets
        # drop the sequence from Redis: a fresh replica serves it from S3 alone
        r = redis.Redis.from_url(redis_server.url)
        r.delete(*(f"{PREFIX}{k}:{sid}" for k in ("seq", "frames", "keys", "live", "lease")))
    with BackgroundServer(settings) as fresh:
        info = httpx.get(f"{fresh.url}/v1/sequences/{sid}").json()
        assert info["status"] == "finished" and info["frames"] == 10
        assert httpx.get(f"{fresh.url}/v1/sequences/{sid}/stream.splatcast").content == stream
        assert httpx.get(f"{fresh.url}/v1/sequences/{sid}/gops/1").content == gop1.content
        seek: list[bytes] = []
        asyncio.run(collect(ws_url(fresh.url, sid, "from=7"), seek))
        seek_frames = [m for m in decode(seek) if isinstance(m, FrameMessage)]
        assert [f.index for f in seek_frames] == list(range(4, 10)) and seek_frames[0].frame_type == "keyframe"


def _serve(settings_env: dict[str, str], port: int) -> subprocess.Popen:
    env = {**os.environ, **settings_env, "SPLATCAST_PORT": str(port), "SPLATCAST_LOG_LEVEL": "warning"}
    return subprocess.Popen([sys.executable, "-m", "splatcast.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "splatcast serve exited"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not start")


def test_kill_9_of_the_encoding_replica_hands_over_within_seconds(redis_server, s3_server, loot_dir, tmp_path):
    from services import free_port
    bucket = f"t{uuid.uuid4().hex[:12]}"
    env = {"SPLATCAST_REDIS_URL": redis_server.url, "SPLATCAST_S3_URL": s3_server.url, "SPLATCAST_S3_BUCKET": bucket,
           "SPLATCAST_DEVICE": "cpu", "SPLATCAST_LEASE_S": "1.5", "SPLATCAST_LEASE_WAIT_S": "6",
           "SPLATCAST_BACKBONE_TIMEOUT_S": "1.5", "SPLATCAST_STREAM_BLOCK_MS": "200",
           "SPLATCAST_DATA_DIR": str(tmp_path / "unused")}
    plys = frames_of(loot_dir, 8)
    ports = free_port(), free_port()
    procs = [_serve(env, p) for p in ports]
    a, b = (f"http://127.0.0.1:{p}" for p in ports)
    try:
        for url, proc in zip((a, b), procs):
            _wait_healthy(url, proc)
        sid = httpx.post(f"{a}/v1/sequences", json={"name": "k", "fps": 30, "codec": {"gop": 30}}).json()["id"]

        async def scenario() -> tuple[list[bytes], list[bytes], float, list[str]]:
            on_b, on_a = [], []
            ready = asyncio.Event()
            sub_b = asyncio.create_task(collect(ws_url(b, sid, "from=start"), on_b, ready))
            sub_a = asyncio.create_task(collect(ws_url(a, sid, "from=start"), on_a))
            await ready.wait()
            types, took = [], 0.0
            async with httpx.AsyncClient(timeout=60) as http:
                for i, body in enumerate(plys):
                    if i == 4:
                        procs[0].send_signal(signal.SIGKILL)  # the lease holder dies mid-upload
                        procs[0].wait()
                    t0 = time.monotonic()
                    r = await http.put(f"{(a if i < 4 else b)}/v1/sequences/{sid}/frames/{i}", content=body)
                    assert r.status_code == 201, r.text
                    if i == 4:
                        took = time.monotonic() - t0
                    types.append(r.json()["frame_type"])
                assert (await http.post(f"{b}/v1/sequences/{sid}/finish")).status_code == 200
            await asyncio.wait_for(sub_b, 60)
            await asyncio.wait_for(sub_a, 10)  # A's subscriber lost its connection with A
            return on_b, on_a, took, types

        on_b, on_a, took, types = asyncio.run(scenario())
        assert types[0] == "keyframe" and types[4] == "keyframe"  # takeover starts a new GOP
        assert all(t != "keyframe" for t in types[1:4] + types[5:])
        assert took < 10, f"takeover took {took:.1f} s"
        stream = httpx.get(f"{b}/v1/sequences/{sid}/stream.splatcast").content
        assert b"".join(on_b) == stream  # nothing acknowledged lost, decodable
        msgs = decode(on_b)
        assert [m.index for m in msgs if isinstance(m, FrameMessage)] == list(range(8))
        seen_on_a = [m.index for m in decode(on_a) if isinstance(m, FrameMessage)]
        # A's subscriber reconnects to B where it stopped: it resumes at a keyframe at or before it
        resume: list[bytes] = []
        asyncio.run(collect(ws_url(b, sid, f"from={len(seen_on_a)}"), resume))
        resumed = [m for m in decode(resume) if isinstance(m, FrameMessage)]
        assert resumed[0].frame_type == "keyframe" and resumed[0].index <= len(seen_on_a)
        assert resumed[-1].index == 7
        assert 'splatcast_lease_events_total{event="acquired"} 1.0' in httpx.get(f"{b}/metrics").text  # the takeover
        print(f"takeover after kill -9: {took:.2f} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def test_redis_restart_and_s3_outage_answer_503_then_recover(redis_server, s3_server, loot_dir, tmp_path):
    bucket = f"t{uuid.uuid4().hex[:12]}"
    plys = frames_of(loot_dir, 5)
    settings = scale_settings(redis_server, s3_server, bucket, tmp_path)
    with BackgroundServer(settings) as a:
        sid = httpx.post(f"{a.url}/v1/sequences", json={"name": "o", "fps": 30, "codec": {"gop": 30}}).json()["id"]
        put = lambda i: httpx.put(f"{a.url}/v1/sequences/{sid}/frames/{i}", content=plys[i], timeout=60)  # noqa: E731
        assert put(0).status_code == 201 and put(1).status_code == 201
        watched: list[bytes] = []  # a subscriber across both outages: its replica's reader recovers by itself
        watcher = threading.Thread(target=lambda: asyncio.run(collect(ws_url(a.url, sid), watched)), daemon=True)
        watcher.start()
        time.sleep(1)
        redis_server.stop()
        try:
            r = put(2)
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
            assert "Redis" in r.json()["detail"]
        finally:
            redis_server.start()
        deadline = time.monotonic() + 20
        while (r := put(2)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(float(r.headers["retry-after"]))
        assert r.status_code == 201, r.text
        os.kill(s3_server.proc.pid, signal.SIGSTOP)  # S3 briefly unreachable
        try:
            r = put(3)
            assert r.status_code == 503 and "retry-after" in r.headers, r.text
        finally:
            os.kill(s3_server.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while (r := put(3)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(float(r.headers["retry-after"]))
        assert r.status_code == 201, r.text
        assert put(4).status_code == 201
        assert httpx.post(f"{a.url}/v1/sequences/{sid}/finish").status_code == 200
        info = httpx.get(f"{a.url}/v1/sequences/{sid}").json()
        assert info["frames"] == 5  # every acknowledged frame is there, once
        stream = httpx.get(f"{a.url}/v1/sequences/{sid}/stream.splatcast").content
        msgs = decode([stream])
        assert [m.index for m in msgs if isinstance(m, FrameMessage)] == list(range(5))
        watcher.join(30)
        assert not watcher.is_alive() and b"".join(watched) == stream  # joined at frame 0, got all, then the end


def test_tar_upload_and_finish_through_another_replica_are_encoded_by_the_lease_holder(redis_server, s3_server,
                                                                                      loot_dir, tmp_path):
    import io
    import tarfile

    bucket = f"t{uuid.uuid4().hex[:12]}"
    plys = frames_of(loot_dir, 4)
    settings = scale_settings(redis_server, s3_server, bucket, tmp_path)
    with BackgroundServer(settings) as a, BackgroundServer(settings) as b:
        sid = httpx.post(f"{a.url}/v1/sequences", json={"name": "tar", "fps": 30}).json()["id"]
        assert httpx.put(f"{a.url}/v1/sequences/{sid}/frames/0", content=plys[0], timeout=60).status_code == 201
        # a refusal of the holder is passed on with its status and message
        r = httpx.put(f"{b.url}/v1/sequences/{sid}/frames/1", content=b"not a ply", timeout=60)
        assert r.status_code == 400 and "bad PLY" in r.json()["detail"], r.text
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i, body in enumerate(plys[1:], 1):
                member = tarfile.TarInfo(f"frame_{i}.ply")
                member.size = len(body)
                tar.addfile(member, io.BytesIO(body))
        r = httpx.post(f"{b.url}/v1/sequences/{sid}/frames?finish=true", content=buf.getvalue(),
                       headers={"content-type": "application/x-tar"}, timeout=120)
        assert r.status_code == 201, r.text
        out = r.json()
        assert [f["index"] for f in out["frames"]] == [1, 2, 3] and out["sequence"]["status"] == "finished"
        assert all(f["frame_type"] != "keyframe" for f in out["frames"])  # A's encoder went on: one GOP
        metrics = httpx.get(f"{b.url}/metrics").text
        assert 'splatcast_frame_uploads_total{outcome="forwarded"} 4.0' in metrics


def test_a_fenced_off_holder_cannot_commit(redis_server, s3_server, tmp_path):
    """The lease epoch fences commits: a holder whose lease was taken over gets LeaseLost and its
    frame enters neither the index nor the live stream; the new holder's frame does, once."""
    from splatcast.server.lease import Leases
    from splatcast.server.objects import Bucket
    from splatcast.server.scale_storage import LeaseLost, ScaleStorage, keys
    from splatcast.server.storage import FrameRecord, SequenceInfo

    bucket = Bucket(s3_server.url, f"t{uuid.uuid4().hex[:12]}", "us-east-1", 2, 1)
    store = ScaleStorage(redis_server.url, bucket, 2, 1)
    sid = f"fence-{uuid.uuid4().hex[:6]}"
    store.create(SequenceInfo(id=sid, name="f", fps=30, codec={}, created_at=time.time()))
    old, new = Leases(store.redis, "http://old", 30, 1), Leases(store.redis, "http://new", 30, 1)
    first = old.acquire(sid)
    assert first.mine and first.new and not new.acquire(sid).mine
    store.redis.delete(keys(sid)["lease"])  # the old holder stalls past its lease...
    second = new.acquire(sid)  # ...and is taken over, with a larger epoch
    assert second.mine and int(second.value.split("|")[0]) > int(first.value.split("|")[0])

    def record() -> FrameRecord:
        return FrameRecord(index=0, frame_type="keyframe", num_gaussians=1, raw_bytes=1, sha256="0", encode_ms=1,
                           received_at=time.time())

    with pytest.raises(LeaseLost):
        store.append(sid, record(), b"stale", header=b"H", sh_degree=0, fence=old.value(sid))
    assert store.frames(sid) == [] and store.redis.xlen(keys(sid)["live"]) == 0
    store.append(sid, record(), b"fresh", header=b"H", sh_degree=0, fence=new.value(sid))
    (row,) = store.frames(sid)
    assert store.read(sid, row.offset, row.length) == b"fresh" and store.redis.xlen(keys(sid)["live"]) == 1
    with pytest.raises(StorageError):  # frame 0 again, even with the valid lease: never encoded twice
        store.append(sid, record(), b"again", fence=new.value(sid))
    store.delete(sid)
    store.close()


def test_a_finish_whose_s3_writes_failed_is_completed_by_the_next_read(redis_server, s3_server, tmp_path):
    """Finished in Redis but the manifest write failed: the next read of the sequence writes it."""
    import json

    from splatcast.server.errors import Unavailable
    from splatcast.server.objects import Bucket
    from splatcast.server.scale_storage import ScaleStorage
    from splatcast.server.storage import FrameRecord, SequenceInfo

    bucket = Bucket(s3_server.url, f"t{uuid.uuid4().hex[:12]}", "us-east-1", 2, 1)
    store = ScaleStorage(redis_server.url, bucket, 2, 1)
    sid = f"seal-{uuid.uuid4().hex[:6]}"
    store.create(SequenceInfo(id=sid, name="s", fps=30, codec={}, created_at=time.time()))
    for i, kind in enumerate(("keyframe", "interframe")):
        store.append(sid, FrameRecord(index=i, frame_type=kind, num_gaussians=1, raw_bytes=1, sha256="0",
                                      encode_ms=1, received_at=time.time()), f"frame{i}".encode(),
                     header=b"H" if i == 0 else None, sh_degree=0)
    put = bucket.put

    def failing_put(key: str, data: bytes, content_type: str = "application/json") -> None:
        raise Unavailable("S3 down for the test")

    bucket.put = failing_put  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        store.finish(sid, b"END")
    bucket.put = put  # type: ignore[method-assign]
    assert not json.loads(bucket.get(f"{sid}/manifest.json") or b"{}")["info"]["finished"]
    info = store.get(sid)  # the read repairs it
    assert info is not None and info.finished
    manifest = json.loads(bucket.get(f"{sid}/manifest.json") or b"{}")
    assert manifest["info"]["finished"] and len(manifest["frames"]) == 2 and len(manifest["gops"]) == 1
    assert bucket.get(f"{sid}/gops/000000") == b"frame0frame1"
    store.delete(sid)
    store.close()


def test_producer_encoded_uploads_are_forwarded_checked_by_the_holder_and_survive_a_takeover(redis_server, s3_server,
                                                                                           loot_dir, tmp_path):
    """Frames 0-3 to A, 4-5 through B (forwarded to A, the lease holder, which checks them); then A
    goes away and B takes the lease over mid-GOP: its check's decoder is rebuilt from the stored
    open GOP, so the producer's interframes go on without a new keyframe."""
    from splatcast.client import FrameProducer, ServerRefused, SyncSplatcastClient

    bucket = f"t{uuid.uuid4().hex[:12]}"
    plys = frames_of(loot_dir, 8)
    settings = scale_settings(redis_server, s3_server, bucket, tmp_path)
    with BackgroundServer(settings) as b, SyncSplatcastClient(b.url) as via_b:
        with BackgroundServer(settings) as a, SyncSplatcastClient(a.url) as via_a:
            seq = via_a.create("producer", 30, {"gop": 30}, encoding="producer")
            producer = FrameProducer(seq, device="cpu")
            encoded = [producer.encode(i, ply) for i, ply in enumerate(plys)]
            bodies = [body for body, _ in encoded]
            ups = [via_a.upload_encoded(seq.id, i, bodies[i]) for i in range(4)]
            with pytest.raises(ServerRefused) as e:  # the holder's refusal, passed on by B
                via_b.upload_encoded(seq.id, 4, b"\x00\x00\x00\x07garbage")
            assert e.value.status == 400 and "not a zstd frame" in e.value.detail
            ups += [via_b.upload_encoded(seq.id, i, bodies[i]) for i in range(4, 6)]
        ups += [via_b.upload_encoded(seq.id, i, bodies[i]) for i in range(6, 8)]  # A is gone: takeover
        assert [u.status for u in ups] == [201] * 8
        assert [u.frame.frame_type for u in ups] == [enc.frame_type for _, enc in encoded]
        assert [u.frame.frame_type for u in ups].count("keyframe") == 1  # no new GOP at the takeover
        via_b.finish(seq.id)
        stream = via_b.download(seq.id)
    end = stream[len(b"".join(bodies)):]
    assert stream.startswith(b"".join(bodies)) and decode([end])[0].frame_count == 8  # stored as sent
