"""Read and write 3DGS frames as PLY files in the INRIA layout.

Layout (graphdeco-inria/gaussian-splatting, ``scene/gaussian_model.py`` ``save_ply``; PLY
grammar from Greg Turk's PLY format description): one ``vertex`` element with float32
properties ``x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3``, where
``f_rest`` is channel-major (all K red coefficients, then green, then blue) and every value
is pre-activation (see :class:`GaussianFrame`).

Reading goes by property name, in any order, normals optional, any numeric property type
(converted to float32), binary little/big endian or ASCII. The header is parsed here with a
strict grammar and a size cap; binary bodies are viewed with ``np.frombuffer`` (no per-row
Python, unlike plyfile reading from a file object). Policy on odd input:

- extra vertex properties are ignored with one ``UserWarning`` naming them;
- opacities of +-Inf are clamped to +-``OPACITY_CLAMP`` (a logit; sigmoid(20) = 1 - 2e-9)
  and counted in a ``UserWarning``; Inf anywhere else and NaN anywhere raise ``PlyError``;
- other elements are allowed only with count 0; list properties are refused;
- bytes after a binary body are refused (they mean the header does not describe the data);
  an ASCII body must hold exactly count x properties numbers.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from numpy.lib.recfunctions import structured_to_unstructured

from splatcast.codec.frame import SH_COEFFS, GaussianFrame

MAX_HEADER_BYTES = 64 * 1024
"""Largest accepted PLY header, ``end_header`` line included."""

OPACITY_CLAMP = 20.0
"""Infinite opacity logits are clamped to +-this value."""

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": ""}
_FIELDS = {  # GaussianFrame field -> PLY property names of its columns
    "means": ("x", "y", "z"),
    "scales": ("scale_0", "scale_1", "scale_2"),
    "quats": ("rot_0", "rot_1", "rot_2", "rot_3"),
    "opacities": ("opacity",),
    "sh0": ("f_dc_0", "f_dc_1", "f_dc_2"),
}
_NORMALS = ("nx", "ny", "nz")
_F_REST = re.compile(r"f_rest_(0|[1-9][0-9]*)")
_COUNT = re.compile(r"-?[0-9]+")


class PlyError(ValueError):
    """A PLY file or buffer that is malformed, hostile or not a 3DGS frame."""


def _parse_header(data: memoryview) -> tuple[str, int, list[tuple[str, str]], int]:
    """-> (format, vertex count, [(property name, numpy type)], body offset)."""
    if bytes(data[:4]) not in (b"ply\n", b"ply\r"):
        raise PlyError("not a PLY file: bad magic (expected 'ply' on the first line)")
    head = bytes(data[:MAX_HEADER_BYTES])
    end = re.search(rb"\nend_header\r?\n", head)
    if end is None:
        if len(data) > MAX_HEADER_BYTES:
            raise PlyError(f"header too large: no end_header in the first {MAX_HEADER_BYTES} bytes")
        raise PlyError("bad header: no end_header line (truncated?)")
    try:
        lines = head[: end.start()].decode("ascii").split("\n")[1:]
    except UnicodeDecodeError as e:
        raise PlyError(f"bad header: non-ASCII byte at offset {e.start}") from None
    fmt: str | None = None
    elements: dict[str, tuple[int, dict[str, str]]] = {}
    current: tuple[int, dict[str, str]] | None = None
    for line in lines:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format" and len(tok) == 3 and fmt is None:
            if tok[1] not in _FORMATS or tok[2] != "1.0":
                raise PlyError(f"unknown format {' '.join(tok[1:])!r}")
            fmt = tok[1]
        elif tok[0] == "element" and len(tok) == 3 and _COUNT.fullmatch(tok[2]):
            if tok[1] in elements:
                raise PlyError(f"bad header: duplicate element {tok[1]!r}")
            if int(tok[2]) < 0:
                raise PlyError(f"bad header: negative count {tok[2]} for element {tok[1]!r}")
            current = elements[tok[1]] = (int(tok[2]), {})
        elif tok[0] == "property" and current is not None and len(tok) >= 3:
            props = current[1]
            if tok[1] == "list":
                props[tok[-1]] = "list"
            elif len(tok) == 3 and tok[1] in _TYPES:
                if tok[2] in props:
                    raise PlyError(f"bad header: duplicate property {tok[2]!r}")
                props[tok[2]] = _TYPES[tok[1]]
            else:
                raise PlyError(f"bad header: unknown property type in {line.strip()!r}")
        else:
            raise PlyError(f"bad header line {line.strip()[:80]!r}")
    if fmt is None:
        raise PlyError("bad header: no format line")
    if "vertex" not in elements:
        raise PlyError("no vertex element")
    others = [name for name, (count, _) in elements.items() if name != "vertex" and count]
    if others:
        raise PlyError(f"non-vertex-only file: elements {others} hold data")
    count, props = elements["vertex"]
    lists = [name for name, t in props.items() if t == "list"]
    if lists:
        raise PlyError(f"list properties are not supported: {lists}")
    return fmt, count, list(props.items()), end.end()


def _parse_body(data: memoryview, fmt: str, count: int, props: list[tuple[str, str]], offset: int) -> np.ndarray:
    """-> float32 array [count, len(props)], columns in header order."""
    body = data[offset:]
    if fmt == "ascii":
        if len(body) < 2 * count * len(props) - 1:  # every number is a digit and a separator
            raise PlyError(f"truncated body: header claims {count} vertices, ASCII body has "
                           f"only {len(body)} bytes")
        text = bytes(body)
        try:  # (np.fromstring turns whitespace-only text into [-1.0], hence the strip)
            values = np.fromstring(text, np.float32, sep=" ") if text.strip() else np.empty(0, np.float32)
        except ValueError as e:
            raise PlyError(f"bad ASCII body: {e}") from None
        if values.size != count * len(props):
            raise PlyError(f"truncated or padded body: ASCII body has {values.size} values, "
                           f"header implies {count} x {len(props)}")
        return values.reshape(count, len(props))
    dtype = np.dtype([(name, _FORMATS[fmt] + t) for name, t in props])
    need = count * dtype.itemsize
    if len(body) < need:
        raise PlyError(f"truncated body: header claims {count} vertices x {dtype.itemsize} "
                       f"bytes = {need} bytes, body has {len(body)}")
    if len(body) > need:
        raise PlyError(f"{len(body) - need} trailing bytes after the vertex data")
    # a view of the body (unaligned after an odd-length header): fields are copied out of it
    return structured_to_unstructured(np.frombuffer(body, dtype, count), np.float32)


def _column_names(names: list[str]) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """-> (GaussianFrame field -> property names of its columns, ignored property names)."""
    n_rest = sum(1 for n in names if _F_REST.fullmatch(n))
    if n_rest not in {3 * k for k in SH_COEFFS.values()}:
        raise PlyError(f"{n_rest} f_rest properties; SH degree 0-3 needs 0, 9, 24 or 45")
    k = n_rest // 3
    # shN[:, j, c] <- f_rest_{c*K + j} (channel-major), flattened row-major over (j, c)
    columns = dict(_FIELDS, shN=tuple(f"f_rest_{c * k + j}" for j in range(k) for c in range(3)))
    missing = [n for cols in columns.values() for n in cols if n not in names]
    if missing:
        raise PlyError(f"missing required properties: {', '.join(missing)}")
    used = {n for cols in columns.values() for n in cols} | set(_NORMALS)
    return columns, [n for n in names if n not in used]


def _check_finite(arrays: dict[str, np.ndarray], columns: dict[str, tuple[str, ...]]) -> None:
    """Raise on NaN anywhere or Inf outside opacity; clamp infinite opacities with a warning."""
    for field, a in arrays.items():
        if np.isfinite(a).all():
            continue
        flat = a.reshape(len(a), -1)
        nan = {n: int(np.isnan(flat[:, i]).sum()) for i, n in enumerate(columns[field])}
        inf = {n: int(np.isinf(flat[:, i]).sum()) for i, n in enumerate(columns[field])}
        nan = {n: c for n, c in nan.items() if c}
        if nan:
            raise PlyError("NaN values: " + ", ".join(f"{c} in {n}" for n, c in nan.items()))
        if field != "opacities":
            raise PlyError("infinite values: "
                           + ", ".join(f"{c} in {n}" for n, c in inf.items() if c))
        warnings.warn(f"clamped {inf['opacity']} infinite opacities to +-{OPACITY_CLAMP}",
                      stacklevel=3)
        np.clip(a, -OPACITY_CLAMP, OPACITY_CLAMP, out=a)


def read_ply(source: str | os.PathLike | bytes | bytearray | memoryview, device="cpu",
             max_gaussians: int | None = None) -> GaussianFrame:
    """Read one INRIA-layout 3DGS PLY from a path or from bytes into a :class:`GaussianFrame`.

    ``source``: a path, or the whole file as bytes/bytearray/memoryview (parsed in place, no
    temp file). ``device``: where the returned float32 tensors live. ``max_gaussians``:
    refuse files with more vertices (checked from the header, before reading the body).
    The SH degree (0-3) follows from the number of ``f_rest_*`` properties (0, 9, 24, 45).

    Raises ``PlyError`` (a ``ValueError``) naming the problem: bad magic, bad or oversized
    header, unknown format, truncated body or a count larger than the body, trailing bytes,
    missing/duplicate/list properties, other elements holding data, a count over
    ``max_gaussians``, NaN values, Inf outside opacity. Warns (``UserWarning``) about ignored
    extra properties and clamped infinite opacities (see the module docstring).
    """
    if isinstance(source, (str, os.PathLike)):
        source = Path(source).read_bytes()
    data = memoryview(source).cast("B")
    fmt, count, props, offset = _parse_header(data)
    if max_gaussians is not None and count > max_gaussians:
        raise PlyError(f"{count} vertices exceed max_gaussians={max_gaussians}")
    columns, extra = _column_names([name for name, _ in props])
    table = _parse_body(data, fmt, count, props, offset)
    if extra:
        warnings.warn(f"ignoring extra vertex properties: {', '.join(extra)}", stacklevel=2)
    index = {name: i for i, (name, _) in enumerate(props)}
    arrays = {field: np.array(_columns(table, [index[n] for n in names]), order="C")
              for field, names in columns.items() if field != "shN"}
    arrays["opacities"] = arrays["opacities"].reshape(count)
    k = len(columns["shN"]) // 3  # f_rest in file order is channel-major: [N, 3, K] -> [N, K, 3]
    rest = _columns(table, [index[f"f_rest_{i}"] for i in range(3 * k)]).reshape(count, 3, k)
    arrays["shN"] = np.array(rest.transpose(0, 2, 1), order="C")
    _check_finite(arrays, columns)
    return GaussianFrame(**{f: torch.from_numpy(a).to(device) for f, a in arrays.items()})


def _columns(table: np.ndarray, cols: list[int]) -> np.ndarray:
    """``table[:, cols]`` ([N, len(cols)]): a slice view when the columns are consecutive (as
    every common layout writes a field; a copy out of it is several times faster than a gather),
    else a gather."""
    if cols and cols == list(range(cols[0], cols[0] + len(cols))):
        return table[:, cols[0]:cols[0] + len(cols)]
    return np.take(table, cols, axis=1)


def ply_bytes(frame: GaussianFrame) -> bytes:
    """The exact INRIA-layout binary little-endian PLY of ``frame`` (normals written as 0).

    62 float32 per Gaussian at SH degree 3 (248 bytes), 14 + 3K in general.
    """
    n, k = frame.num_gaussians, frame.shN.shape[1]
    names = ["x", "y", "z", *_NORMALS, "f_dc_0", "f_dc_1", "f_dc_2",
             *(f"f_rest_{i}" for i in range(3 * k)), "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}",
              *(f"property float {name}" for name in names), "end_header\n"]
    cols = [frame.means, torch.zeros_like(frame.means), frame.sh0,
            frame.shN.transpose(1, 2).reshape(n, 3 * k),  # [N, 3K], channel-major
            frame.opacities.reshape(n, 1), frame.scales, frame.quats]
    body = torch.cat([c.detach().cpu() for c in cols], dim=1).numpy().astype("<f4", copy=False)
    return b"".join(["\n".join(header).encode("ascii"), body.data])  # one copy of the body


def write_ply(frame: GaussianFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` to ``path`` as :func:`ply_bytes` does (exact INRIA layout)."""
    Path(path).write_bytes(ply_bytes(frame))


def natural_key(name: str) -> list:
    """Sort key in which digit runs compare as numbers: ``frame_2`` sorts before ``frame_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def ply_files(directory: str | os.PathLike) -> list[Path]:
    """The ``*.ply`` files of ``directory`` (the frames of a sequence) in natural order.

    Raises ``FileNotFoundError`` when the directory is missing or holds no ``.ply`` file.
    """
    files = sorted(Path(directory).glob("*.ply"), key=lambda p: natural_key(p.name))
    if not files:
        raise FileNotFoundError(f"no .ply files in {directory}")
    return files
