"""Shared fixtures: real data from ../shared (skipped with a reason when it is missing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPLATCAST_SHARED", REPO.parent / "shared"))


def shared_path(rel: str) -> Path:
    """Path of a file under ../shared, or skip the test when it is not there."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data missing: {p} (set SPLATCAST_SHARED)")
    return p


def _run_tool(tool: str, *args: str) -> None:
    subprocess.run([sys.executable, str(shared_path(f"tools/{tool}")), *args], check=True,
                   stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def loot_dir(tmp_path_factory) -> Path:
    """30 untracked frames of the real 8i loot capture (about 48.6k Gaussians each, SH 0)."""
    shared_path("data/loot_depth7.npz")
    out = tmp_path_factory.mktemp("loot")
    _run_tool("loot_to_ply.py", str(out), "--count", "30")
    return out


@pytest.fixture(scope="session")
def tile_dir(tmp_path_factory) -> Path:
    """A tracked sequence: the real tile_sh3_14k scene animated over 30 frames (SH 3)."""
    scene = shared_path("data/scenes/tile_sh3_14k.ply")
    out = tmp_path_factory.mktemp("tile")
    _run_tool("animate.py", str(scene), str(out), "--frames", "30")
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port (skips when not installed)."""
    from services import RedisServer
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port (skips when moto is not installed)."""
    from services import S3Server, aws_env
    for k, v in aws_env().items():
        os.environ.setdefault(k, v)
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def weed_server(tmp_path_factory):
    """SeaweedFS's S3 gateway (the compose file's S3 server) on free loopback ports (skips without weed)."""
    from services import WeedServer, aws_env
    for k, v in aws_env().items():
        os.environ.setdefault(k, v)
    server = WeedServer(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()
