"""Prometheus metrics of one server (prometheus-client), served at ``GET /metrics``.

Each app has its own ``CollectorRegistry`` (several apps may live in one process, as in the
tests). Names, types and labels are listed in docs/API.md ("Metrics"). Times are seconds,
sizes bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    """The server's metrics; the fields are the collectors the code updates."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("splatcast_http_requests", "HTTP requests answered, by route and status.",
                                ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("splatcast_http_request_seconds", "HTTP request handling time.",
                                         ["method", "route"], buckets=_LATENCY, registry=r)
        self.frames_encoded = Counter("splatcast_frames_encoded", "Frames encoded and stored, by frame type.",
                                      ["frame_type"], registry=r)
        self.frame_uploads = Counter("splatcast_frame_uploads", "Frame uploads by outcome: stored, retry (a stored "
                                     "frame sent again), refused (4xx/5xx), forwarded (to the encoder "
                                     "lease holder, scale-out).", ["outcome"], registry=r)
        self.lease_events = Counter("splatcast_lease_events", "Scale-out encoder leases of this replica: acquired "
                                    "(a new epoch, so a new GOP: first upload or takeover), lost (a commit "
                                    "refused or failed; the encoder starts over).", ["event"], registry=r)
        self.parse_seconds = Histogram("splatcast_ply_parse_seconds", "Time to parse an uploaded PLY frame.",
                                       buckets=_LATENCY, registry=r)
        self.encode_seconds = Histogram("splatcast_encode_seconds", "Time to encode a frame, by frame type.",
                                        ["frame_type"], buckets=_LATENCY, registry=r)
        self.check_seconds = Histogram("splatcast_check_seconds", "Time to check (parse and decode) a frame encoded "
                                       "by its producer, by frame type.", ["frame_type"], buckets=_LATENCY,
                                       registry=r)
        self.upload_to_send_seconds = Histogram(
            "splatcast_upload_to_send_seconds", "From a live frame's upload being accepted to its WebSocket send "
            "to a subscriber (each subscriber counts).", buckets=_LATENCY, registry=r)
        self.encode_pending = Gauge("splatcast_encode_pending", "Frame uploads waiting for or in encoding.",
                                    registry=r)
        self.bytes_sent = Counter("splatcast_websocket_sent_bytes", "Bytes of messages sent to subscribers.",
                                  registry=r)
        self.messages_sent = Counter("splatcast_websocket_sent_messages", "Messages sent to subscribers.",
                                     registry=r)
        self.subscribers = Gauge("splatcast_subscribers", "Live WebSocket subscribers.", registry=r)
        self.subscriber_events = Counter(
            "splatcast_subscriber_events", "Subscriber events: joined, finished (got the end), left (client "
            "closed), refused, resync (skipped to a keyframe), dropped (too slow), failed.", ["event"], registry=r)
        self.skipped_frames = Counter("splatcast_subscriber_skipped_frames",
                                      "Frames subscribers skipped to catch up (backpressure).", registry=r)
        self.queued_frames = Gauge("splatcast_subscriber_queued_frames",
                                   "Frames waiting in all subscribers' queues now.", registry=r)

    def watch_queues(self, queued: Callable[[], float]) -> None:
        """Read the subscriber queue depth from ``queued()`` at each scrape."""
        self.queued_frames.set_function(queued)
