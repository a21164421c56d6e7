"""splatcast: stream Gaussian Splatting video (sequences of 3DGS frames).

Subpackages, data flowing one way (PLY -> codec -> protocol -> server -> wire -> client):

- ``splatcast.codec``: ``GaussianFrame``, PLY I/O, the inter-frame codec (pure computation).
- ``splatcast.protocol``: sans-I/O wire format (msgpack + zstd + length prefix).
- ``splatcast.server``: FastAPI app (HTTP upload, encode workers, storage, WebSocket fan-out).
- ``splatcast.client``: Python client library and CLI.
"""

__version__ = "0.1.0"
