"""The inter-frame codec on real data: round trips, error bands, sizes, hostile payloads."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from conftest import shared_path

from splatcast.codec import (
    C0,
    CODEC_NAME,
    CODEC_VERSION,
    QUALITIES,
    CodecConfig,
    CodecError,
    FrameDecoder,
    FrameEncoder,
    GaussianFrame,
    check_codec,
    read_ply,
)
from splatcast.codec import encoder as encoder_module
from splatcast.codec.config import LARGE_SCENE
from splatcast.codec.decoder import quaternions
from splatcast.codec.encoder import POS_BLOCK, ROTATION_KEEP, _narrow_int, _small_rows, _smallest_three
from splatcast.codec.metrics import frame_errors
from splatcast.protocol import FrameMessage, encode_message

FIELDS = [f.name for f in fields(GaussianFrame)]


def frames(directory, count):
    return [read_ply(p) for p in sorted(directory.glob("*.ply"))[:count]]


def rows(frame: GaussianFrame, index: np.ndarray) -> GaussianFrame:
    idx = torch.from_numpy(index)
    return GaussianFrame(**{k: getattr(frame, k)[idx] for k in FIELDS})


def identical(a: GaussianFrame, b: GaussianFrame) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in FIELDS)


def wire(i: int, enc) -> bytes:
    return encode_message(FrameMessage(i, i / 30, enc.frame_type, enc.num_gaussians, enc.payload))


def wire_bytes(i: int, enc) -> int:
    return len(wire(i, enc))


def round_trip(seq, config=CodecConfig()):
    """Encode and decode a sequence; per frame (encoded, decoded, errors vs input, bytes)."""
    encoder, decoder, out, copies = FrameEncoder(config), FrameDecoder(), [], []
    for i, frame in enumerate(seq):
        enc = encoder.encode(frame)
        dec = decoder.decode(enc.frame_type, enc.num_gaussians, enc.payload)
        assert identical(dec, enc.reconstruction), f"frame {i}: decoder differs from encoder"
        assert sorted(enc.source_rows.tolist()) == list(range(frame.num_gaussians))
        out.append((enc, dec, frame_errors(rows(frame, enc.source_rows), dec), wire_bytes(i, enc)))
        copies.append(GaussianFrame(**{k: getattr(dec, k).clone() for k in FIELDS}))
    # decoded frames share unchanged tensors with later ones: decoding must never write into them
    assert all(identical(dec, copy) for (_, dec, *_), copy in zip(out, copies))
    return out


def position_bound(enc, step: float) -> float:
    """Documented bound: step/2 (keyframe, intra), unit*step/2 (interframe), + float32 rounding."""
    unit = enc.payload.get("unit", 1)
    return unit * step / 2 + 1e-6 * 4


@pytest.fixture(scope="module")
def tile_frames(tile_dir):
    return frames(tile_dir, 10)


@pytest.fixture(scope="module")
def loot_frames(loot_dir):
    return frames(loot_dir, 10)


def test_tracked_sequence_round_trip(tile_frames):
    """The "medium" preset's bounds (the default, "standard", is medium with every step doubled)."""
    result = round_trip(tile_frames, CodecConfig(quality="medium"))
    types = [enc.frame_type for enc, *_ in result]
    assert types == ["keyframe"] + ["interframe"] * 9
    step = result[0][0].payload["step"]
    steps = result[0][0].payload["scalar"]  # name -> [2, D] offset, step
    medium = QUALITIES["medium"]
    assert np.allclose(steps["sh0"][1], medium.colour / 255 / C0, rtol=1e-5)
    for (enc, dec, err, _), frame in zip(result, tile_frames):
        ref = rows(frame, enc.source_rows)
        # every frame type keeps the keyframe's bounds: positions step/2, attributes step/2
        assert err["position_max_abs"] <= position_bound(enc, step)
        for field, group in (("sh0", "sh0"), ("scales", "scale")):
            bound = float(steps[group][1].max()) / 2 * (1 + 1e-4) + 1e-6
            assert float((getattr(dec, field) - getattr(ref, field)).abs().max()) <= bound, (field, enc.frame_type)
        assert err["color_rmse_255"] < medium.colour / 12**0.5 * 1.05  # uniform error: step / sqrt(12)
        assert err["rotation_deg_mean"] < 1.5 and err["opacity_rmse"] < 0.01
        # quantised components of the unit quaternion: norm 1 within the component step
        assert torch.allclose(dec.quats.norm(dim=1), torch.ones(dec.num_gaussians), atol=2 * medium.rotation)
    key_bpg = result[0][3] / tile_frames[0].num_gaussians
    inter_bpg = np.mean([size for *_, size in result[1:]]) / tile_frames[0].num_gaussians
    assert key_bpg < 13.0 and inter_bpg < 2.5, (key_bpg, inter_bpg)


def test_untracked_loot_round_trip(loot_frames):
    result = round_trip(loot_frames)
    # predicted interframes (docs/CODEC.md section 6b): the count changes, voxels persist
    assert [enc.frame_type for enc, *_ in result] == ["keyframe"] + ["interframe"] * 9
    assert all("kept" in enc.payload for enc, *_ in result[1:])
    assert result[0][0].payload["step"] == pytest.approx(0.0078125, rel=1e-5)  # the voxel lattice
    for enc, _, err, size in result:
        assert err["position_max_abs"] <= 1e-3  # within 1 mm (the voxels are 7.8 mm)
        assert err["color_rmse_255"] <= 2.0
        assert err["opacity_rmse"] < 1e-3 and err["scale_rel_max"] < 1e-3
        assert size / enc.num_gaussians < 1.65, (enc.frame_type, size / enc.num_gaussians)


def test_count_change_and_gop(tile_frames):
    seq = [tile_frames[0], tile_frames[1], rows(tile_frames[2], np.arange(9000)), tile_frames[3],
           tile_frames[4]]
    types = [enc.frame_type for enc, *_ in round_trip(seq, CodecConfig(gop=4))]
    assert types == ["keyframe", "interframe", "intra", "intra", "keyframe"]


def test_empty_and_tiny_frames(tile_frames):
    seq = [rows(tile_frames[i % 3], np.arange(n)) for i, n in enumerate([0, 1, 1, 0, 2, 7, 7])]
    result = round_trip(seq)  # decodes bit-exactly (asserted inside)
    assert result[0][0].frame_type == "keyframe"
    assert [dec.num_gaussians for _, dec, *_ in result] == [0, 1, 1, 0, 2, 7, 7]


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_lower_sh_degrees_and_infinite_opacity(tile_frames, degree):
    k = (degree + 1) ** 2 - 1
    f = tile_frames[0]
    opac = f.opacities.clone()
    opac[:50] = float("inf")  # as in the biker scene
    seq = [replace(f, shN=f.shN[:, :k].contiguous(), opacities=opac)] * 2
    result = round_trip(seq)
    for _, dec, err, _ in result:
        assert dec.sh_degree == degree and torch.isfinite(dec.opacities).all()
        # uniform logit error step/sqrt(12), times the sigmoid's slope (at most 1/4)
        assert err["opacity_rmse"] < CodecConfig().steps.opacity / 12**0.5 / 4
    assert result[1][0].frame_type == "interframe" and result[1][3] < 350  # nothing changed: fixed keys, empty arrays


def test_deterministic(tile_frames):
    seq = [rows(f, np.arange(4000)) for f in tile_frames[:3]]
    a = [enc.payload for enc, *_ in round_trip(seq)]
    b = [enc.payload for enc, *_ in round_trip(seq)]
    assert [encode_message(FrameMessage(0, 0.0, "keyframe", 1, p)) for p in a] == \
        [encode_message(FrameMessage(0, 0.0, "keyframe", 1, p)) for p in b]


def test_sh_degree_change_is_an_error(tile_frames):
    enc = FrameEncoder()
    enc.encode(rows(tile_frames[0], np.arange(500)))
    f = rows(tile_frames[1], np.arange(500))
    with pytest.raises(CodecError, match="SH degree"):
        enc.encode(replace(f, shN=f.shN[:, :3].contiguous()))


def test_non_finite_input_is_an_error(tile_frames):
    f = tile_frames[0]
    means = f.means.clone()
    means[3, 1] = float("nan")
    with pytest.raises(CodecError, match="means"):
        FrameEncoder().encode(replace(f, means=means))


def test_unchanged_attributes_are_not_derived_again(tile_frames, monkeypatch):
    """Frames that change only means, quats and sh0 (as bench B) encode to the same bytes
    whether the encoder reuses the previous frame's features of the unchanged attributes or
    derives every attribute again (the reference); a NaN in a changed attribute is still
    found, after frames whose other attributes stayed the same."""
    first = tile_frames[0]
    seq = [replace(f, scales=first.scales, opacities=first.opacities, shN=first.shN) for f in tile_frames[:4]]
    assert not torch.equal(seq[1].sh0, seq[0].sh0) and not torch.equal(seq[1].quats, seq[0].quats)
    encoder = FrameEncoder()
    fast = [wire(i, encoder.encode(f)) for i, f in enumerate(seq)]
    sh0 = seq[3].sh0.clone()
    sh0[5, 2] = float("nan")
    with pytest.raises(CodecError, match="sh0"):
        encoder.encode(replace(seq[3], sh0=sh0))
    monkeypatch.setattr(encoder_module, "_unchanged", lambda frame, previous: set())
    encoder = FrameEncoder()
    assert [wire(i, encoder.encode(f)) for i, f in enumerate(seq)] == fast


def test_config_round_trip_and_validation():
    c = CodecConfig(gop=10, quality="high", step=0.01, tolerance=2)
    assert CodecConfig.from_dict(c.to_dict()) == c
    assert CodecConfig(alpha=0.7).steps.alpha == 0.7 and CodecConfig().steps == QUALITIES["standard"]
    assert CodecConfig().steps == CodecConfig(quality="medium", step_scale=2).steps  # medium's steps x 2
    assert CodecConfig().codebook_rows(LARGE_SCENE - 1) == 256 and CodecConfig().codebook_rows(LARGE_SCENE) == 512
    assert CodecConfig(codebook_size=64).codebook_rows(LARGE_SCENE) == 64
    for bad in ({"gop": 0}, {"codebook_size": 1}, {"alpha": -1.0}, {"step": 0.0}, {"quality": "ultra"},
                {"quality": None}, {"device": "tpu"}, {"tolerance": True}, {"bogus": 1}):
        with pytest.raises(ValueError):
            CodecConfig.from_dict(bad)


def _mutations(key: dict, inter: dict, n: int):
    """(name, frame_type, num_gaussians, payload, needs_keyframe_first) of broken payloads."""
    def edit(p, path, value):
        p = {k: (dict(v) if isinstance(v, dict) else v) for k, v in p.items()}
        d = p
        for k in path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[path[-1]]
        else:
            d[path[-1]] = value
        return p

    ids = key["ids"]["sh0"]  # scalar-quantised: [3, N]
    vq_ids = key["ids"]["shN_1"]  # vector-quantised (a one-row codebook: the tile's SH rest is 0)
    books = key["codebooks"]["shN_1"]
    sq = key["scalar"]["sh0"]
    yield "count", "keyframe", n + 1, key, False
    yield "missing key", "keyframe", n, edit(key, ["origin"], KeyError), False
    yield "extra key", "keyframe", n, edit(key, ["extra"], 1), False
    yield "id dtype", "keyframe", n, edit(key, ["ids", "sh0"], ids.astype(np.int32)), False
    yield "id range", "keyframe", n, edit(key, ["ids", "shN_1"], vq_ids + 1), False
    yield "short ids", "keyframe", n, edit(key, ["ids", "sh0"], ids[:, :-1]), False
    yield "flat scalar ids", "keyframe", n, edit(key, ["ids", "sh0"], ids[0]), False
    yield "nan codebook", "keyframe", n, edit(key, ["codebooks", "shN_1"], books * np.float16("nan")), False
    yield "group twice", "keyframe", n, edit(key, ["codebooks", "sh0"], books[:, :3]), False
    yield "group missing", "keyframe", n, edit(key, ["scalar", "sh0"], KeyError), False
    yield "scalar step", "keyframe", n, edit(key, ["scalar", "sh0"], sq * np.float32([[1], [0]])), False
    yield "scalar nan", "keyframe", n, edit(key, ["scalar", "sh0"], sq * np.float32("nan")), False
    yield "scalar shape", "keyframe", n, edit(key, ["scalar", "sh0"], sq[:, :2]), False
    yield "scalar dtype", "keyframe", n, edit(key, ["scalar", "sh0"], sq.astype(np.float64)), False
    yield "step", "keyframe", n, edit(key, ["step"], -1.0), False
    yield "step type", "keyframe", n, edit(key, ["step"], "1"), False
    yield "sh degree", "keyframe", n, edit(key, ["sh_degree"], 7), False
    huge = np.ascontiguousarray(np.full(n, 2**62, "<u8").view(np.uint8).reshape(n, 8).T)
    yield "morton overflow", "keyframe", n, edit(key, ["morton"], huge), False
    yield "morton planes", "keyframe", n, edit(key, ["morton"], huge[:3]), False
    yield "ids_delta type", "keyframe", n, edit(key, ["ids_delta", "sh0"], 1), False
    yield "ids_delta keys", "keyframe", n, edit(key, ["ids_delta", "sh0"], KeyError), False
    yield "list payload", "keyframe", n, [1, 2], False
    yield "frame type", "bogus", n, key, False
    yield "inter count", "interframe", n - 1, inter, True
    yield "mask popcount", "interframe", n, edit(inter, ["pos_delta"], np.zeros((1, 3), np.int8)), True
    mask = inter["pos_mask"].copy()
    mask[-1] |= 0x80
    yield "padding bit", "interframe", n, edit(inter, ["pos_mask"], mask), True
    yield "unit", "interframe", n, edit(inter, ["unit"], 0), True
    blocks = -(-len(inter["pos_small"]) // 32)
    yield "block", "interframe", n, edit(inter, ["pos_block"], -1), True
    yield "block size", "interframe", n, edit(inter, ["pos_block"], 2**16 + 1), True
    yield "base shape", "interframe", n, edit(inter, ["pos_block"], 32), True  # base [3, 0]
    far = np.full((3, blocks), 2**30, np.int32)  # each block's median 2**30 units beyond the last
    yield "block escape", "interframe", n, edit(edit(inter, ["pos_block"], 32), ["pos_base"], far), True
    escapes = np.full_like(inter["pos_small"], 255)  # every moved row escaped, by 127 units of 2**21
    big = edit(edit(inter, ["pos_small"], escapes), ["pos_delta"], np.full((3, len(escapes)), 127, np.int8))
    yield "grid escape", "interframe", n, edit(big, ["unit"], 2**21), True
    yield "escape count", "interframe", n, edit(inter, ["pos_small"], escapes), True
    yield "small code", "interframe", n, edit(inter, ["pos_small"], np.full_like(escapes, 27)), True
    yield "small ids of a VQ group", "interframe", n, edit(inter, ["id_small", "shN_1"], np.zeros(0, np.uint8)), True
    values = inter["id_values"]["sh0"]  # [3, M]
    yield "scalar values shape", "interframe", n, edit(inter, ["id_values", "sh0"], values[:2]), True
    yield "scalar values dtype", "interframe", n, edit(inter, ["id_values", "sh0"], values.astype(np.int16)), True


def test_jittered_moves_code_as_block_medians(tile_frames):
    """Frames re-optimised one by one jitter every position (as ../shared/tools/animate.py
    --jitter): their interframe codes the moves as block medians plus residuals, decoded
    exactly, in fewer wire bytes than the same moves as differences along the order (by little
    on this small tile: about 0.2 %; 2.2 % of the bytes on the 250k sequence B, docs/CODEC.md
    section 15); the smooth tile's moves stay differences."""
    lo, hi = np.percentile(tile_frames[0].means.numpy(), [1, 99], axis=0)
    sigma = 0.0005 * float(np.linalg.norm(hi - lo))
    g = torch.Generator().manual_seed(0)
    jittered = [replace(f, means=f.means + sigma * torch.randn(f.means.shape, generator=g)) for f in tile_frames[:2]]
    (key, *_), (inter, *_) = round_trip(jittered)
    assert round_trip(tile_frames[:2])[1][0].payload["pos_block"] == 0
    p = inter.payload
    assert inter.frame_type == "interframe" and p["pos_block"] == POS_BLOCK
    rows = np.flatnonzero(np.unpackbits(p["pos_mask"], bitorder="little")[:inter.num_gaussians])
    moves = inter.state.q[rows] - key.state.q[rows]  # [M, 3] (unit 1)
    assert len(rows) > 0.9 * inter.num_gaussians
    small, escaped = _small_rows(np.diff(moves.T, axis=1, prepend=0))
    differences = {**p, "pos_block": 0, "pos_base": np.zeros((3, 0), np.int8), "pos_small": small,
                   "pos_delta": _narrow_int(escaped)}
    decoder = FrameDecoder()
    decoder.decode("keyframe", key.num_gaussians, key.payload)
    assert np.array_equal(decoder.update("interframe", inter.num_gaussians, differences).q, inter.state.q)
    other = replace(inter, payload=differences)
    assert wire_bytes(1, inter) < wire_bytes(1, other)


def test_decoder_rejects_bad_payloads(tile_frames):
    sub = [rows(f, np.arange(1001)) for f in tile_frames[:2]]
    moved = replace(sub[0], means=sub[1].means, sh0=sub[1].sh0)  # positions and colours change
    encoder = FrameEncoder(CodecConfig(quality="medium", tolerance=0))  # colour changes above its step
    key, inter = encoder.encode(sub[0]), encoder.encode(moved)
    assert inter.frame_type == "interframe" and len(inter.payload["pos_small"])
    assert inter.payload["id_values"]["sh0"].shape[1] > 0
    n = key.num_gaussians
    with pytest.raises(CodecError, match="before any keyframe"):
        FrameDecoder().decode("interframe", n, inter.payload)
    for name, ftype, count, payload, after_key in _mutations(key.payload, inter.payload, n):
        dec = FrameDecoder()
        if after_key:
            dec.decode("keyframe", n, key.payload)
        before = dec.state
        with pytest.raises(CodecError):
            dec.decode(ftype, count, payload)
            pytest.fail(f"accepted a payload with a bad {name}")
        assert dec.state is before, name
    dec = FrameDecoder()
    dec.decode("keyframe", n, key.payload)
    assert identical(dec.decode("interframe", n, inter.payload), inter.reconstruction)


def test_playbot_scene_keyframe():
    """A large real scene (250k Gaussians, SH 2), first 20k: keyframe size and errors."""
    f = rows(read_ply(shared_path("data/scenes/playbot_sh2_250k.ply")), np.arange(20000))
    (enc, dec, err, size), = round_trip([f])
    assert err["position_max_abs"] <= position_bound(enc, enc.payload["step"])
    assert size / f.num_gaussians < 14


def test_presets_are_ordered():
    """Each preset's steps are at most the previous (coarser) one's."""
    presets = list(QUALITIES.values())
    assert list(QUALITIES) == ["preview", "standard", "medium", "high", "near-lossless"]
    for coarse, fine in zip(presets, presets[1:]):
        assert all(getattr(fine, f.name) <= getattr(coarse, f.name) for f in fields(fine) if f.name != "sh_rest")
        assert fine.sh_rest <= coarse.sh_rest or coarse.sh_rest == 0  # 0: vector-quantised


def test_older_versions_are_refused():
    check_codec(CODEC_NAME, CODEC_VERSION)
    for old in range(1, CODEC_VERSION):
        with pytest.raises(CodecError, match=f"version {old} is not supported.*re-encode"):
            check_codec(CODEC_NAME, old)
    with pytest.raises(CodecError, match="is not 'splatcast-vq'"):
        check_codec("other", CODEC_VERSION)


def test_leaving_a_scalar_range_forces_a_keyframe(tile_frames):
    """Colours beyond the keyframe's range (plus its margin) do not fit the GOP's quantiser."""
    f = rows(tile_frames[0], np.arange(3000))
    brighter = replace(f, sh0=f.sh0 + 20.0)
    types = [enc.frame_type for enc, *_ in round_trip([f, f, brighter, brighter])]
    assert types == ["keyframe", "interframe", "keyframe", "interframe"]


def test_predicted_interframes_reject_inconsistent_payloads(loot_frames):
    """A predicted interframe whose counts or shift do not fit its reference is a
    CodecError, and the decoder keeps its state."""
    encoder = FrameEncoder(CodecConfig(device="cpu"))
    key, pred = encoder.encode(loot_frames[0]), encoder.encode(loot_frames[1])
    assert "kept" in pred.payload
    decoder = FrameDecoder()
    decoder.decode("keyframe", key.num_gaussians, key.payload)
    state = decoder.state
    p = pred.payload
    too_far = dict(p, shift=np.array([2**17, 0, 0], np.int32))
    for payload, n, match in ((p, pred.num_gaussians + 1, "do not add up"), (too_far, pred.num_gaussians, "shift"),
                              ({k: v for k, v in p.items() if k != "shift"}, pred.num_gaussians, "expected keys")):
        with pytest.raises(CodecError, match=match):
            decoder.decode("interframe", n, payload)
        assert decoder.state is state
    dec = decoder.decode("interframe", pred.num_gaussians, p)
    assert torch.equal(dec.means, pred.reconstruction.means) and torch.equal(dec.sh0, pred.reconstruction.sh0)


@pytest.mark.parametrize("row0_kept", [True, False])
@pytest.mark.parametrize("value", [0, 7])
def test_constant_group_fast_path_matches_the_general_prediction(monkeypatch, row0_kept, value):
    """``predict_values``' fast path for a scalar group whose previous values are all the same and
    unchanged (voxel captures: one scale, rotation, opacity) gives what the general run
    prediction gives, new rows before the first kept row included."""
    from splatcast.codec import decoder

    rng = np.random.default_rng(1)
    n_prev, n = 500, 600
    state = decoder.DecoderState(0, np.float32(1), {}, {}, np.zeros(3, np.float32),
                                 np.zeros((n_prev, 3), np.int32),
                                 {"scale": np.full((3, n_prev), value, np.uint8)})
    source = np.where(rng.random(n) < 0.7, rng.integers(0, n_prev, n), -1)
    source[0] = 3 if row0_kept else -1
    v = np.zeros((3, n), np.uint8)
    fast = decoder.predict_values(state, "scale", source, v)
    monkeypatch.setattr(decoder, "_constant", lambda values: None)
    assert np.array_equal(fast, decoder.predict_values(state, "scale", source, v))


def _rotation_reference(unit: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    """Slow, obvious smallest three [N, 4] (k, a, b, c) of unit quaternions [N, 4], row by row."""
    out = []
    for i, q in enumerate(unit):
        k = int(np.argmax(np.abs(q)))
        if index is not None and abs(q[int(index[i])]) >= ROTATION_KEEP * abs(q[k]):
            k = int(index[i])
        q = q if q[k] >= 0 else -q
        out.append([k] + [q[j] for j in range(4) if j != k])
    return np.array(out, np.float32)


def test_smallest_three_round_trip():
    """Rotation as its smallest three (docs/CODEC.md section 14): the encoder's features equal a
    row-by-row reference, keep a row's previous index while that component is large enough, and
    ``decoder.quaternions`` gives back the same rotation (q or -q) within float32 rounding."""
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(2000, 4))
    unit[:10] = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3, 0, 0]]  # exact axes, ties broken by argmax
    unit[10:20, :2] = 0.6  # two equal largest components
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    t = torch.from_numpy(unit.astype(np.float32))
    index = rng.integers(0, 4, len(unit)).astype(np.float32)
    for previous in (None, index):
        got = _smallest_three(t, None if previous is None else torch.from_numpy(previous)).numpy()
        np.testing.assert_allclose(got, _rotation_reference(t.numpy(), previous), atol=1e-7)
        back = quaternions(got)
        assert np.abs(np.abs((back * unit).sum(1)) - 1).max() < 1e-5
    assert (_smallest_three(t, torch.from_numpy(index))[:, 0].numpy() == index).mean() > 0.2  # kept
    # the index is rounded and clipped: any value gives a quaternion, never an error
    odd = np.array([[-3.0, 0.1, 0.2, 0.3], [7.6, 0.9, 0.9, 0.9], [1.4, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(quaternions(odd), [[np.sqrt(np.float32(0.86)), 0.1, 0.2, 0.3],
                                                  [0.9, 0.9, 0.9, 0], [0, 1, 0, 0]], rtol=1e-6)


def test_update_checks_without_building_and_decode_resumes(tile_frames):
    """``FrameDecoder.update`` advances the state as ``decode`` does (a bad payload is refused the
    same way); a later ``decode`` builds the frame from that state, equal to a full decode."""
    encoder = FrameEncoder(CodecConfig(gop=10, device="cpu"))
    encoded = [encoder.encode(f) for f in tile_frames[:4]]
    assert [e.frame_type for e in encoded] == ["keyframe"] + ["interframe"] * 3
    full, checking = FrameDecoder(), FrameDecoder()
    for i, e in enumerate(encoded):
        want = full.decode(e.frame_type, e.num_gaussians, e.payload)
        if i < 2:
            state = checking.update(e.frame_type, e.num_gaussians, e.payload)
            assert state is checking.state and state.sh_degree == tile_frames[0].sh_degree
        else:
            assert identical(checking.decode(e.frame_type, e.num_gaussians, e.payload), want)
        assert identical(e.reconstruction, want)
    with pytest.raises(CodecError):
        checking.update("interframe", encoded[1].num_gaussians - 1, encoded[1].payload)


def test_interframe_unit_bounds_scalar_values(tile_frames):
    """With ``unit`` 3 (tolerance 1) interframes change scalar values in multiples of 3 steps,
    within 3 steps / 2 of the input (positions likewise), and send fewer bytes than unit 1."""
    sizes = {}
    for tolerance in (0, 1):
        out = round_trip(tile_frames[:4], CodecConfig(quality="high", tolerance=tolerance, device="cpu"))
        key = out[0][0].payload
        sizes[tolerance] = sum(size for *_, size in out[1:])
        for i, (enc, dec, err, _) in enumerate(out):
            unit = enc.payload.get("unit", 1)
            assert unit == (2 * tolerance + 1 if i else 1)
            assert err["position_max_abs"] <= position_bound(enc, key["step"])
            ref = rows(tile_frames[i], enc.source_rows)
            for name, got, want in (("sh0", dec.sh0, ref.sh0), ("scale", dec.scales, ref.scales)):
                step = torch.from_numpy(key["scalar"][name][1].astype(np.float32))
                assert ((got - want).abs() <= unit * step / 2 + 1e-5).all(), (i, name)
    assert sizes[1] < 0.8 * sizes[0], sizes


def _shell_reference(q: np.ndarray) -> set[tuple[int, int, int]]:
    """Slow, obvious shell: every face neighbour within the range that is no voxel of ``q``."""
    from splatcast.codec.decoder import PREDICTED_BITS

    voxels = {tuple(v) for v in q.tolist()}
    return {n for v in voxels for a in range(3) for d in (1, -1)
            for n in [tuple(c + d * (i == a) for i, c in enumerate(v))]
            if 0 <= n[a] < 2**PREDICTED_BITS and n not in voxels}


@pytest.mark.parametrize("case", ["empty", "one", "edges", "cluster", "sparse"])
def test_previous_grid_matches_a_reference(case):
    """``previous_grid`` (docs/CODEC.md section 6b), which encoder and decoder share: codes sorted
    with their rows, and the shell equal to a set-based reference, at the range's edges (0 and
    2**17 - 1) too; a shift beyond the range is a ``CodecError``."""
    from splatcast.codec import morton
    from splatcast.codec.decoder import PREDICTED_BITS, DecoderState, previous_grid

    rng, top = np.random.default_rng(3), 2**PREDICTED_BITS - 1
    q = {"empty": np.zeros((0, 3), np.int64),
         "one": np.array([[top, 0, 5]]),
         "edges": rng.integers(0, 3, (40, 3)) * np.array([1, top // 2, 1]) + np.array([0, 0, top - 2]),
         "cluster": rng.integers(100, 120, (3000, 3)),
         "sparse": rng.integers(0, top + 1, (300, 3))}[case].astype(np.int64)
    shift = np.array([0, 0, -1]) if len(q) else np.zeros(3, np.int64)
    state = DecoderState(0, np.float32(1), {}, {}, np.zeros(3, np.float32), (q - shift).astype(np.int32), {})
    codes, rows, shell = previous_grid(state, shift)
    assert np.array_equal(codes, morton.encode(q[rows])) and np.all(codes[1:] >= codes[:-1])
    assert sorted(rows.tolist()) == list(range(len(q)))
    want = np.sort(morton.encode(np.array(sorted(_shell_reference(q)), np.int64).reshape(-1, 3)))
    assert np.array_equal(shell, want)
    if len(q):
        with pytest.raises(CodecError, match="beyond"):
            previous_grid(state, np.array([0, 0, top + 1]))


def test_predicted_interframes_match_voxels_as_multisets(loot_frames):
    """Several Gaussians in one voxel (docs/CODEC.md section 6b: voxels are matched as
    multisets, kept rows first among equal codes): frames whose voxels hold 1-3 Gaussians, in
    counts that change from frame to frame, code as predicted interframes that decode to what
    the encoder says, every input row once, at the input's positions."""
    def crowded(frame: GaussianFrame, doubled: slice, tripled: slice) -> GaussianFrame:
        extra = np.r_[np.arange(frame.num_gaussians)[doubled], np.arange(frame.num_gaussians)[tripled]]
        out = rows(frame, np.r_[np.arange(frame.num_gaussians), extra])
        out.sh0[frame.num_gaussians:] += 0.5  # other colours in the same voxels
        return out

    seq = [crowded(loot_frames[0], slice(0, 3000), slice(0, 1000)),
           crowded(loot_frames[1], slice(0, 2000), slice(500, 2500)),
           crowded(loot_frames[2], slice(1000, 5000), slice(0, 0))]
    result = round_trip(seq)
    assert [enc.frame_type for enc, *_ in result] == ["keyframe", "interframe", "interframe"]
    assert all("kept" in enc.payload for enc, *_ in result[1:])
    for (_, dec, err, _), frame in zip(result, seq):
        assert dec.num_gaussians == frame.num_gaussians
        assert err["position_max_abs"] <= 1e-3  # each row decodes in its own voxel
