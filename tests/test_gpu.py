"""The codec on CUDA (skipped without a GPU): the closed loop holds across devices.

A GPU encoder's payloads, sent through the protocol and decoded on the CPU, give exactly the
encoder's own reconstruction (issue 12, item 1), and a GPU encode costs about the bytes of a
CPU encode (k-means floats may differ between devices, so the bytes need not be equal).
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from splatcast.codec import CodecConfig, FrameDecoder, FrameEncoder, GaussianFrame, read_ply
from splatcast.protocol import FrameMessage, StreamDecoder, encode_message

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

FIELDS = [f.name for f in fields(GaussianFrame)]


def encode_all(directory, count: int, device: str) -> tuple[int, int]:
    """Encode ``count`` frames on ``device`` (frames moved there first), decode each wire message
    on the CPU and check it equals the encoder's reconstruction; (wire bytes, Gaussians)."""
    encoder = FrameEncoder(CodecConfig(gop=4, device=device))
    decoder, parser, total, gaussians = FrameDecoder("cpu"), StreamDecoder(), 0, 0
    for i, path in enumerate(sorted(directory.glob("*.ply"))[:count]):
        enc = encoder.encode(read_ply(path).to(device))
        data = encode_message(FrameMessage(i, i / 30, enc.frame_type, enc.num_gaussians, enc.payload))
        (msg,) = parser.feed(data)
        dec = decoder.decode(msg.frame_type, msg.num_gaussians, msg.payload)
        for k in FIELDS:
            assert torch.equal(getattr(dec, k), getattr(enc.reconstruction, k)), f"frame {i}: {k} differs"
        total, gaussians = total + len(data), gaussians + enc.num_gaussians
    return total, gaussians


@pytest.mark.parametrize("fixture", ["tile_dir", "loot_dir"])
def test_gpu_encode_decodes_on_cpu_to_its_reconstruction(fixture, request):
    directory = request.getfixturevalue(fixture)
    gpu_bytes, n = encode_all(directory, 8, "cuda")
    cpu_bytes, _ = encode_all(directory, 8, "cpu")
    assert 0.9 < gpu_bytes / cpu_bytes < 1.1, (gpu_bytes / n, cpu_bytes / n)
