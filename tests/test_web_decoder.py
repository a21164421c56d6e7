"""The browser's JavaScript decoder agrees with the Python one (web/test/*.test.mjs under Node).

The Node tests decode tests/vectors/ (protocol vectors from scripts/make_vectors.py, real-codec
vectors from scripts/make_codec_vectors.py) and compare bit for bit; the Python side of the
codec vectors is checked here, so a codec change that invalidates them fails in both places.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors"
CODEC_VECTORS = ["codec_tracked", "codec_tracked_high", "codec_jittered", "codec_untracked", "codec_predicted",
                 "codec_predicted_scalar"]


def _make_codec_vectors():
    spec = importlib.util.spec_from_file_location("make_codec_vectors", REPO / "scripts" / "make_codec_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", CODEC_VECTORS)
def test_python_decoder_still_gives_the_codec_vectors(name):
    doc = json.loads((VECTORS / f"{name}.json").read_text())
    assert _make_codec_vectors().decode_file(VECTORS / doc["file"]) == doc["frames"]


def test_javascript_decoder_reads_this_codec_version():
    from splatcast.codec import CODEC_NAME, CODEC_VERSION

    source = (REPO / "splatcast" / "server" / "static" / "js" / "codec.mjs").read_text()
    assert f'export const CODEC_NAME = "{CODEC_NAME}";' in source
    assert f"export const CODEC_VERSION = {CODEC_VERSION};" in source


def test_codec_vectors_cover_every_frame_type():
    types = {f["frame_type"] for name in CODEC_VECTORS
             for f in json.loads((VECTORS / f"{name}.json").read_text())["frames"]}
    assert types == {"keyframe", "intra", "interframe"}


@pytest.mark.timeout(120)
def test_javascript_decoder_matches_python_on_the_vectors():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (needed only for the browser decoder's tests)")
    result = subprocess.run([node, "--test", "test/"], cwd=REPO / "web", capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
