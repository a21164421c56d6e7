"""A small, faithful 3DGS renderer in plain torch (CPU or any device), for view-based quality.

This is a measuring instrument, not a viewer: it renders a ``GaussianFrame`` from a few
deterministic cameras so that an original and a decoded frame can be compared by PSNR/SSIM
(``splatcast.codec.metrics.view_quality``). It follows the reference pipeline of Kerbl et al.,
"3D Gaussian Splatting for Real-Time Radiance Field Rendering" (SIGGRAPH 2023, the
graphdeco-inria ``diff-gaussian-rasterization`` forward pass) and gsplat's documented camera
conventions (OpenCV camera: x right, y down, z forward; world-to-camera ``viewmat``; pixel
(i, j) samples the continuous image point (i + 0.5, j + 0.5); principal point in pixels):

1. **Projection** (EWA splatting, Zwicker et al. 2002): ``Sigma = R S S^T R^T`` from the
   normalised quaternion and exp(log-scales); ``Sigma' = J W Sigma W^T J^T`` with ``W`` the
   camera rotation and ``J`` the Jacobian of the perspective map at the camera-space mean
   (x/z and y/z clamped to 1.3 x the half field of view, as 3DGS does); plus the 0.3 px^2
   low-pass dilation on the diagonal. Radius = ceil(3 sqrt(largest eigenvalue)) pixels.
   Culled: behind the near plane or beyond the far plane, non-finite, singular, opacity
   below 1/255, or whose square of that radius misses the image.
2. **Colour**: real spherical harmonics up to degree 3 with the standard constants, evaluated
   in the world-space direction from the camera centre to the mean, + 0.5, clamped at 0.
3. **Tile binning**: every Gaussian is listed in each 16x16 tile its square touches (the 3DGS
   ``getRect`` rule), the list sorted by tile then depth (front to back).
4. **Compositing** per pixel, front to back: ``alpha = min(0.99, sigmoid(opacity) *
   exp(-0.5 d^T Sigma'^-1 d))``, skipped below 1/255; colour += alpha T c; a pixel stops
   before the Gaussian that would bring its transmittance T below 1e-4; background
   weighted by the final T. Vectorised over tiles and chunks of each tile's list (cumulative
   product transmittance); a tile leaves the work list once all its pixels stopped.

Cost is about linear in (Gaussian, tile) pairs x 256 pixels, bounded by early stopping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from splatcast.codec.frame import C0, GaussianFrame

C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
      0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
"""Real SH constants of degrees 1-3 (Sloan, "Stupid Spherical Harmonics Tricks"; as in 3DGS)."""

ALPHA_MAX = 0.99  # 3DGS clamps alpha here
ALPHA_MIN = 1.0 / 255.0  # and skips contributions below this
T_MIN = 1e-4  # a pixel stops before its transmittance would drop below this
DILATION = 0.3  # px^2 added to the 2D covariance's diagonal (low-pass filter)
TILE = 16
FIRST_CHUNK = 64  # Gaussians per tile in the first compositing step; doubles at each step


@dataclass(frozen=True)
class Camera:
    """A pinhole camera, OpenCV convention (x right, y down, z forward).

    - ``viewmat``: [4, 4] float32, world -> camera (rows 0-2: ``[R | t]``, ``p_cam = R p + t``).
    - ``fx, fy, cx, cy``: intrinsics in pixels; pixel (i, j) is sampled at (i + 0.5, j + 0.5).
    - ``width, height``: image size in pixels.
    - ``near, far``: depth range kept, in scene units (camera-space z).
    """

    viewmat: torch.Tensor  # [4, 4]
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10

    @property
    def position(self) -> torch.Tensor:
        """Camera centre in world coordinates, [3] float32: ``-R^T t``."""
        r, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -(r.T @ t)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """World -> camera [4, 4] float32 for a camera at ``eye`` [3] looking at ``target`` [3].

    The image's up direction is ``up`` [3] (world) projected on the image plane; OpenCV
    axes: z = forward, x = forward x up (right), y = z x x (down).
    """
    eye, target, up = (v.to(torch.float64) for v in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if float(x.norm()) < 1e-9:  # looking along up: any perpendicular will do
        x = torch.linalg.cross(z, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3] = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    view[:3, 3] = -view[:3, :3] @ eye
    return view.to(torch.float32)


def robust_bounds(means: torch.Tensor, q: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis ``q`` and ``1 - q`` quantiles of ``means`` [N, 3] (finite rows only): (lo [3], hi [3]).

    Computed in float64 on the CPU (on at most 1M evenly strided rows, so it stays cheap and
    deterministic). Raises ``ValueError`` when no row is finite.
    """
    m = means.detach().to("cpu", torch.float64)
    m = m[torch.isfinite(m).all(1)]
    if m.shape[0] == 0:
        raise ValueError("no finite Gaussian mean: cannot place cameras")
    if m.shape[0] > 1_000_000:
        m = m[:: math.ceil(m.shape[0] / 1_000_000)]
    qs = torch.tensor([q, 1.0 - q], dtype=torch.float64)
    lo, hi = torch.quantile(m, qs, dim=0)  # [3] each
    return lo, hi


def orbit_cameras(frame: GaussianFrame, views: int = 4, size: int = 256, fov_deg: float = 50.0,
                  elevation_deg: float = 20.0) -> list[Camera]:
    """``views`` deterministic cameras orbiting the frame's robust centre, ``size`` x ``size`` px.

    Centre = middle of the 1st-99th percentile box of the means; R = half that box's
    diagonal; the cameras sit at distance R / sin(fov/2) (the sphere of radius R just fits the
    field of view), ``elevation_deg`` above the x-z plane towards +y, at azimuths
    360 k / views degrees (k = 0.., starting on the +z side), all looking at the centre with
    +y as image up. The orbit axis is y because captures are y-up (loot) or y-down (INRIA
    scenes); for y-down data the views come from below and upside down, which a comparison
    metric does not mind. Near plane: 1e-3 x distance.
    """
    if views < 1 or size < 1:
        raise ValueError(f"need views >= 1 and size >= 1, got {views} and {size}")
    lo, hi = robust_bounds(frame.means)
    centre = 0.5 * (lo + hi)
    radius = max(0.5 * float((hi - lo).norm()), 1e-6)
    half_fov = math.radians(fov_deg) / 2
    distance = radius / math.sin(half_fov)
    focal = 0.5 * size / math.tan(half_fov)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    el = math.radians(elevation_deg)
    cams = []
    for k in range(views):
        az = 2 * math.pi * k / views
        offset = torch.tensor([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)],
                              dtype=torch.float64)
        view = look_at(centre + distance * offset, centre, up)
        cams.append(Camera(view, focal, focal, size / 2, size / 2, size, size,
                           near=1e-3 * distance, far=1e3 * distance))
    return cams


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] from quaternions [N, 4] (w, x, y, z), normalised first."""
    q = quats / quats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], 1).reshape(-1, 3, 3)


@dataclass
class Projection:
    """Per-Gaussian screen-space quantities for one camera (N = the frame's Gaussians).

    - ``means2d``: [N, 2] float32, projected centres in pixels (x, y).
    - ``cov2d``: [N, 2, 2] float32, 2D covariances in px^2, including the 0.3 dilation.
    - ``conics``: [N, 3] float32, (a, b, c) of the inverse covariance [[a, b], [b, c]].
    - ``depths``: [N] float32, camera-space z.
    - ``radii``: [N] int64, ceil(3 sigma) in pixels; 0 for culled Gaussians.
    """

    means2d: torch.Tensor
    cov2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor


def project(frame: GaussianFrame, camera: Camera) -> Projection:
    """EWA projection of every Gaussian of ``frame`` through ``camera`` (see module docstring)."""
    dev = frame.device
    view = camera.viewmat.to(dev, torch.float32)
    rot, trans = view[:3, :3], view[:3, 3]  # [3, 3], [3]
    p = frame.means @ rot.T + trans  # [N, 3] camera space
    x, y, z = p.unbind(1)  # [N] each
    zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    lim_x = 1.3 * 0.5 * camera.width / camera.fx
    lim_y = 1.3 * 0.5 * camera.height / camera.fy
    tx = (x / zs).clamp(-lim_x, lim_x) * zs
    ty = (y / zs).clamp(-lim_y, lim_y) * zs
    zero = torch.zeros_like(z)
    jac = torch.stack([camera.fx / zs, zero, -camera.fx * tx / zs ** 2,
                       zero, camera.fy / zs, -camera.fy * ty / zs ** 2], 1).reshape(-1, 2, 3)  # [N, 2, 3]
    m = quat_to_rotmat(frame.quats) * torch.exp(frame.scales)[:, None, :]  # [N, 3, 3] = R S
    tm = jac @ rot @ m  # [N, 2, 3] = J W R S
    cov2d = tm @ tm.transpose(1, 2)  # [N, 2, 2]
    cov2d = cov2d + DILATION * torch.eye(2, device=dev)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]  # [N] each
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], 1)  # [N, 3]
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
    radii = torch.ceil(3 * torch.sqrt(lam))  # [N]
    means2d = torch.stack([camera.fx * x / zs + camera.cx, camera.fy * y / zs + camera.cy], 1)  # [N, 2]
    ok = ((z > camera.near) & (z < camera.far) & (det > 0) & torch.isfinite(p).all(1)
          & torch.isfinite(cov2d).flatten(1).all(1) & torch.isfinite(means2d).all(1)
          & (torch.sigmoid(frame.opacities) >= ALPHA_MIN))
    # the square of side 2 r must touch the image
    ok &= ((means2d[:, 0] + radii > 0) & (means2d[:, 0] - radii < camera.width)
           & (means2d[:, 1] + radii > 0) & (means2d[:, 1] - radii < camera.height))
    radii = torch.where(ok, radii, torch.zeros_like(radii)).to(torch.int64)
    return Projection(means2d, cov2d, conics, z, radii)


def sh_colors(frame: GaussianFrame, campos: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3] float32 seen from ``campos`` [3]: SH up to the frame's degree, + 0.5, clamped at 0.

    Basis and constants as in 3DGS ``computeColorFromSH`` (direction = normalise(mean - campos));
    ``shN[:, k - 1]`` is coefficient k of the basis below (INRIA ``f_rest`` order).
    """
    color = C0 * frame.sh0  # [N, 3]
    deg = frame.sh_degree
    if deg == 0:
        return (color + 0.5).clamp_min(0.0)
    d = frame.means - campos.to(frame.device, torch.float32)  # [N, 3]
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(1)
    basis = [-C1 * y, C1 * z, -C1 * x]
    if deg > 1:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        basis += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
        if deg > 2:
            basis += [C3[0] * y * (3 * xx - yy), C3[1] * xy * z, C3[2] * y * (4 * zz - xx - yy),
                      C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy),
                      C3[5] * z * (xx - yy), C3[6] * x * (xx - 3 * yy)]
    b = torch.stack(basis, 1)  # [N, K]
    color = color + torch.einsum("nk,nkc->nc", b, frame.shN)
    return (color + 0.5).clamp_min(0.0)


def render(frame: GaussianFrame, camera: Camera, background: torch.Tensor | None = None,
           budget: int = 1 << 22) -> torch.Tensor:
    """Render ``frame`` through ``camera``: an image [H, W, 3] float32, linear RGB, not clamped.

    ``background`` [3] (default black) is added with the final transmittance. ``budget`` bounds
    the elements (tiles x chunk x 256 pixels) of one compositing step: memory about 40 bytes
    each. Deterministic for a given device and torch version.
    """
    dev = frame.device
    W, H = camera.width, camera.height
    bg = torch.zeros(3, device=dev) if background is None else background.to(dev, torch.float32)
    proj = project(frame, camera)
    vis = torch.nonzero(proj.radii > 0).squeeze(1)  # [M]
    tiles_x, tiles_y = (W + TILE - 1) // TILE, (H + TILE - 1) // TILE
    n_tiles, P = tiles_x * tiles_y, TILE * TILE
    colors = sh_colors(frame, camera.position)[vis]  # [M, 3]
    opac = torch.sigmoid(frame.opacities[vis])  # [M]
    mean2d, conic, radii = proj.means2d[vis], proj.conics[vis], proj.radii[vis].to(torch.float32)
    # depth order first, so that a stable sort by tile keeps it within each tile
    order = torch.argsort(proj.depths[vis], stable=True)
    colors, opac, mean2d, conic, radii = colors[order], opac[order], mean2d[order], conic[order], radii[order]
    # tiles touched by each square (3DGS getRect, in its pixel-centre-at-integer coordinates)
    pc = mean2d - 0.5  # [M, 2]
    x0 = ((pc[:, 0] - radii) / TILE).floor().clamp(0, tiles_x).to(torch.int64)
    x1 = ((pc[:, 0] + radii + TILE - 1) / TILE).floor().clamp(0, tiles_x).to(torch.int64)
    y0 = ((pc[:, 1] - radii) / TILE).floor().clamp(0, tiles_y).to(torch.int64)
    y1 = ((pc[:, 1] + radii + TILE - 1) / TILE).floor().clamp(0, tiles_y).to(torch.int64)
    w = (x1 - x0).clamp_min(0)
    counts = w * (y1 - y0).clamp_min(0)  # [M]
    total = int(counts.sum())
    image = bg.expand(n_tiles, P, 3).clone()
    if total == 0:
        return _untile(image, tiles_x, tiles_y, W, H)
    gid = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)  # [I]
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(total, device=dev) - first[gid]  # position inside the Gaussian's rectangle
    tile = (y0[gid] + k // w[gid]) * tiles_x + x0[gid] + k % w[gid]  # [I]
    tile, perm = torch.sort(tile, stable=True)
    gid = gid[perm]  # [I] Gaussians sorted by tile, then depth
    per_tile = torch.bincount(tile, minlength=n_tiles)  # [n_tiles]
    start = torch.cumsum(per_tile, 0) - per_tile
    end = start + per_tile
    del tile, perm, k, first

    # per-tile pixel centres, and state
    ar = torch.arange(TILE, device=dev, dtype=torch.float32) + 0.5
    tx = torch.arange(n_tiles, device=dev) % tiles_x
    ty = torch.arange(n_tiles, device=dev) // tiles_x
    px = tx[:, None].to(torch.float32) * TILE + ar  # [n_tiles, 16]
    py = ty[:, None].to(torch.float32) * TILE + ar  # [n_tiles, 16]
    trans = torch.ones(n_tiles, P, device=dev)  # transmittance
    done = ((px[:, None, :] >= W) | (py[:, :, None] >= H)).reshape(n_tiles, P)  # padding: never drawn
    acc = torch.zeros(n_tiles, P, 3, device=dev)
    cursor = start.clone()
    active = torch.nonzero(per_tile > 0).squeeze(1)
    log_opac = torch.log(opac)  # [M]
    zero = torch.zeros((), device=dev)
    rnd = 0
    while active.numel():
        A = active.numel()
        # chunk: within the budget, and growing from FIRST_CHUNK (early stops waste little)
        chunk = int(min(max(budget // (A * P), 8), FIRST_CHUNK << rnd, 4096))
        chunk = 1 << int(math.log2(chunk))  # a power of two, for _cumprod_'s blocks
        rnd += 1
        idx = cursor[active, None] + torch.arange(chunk, device=dev)  # [A, C]
        valid = idx < end[active, None]
        g = gid[idx.clamp_max(total - 1)]  # [A, C]
        lo = torch.where(valid, log_opac[g], torch.full((), -math.inf, device=dev))  # [A, C]
        cg, mg = conic[g], mean2d[g]  # [A, C, 3], [A, C, 2]
        dx = px[active, None, :] - mg[..., 0:1]  # [A, C, 16] along x
        dy = py[active, None, :] - mg[..., 1:2]  # [A, C, 16] along y
        qx = (-0.5 * cg[..., 0:1]) * dx * dx + lo[..., None]  # [A, C, 16], log opacity folded in
        qy = (-0.5 * cg[..., 2:3]) * dy * dy  # [A, C, 16]
        bdy = (-cg[..., 1:2]) * dy  # [A, C, 16]
        # log alpha = log(opacity) - 0.5 d^T conic d, over the tile's 16 x 16 pixels
        alpha = qy[..., :, None] + qx[..., None, :]  # [A, C, 16 (y), 16 (x)]
        alpha.addcmul_(bdy[..., :, None], dx[..., None, :])
        # min(0.99, .); -20 keeps exp away from denormals (slow) and is far below 1/255
        alpha = alpha.reshape(A, chunk, P).clamp_(-20.0, math.log(ALPHA_MAX)).exp_()  # [A, C, P]
        torch.nn.functional.threshold(alpha, ALPHA_MIN, 0.0, inplace=True)  # skip alpha < 1/255
        del qx, qy, bdy, dx, dy
        t_prev, done_a = trans[active], done[active]  # [A, P] each
        t0 = torch.where(done_a, zero, t_prev)  # [A, P]: a stopped pixel takes nothing more
        t_incl = alpha.neg_().add_(1.0)  # [A, C, P]: 1 - alpha, then the running product
        t_incl[:, 0].mul_(t0)
        _cumprod_(t_incl)  # transmittance after each Gaussian
        weight = torch.empty_like(t_incl)  # alpha_i T_(i-1) = T_(i-1) - T_i
        torch.sub(t0, t_incl[:, 0], out=weight[:, 0])
        torch.sub(t_incl[:, :-1], t_incl[:, 1:], out=weight[:, 1:])
        t_last = t_incl[:, -1]  # [A, P]
        stop = (t_last < T_MIN) & ~done_a  # pixels stopping inside this chunk
        t_new = torch.where(done_a, t_prev, t_last)  # [A, P]
        if bool(stop.any()):  # drop their contributions from the first T < 1e-4 on
            ai, pi = torch.nonzero(stop, as_tuple=True)  # [S] each
            cols = t_incl[ai, :, pi]  # [S, C]
            keep = cols >= T_MIN  # a prefix
            weight[ai, :, pi] = weight[ai, :, pi] * keep
            t_new[ai, pi] = torch.minimum(t0[ai, pi], torch.where(keep, cols, math.inf).amin(1))
        acc[active] += torch.bmm(weight.transpose(1, 2), colors[g])  # [A, P, 3]
        del weight, t_incl, alpha
        trans[active] = t_new
        done_a |= stop
        done[active] = done_a
        cursor[active] += chunk
        active = active[(cursor[active] < end[active]) & ~done_a.all(1)]
    image = acc + trans[..., None] * bg
    return _untile(image, tiles_x, tiles_y, W, H)


def _cumprod_(x: torch.Tensor) -> torch.Tensor:
    """In-place cumulative product of ``x`` [A, C, P] along C (dim 1); returns ``x``.

    torch.cumprod along a middle dimension is strided and about 3x slower on the CPU than
    in-place multiplications of whole slices. Long chunks are scanned in two levels (blocks of
    L, then the block totals) so that every multiplication covers a large slice.
    """
    A, C, P = x.shape
    L = 1 << max(int(math.log2(C)) // 2, 0)  # block length, about sqrt(C)
    if C % L or A * P * (C // L) < 8192 or L < 4:  # one level: C slices [A, P]
        for c in range(1, C):
            x[:, c].mul_(x[:, c - 1])
        return x
    B = C // L
    xb = x.view(A, B, L, P)
    for i in range(1, L):  # within each block
        xb[:, :, i].mul_(xb[:, :, i - 1])
    prefix = xb[:, :, L - 1].clone()  # [A, B, P] block totals -> inclusive prefix over blocks
    for b in range(1, B):
        prefix[:, b].mul_(prefix[:, b - 1])
    xb[:, 1:].mul_(prefix[:, :-1, None])  # blocks 1.. times the product of the blocks before
    return x


def _untile(tiles: torch.Tensor, tiles_x: int, tiles_y: int, W: int, H: int) -> torch.Tensor:
    """[tiles_y * tiles_x, 256, 3] (row-major tiles, row-major pixels) -> [H, W, 3]."""
    img = tiles.reshape(tiles_y, tiles_x, TILE, TILE, 3).permute(0, 2, 1, 3, 4)
    return img.reshape(tiles_y * TILE, tiles_x * TILE, 3)[:H, :W].contiguous()


def render_views(frame: GaussianFrame, cameras: list[Camera], background: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """``render`` through each camera: [V, H, W, 3] float32 (all cameras the same size)."""
    return torch.stack([render(frame, cam, background) for cam in cameras])
