"""The client's command line and blocking wrapper against a real server on loopback."""

from __future__ import annotations

import pytest
import torch

from splatcast.cli import main
from splatcast.client import FrameInfo, FrameProducer, Sequence, ServerRefused, SyncSplatcastClient
from splatcast.codec import ply_files, read_ply
from splatcast.server import BackgroundServer, Settings


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with BackgroundServer(Settings(data_dir=tmp_path_factory.mktemp("data"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("torus")
    assert main(["demo", "--generate", str(out), "--frames", "4", "--gaussians", "3000"]) == 0
    return out


def test_upload_resume_and_watch_with_ply_output(server, frames_dir, tmp_path, capsys):
    args = ["upload", str(frames_dir), "--server", server.url, "--id", "torus", "--gop", "2", "--quality", "high"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"created sequence torus, watch it at {server.url}/view/torus\n" in out
    assert "sequence torus (finished): 4 frames," in out
    assert main(args) == 0  # continuing a stored sequence: every frame is a safe retry
    out = capsys.readouterr().out
    assert f"continuing sequence torus (4 frames stored), watch it at {server.url}/view/torus\n" in out
    assert "sequence torus (finished): 4 frames," in out

    out = tmp_path / "watched"
    assert main(["watch", "torus", "--server", server.url, "--from", "start", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[1:5]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and rows[0][1] == rows[2][1] == "keyframe"  # gop 2
    assert lines[-1].startswith("4 frames decoded, 0 skipped")
    written = ply_files(out)
    assert [p.name for p in written] == [f"frame_{i:05d}.ply" for i in range(4)]
    assert read_ply(written[3]).num_gaussians == 3000

    assert main(["watch", "torus", "--server", server.url, "--from", "3"]) == 0  # seek: keyframe 2, then 3
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["2", "3"] and lines[-1].startswith("2 frames decoded")
    with pytest.raises(SystemExit) as usage:
        main(["watch", "torus", "--server", server.url, "--from", "-1"])
    assert usage.value.code == 2 and "expected latest, start or a frame index" in capsys.readouterr().err

    assert main(["watch", "nope", "--server", server.url]) == 1
    assert capsys.readouterr().err.startswith("splatcast watch: error: HTTP 404: ")


def test_rate_controlled_upload_frame_index_and_watch(server, frames_dir, capsys):
    """--target-mbps reaches the server's codec settings; the index reports the achieved bitrate
    (1 s windows of round(fps) = 2 frames at 2 fps); watch plays the rate-controlled stream."""
    args = ["upload", str(frames_dir), "--server", server.url, "--id", "torus-rate", "--fps", "2", "--gop", "2",
            "--target-mbps", "0.2"]
    assert main(args) == 0
    assert "Mbit/s" in capsys.readouterr().out.splitlines()[-1]
    with SyncSplatcastClient(server.url) as client:
        seq, frames = client.get("torus-rate"), client.frames("torus-rate")
    assert seq.codec["target_mbps"] == 0.2 and len(frames) == 4
    sizes = [f.bytes for f in frames]
    assert seq.bitrate_mbps == pytest.approx(sum(sizes) * 8 * 2 / 4 / 1e6, rel=1e-5)
    assert frames[0].window_mbps is None
    for i in (1, 2, 3):
        assert frames[i].window_mbps == pytest.approx((sizes[i - 1] + sizes[i]) * 8 / 1e6, rel=1e-5)
    assert main(["watch", "torus-rate", "--server", server.url, "--from", "start"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("4 frames decoded, 0 skipped")
    assert main(["upload", str(frames_dir), "--server", server.url, "--target-mbps", "0"]) == 1
    assert "target_mbps must be None or a number in 0.01..100000" in capsys.readouterr().err


def test_sync_client(server, frames_dir):
    plys = [p.read_bytes() for p in ply_files(frames_dir)]
    with SyncSplatcastClient(server.url) as client:
        seq = client.create("sync", fps=10, codec={"gop": 3})
        assert isinstance(seq, Sequence) and (seq.name, seq.fps, seq.status, seq.frames) == ("sync", 10, "open", 0)
        sid = seq.id
        ups = client.upload_frames(sid, plys)
        assert [u.status for u in ups] == [201] * 4 and [u.attempts for u in ups] == [1] * 4
        assert [u.frame.frame_type for u in ups][::3] == ["keyframe", "keyframe"]  # gop 3
        assert client.upload_frame(sid, 3, plys[3]).status == 200  # a stored frame: safe retry
        finished = client.finish(sid)
        assert (finished.status, finished.frames, finished.keyframes, finished.sh_degree) == ("finished", 4, 2, 0)
        frames = list(client.subscribe(sid, from_start=True))
        assert [f.index for f in frames] == [0, 1, 2, 3] and frames[0].decode_ms > 0
        late = list(client.subscribe(sid))  # a finished stream: from its latest keyframe
        assert [f.index for f in late] == [3] and late[0].frame_type == "keyframe"
        assert sid in [s.id for s in client.list()]
        index = client.frames(sid)
        assert all(isinstance(f, FrameInfo) for f in index) and [f.index for f in index] == [0, 1, 2, 3]
        assert [f.bytes for f in index] == [u.frame.bytes for u in ups]
        assert client.download(sid)[4:8]  # non-empty stream
        client.delete(sid)
        with pytest.raises(ServerRefused) as e:
            client.get(sid)
        assert e.value.status == 404 and e.value.url == f"{server.url}/v1/sequences/{sid}"


def test_upload_encode_then_watch_plays_the_producer_encoded_stream(server, frames_dir, tmp_path, capsys):
    args = ["upload", str(frames_dir), "--server", server.url, "--id", "torus-enc", "--gop", "2", "--encode",
            "--device", "cpu"]
    assert main(args + ["--no-finish"]) == 0
    out = capsys.readouterr().out
    assert "created sequence torus-enc" in out and "sequence torus-enc (open): 4 frames, 2 keyframes" in out
    assert "encoded here (cpu)" in out
    assert main(args) == 0  # continuing: nothing left to encode, then finished
    assert "continuing sequence torus-enc (4 frames stored)" in capsys.readouterr().out
    assert main(["upload", str(frames_dir), "--server", server.url, "--id", "torus-enc"]) == 1  # PLYs: refused
    assert "sequence torus-enc is encoded by the producer: upload it with --encode" in capsys.readouterr().err

    out = tmp_path / "watched"
    assert main(["watch", "torus-enc", "--server", server.url, "--from", "start", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:5]] == [["0", "keyframe"], ["1", "interframe"],
                                                         ["2", "keyframe"], ["3", "interframe"]]
    assert lines[-1].startswith("4 frames decoded, 0 skipped")
    with SyncSplatcastClient(server.url) as client:  # the producer's reconstruction, made again here
        producer = FrameProducer(client.get("torus-enc"), device="cpu")
    for i, p in enumerate(ply_files(frames_dir)):
        expected = producer.encode(i, p)[1].reconstruction
        assert torch.equal(read_ply(out / f"frame_{i:05d}.ply").means, expected.means)
