"""PLY I/O on the real scenes in ../shared: layouts, encodings, round trips, hostile input."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import fields

import numpy as np
import pytest
import torch
from conftest import shared_path
from hypothesis import given, settings
from hypothesis import strategies as st
from plyfile import PlyData, PlyElement

from splatcast.codec import GaussianFrame, PlyError, ply_bytes, ply_files, read_ply, write_ply
from splatcast.codec.ply import MAX_HEADER_BYTES, OPACITY_CLAMP

SCENES = {  # name -> (Gaussians, SH degree)
    "playbot_sh2_250k": (250_000, 2),
    "biker_sh0_153k": (152_746, 0),
    "tile_sh3_14k": (14_051, 3),
}


def scene_bytes(name: str) -> bytes:
    return shared_path(f"data/scenes/{name}.ply").read_bytes()


def split(data: bytes) -> tuple[str, bytes]:
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].decode("ascii"), data[end:]


def subset(data: bytes, n: int) -> bytes:
    """The first n Gaussians of a binary PLY, header count edited to match."""
    header, body = split(data)
    count = int(re.search(r"element vertex (\d+)", header)[1])
    row = len(body) // count
    return header.replace(f"element vertex {count}", f"element vertex {n}").encode() + body[: n * row]


def assert_same(a: GaussianFrame, b: GaussianFrame) -> None:
    for f in fields(GaussianFrame):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


def read_quiet(source, **kw) -> GaussianFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_ply(source, **kw)


@pytest.fixture(scope="module")
def tile20() -> bytes:
    return subset(scene_bytes("tile_sh3_14k"), 20)


@pytest.mark.parametrize("name", ["playbot_sh2_250k", "tile_sh3_14k"])
def test_real_scene_matches_plyfile_by_name(name):
    path = shared_path(f"data/scenes/{name}.ply")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no extra properties, no infinite opacities
        frame = read_ply(path)
        assert_same(frame, read_ply(path.read_bytes()))
        assert_same(frame, read_ply(memoryview(bytearray(path.read_bytes()))))
    assert (frame.num_gaussians, frame.sh_degree) == SCENES[name]
    v = PlyData.read(str(path))["vertex"].data

    def col(*names):
        return torch.from_numpy(np.stack([v[n] for n in names], axis=1).astype(np.float32))

    assert torch.equal(frame.means, col("x", "y", "z"))
    assert torch.equal(frame.quats, col("rot_0", "rot_1", "rot_2", "rot_3"))
    assert torch.equal(frame.scales, col("scale_0", "scale_1", "scale_2"))
    assert torch.equal(frame.opacities, torch.from_numpy(v["opacity"].copy()))
    assert torch.equal(frame.sh0, col("f_dc_0", "f_dc_1", "f_dc_2"))
    k = frame.shN.shape[1]  # channel-major: shN[:, j, c] = f_rest_{c*K + j}
    for j, c in [(0, 0), (k - 1, 0), (0, 2), (k - 1, 2), (k // 2, 1)]:
        assert torch.equal(frame.shN[:, j, c], torch.from_numpy(v[f"f_rest_{c * k + j}"].copy()))


def test_biker_infinite_opacities_are_clamped_with_a_warning():
    data = scene_bytes("biker_sh0_153k")
    with pytest.warns(UserWarning, match=r"clamped 198 infinite opacities"):
        frame = read_ply(data)
    assert (frame.num_gaussians, frame.sh_degree) == SCENES["biker_sh0_153k"]
    assert torch.isfinite(frame.opacities).all()
    assert int((frame.opacities == OPACITY_CLAMP).sum()) >= 198


def test_round_trip_is_exact(tmp_path):
    tile = scene_bytes("tile_sh3_14k")
    assert ply_bytes(read_ply(tile)) == tile  # tile is in the exact INRIA layout, zero normals
    frame = read_ply(scene_bytes("playbot_sh2_250k"))
    write_ply(frame, tmp_path / "p.ply")
    data = (tmp_path / "p.ply").read_bytes()
    assert data == ply_bytes(frame)
    header, _ = split(data)
    names = re.findall(r"property float (\w+)", header)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:] == [f"f_rest_{i}" for i in range(24)] + [
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert_same(read_ply(data), frame)
    empty = GaussianFrame(*(torch.zeros(0, *s) for s in [(3,), (3,), (4,), (), (3,), (0, 3)]))
    assert read_ply(ply_bytes(empty)).num_gaussians == 0


@pytest.mark.parametrize("variant", ["ascii", "big_endian", "mixed_types"])
def test_other_encodings_read_equal(tmp_path, variant):
    small = subset(scene_bytes("playbot_sh2_250k"), 300)
    ply = PlyData.read(io.BytesIO(small))
    if variant == "mixed_types":  # x as double, an extra uchar and an extra int property
        v = ply["vertex"].data
        dtype = [(n, "<f8" if n == "x" else v.dtype[n]) for n in v.dtype.names]
        arr = np.empty(len(v), dtype + [("red", "u1"), ("seg", "<i4")])
        for n in v.dtype.names:
            arr[n] = v[n]
        arr["red"], arr["seg"] = 7, -1
        ply = PlyData([PlyElement.describe(arr, "vertex")])
    else:
        ply.text, ply.byte_order = variant == "ascii", ">" if variant == "big_endian" else "<"
    ply.write(str(tmp_path / "v.ply"))
    if variant == "mixed_types":
        with pytest.warns(UserWarning, match=r"ignoring extra vertex properties: red, seg$"):
            frame = read_ply(tmp_path / "v.ply")
    else:
        frame = read_ply(tmp_path / "v.ply")
    assert_same(frame, read_ply(small))


def _edit_header(old: str, new: str):
    def edit(data: bytes) -> bytes:
        header, body = split(data)
        assert old in header
        return header.replace(old, new, 1).encode() + body
    return edit


def _edit_column(name: str, value: float, rows: int):
    def edit(data: bytes) -> bytes:
        header, body = split(data)
        names = re.findall(r"property float (\w+)", header)
        table = np.frombuffer(body, "<f4").reshape(-1, len(names)).copy()
        table[:rows, names.index(name)] = value
        return header.encode() + table.tobytes()
    return edit


HOSTILE = {
    "bad magic": (lambda d: b"PLY" + d[3:], r"not a PLY file: bad magic"),
    "not a ply": (lambda d: b"\x89PNG\r\n" + d, r"bad magic"),
    "no end_header": (lambda d: d[:300], r"no end_header"),
    "oversized header": (_edit_header("element", f"comment {'x' * MAX_HEADER_BYTES}\nelement"),
                         r"header too large"),
    "non-ascii header": (lambda d: d.replace(b"element vertex", b"comment \xff\nelement vertex"),
                         r"non-ASCII"),
    "unknown format": (_edit_header("binary_little_endian", "binary_middle_endian"),
                       r"unknown format 'binary_middle_endian 1.0'"),
    "bad version": (_edit_header("binary_little_endian 1.0", "binary_little_endian 2.0"),
                    r"unknown format"),
    "count over body": (_edit_header("element vertex 20", f"element vertex {10**12}"),
                        rf"truncated body: header claims {10**12} vertices"),
    "truncated body": (lambda d: d[:-5], r"truncated body: header claims 20 vertices"),
    "trailing bytes": (lambda d: d + b"\0" * 7, r"7 trailing bytes"),
    "negative count": (_edit_header("element vertex 20", "element vertex -20"), r"negative count"),
    "bad count": (_edit_header("element vertex 20", "element vertex 2e1"), r"bad header line"),
    "missing property": (_edit_header("float rot_3", "float rot_x"),
                         r"missing required properties: rot_3$"),
    "missing position": (_edit_header("float y\n", "float yy\n"), r"missing required properties: y$"),
    "duplicate property": (_edit_header("float rot_3", "float rot_2"), r"duplicate property 'rot_2'"),
    "bad f_rest count": (_edit_header("float f_rest_44", "float extra"),
                         r"44 f_rest properties; SH degree 0-3 needs 0, 9, 24 or 45"),
    "unknown type": (_edit_header("property float x", "property half x"), r"unknown property type"),
    "list property": (_edit_header("property float x", "property list uchar float x"),
                      r"list properties are not supported: \['x'\]"),
    "non-vertex-only": (lambda d: _edit_header("end_header", "element face 1\nproperty list uchar "
                                               "int vertex_indices\nend_header")(d) + b"\3" + b"\0" * 12,
                        r"non-vertex-only file: elements \['face'\] hold data"),
    "no vertex element": (_edit_header("element vertex 20", "element point 20"), r"no vertex element"),
    "property before element": (_edit_header("element vertex 20\n", ""), r"bad header line"),
    "nan values": (_edit_column("x", np.nan, 3), r"NaN values: 3 in x$"),
    "nan opacity": (_edit_column("opacity", np.nan, 2), r"NaN values: 2 in opacity$"),
    "inf scale": (_edit_column("scale_1", -np.inf, 4), r"infinite values: 4 in scale_1$"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_input_raises_ply_error(tile20, case):
    edit, message = HOSTILE[case]
    with pytest.raises(PlyError, match=message):
        read_quiet(edit(tile20))


def test_limits_and_tolerated_oddities(tile20):
    with pytest.raises(PlyError, match=r"20 vertices exceed max_gaussians=19"):
        read_ply(tile20, max_gaussians=19)
    assert read_ply(tile20, max_gaussians=20).num_gaussians == 20
    reference = read_ply(tile20)
    empty_face = _edit_header("end_header", "element face 0\nproperty list uchar int v\nend_header")
    assert_same(read_ply(empty_face(tile20)), reference)
    crlf = _edit_header("element vertex 20\n", "comment made on windows\r\nelement vertex 20\r\n")
    assert_same(read_ply(crlf(tile20)), reference)
    quats = read_ply(_edit_column("rot_0", 5.0, 20)(tile20)).quats
    assert torch.all(quats.norm(dim=1) > 4)  # non-unit quaternions are data, kept as stored
    with pytest.warns(UserWarning, match=r"clamped 3 infinite opacities"):
        opac = read_ply(_edit_column("opacity", -np.inf, 3)(tile20)).opacities
    assert torch.equal(opac[:3], torch.full((3,), -OPACITY_CLAMP))


def _ascii(data: bytes) -> bytes:
    ply = PlyData.read(io.BytesIO(data))
    ply.text = True
    out = io.BytesIO()
    ply.write(out)
    return out.getvalue()


def test_ascii_body_errors(tile20):
    ascii3 = _ascii(subset(tile20, 3))
    assert_same(read_ply(ascii3), read_ply(subset(tile20, 3)))
    assert read_ply(_ascii(subset(tile20, 0))).num_gaussians == 0
    with pytest.raises(PlyError, match=r"truncated or padded body: ASCII body has 185 values, "
                                       r"header implies 3 x 62"):
        read_ply(ascii3.rstrip().rsplit(None, 1)[0])
    with pytest.raises(PlyError, match=r"bad ASCII body"):
        header, body = split(ascii3)
        read_ply(header.encode() + body.replace(b" ", b" x", 1))
    with pytest.raises(PlyError, match=r"truncated body: header claims 3000000 vertices"):
        read_ply(ascii3.replace(b"element vertex 3", b"element vertex 3000000"))


@pytest.mark.parametrize("encoding", ["binary", "ascii"])
@settings(max_examples=60, deadline=None)
@given(cut=st.integers(0, 4000), edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)),
                                                 max_size=4))
def test_fuzz_mutations_raise_only_ply_error(tile20, encoding, cut, edits):
    data = bytearray(subset(tile20, 3) if encoding == "binary" else _ascii(subset(tile20, 3)))
    for pos, byte in edits:
        data[pos % len(data)] = byte
    data = data[: len(data) - cut % (len(data) + 1)] if cut % 3 else data
    try:
        frame = read_quiet(bytes(data))
    except PlyError:
        return
    assert frame.num_gaussians <= 3 and frame.sh_degree in (0, 1, 2, 3)


def test_ply_files_in_natural_order(tmp_path):
    for n in ["f10.ply", "f2.ply", "f1.ply", "g.ply", "f02b.ply", "notes.txt"]:
        (tmp_path / n).write_bytes(b"")
    assert [p.name for p in ply_files(tmp_path)] == ["f1.ply", "f2.ply", "f02b.ply", "f10.ply", "g.ply"]
    with pytest.raises(FileNotFoundError, match="no .ply files"):
        ply_files(tmp_path / "missing")
