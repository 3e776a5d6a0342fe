"""Fast torch splat rasterizer: tiles, per-block depth order, chunked front-to-back compositing with early stop.

The ``"torch"`` backend of ``rasterize.render`` (semantics and notation in ``rasterize``'s module docstring; the
dense twin ``rasterize_reference`` is its test oracle). Pure torch, so it runs and differentiates (autograd) on
any device; written for CPUs, where gsplat's CUDA kernels do not exist.

Steps of ``rasterize_tiled``:
    1. ``project``: every (camera, Gaussian) at once, in closed form: Σ from (q, s); the camera covariance
       W Σ Wᵀ as one matmul of (W ⊗ W) [C, 9, 9] with vec Σ [9, N]; J and Σ₂ entry by entry; culling and the
       opacity-aware screen box (steps 1-2 of ``rasterize``).
    2. ``bin_tiles``: the visible (camera, Gaussian) pairs sorted by depth (stable), expanded
       (``repeat_interleave``, twice: to block rows, then to blocks) to the ``BLOCK_SIZE`` (8 px) blocks of
       gsplat's 16 px tile range (its support, step 3 of ``rasterize``) whose pixel centres meet the ellipse
       where α >= ``ALPHA_MIN`` (σ <= ln(o / ``ALPHA_MIN``), + ``CULL_MARGIN``): gsplat skips the other blocks'
       pixels for that Gaussian anyway, so the image does not change (about 3 in 5 of the tile range's blocks
       go on the street scene). Then a stable sort by global block id (camera, block row, block column) leaves
       each block's list contiguous and in depth order (ties by Gaussian index), as gsplat's radix sort does
       per tile.
    3. ``_composite_group``: the non-empty blocks, by decreasing list length, in groups of about
       ``BLOCK_BATCH_ELEMENTS`` / (64 K) blocks, each list padded to whole rounds of K = ``DEPTH_CHUNK``
       entries (one gather of a per-(camera, Gaussian) table for all groups). Per round, for the A blocks still
       live: σ [A, 8, 8, K] from per-row and per-column pieces (½ a dx², ½ c dy², b dx: [A, 8, K] each), α, the
       skip, T by ``cumprod`` along K, the stop (T is non-increasing, so one ``searchsorted`` per pixel finds
       it), and the weights α_k T_{k-1} meet the features in one batched matmul. A pixel that stops is done; a
       block whose pixels are all done, or whose list is used up, leaves the group (the early termination).
    4. Assemble the blocks into [C, H, W, X] and alpha = 1 - T.

Why 8 px blocks when gsplat's tiles are 16 px: the per-round cost is A x 64 x K whatever the Gaussians cover, so
smaller blocks waste fewer evaluations on pixels a Gaussian cannot reach, and a block finishes as soon as its 64
pixels are opaque. Street scene of ``bench/bench_splats.py`` (100k Gaussians, 480 x 320, one thread): 16 px tiles
without the culling of step 2: 1.0 s; 8 px blocks with it: 0.35 s; with the per-row binning, the sparse stop
correction and in-place buffers: 0.32 s.

Autograd: everything is out-of-place torch. Under grad each group runs inside ``torch.utils.checkpoint``
(recomputed in backward), so memory stays at one group's intermediates plus O(pairs) inputs; the skip and stop
masks are piecewise constant, as in gsplat's hand-written backward (no gradient through a Gaussian's being
skipped, nor through the stop). Without checkpointing the street scene's backward was no faster overall and
held ~1 GB more.

Deviation: gsplat also skips a pixel where σ < 0; σ = ½ dᵀ Σ₂⁻¹ d >= 0 for the positive-definite Σ₂⁻¹, so only
rounding can make it negative (for Gaussians over ~1000 px wide); the twin checks it, this path does not.
Numerics: T is a running product along K within a round (float rounding as gsplat's sequential product).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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

BLOCK_SIZE = 8  # px, side of the compositing blocks (a divisor of TILE_SIZE; step 3)
DEPTH_CHUNK = 32  # K: list entries composited per round (step 3)
BLOCK_BATCH_ELEMENTS = 1 << 18  # about this many A x B² x K values per round (step 3), ~1 MB in float32
CULL_MARGIN = 1e-2  # step 2: a pair is dropped only if σ exceeds ln(o / ALPHA_MIN) by this much everywhere


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


def bin_tiles(means2d: Tensor, conics: Tensor, opacities: Tensor, radii: Tensor, depths: Tensor, visible: Tensor,
              width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2: ``(pair_ids [P], block_starts [C B], block_counts [C B])``: the flat (camera x N + Gaussian) ids of
    the (block, Gaussian) pairs, grouped by global block id (camera, block row, block column), depth-sorted within
    a block. ``opacities`` [N]; the rest as ``project`` returns them.

    A Gaussian reaches the blocks of gsplat's tile range whose pixel centres meet its ellipse
    E = {d: ½ dᵀ Q d <= L}, Q the conic, L = ln(o / ``ALPHA_MIN``) + ``CULL_MARGIN`` (outside E its alpha is
    below ``ALPHA_MIN``, so gsplat skips those pixels: dropping the pair leaves the image unchanged). Per block row,
    the x-extent of E within the row's band of centres (dy in [lo, hi]) is exact: the right edge
    (-b dy + sqrt(2 a L - det dy²)) / a is concave in dy, so its maximum over the band is at E's rightmost point's
    dy = -b sqrt(2 L / (c det)) clamped to the band; the left edge likewise. So pairs are generated for the kept
    blocks only: Gaussians -> block rows -> block columns, two ``repeat_interleave``."""
    c, n = depths.shape
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    blocks_x, blocks_y = math.ceil(width / BLOCK_SIZE), math.ceil(height / BLOCK_SIZE)
    per_tile, last = TILE_SIZE // BLOCK_SIZE, BLOCK_SIZE - 0.5  # last: the block's last pixel centre offset
    candidates = visible.reshape(-1).nonzero().squeeze(1)
    order = candidates[torch.sort(depths.detach().reshape(-1)[candidates], stable=True).indices]
    m2 = means2d.detach().reshape(-1, 2)[order]
    r = radii.reshape(-1, 2)[order].to(m2.dtype) / TILE_SIZE
    # gsplat's tile range (step 3 of rasterize), in blocks
    x0 = torch.floor(m2[:, 0] / TILE_SIZE - r[:, 0]).clamp(0, tiles_x) * per_tile
    x1 = (torch.ceil(m2[:, 0] / TILE_SIZE + r[:, 0]).clamp(0, tiles_x) * per_tile).clamp(max=blocks_x)
    y0 = torch.floor(m2[:, 1] / TILE_SIZE - r[:, 1]).clamp(0, tiles_y) * per_tile
    y1 = (torch.ceil(m2[:, 1] / TILE_SIZE + r[:, 1]).clamp(0, tiles_y) * per_tile).clamp(max=blocks_y)
    qa, qb, qc = conics.detach().reshape(-1, 3)[order].unbind(-1)
    level = torch.log(opacities.detach().reshape(1, -1).expand(c, n).reshape(-1)[order] / ALPHA_MIN) + CULL_MARGIN
    det = qa * qc - qb * qb
    reach_y = torch.sqrt(2 * level * qa / det)  # E's half-height
    row0 = torch.maximum(y0, torch.ceil((m2[:, 1] - reach_y - last) / BLOCK_SIZE))
    row1 = torch.minimum(y1, torch.floor((m2[:, 1] + reach_y - 0.5) / BLOCK_SIZE) + 1)
    rows = (row1 - row0).clamp(min=0).long()
    # Gaussians -> block rows
    per_gaussian = torch.stack([m2[:, 0], m2[:, 1], qa, qb, level, det, reach_y, row0, x0, x1,
                                (order // n).to(m2.dtype)], -1)
    source = torch.repeat_interleave(torch.arange(len(order), device=order.device), rows)
    g = per_gaussian.index_select(0, source)
    by = g[:, 7] + (torch.arange(len(source), device=order.device) - (torch.cumsum(rows, 0) - rows)[source])
    lo = torch.maximum(by * BLOCK_SIZE + 0.5 - g[:, 1], -g[:, 6])
    hi = torch.minimum((by * BLOCK_SIZE + last).clamp(max=height - 0.5) - g[:, 1], g[:, 6])
    qa, qb, level, det = g[:, 2], g[:, 3], g[:, 4], g[:, 5]
    qc = (det + qb * qb) / qa
    extreme = qb * torch.sqrt(2 * level / (qc * det))  # dy of E's leftmost point; -extreme: its rightmost
    dy_right, dy_left = torch.minimum(torch.maximum(-extreme, lo), hi), torch.minimum(torch.maximum(extreme, lo), hi)
    right = (-qb * dy_right + torch.sqrt((2 * qa * level - det * dy_right ** 2).clamp(min=0))) / qa
    left = (-qb * dy_left - torch.sqrt((2 * qa * level - det * dy_left ** 2).clamp(min=0))) / qa
    col0 = torch.maximum(g[:, 8], torch.ceil((g[:, 0] + left - last) / BLOCK_SIZE))
    col1 = torch.minimum(g[:, 9], torch.floor((g[:, 0] + right - 0.5) / BLOCK_SIZE) + 1)
    cols = torch.where(lo <= hi, col1 - col0, 0).clamp(min=0).long()
    # block rows -> blocks
    row_source = torch.repeat_interleave(torch.arange(len(source), device=order.device), cols)
    first = (g[:, 10] * (blocks_x * blocks_y) + by * blocks_x + col0).long()
    block = first[row_source] + (torch.arange(len(row_source), device=order.device)
                                 - (torch.cumsum(cols, 0) - cols)[row_source])
    block, perm = torch.sort(block, stable=True)
    block_counts = torch.bincount(block, minlength=c * blocks_x * blocks_y)
    return order[source[row_source[perm]]], torch.cumsum(block_counts, 0) - block_counts, block_counts


def _composite_group(counts: Tensor, origin: Tensor, live: Tensor, data: Tensor) -> tuple[Tensor, Tensor]:
    """Step 3 for G blocks: ``(features [G, B², X], T [G, B²])`` with B = ``BLOCK_SIZE``.

    ``counts`` [G]: list lengths; ``origin`` [G, 2] each block's top-left pixel corner + 0.5 (pixel (i, j) of
    the block has centre origin + (j, i)); ``live`` [G, B²] pixels inside the image; ``data`` [G, R K, 6 + X]
    each block's list padded to R rounds of K entries: the screen mean (2), the exponent's conic pieces
    -log2(e) (a/2, b, c/2), log2 o, and the features.

    Per round, s = log2 α_raw = log2 o - σ log2 e; ``threshold`` sends s < log2 ``ALPHA_MIN`` to -inf (the
    skip: exp2 gives 0, and no subnormal is ever computed), α = min(exp2 s, ``MAX_ALPHA``),
    T_k = cumprod(1 - α) relative to the round's T_in. The kept entries are the first n with
    T_in T_k > ``T_MIN`` (T is non-increasing along K, so ``searchsorted`` finds n); they add
    f α_k T_in T_{k-1}, and T_in T_n is the next round's T_in. All entries are composited with one batched
    matmul; the few pixels that stop in the round (T_in T_K <= ``T_MIN``) then get their dropped entries
    subtracted (a sparse correction instead of a full-size mask), and pixels done in earlier rounds are masked
    on the [A, B²] results. The live blocks only shrink from round to round
    (lists run out, pixels finish), so the state is carried for the live blocks only and a block's result is
    emitted when it leaves; no per-round tensor is as large as the group's (autograd's zero-filled gradient
    buffers stay small)."""
    g, dtype, device = len(counts), data.dtype, data.device
    side = torch.arange(BLOCK_SIZE, dtype=dtype, device=device)
    slots = torch.arange(DEPTH_CHUNK, device=device)
    log2_alpha_min = torch.nextafter(torch.tensor(math.log2(ALPHA_MIN), dtype=dtype),
                                     torch.tensor(-math.inf, dtype=dtype)).item()
    pixels = BLOCK_SIZE * BLOCK_SIZE
    rounds = data.reshape(g, -1, DEPTH_CHUNK, data.shape[-1]).unbind(1)
    ids = torch.arange(g, device=device)
    transmittance = torch.ones(g, pixels, dtype=dtype, device=device)
    accumulated = torch.zeros(g, pixels, data.shape[-1] - 6, dtype=dtype, device=device)
    done, left = ~live, counts
    finished: list[tuple[Tensor, Tensor, Tensor]] = []
    inplace = not torch.is_grad_enabled()
    for r, chunk in enumerate(rounds):
        a = len(ids)
        chunk = chunk if a == g else chunk[ids]  # [A, K, 6 + X]
        local = chunk[..., :2] - origin[ids, None, :]  # [A, K, 2] mean relative to the block's pixel 0
        dx = local[:, None, :, 0] - side[None, :, None]  # [A, B columns, K]
        dy = local[:, None, :, 1] - side[None, :, None]  # [A, B rows, K]
        log2_opacity = torch.where(slots < left[:, None], chunk[..., 5], -math.inf)
        column_part = chunk[:, None, :, 2] * dx * dx + log2_opacity[:, None, :]
        row_part = chunk[:, None, :, 4] * dy * dy
        s = torch.addcmul(row_part[:, :, None, :] + column_part[:, None, :, :], dy[:, :, None, :],
                          (chunk[:, None, :, 3] * dx)[:, None, :, :]).reshape(a, pixels, DEPTH_CHUNK)
        if inplace:  # the same values, in the buffers of s, keep and t_after (no autograd to feed)
            alpha = torch.exp2(F.threshold(s, log2_alpha_min, -math.inf, inplace=True), out=s).clamp_(max=MAX_ALPHA)
            keep = torch.sub(1.0, alpha)
            t_after = torch.cumprod(keep, -1)
            weight = alpha.mul_(torch.div(t_after, keep, out=keep))
        else:
            alpha = torch.exp2(F.threshold(s, log2_alpha_min, -math.inf)).clamp(max=MAX_ALPHA)
            keep = 1.0 - alpha
            t_after = torch.cumprod(keep, -1)  # [A, B², K] T after each entry, relative to the round's T_in
            weight = alpha * (t_after / keep)  # α_k T_{k-1}
        features = chunk[..., 6:]
        added = torch.bmm(features.transpose(1, 2), weight.transpose(1, 2)).transpose(1, 2)  # [A, B², X]
        t_end = t_after[..., -1]  # [A, B²]
        with torch.no_grad():
            limit = torch.where(done, -1.0, T_MIN / transmittance)  # done pixels are masked below instead
            stops = (t_end <= limit).nonzero()  # the few pixels that stop in this round
        if len(stops):  # drop their entries from the stop on: a sparse correction, not a full-size mask
            block, pixel = stops.unbind(1)
            t_rows = t_after[block, pixel]  # [S, K]
            with torch.no_grad():
                kept = torch.searchsorted(-t_rows, -limit[block, pixel, None])  # [S, 1]: entries with T > limit
                dropped = (slots >= kept).to(dtype)
            correction = ((weight[block, pixel] * dropped)[..., None] * features[block]).sum(1)  # [S, X]
            added = added.index_put((block, pixel), -correction, accumulate=True)
            t_end = t_end.index_put((block, pixel), F.pad(t_rows, (1, 0), value=1.0).gather(-1, kept)[:, 0])
        open_pixels = (~done).to(dtype)
        accumulated = accumulated + added * (transmittance * open_pixels)[..., None]
        transmittance = transmittance * torch.where(done, 1.0, t_end)
        if len(stops):
            done = done.index_put((block, pixel), torch.ones((), dtype=torch.bool, device=device))
        left = left - DEPTH_CHUNK
        stay = (left > 0) & ~done.all(1)
        if r + 1 == len(rounds) or not bool(stay.all()):
            finished.append((ids[~stay], accumulated[~stay], transmittance[~stay]))
            if not bool(stay.any()):
                break
            ids, accumulated, transmittance = ids[stay], accumulated[stay], transmittance[stay]
            done, left = done[stay], left[stay]
    order = torch.argsort(torch.cat([f[0] for f in finished]))
    return torch.cat([f[1] for f in finished])[order], torch.cat([f[2] for f in finished])[order]


def rasterize_tiled(gaussians: Gaussians, cameras: Cameras, *, with_colors: bool = True, with_depth: bool = False,
                    near: float = 0.01, far: float = 1e10) -> tuple[Tensor, Tensor, dict]:
    """``(image [C, H, W, X], alphas [C, H, W, 1], meta)``: features (colors, then depth if ``with_depth``)
    composited per pixel; ``render`` applies the mode's ED division and the background."""
    proj = project(gaussians, cameras, near, far)
    c, n = proj["depths"].shape
    width, height = cameras.width, cameras.height
    dtype, device = gaussians.means.dtype, gaussians.means.device
    blocks_x, blocks_y = math.ceil(width / BLOCK_SIZE), math.ceil(height / BLOCK_SIZE)
    pair_ids, starts, counts = bin_tiles(proj["means2d"], proj["conics"], gaussians.opacities, proj["radii"],
                                         proj["depths"], proj["visible"], width, height)
    feats = []
    if with_colors:
        feats.append(gaussians.colors[None].expand(c, n, -1))
    if with_depth:
        feats.append(proj["depths"][..., None])
    features = torch.cat(feats, -1)
    num_features = features.shape[-1]
    to_exponent = torch.tensor([-0.5, -1.0, -0.5], dtype=dtype, device=device) * math.log2(math.e)
    table = torch.cat([proj["means2d"], proj["conics"] * to_exponent,
                       torch.log2(gaussians.opacities)[None, :, None].expand(c, n, 1), features], -1)
    table = table.reshape(c * n, -1)  # [C N, 6 + X] per (camera, Gaussian), see _composite_group

    # groups of blocks with similar list lengths, each list padded to whole rounds; one gather for all
    pixel = torch.arange(BLOCK_SIZE * BLOCK_SIZE, device=device)
    occupied = counts.nonzero().squeeze(1)
    occupied = occupied[torch.sort(counts[occupied], descending=True, stable=True).indices]
    per_group = max(1, BLOCK_BATCH_ELEMENTS // (BLOCK_SIZE * BLOCK_SIZE * DEPTH_CHUNK))
    groups = [occupied[lo:lo + per_group] for lo in range(0, len(occupied), per_group)]
    lengths = [math.ceil(int(counts[group[0]]) / DEPTH_CHUNK) * DEPTH_CHUNK for group in groups]
    padded = [starts[group, None] + torch.arange(length, device=device) for group, length in zip(groups, lengths)]
    if padded:
        flat = torch.cat([p.reshape(-1) for p in padded]).clamp(max=max(len(pair_ids) - 1, 0))
        data = table.index_select(0, pair_ids[flat]).split([p.numel() for p in padded])
    use_checkpoint = torch.is_grad_enabled() and table.requires_grad
    block_in_image = occupied % (blocks_x * blocks_y)
    col0, row0 = (block_in_image % blocks_x) * BLOCK_SIZE, (block_in_image // blocks_x) * BLOCK_SIZE
    origin = torch.stack([col0, row0], -1).to(dtype) + 0.5
    live = ((col0[:, None] + pixel % BLOCK_SIZE) < width) & ((row0[:, None] + pixel // BLOCK_SIZE) < height)
    results, lo = [], 0
    for group, length, chunk in zip(groups, lengths, data if padded else []):
        part = slice(lo, lo + len(group))
        args = (counts[group], origin[part], live[part], chunk.reshape(len(group), length, -1))
        results.append(checkpoint(_composite_group, *args, use_reentrant=False) if use_checkpoint
                       else _composite_group(*args))
        lo += len(group)

    all_blocks = c * blocks_x * blocks_y
    image = torch.zeros(all_blocks, BLOCK_SIZE * BLOCK_SIZE, num_features, dtype=dtype, device=device)
    transmittance = torch.ones(all_blocks, BLOCK_SIZE * BLOCK_SIZE, dtype=dtype, device=device)
    if results:
        image = image.index_copy(0, occupied, torch.cat([r[0] for r in results]))
        transmittance = transmittance.index_copy(0, occupied, torch.cat([r[1] for r in results]))
    elif table.requires_grad and torch.is_grad_enabled():  # nothing in view: keep the outputs in the graph
        image, transmittance = image + 0 * table.sum(), transmittance + 0 * table.sum()

    def unblock(values: Tensor) -> Tensor:
        grid = values.reshape(c, blocks_y, blocks_x, BLOCK_SIZE, BLOCK_SIZE, -1).permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(c, blocks_y * BLOCK_SIZE, blocks_x * BLOCK_SIZE, -1)[:, :height, :width]

    meta = {key: proj[key] for key in ("means2d", "depths", "conics", "radii")}
    meta["n_pairs"] = len(pair_ids)
    return unblock(image), 1.0 - unblock(transmittance[..., None]), meta
