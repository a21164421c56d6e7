"""Errors through the real command line (a subprocess per command, as a user sees them).

Every command fails the same way: one line ``splatcast <command>: error: <what>, <which>`` on
stderr (after a progress bar, if any), exit status 2 for a usage error, 1 for a failure, 130
for Ctrl-C, and a traceback only with ``--debug``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

import splatcast
from splatcast.cli import main
from splatcast.codec import write_ply
from splatcast.demo import synthetic_frames
from splatcast.server import BackgroundServer, Settings


def splatcast_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splatcast.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def last_line(stderr: str) -> str:
    """The last line of stderr, where a progress bar's carriage returns also end lines."""
    return re.split(r"[\r\n]", stderr.rstrip())[-1]


def assert_error(result: subprocess.CompletedProcess, command: str, code: int, what: str, which: object) -> str:
    """The command failed with ``code`` and one line naming ``what`` and, at its end, ``which``."""
    line = last_line(result.stderr)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert line.startswith(f"splatcast {command}: error: ") and what in line, result.stderr
    assert line.endswith(f", {which}"), (line, which)
    assert "Traceback" not in result.stderr, result.stderr
    return line


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("frames")
    for i, frame in enumerate(synthetic_frames(2, num_gaussians=500)):
        write_ply(frame, out / f"frame_{i:05d}.ply")
    return out


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "notes.txt"
    path.write_text("hello, these are notes about a capture\n" * 40)
    return path


def test_version():
    result = splatcast_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"splatcast {splatcast.__version__}\n", "")


def test_upload_of_a_missing_directory(tmp_path):
    missing = tmp_path / "missing" / "dir"
    assert_error(splatcast_cli("upload", missing, "--server", "http://127.0.0.1:9"), "upload", 1,
                 "no such directory", missing)


def test_info_and_decode_of_a_text_file(notes, tmp_path):
    assert_error(splatcast_cli("info", notes), "info", 1, "not a splatcast stream", notes)
    assert_error(splatcast_cli("decode", notes, "-o", tmp_path / "out"), "decode", 1, "not a splatcast stream", notes)
    assert not (tmp_path / "out").exists()
    assert_error(splatcast_cli("info", tmp_path), "info", 1, "Is a directory", tmp_path)


def test_encode_names_the_bad_ply(frames_dir, tmp_path):
    sequence = tmp_path / "seq"
    sequence.mkdir()
    (sequence / "frame_00000.ply").symlink_to(next(frames_dir.glob("*.ply")))
    bad = sequence / "frame_00001.ply"
    bad.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n")
    out = tmp_path / "out.splatcast"
    line = assert_error(splatcast_cli("encode", sequence, "-o", out), "encode", 1, "missing required properties: y, z",
                        bad)
    assert "frame_00000" not in line
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


def test_usage_errors_exit_2(frames_dir, tmp_path):
    result = splatcast_cli("encode", frames_dir)  # argparse: -o is required
    assert result.returncode == 2 and last_line(result.stderr).startswith("splatcast encode: error: ")
    result = splatcast_cli("encode", frames_dir, "-o", tmp_path / "x.splatcast", "--zstd-level", "0")
    assert result.returncode == 2 and last_line(result.stderr) == \
        "splatcast encode: error: --zstd-level must be in 1..22, got 0"
    result = splatcast_cli("watch", "some-id", "--server", "localhost:8000")
    assert result.returncode == 2 and last_line(result.stderr) == \
        "splatcast watch: error: server URL must start with http:// or https://, got 'localhost:8000'"


def test_an_unreachable_server_is_named(frames_dir):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert_error(splatcast_cli("upload", frames_dir, "--server", url), "upload", 1, "cannot connect to the server",
                 f"{url}/v1/sequences")
    assert_error(splatcast_cli("watch", "abc", "--server", url), "watch", 1, "cannot connect to the server",
                 f"{url}/v1/sequences/abc")


def test_refusals_of_a_real_server(frames_dir, tmp_path):
    with BackgroundServer(Settings(data_dir=tmp_path, token="s3cret")) as server:
        line = assert_error(splatcast_cli("upload", frames_dir, "--server", server.url, "--token", "wrong"), "upload",
                            1, "HTTP 401: ", f"{server.url}/v1/sequences")
        line = assert_error(splatcast_cli("upload", frames_dir, "--server", server.url, "--token", "s3cret",
                                          "--gop", "0"), "upload", 1, "HTTP 422: ", f"{server.url}/v1/sequences")
        assert "gop" in line and "[{" not in line  # the server's message, not a raw list of errors
        assert_error(splatcast_cli("watch", "nope", "--server", server.url), "watch", 1, "HTTP 404: ",
                     f"{server.url}/v1/sequences/nope")


def test_debug_shows_the_traceback(notes):
    for args in (("--debug", "info", notes), ("info", notes, "--debug")):
        result = splatcast_cli(*args)
        assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr, result.stderr
        assert last_line(result.stderr) == f"splatcast info: error: not a splatcast stream, {notes}"


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys, notes):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("splatcast.offline.info", interrupted)  # registered when main() builds its parser
    assert main(["info", str(notes)]) == 130
    assert capsys.readouterr().err == "splatcast info: interrupted\n"


def test_a_bug_still_shows_its_traceback(monkeypatch, notes):
    def buggy(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("splatcast.offline.info", buggy)
    with pytest.raises(ZeroDivisionError):
        main(["info", str(notes)])
