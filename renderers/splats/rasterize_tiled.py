"""Fast torch splat rasterizer: tiles, per-tile depth order, chunked front-to-back compositing with early stop.

The ``"torch"`` backend of ``rasterize.render`` (semantics and notation in ``rasterize``'s module docstring; the
dense twin ``rasterize_reference`` is its test oracle). Pure torch, so it runs and differentiates (autograd) on
any device; written for CPUs, where gsplat's CUDA kernels do not exist.

Steps of ``rasterize_tiled``:
    1. ``project``: every (camera, Gaussian) at once, in closed form: Σ from (q, s) entry by entry; the camera
       covariance W Σ Wᵀ as one matmul of (W ⊗ W) [C, 9, 9] with vec Σ [9, N]; J and Σ₂ entry by entry;
       culling and the opacity-aware screen box (steps 1-2 of ``rasterize``).
    2. Bin: the visible (camera, Gaussian) pairs sorted by depth (stable), each expanded to the tiles of its box
       (``repeat_interleave``), then stable-sorted by global tile id (camera x tiles + row x tiles_x + column):
       each tile's list is contiguous and in depth order (ties by Gaussian index), as gsplat's radix sort leaves it.
    3. Composite: tiles with a non-empty list, grouped (``TILE_BATCH_ELEMENTS``) by decreasing list length.
       For one group, rounds of K = ``DEPTH_CHUNK`` list entries: for the A tiles still live,
       σ [A, 16, 16, K] is built from per-row and per-column pieces (½ a dx², ½ c dy², b dx: [A, 16, K] each;
       3 full-size passes), then α, the skip mask, log(1 - α), its running sum along K and
       T_k = T_in exp(Σ_{j<=k} log(1 - α_j)). The stop rule (T_k <= ``T_MIN``) is monotone along K, so one
       comparison masks the stopping Gaussian and all later ones; the weights α_k T_{k-1} meet the features in
       one batched matmul [A, 256, K] @ [A, K, X]. A pixel that stops is done; a tile whose pixels are all done
       (or whose list is used up) leaves the group: the early termination.
    4. Assemble the tiles into [C, H, W, X] and alpha = 1 - T.

Autograd: everything is out-of-place torch; under grad each tile group is wrapped in
``torch.utils.checkpoint`` (recomputed in backward), so memory stays bounded by one group's intermediates plus
O(pairs) saved inputs. The skip/stop masks are piecewise constants, exactly as in gsplat's hand-written backward
(no gradient through a Gaussian's being skipped or the stop).

Numerics: T as exp of a running sum of log1p(-α) instead of a running product: the same value up to float
rounding (~K ulp); gsplat also keeps T in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from simgen.renderers.splats.rasterize import (
    ALPHA_MIN,
    EPS2D,
    EXTENT_SIGMA,
    MAX_ALPHA,
    T_MIN,
    TILE_SIZE,
    Cameras,
    Gaussians,
)

DEPTH_CHUNK = 32  # K: list entries composited per round (step 3)
TILE_BATCH_ELEMENTS = 1 << 18  # about this many A x 256 x K values per round (step 3), ~1 MB in float32


def project(gaussians: Gaussians, cameras: Cameras, near: float, far: float) -> dict[str, Tensor]:
    """Step 1: ``means2d`` [C, N, 2] px, ``depths`` [C, N] m, ``conics`` [C, N, 3] (xx, xy, yy),
    ``radii`` [C, N, 2] int32 (0 = culled) and ``visible`` [C, N] bool."""
    w, x, y, z = (gaussians.quats / gaussians.quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)
    m = rot * gaussians.scales[:, None, :]  # R diag(s)
    cov = (m @ m.transpose(1, 2)).reshape(-1, 9)  # [N, 9] row-major Σ
    wc, tc = cameras.viewmats[:, :3, :3], cameras.viewmats[:, :3, 3]
    kron = (wc[:, :, None, :, None] * wc[:, None, :, None, :]).reshape(-1, 9, 9)  # (W ⊗ W)
    cov_cam = kron @ cov.T  # [C, 9, N]: vec(W Σ Wᵀ)
    s00, s01, s02, s11, s12, s22 = (cov_cam[:, i] for i in (0, 1, 2, 4, 5, 8))
    mc = wc @ gaussians.means.T + tc[:, :, None]  # [C, 3, N]
    xc, yc, zc = mc.unbind(1)
    in_depth = (zc >= near) & (zc <= far)
    zs = torch.where(in_depth, zc, torch.ones_like(zc))  # culled Gaussians stay finite, with zero gradient
    k = cameras.Ks
    fx, fy, cx, cy = (k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None])
    width, height = cameras.width, cameras.height
    rz = 1.0 / zs
    u, v = xc * rz, yc * rz
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.15 * width / fx, cx / fx + 0.15 * width / fx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.15 * height / fy, cy / fy + 0.15 * height / fy
    ja, jc = fx * rz, fy * rz  # J = [[ja, 0, jb], [0, jc, jd]]
    jb = -fx * rz * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, u))
    jd = -fy * rz * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, v))
    xx = ja * ja * s00 + 2 * ja * jb * s02 + jb * jb * s22 + EPS2D
    xy = ja * jc * s01 + ja * jd * s02 + jb * jc * s12 + jb * jd * s22
    yy = jc * jc * s11 + 2 * jc * jd * s12 + jd * jd * s22 + EPS2D
    det = xx * yy - xy * xy
    ok = in_depth & (det > 0)
    det = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([yy / det, -xy / det, xx / det], -1)
    means2d = torch.stack([fx * u + cx, fy * v + cy], -1)

    with torch.no_grad():
        opacity = gaussians.opacities[None].expand_as(zc)
        extent = torch.sqrt(2.0 * torch.log(opacity.clamp(min=ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTENT_SIGMA)
        radius = torch.ceil(extent[..., None] * torch.stack([xx, yy], -1).clamp(min=0).sqrt())
        mx, my = means2d[..., 0], means2d[..., 1]
        on_screen = ((mx + radius[..., 0] > 0) & (mx - radius[..., 0] < width)
                     & (my + radius[..., 1] > 0) & (my - radius[..., 1] < height))
        visible = ok & (opacity >= ALPHA_MIN) & on_screen & (radius > 0).any(-1)
        radii = torch.where(visible[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
    return {"means2d": means2d, "depths": zc, "conics": conics, "radii": radii, "visible": visible}


def bin_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, visible: Tensor, width: int,
              height: int) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2: ``(pair_ids [P], tile_starts [C T], tile_counts [C T])``: the flat (camera x N + Gaussian) ids of
    all (tile, Gaussian) pairs, grouped by global tile id and depth-sorted within a tile."""
    c, n = depths.shape
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    candidates = visible.reshape(-1).nonzero().squeeze(1)
    order = candidates[torch.sort(depths.detach().reshape(-1)[candidates], stable=True).indices]
    m2 = means2d.detach().reshape(-1, 2)[order] / TILE_SIZE
    r = radii.reshape(-1, 2)[order].to(m2.dtype) / TILE_SIZE
    x0 = torch.floor(m2[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    x1 = torch.ceil(m2[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    y0 = torch.floor(m2[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    y1 = torch.ceil(m2[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    span = x1 - x0
    counts = span * (y1 - y0)
    total = int(counts.sum())
    source = torch.repeat_interleave(torch.arange(len(order), device=order.device), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=order.device) - first[source]
    tile = ((order[source] // n) * (tiles_x * tiles_y) + (y0[source] + local // span[source]) * tiles_x
            + x0[source] + local % span[source])
    tile, perm = torch.sort(tile, stable=True)
    tile_counts = torch.bincount(tile, minlength=c * tiles_x * tiles_y)
    return order[source[perm]], torch.cumsum(tile_counts, 0) - tile_counts, tile_counts


def _composite_group(starts: Tensor, counts: Tensor, origin: Tensor, live: Tensor, pair_xy: Tensor,
                     pair_conic: Tensor, pair_opacity: Tensor, pair_features: Tensor) -> tuple[Tensor, Tensor]:
    """Step 3 for G tiles: ``(features [G, 256, X], T [G, 256])``.

    ``starts``, ``counts`` [G]: each tile's slice of the pair arrays; ``origin`` [G, 2] its top-left pixel
    corner + 0.5 (so pixel (i, j) of the tile has centre origin + (j, i)); ``live`` [G, 256] pixels inside the
    image; ``pair_*`` [P, ...] the pairs' screen means, conics, opacities and features."""
    g, num_pairs, dtype = len(starts), len(pair_opacity), pair_xy.dtype
    side = torch.arange(TILE_SIZE, dtype=dtype, device=pair_xy.device)
    slots = torch.arange(DEPTH_CHUNK, device=pair_xy.device)
    transmittance = torch.ones(g, TILE_SIZE * TILE_SIZE, dtype=dtype, device=pair_xy.device)
    accumulated = torch.zeros(g, TILE_SIZE * TILE_SIZE, pair_features.shape[1], dtype=dtype, device=pair_xy.device)
    done = ~live
    for first in range(0, int(counts.max()), DEPTH_CHUNK):
        live_tiles = ((counts > first) & ~done.all(1)).nonzero().squeeze(1)
        if not len(live_tiles):
            break
        a = len(live_tiles)
        slot = first + slots
        index = (starts[live_tiles, None] + slot).clamp(max=num_pairs - 1)  # [A, K]
        valid = slot < counts[live_tiles, None]
        local = pair_xy[index] - origin[live_tiles, None, :]  # [A, K, 2] mean relative to the tile's pixel 0
        dx = local[:, None, :, 0] - side[None, :, None]  # [A, 16 columns, K]
        dy = local[:, None, :, 1] - side[None, :, None]  # [A, 16 rows, K]
        conic = pair_conic[index]  # [A, K, 3]
        half_a_dx2 = 0.5 * conic[:, None, :, 0] * dx * dx
        half_c_dy2 = 0.5 * conic[:, None, :, 2] * dy * dy
        b_dx = conic[:, None, :, 1] * dx
        sigma = (half_c_dy2[:, :, None, :] + half_a_dx2[:, None, :, :]
                 + dy[:, :, None, :] * b_dx[:, None, :, :]).reshape(a, -1, DEPTH_CHUNK)  # [A, 256, K]
        opacity = torch.where(valid, pair_opacity[index], torch.zeros((), dtype=dtype, device=pair_xy.device))
        alpha = torch.clamp(opacity[:, None, :] * torch.exp(-sigma), max=MAX_ALPHA)
        alpha = torch.where((alpha >= ALPHA_MIN) & (sigma >= 0), alpha, torch.zeros((), dtype=dtype,
                                                                                    device=pair_xy.device))
        log_keep = torch.log1p(-alpha)
        t_in = transmittance[live_tiles]  # [A, 256]
        t_after = torch.exp(torch.cumsum(log_keep, -1))  # T after each entry, relative to t_in
        with torch.no_grad():
            limit = torch.where(done[live_tiles], torch.full_like(t_in, math.inf), T_MIN / t_in)
            stop = t_after <= limit[..., None]  # monotone along K: the stopping entry and all later ones
        t_before = torch.cat([torch.ones_like(t_after[..., :1]), t_after[..., :-1]], -1)
        weight = torch.where(stop, torch.zeros((), dtype=dtype, device=pair_xy.device), alpha * t_before)
        added = torch.bmm(weight, pair_features[index]) * t_in[..., None]  # [A, 256, X]
        t_out = t_in * torch.exp(torch.where(stop, torch.zeros((), dtype=dtype, device=pair_xy.device),
                                             log_keep).sum(-1))
        transmittance = transmittance.index_copy(0, live_tiles, t_out)
        accumulated = accumulated.index_add(0, live_tiles, added)
        done = done.index_copy(0, live_tiles, done[live_tiles] | stop[..., -1])
    return accumulated, transmittance


def rasterize_tiled(gaussians: Gaussians, cameras: Cameras, *, with_colors: bool = True, with_depth: bool = False,
                    near: float = 0.01, far: float = 1e10) -> tuple[Tensor, Tensor, dict]:
    """``(image [C, H, W, X], alphas [C, H, W, 1], meta)``: features (colors, then depth if ``with_depth``)
    composited per pixel; ``render`` applies the mode's ED division and the background."""
    proj = project(gaussians, cameras, near, far)
    c, n = proj["depths"].shape
    width, height = cameras.width, cameras.height
    dtype, device = gaussians.means.dtype, gaussians.means.device
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    pair_ids, starts, counts = bin_tiles(proj["means2d"], proj["radii"], proj["depths"], proj["visible"], width,
                                         height)
    feats = []
    if with_colors:
        feats.append(gaussians.colors[None].expand(c, n, -1))
    if with_depth:
        feats.append(proj["depths"][..., None])
    features = torch.cat(feats, -1).reshape(c * n, -1)
    num_features = features.shape[1]
    pair_xy = proj["means2d"].reshape(-1, 2)[pair_ids]
    pair_conic = proj["conics"].reshape(-1, 3)[pair_ids]
    pair_opacity = gaussians.opacities[pair_ids % n]
    pair_features = features[pair_ids]

    pixel = torch.arange(TILE_SIZE * TILE_SIZE, device=device)
    occupied = counts.nonzero().squeeze(1)
    occupied = occupied[torch.sort(counts[occupied], descending=True, stable=True).indices]
    per_group = max(1, TILE_BATCH_ELEMENTS // (TILE_SIZE * TILE_SIZE * DEPTH_CHUNK))
    tile_in_image = occupied % (tiles_x * tiles_y)
    col0, row0 = (tile_in_image % tiles_x) * TILE_SIZE, (tile_in_image // tiles_x) * TILE_SIZE
    origin = torch.stack([col0, row0], -1).to(dtype) + 0.5
    live = ((col0[:, None] + pixel % TILE_SIZE) < width) & ((row0[:, None] + pixel // TILE_SIZE) < height)
    use_checkpoint = torch.is_grad_enabled() and any(
        t.requires_grad for t in (pair_xy, pair_conic, pair_opacity, pair_features))
    results = []
    for lo in range(0, len(occupied), per_group):
        args = (starts[occupied[lo:lo + per_group]], counts[occupied[lo:lo + per_group]], origin[lo:lo + per_group],
                live[lo:lo + per_group], pair_xy, pair_conic, pair_opacity, pair_features)
        results.append(checkpoint(_composite_group, *args, use_reentrant=False) if use_checkpoint
                       else _composite_group(*args))

    all_tiles = c * tiles_x * tiles_y
    image = torch.zeros(all_tiles, TILE_SIZE * TILE_SIZE, num_features, dtype=dtype, device=device)
    transmittance = torch.ones(all_tiles, TILE_SIZE * TILE_SIZE, dtype=dtype, device=device)
    if results:
        image = image.index_copy(0, occupied, torch.cat([r[0] for r in results]))
        transmittance = transmittance.index_copy(0, occupied, torch.cat([r[1] for r in results]))

    def untile(values: Tensor) -> Tensor:
        grid = values.reshape(c, tiles_y, tiles_x, TILE_SIZE, TILE_SIZE, -1).permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(c, tiles_y * TILE_SIZE, tiles_x * TILE_SIZE, -1)[:, :height, :width]

    meta = {key: proj[key] for key in ("means2d", "depths", "conics", "radii")}
    meta["n_isects"] = len(pair_ids)
    return untile(image), 1.0 - untile(transmittance[..., None]), meta
