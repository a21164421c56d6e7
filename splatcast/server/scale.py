"""Wiring of the scale-out services (docs/SCALEOUT.md): Redis + S3 storage, Redis Streams fan-out,
encoder leases and upload forwarding, built from ``Settings`` when ``redis_url`` and ``s3_url`` are set."""

from __future__ import annotations

from dataclasses import dataclass

from splatcast.server.forward import Forwarder
from splatcast.server.lease import Leases
from splatcast.server.objects import Bucket
from splatcast.server.redis_hub import RedisHub
from splatcast.server.scale_storage import ScaleStorage
from splatcast.server.settings import Settings


@dataclass
class ScaleOut:
    storage: ScaleStorage
    hub: RedisHub
    leases: Leases
    forwarder: Forwarder


def build(settings: Settings) -> ScaleOut:
    """The services of one replica (nothing connects before first use)."""
    assert settings.redis_url and settings.s3_url
    t, retry = settings.backbone_timeout_s, settings.retry_after_s
    bucket = Bucket(settings.s3_url, settings.s3_bucket, settings.s3_region, t, retry)
    storage = ScaleStorage(settings.redis_url, bucket, t, retry)
    url = settings.advertise_url or f"http://{settings.host}:{settings.port}"
    return ScaleOut(storage=storage,
                    hub=RedisHub(settings.redis_url, settings.stream_block_ms, settings.stream_skew_ms, t, retry),
                    leases=Leases(storage.redis, url, settings.lease_s, retry),
                    forwarder=Forwarder(settings.forward_timeout_s, t, retry))
