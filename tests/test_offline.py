"""splatcast encode / decode / info on five real loot frames."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch

from splatcast.cli import main
from splatcast.codec import CODEC_VERSION, CodecConfig, FrameEncoder, read_ply
from splatcast.protocol import EndOfStream, StreamHeader, encode_message, read_stream_sized

FIELDS = ("means", "scales", "quats", "opacities", "sh0", "shN")
ARGS = ["--gop", "3", "--codebook-size", "32", "--device", "cpu"]


def last_line(stderr: str) -> str:
    """The last line of stderr, where a progress bar's carriage returns also end lines."""
    return re.split(r"[\r\n]", stderr.rstrip())[-1]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def encoded(loot_dir, tmp_path_factory):
    """Five loot frames linked as part1, part2, part9, part10, part11 (natural order = frame order)."""
    src = sorted(loot_dir.glob("*.ply"))[:5]
    frames_dir = tmp_path_factory.mktemp("five")
    for k, path in zip([1, 2, 9, 10, 11], src):
        (frames_dir / f"part{k}.ply").symlink_to(path)
    out = tmp_path_factory.mktemp("enc") / "sub" / "loot.splatcast"
    rc, stdout, stderr = run("encode", frames_dir, "-o", out, *ARGS)
    assert rc == 0, stderr
    return out, src, stdout, frames_dir


def test_encode_prints_frames_and_summary(encoded):
    out, src, stdout, _ = encoded
    lines = stdout.splitlines()
    frame_lines = [line for line in lines if line.startswith("frame ")]
    assert len(frame_lines) == 5 and "keyframe" in frame_lines[0] and "B/G" in frame_lines[0]
    ply_bytes = sum(p.stat().st_size for p in src)
    assert f"{ply_bytes:,} B of PLY -> {out.stat().st_size:,} B" in lines[-2]
    assert lines[-1].startswith("bitrate ") and "Mbit/s" in lines[-1]  # 5 frames: no 1 s window yet
    assert ply_bytes / out.stat().st_size > 10  # the codec compresses real frames by far more
    assert not out.with_name(out.name + ".part").exists()


def test_decode_matches_encoder_reconstruction_bit_for_bit(encoded, tmp_path):
    out, src, _, _ = encoded
    rc, stdout, stderr = run("decode", out, "-o", tmp_path / "dec")
    assert rc == 0, stderr
    written = sorted((tmp_path / "dec").glob("*.ply"))
    assert [p.name for p in written] == [f"frame_{i:05d}.ply" for i in range(5)]
    encoder = FrameEncoder(CodecConfig(gop=3, codebook_size=32, device="cpu"))
    for path, ply in zip(src, written):
        expected = encoder.encode(read_ply(path)).reconstruction
        got = read_ply(ply)
        for name in FIELDS:
            assert torch.equal(getattr(got, name), getattr(expected, name)), (ply.name, name)


def test_info_lists_header_and_frames(encoded):
    out, _, _, _ = encoded
    rc, stdout, _ = run("info", out)
    assert rc == 0
    assert "codec splatcast-vq" in stdout and "5 frames" in stdout and "name 'five" in stdout
    rows = [line.split() for line in stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r[2] for r in rows][0::3] == ["keyframe", "keyframe"]  # gop 3
    assert f"total: {out.stat().st_size:,} B" in stdout


def test_bad_inputs_give_an_error_and_status_1(encoded, tmp_path):
    out, _, _, frames_dir = encoded
    truncated = tmp_path / "t.splatcast"
    truncated.write_bytes(out.read_bytes()[:-100])
    no_header = tmp_path / "n.splatcast"
    no_header.write_bytes(encode_message(EndOfStream(0)))
    other_codec = tmp_path / "o.splatcast"
    other_codec.write_bytes(encode_message(StreamHeader("other", 1, {}, 0, 30.0)))
    version_1 = tmp_path / "v1.splatcast"  # a stream of the codec's first payload layout
    version_1.write_bytes(encode_message(StreamHeader("splatcast-vq", 1, {}, 0, 30.0)))
    garbage = tmp_path / "g.splatcast"
    garbage.write_bytes(b"\x00\x00\x00\x09not zstd!")
    cut = "after frame 3: stream ended inside a message"
    cases = [(("decode", truncated, "-o", tmp_path / "d1"), 1, cut, truncated),
             (("info", truncated), 1, cut, truncated),
             (("decode", no_header, "-o", tmp_path / "d2"), 1, "the stream does not start with a header", no_header),
             (("decode", other_codec, "-o", tmp_path / "d3"), 1, "codec 'other' is not 'splatcast-vq'", other_codec),
             (("decode", version_1, "-o", tmp_path / "d6"), 1,
              f"splatcast-vq stream version 1 is not supported: this decoder reads version {CODEC_VERSION} only",
              version_1),
             (("decode", garbage, "-o", tmp_path / "d4"), 1, "not a splatcast stream", garbage),
             (("info", garbage), 1, "not a splatcast stream", garbage),
             (("decode", tmp_path / "missing.splatcast", "-o", tmp_path / "d5"), 1, "No such file or directory",
              tmp_path / "missing.splatcast"),
             (("encode", tmp_path / "empty", "-o", tmp_path / "e.splatcast"), 1, "no such directory",
              tmp_path / "empty"),
             (("encode", out.parent, "-o", tmp_path / "e.splatcast"), 1, "no .ply files in the directory", out.parent),
             (("encode", frames_dir, "-o", tmp_path / "e.splatcast", "--gop", "0"), 2, "gop must be an int >= 1", ""),
             (("encode", frames_dir, "-o", tmp_path / "e.splatcast", "--zstd-level", "30"), 2,
              "--zstd-level must be in 1..22, got 30", "")]
    for argv, code, what, which in cases:
        rc, _, stderr = run(*argv)
        line = last_line(stderr)  # after the progress bar, if any
        assert rc == code and line.startswith(f"splatcast {argv[0]}: error: ") and what in line, (argv, stderr)
        assert line.endswith(str(which)) and "Traceback" not in stderr, (argv, stderr)
    assert not (tmp_path / "e.splatcast").exists() and not (tmp_path / "e.splatcast.part").exists()


def test_empty_cut_and_overlong_streams_fail_and_say_why(encoded, tmp_path):
    out = encoded[0]
    data = out.read_bytes()
    sizes = [n for _, n in read_stream_sized(out)]  # header, 5 frames, end
    end_at = sum(sizes[:-1])  # where the end message starts
    cases = {
        "empty": (b"", "the stream is empty"),
        "cut before the end message": (data[:end_at],
                                       "after frame 4: the stream is truncated: it ends without an end message"),
        "cut after the header": (data[:sizes[0]], "after the header: the stream is truncated: it ends without"),
        "cut inside frame 4": (data[:end_at - 100], "after frame 3: stream ended inside a message"),
        "garbage after the end": (data + b"garbage!!", "after frame 4: the end message is followed by 9 more bytes"),
        "a second stream after the end": (data + data,
                                          f"after frame 4: the end message is followed by {len(data):,} more bytes"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.splatcast"
        path.write_bytes(content)
        for argv in (("info", path), ("decode", path, "-o", tmp_path / name)):
            rc, stdout, stderr = run(*argv)
            assert rc == 1 and f"error: {message}" in stderr, (name, argv, stderr)
            assert "total:" not in stdout and "written" not in stdout  # no summary of a bad stream
    rc, stdout, _ = run("info", tmp_path / "cut before the end message.splatcast")  # info shows what it read first
    rows = [line.split() for line in stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert "codec splatcast-vq" in stdout and [r[0] for r in rows] == ["0", "1", "2", "3", "4"]


def test_json_output_of_encode_and_info(encoded, tmp_path):
    _, _, _, frames_dir = encoded
    out = tmp_path / "j.splatcast"
    rc, stdout, stderr = run("encode", frames_dir, "-o", out, *ARGS, "--quality", "high", "--json")
    assert rc == 0 and stderr == "", stderr  # no progress bar either
    enc = json.loads(stdout)
    assert [r["index"] for r in enc["frames"]] == [0, 1, 2, 3, 4]
    assert [r["frame_type"] for r in enc["frames"]][0::3] == ["keyframe", "keyframe"]  # gop 3
    assert enc["frames"][2]["file"].endswith("part9.ply") and enc["codec_params"]["gop"] == 3
    assert enc["codec_params"]["quality"] == "high"
    assert enc["summary"]["stream_bytes"] == out.stat().st_size and enc["summary"]["frames"] == 5

    rc, stdout, _ = run("info", out, "--json")
    info = json.loads(stdout)
    assert rc == 0 and info["header"]["frame_count"] == 5 and info["header"]["codec"] == "splatcast-vq"
    assert [(f["index"], f["frame_type"], f["num_gaussians"], f["bytes"]) for f in info["frames"]] == \
        [(r["index"], r["frame_type"], r["num_gaussians"], r["bytes"]) for r in enc["frames"]]
    assert info["end"]["frame_count"] == 5 and info["summary"]["bytes"] == out.stat().st_size
    assert info["summary"]["gaussians"] == sum(r["num_gaussians"] for r in enc["frames"])


def test_encode_at_a_target_bitrate_reports_what_it_achieved(encoded, tmp_path):
    """--target-mbps: rate-controlled frames (the step_scale of each), the achieved bitrate, its
    1 s windows (5 frames at 5 fps: one window) and the buffer, in the JSON summary."""
    _, _, _, frames_dir = encoded
    out = tmp_path / "r.splatcast"
    rc, stdout, stderr = run("encode", frames_dir, "-o", out, "--fps", "5", "--gop", "5", "--target-mbps", "4",
                             "--device", "cpu", "--json")
    assert rc == 0, stderr
    enc = json.loads(stdout)
    sizes = [r["bytes"] for r in enc["frames"]]
    summary = enc["summary"]
    assert enc["codec_params"]["target_mbps"] == 4 and summary["target_mbps"] == 4
    assert summary["mbps"] == pytest.approx(sum(sizes) * 8 * 5 / 5 / 1e6)
    assert summary["window_mbps_min"] == summary["window_mbps_max"] == pytest.approx(sum(sizes) * 8 / 1e6)
    assert 0.9 * 4 < summary["mbps"] < 1.1 * 4  # 100 kB per frame: within reach on loot
    assert summary["buffer_s"] > 0 and enc["frames"][-1]["step_scale"] < 1  # finer than the preset
    assert {row["keep"] for row in enc["frames"]} == {1.0}  # within reach: every Gaussian
    rc, _, stderr = run("encode", frames_dir, "-o", out, "--target-mbps", "nan")
    assert rc == 2 and "target_mbps must be None or a number in 0.01..100000" in stderr
