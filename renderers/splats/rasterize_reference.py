"""Slow twin of the splat rasterizer: every pixel against every Gaussian, one Gaussian at a time in depth order.

The test oracle for ``rasterize_tiled`` (and the ``"dense"`` backend of ``rasterize.render``). It follows the
steps of ``rasterize``'s module docstring as literally as torch allows, and shares no code with the fast path:

    1. Projection with explicit matrices per Gaussian: R(q) from the normalized quaternion, Σ = R S Sᵀ Rᵀ,
       Σ_cam = W Σ Wᵀ, the 2 x 3 Jacobian J built entry by entry, Σ₂ = J Σ_cam Jᵀ + ε I, conic = inv(Σ₂).
    2. Culling and screen boxes as in gsplat (near/far, det, opacity, off-screen; opacity-aware extent).
    3. For each camera, the visible Gaussians sorted by depth (stable: ties keep index order); then a Python loop
       over them, each step updating all H x W pixels at once: σ, α, the tile-support mask (a pixel is reached
       only if its 16 x 16 tile meets the Gaussian's tile range), skip, stop, accumulate, T <- T (1 - α).

Cost: O(C x N x H x W) with N Python iterations per camera; use it on small scenes (a few hundred Gaussians,
images up to ~128 x 96). Differentiable by autograd (every step is out of place).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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


def rotation_matrices(quats: Tensor) -> Tensor:
    """``[N, 3, 3]`` rotation of each quaternion (w, x, y, z), normalized first."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def project_dense(gaussians: Gaussians, cameras: Cameras, near: float, far: float) -> dict[str, Tensor]:
    """Per camera and Gaussian: ``means2d`` [C, N, 2], ``depths`` [C, N], ``conics`` [C, N, 3] (xx, xy, yy),
    ``radii`` [C, N, 2] int32 and ``visible`` [C, N] bool (step 1-2)."""
    rot = rotation_matrices(gaussians.quats)
    m = rot @ torch.diag_embed(gaussians.scales)
    cov_world = m @ m.transpose(-1, -2)  # [N, 3, 3]
    w, t = cameras.viewmats[:, :3, :3], cameras.viewmats[:, :3, 3]
    means_cam = torch.einsum("cij,nj->cni", w, gaussians.means) + t[:, None, :]  # [C, N, 3]
    cov_cam = w[:, None] @ cov_world[None] @ w.transpose(-1, -2)[:, None]  # [C, N, 3, 3]
    x, y, z = means_cam.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled Gaussians finite (and their gradients 0)
    ks = cameras.Ks[:, None]  # [C, 1, 3, 3]
    fx, fy, cx, cy = ks[..., 0, 0], ks[..., 1, 1], ks[..., 0, 2], ks[..., 1, 2]
    width, height = cameras.width, cameras.height
    lim_x = (width - cx) / fx + 0.3 * (0.5 * width / fx), cx / fx + 0.3 * (0.5 * width / fx)
    lim_y = (height - cy) / fy + 0.3 * (0.5 * height / fy), cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.minimum(lim_x[0], torch.maximum(-lim_x[1], x / z))
    ty = z * torch.minimum(lim_y[0], torch.maximum(-lim_y[1], y / z))
    zero = torch.zeros_like(z)
    jac = torch.stack([torch.stack([fx / z, zero, -fx * tx / (z * z)], -1),
                       torch.stack([zero, fy / z, -fy * ty / (z * z)], -1)], -2)  # [C, N, 2, 3]
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2) + EPS2D * torch.eye(2, dtype=z.dtype, device=z.device)
    det = torch.linalg.det(cov2d)
    ok = in_depth & (det > 0)
    safe = torch.where(ok[..., None, None], cov2d, torch.eye(2, dtype=z.dtype, device=z.device))
    conic = torch.linalg.inv(safe)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)

    opacity = gaussians.opacities.detach()[None].expand_as(z)
    extent = torch.sqrt(2.0 * torch.log(opacity.clamp(min=ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTENT_SIGMA)
    radius = torch.ceil(extent[..., None] * torch.diagonal(safe.detach(), dim1=-2, dim2=-1).sqrt())  # [C, N, 2]
    m2 = means2d.detach()
    on_screen = ((m2[..., 0] + radius[..., 0] > 0) & (m2[..., 0] - radius[..., 0] < width)
                 & (m2[..., 1] + radius[..., 1] > 0) & (m2[..., 1] - radius[..., 1] < height))
    visible = ok & (opacity >= ALPHA_MIN) & on_screen & (radius > 0).any(-1)
    radii = torch.where(visible[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
    conics = torch.stack([conic[..., 0, 0], conic[..., 0, 1], conic[..., 1, 1]], -1)
    return {"means2d": means2d, "depths": means_cam[..., 2], "conics": conics, "radii": radii, "visible": visible}


def rasterize_dense(gaussians: Gaussians, cameras: Cameras, *, with_colors: bool = True, with_depth: bool = False,
                    near: float = 0.01, far: float = 1e10) -> tuple[Tensor, Tensor, dict]:
    """``(image [C, H, W, X], alphas [C, H, W, 1], meta)``: features (colors, then depth if ``with_depth``)
    composited per pixel; the mode's ED division and background are applied by ``render``."""
    proj = project_dense(gaussians, cameras, near, far)
    width, height = cameras.width, cameras.height
    dtype, device = gaussians.means.dtype, gaussians.means.device
    rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                indexing="ij")
    px, py = (cols.reshape(-1) + 0.5).to(dtype), (rows.reshape(-1) + 0.5).to(dtype)  # pixel centres [HW]
    tile_col, tile_row = cols.reshape(-1) // TILE_SIZE, rows.reshape(-1) // TILE_SIZE
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    images, alphas = [], []
    for cam in range(cameras.num_cameras):
        feats = []
        if with_colors:
            feats.append(gaussians.colors)
        if with_depth:
            feats.append(proj["depths"][cam][:, None])
        features = torch.cat(feats, -1)  # [N, X]
        visible = proj["visible"][cam].nonzero().squeeze(1)
        order = visible[torch.sort(proj["depths"][cam].detach()[visible], stable=True).indices]
        transmittance = torch.ones(height * width, dtype=dtype, device=device)
        done = torch.zeros(height * width, dtype=torch.bool, device=device)
        image = torch.zeros(height * width, features.shape[1], dtype=dtype, device=device)
        for g in order.tolist():
            mx, my = proj["means2d"][cam, g]
            a, b, c = proj["conics"][cam, g]
            rx, ry = proj["radii"][cam, g].tolist()
            m2 = proj["means2d"][cam, g].detach()
            x0 = min(max(math.floor(m2[0].item() / TILE_SIZE - rx / TILE_SIZE), 0), tiles_x)
            x1 = min(max(math.ceil(m2[0].item() / TILE_SIZE + rx / TILE_SIZE), 0), tiles_x)
            y0 = min(max(math.floor(m2[1].item() / TILE_SIZE - ry / TILE_SIZE), 0), tiles_y)
            y1 = min(max(math.ceil(m2[1].item() / TILE_SIZE + ry / TILE_SIZE), 0), tiles_y)
            reached = (tile_col >= x0) & (tile_col < x1) & (tile_row >= y0) & (tile_row < y1)
            dx, dy = mx - px, my - py
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = torch.clamp(gaussians.opacities[g] * torch.exp(-sigma), max=MAX_ALPHA)
            used = reached & ~done & (sigma >= 0) & (alpha >= ALPHA_MIN)
            next_t = transmittance * (1.0 - alpha)
            stop = used & (next_t <= T_MIN)
            done = done | stop
            add = used & ~stop
            image = image + torch.where(add, alpha * transmittance, 0.0)[:, None] * features[g]
            transmittance = torch.where(add, next_t, transmittance)
        images.append(image.reshape(height, width, -1))
        alphas.append((1.0 - transmittance).reshape(height, width, 1))
    images, alphas = torch.stack(images), torch.stack(alphas)
    if not images.requires_grad and proj["means2d"].requires_grad:  # nothing in view: keep them in the graph
        zero = 0 * proj["means2d"].sum()
        images, alphas = images + zero, alphas + zero
    meta = {key: proj[key] for key in ("means2d", "depths", "conics", "radii")}
    return images, alphas, meta
