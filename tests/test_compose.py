"""docker-compose.yml is honest: its structure is checked, and its entry commands run outside Docker.

Docker cannot run here, so the services' commands run as local processes with the same
environment, only the address, data directory and number of frames changed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_structure():
    services = compose()["services"]
    server, producer, viewer, gpu = (services[k] for k in ("server", "producer", "viewer", "server-gpu"))
    assert "8000:8000" in server["ports"]
    volume = server["volumes"][0].split(":")
    assert volume[1] == server["environment"]["SPLATCAST_DATA_DIR"] and volume[0] in compose()["volumes"]
    assert "healthcheck" not in server and "/healthz" in " ".join(dockerfile_healthcheck())  # the image's
    for client in (producer, viewer):
        assert client["depends_on"]["server"]["condition"] == "service_healthy"
        assert client["environment"]["SERVER"] == "http://server:8000"
    assert gpu["profiles"] == ["gpu"] and "--device" in gpu["command"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "name" not in compose()  # Compose v1 refuses a top-level name
    for client in (producer, viewer):  # `docker compose up` builds every service's image
        assert client["build"] == server["build"] and client["image"] == server["image"]
        assert client["healthcheck"] == {"disable": True}
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "torch==2.13.0" in dockerfile
    assert '".[server,client,scale]"' in dockerfile and "COPY pyproject.toml README.md LICENSE" in dockerfile
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")


def test_compose_scale_profile():
    """The scale profile: redis, SeaweedFS, two replicas on them behind nginx's consistent hash, clients via nginx."""
    from splatcast.server.settings import Settings

    services = compose()["services"]
    scale = {k for k, v in services.items() if v.get("profiles") == ["scale"]}
    assert scale == {"redis", "s3", "replica1", "replica2", "nginx", "scale-producer", "scale-viewer"}
    assert "--appendfsync" in services["redis"]["command"] and "always" in services["redis"]["command"]
    assert "seaweedfs" in services["s3"]["image"] and "-s3" in services["s3"]["command"]
    s3_keys = {k: v for k, v in services["s3"]["environment"].items() if k.startswith("AWS_")}
    assert set(s3_keys) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # weed's admin identity
    replicas = [services[k] for k in ("replica1", "replica2")]
    for name, replica in zip(("replica1", "replica2"), replicas):
        env = replica["environment"]
        assert env["SPLATCAST_REDIS_URL"] == "redis://redis:6379/0" and env["SPLATCAST_S3_URL"] == "http://s3:8333"
        assert env["SPLATCAST_ADVERTISE_URL"] == f"http://{name}:8000"
        settings = Settings(**{k[len("SPLATCAST_"):].lower(): v for k, v in env.items() if k.startswith("SPLATCAST_")})
        assert settings.scale_out
        assert all(env[k] == v for k, v in s3_keys.items())  # the replicas sign with the S3 server's keys
        assert replica["build"] == services["server"]["build"] and replica["image"] == services["server"]["image"]
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
    nginx = services["nginx"]
    (mount,) = nginx["volumes"]
    conf = (REPO / mount.split(":")[0]).read_text()
    assert "hash $sequence_id consistent;" in conf
    for name in ("replica1", "replica2"):
        assert f"server {name}:8000" in conf and nginx["depends_on"][name]["condition"] == "service_healthy"
    assert "proxy_set_header Upgrade $http_upgrade;" in conf  # WebSocket subscribers
    for client in ("scale-producer", "scale-viewer"):
        assert services[client]["environment"]["SERVER"] == "http://nginx"
        assert services[client]["command"] == services[client.split("-")[1]]["command"]
    volumes = compose()["volumes"]
    assert "redis-data" in volumes and "s3-data" in volumes


def test_compose_file_validates_with_docker_compose_where_available():
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True)
        if probe.returncode != 0:
            continue
        done = subprocess.run([*command, "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return
    pytest.skip("neither `docker compose` nor `docker-compose` is installed here")


def dockerfile_healthcheck() -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    return json.loads(line.split(" CMD ", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(service: str, **overrides) -> dict:
    """The environment of a compose service as a local process: ours, the venv's bin first on PATH,
    the service's `environment` and ``overrides`` on top."""
    bin_dir = str(Path(sys.executable).parent)  # the venv's `splatcast` and `python`
    merged = {**compose()["services"][service].get("environment", {}), **overrides}
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            **{k: str(v) for k, v in merged.items()}}


def shell(command: list[str]) -> list[str]:
    """A compose command as run: compose turns $$ into a literal $."""
    return [c.replace("$$", "$") for c in command]


def produce_and_watch(producer: str, viewer: str, url: str, tmp_path: Path) -> None:
    """Run the producer and viewer services' commands against ``url`` (6 frames): the producer
    uploads and finishes the demo sequence, the viewer decodes all of it."""
    services = compose()["services"]
    producer_cmd = [c.replace("/tmp/demo-seq", str(tmp_path / "seq")) for c in shell(services[producer]["command"])]
    watching = subprocess.Popen(shell(services[viewer]["command"]), env=service_env(viewer, SERVER=url),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        produced = subprocess.run(producer_cmd, env=service_env(producer, SERVER=url, FRAMES=6),
                                  capture_output=True, text=True, timeout=180)
        assert produced.returncode == 0, produced.stderr
        assert "sequence demo (finished): 6 frames" in produced.stdout
        out, _ = watching.communicate(timeout=120)
        assert watching.returncode == 0, out
        assert "6 frames decoded, 0 skipped" in out
    finally:
        if watching.poll() is None:
            watching.terminate()
            watching.wait(timeout=30)


def test_compose_commands_run_outside_docker(tmp_path):
    services = compose()["services"]
    port = free_port()
    server_env = service_env("server", SPLATCAST_HOST="127.0.0.1", SPLATCAST_PORT=port,
                             SPLATCAST_DATA_DIR=tmp_path / "data")
    server = subprocess.Popen(services["server"]["command"], env=server_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        health = dockerfile_healthcheck()
        deadline = time.monotonic() + 60
        while subprocess.run(health, env=server_env, capture_output=True).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "server never became healthy"
            time.sleep(0.5)
        produce_and_watch("producer", "viewer", f"http://127.0.0.1:{port}", tmp_path)
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


def test_compose_scale_commands_run_outside_docker(redis_server, weed_server, tmp_path):
    """The scale profile's commands as local processes: two replicas on Redis and SeaweedFS, nginx with
    deploy/nginx.conf, the producer and the viewer through nginx; only addresses and frames changed."""
    pytest.importorskip("redis", reason="the scale extra is not installed")
    from services import aws_env
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx not installed (apt-get install -y nginx-light; scripts/install.sh)")
    services = compose()["services"]
    bucket = f"compose{int(time.time() * 1000)}"
    ports = {name: free_port() for name in ("replica1", "replica2", "nginx")}
    procs: list[subprocess.Popen] = []
    try:
        for name in ("replica1", "replica2"):
            url = f"http://127.0.0.1:{ports[name]}"
            replica_env = service_env(name, SPLATCAST_HOST="127.0.0.1", SPLATCAST_PORT=ports[name],
                                      SPLATCAST_REDIS_URL=redis_server.url, SPLATCAST_S3_URL=weed_server.url,
                                      SPLATCAST_S3_BUCKET=bucket, SPLATCAST_ADVERTISE_URL=url,
                                      SPLATCAST_DATA_DIR=tmp_path / name, **aws_env())  # weed's credentials here
            procs.append(subprocess.Popen(services[name]["command"], env=replica_env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            health = dockerfile_healthcheck()
            deadline = time.monotonic() + 60
            while subprocess.run(health, env=replica_env, capture_output=True).returncode != 0:
                assert procs[-1].poll() is None and time.monotonic() < deadline, f"{name} never became healthy"
                time.sleep(0.5)
        (mount,) = services["nginx"]["volumes"]
        conf = (REPO / mount.split(":")[0]).read_text()
        for name in ("replica1", "replica2"):
            conf = conf.replace(f"server {name}:8000", f"server 127.0.0.1:{ports[name]}")
        conf = conf.replace("listen 80;", f"listen 127.0.0.1:{ports['nginx']};")
        (tmp_path / "nginx.conf").write_text(conf)
        procs.append(subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e",
                                       str(tmp_path / "nginx-error.log"), "-g",
                                       f"daemon off; pid {tmp_path / 'nginx.pid'};"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        front = f"http://127.0.0.1:{ports['nginx']}"
        deadline = time.monotonic() + 20
        probe = [sys.executable, "-c", f"import urllib.request; urllib.request.urlopen('{front}/healthz')"]
        while subprocess.run(probe, capture_output=True).returncode != 0:
            assert procs[-1].poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.2)
        produce_and_watch("scale-producer", "scale-viewer", front, tmp_path)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
